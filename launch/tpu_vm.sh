#!/usr/bin/env bash
# Usage: bash launch/tpu_vm.sh TPU_NAME ZONE [--repo=URL] --config=configs/<name>.py \
#            [--config.field=value ...]
# One job on a Cloud TPU VM or on every worker of a pod slice, driven from your machine with
# gcloud (authenticated, with a project set; for a slice of several workers run
# `ssh-add ~/.ssh/google_compute_engine` first):
#   1. code: without --repo, this checkout's files (those git tracks or would track, so not
#      workdir/, virtualenvs or caches) are packed into one archive, copied to every worker
#      with `gcloud compute tpus tpu-vm scp` and unpacked over ~/arc_jax there (files the
#      workers wrote, like their workdir/ and virtualenv, stay). With --repo=URL each worker
#      clones URL into ~/arc_jax, or pulls (fast-forward only) if it already has the clone.
#   2. install, once per worker: a virtualenv ~/arc_jax/.venv-tpu with jax[tpu] and the
#      package (editable, so later code syncs need no reinstall; delete the virtualenv on the
#      workers to reinstall after a dependency change).
#   3. run: the same `python -m arc_jax.launch ARGS` on every worker at once. JAX finds the
#      slice's workers itself (on a TPU, jax.distributed.initialize() is optional and takes
#      no arguments), so no coordinator is given here.
# The run lasts as long as the ssh session, so start long runs from tmux or screen. With
# several workers, put config.workdir on storage that every worker sees.
# Not tested: the machine this was written on has no TPU and no cloud credentials; only the
# commands this script builds were checked, against a stand-in for gcloud.
set -euo pipefail

usage() {
  echo "error: $1" >&2
  echo "usage: bash launch/tpu_vm.sh TPU_NAME ZONE [--repo=URL] --config=configs/<name>.py" \
    "[--config.field=value ...]" >&2
  exit 2
}

[ $# -ge 2 ] || usage "expected TPU_NAME and ZONE"
tpu="$1" zone="$2"
shift 2
case "$tpu$zone" in -*) usage "expected TPU_NAME and ZONE before the options" ;; esac

repo_url=""
args=()
for arg in "$@"; do
  case "$arg" in
    --repo=*) repo_url="${arg#*=}" ;;
    --repo) usage "write --repo=URL" ;;
    *) args+=("$arg") ;;
  esac
done
has_config=false
for arg in "${args[@]}"; do
  case "$arg" in --config=* | --config) has_config=true ;; esac
done
$has_config || usage "--config=configs/<name>.py is required"
command -v gcloud >/dev/null || usage "gcloud is not installed"

# Runs a bash command line on every worker, in its home directory.
on_workers() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"
}

# 1. code
if [ -n "$repo_url" ]; then
  on_workers "set -e
    if [ -d arc_jax/.git ]; then git -C arc_jax pull --ff-only
    else git clone $(printf %q "$repo_url") arc_jax; fi"
else
  repo_root="$(cd "$(dirname "$0")/.." && pwd)"
  git -C "$repo_root" rev-parse --git-dir >/dev/null 2>&1 \
    || usage "$repo_root is not a git checkout; give --repo=URL"
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  # Tracked and untracked files, less what .gitignore leaves out and files deleted here.
  (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -czf "$stage/arc_jax.tar.gz")
  gcloud compute tpus tpu-vm scp "$stage/arc_jax.tar.gz" "$tpu:arc_jax.tar.gz" \
    --zone "$zone" --worker=all
  on_workers "set -e; mkdir -p arc_jax; tar -xzf arc_jax.tar.gz -C arc_jax; rm arc_jax.tar.gz"
fi

# 2. install (once; the marker is written only after a successful install)
on_workers 'set -e; cd arc_jax
  if [ ! -e .venv-tpu/.installed ]; then
    python3 -m venv .venv-tpu \
      || { sudo apt-get update -q && sudo apt-get install -y -q python3-venv \
           && python3 -m venv .venv-tpu; }
    .venv-tpu/bin/pip install --quiet --upgrade pip
    .venv-tpu/bin/pip install --quiet "jax[tpu]" -e .
    touch .venv-tpu/.installed
  fi'

# 3. run
on_workers "cd arc_jax && exec .venv-tpu/bin/python -m arc_jax.launch$(printf ' %q' "${args[@]}")"

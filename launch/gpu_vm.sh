#!/usr/bin/env bash
# Usage: bash launch/gpu_vm.sh [--coordinator=HOST:PORT --num_processes=N --process_id=I] \
#            --config=configs/<name>.py [--config.field=value ...]
# One job on all the GPUs of a VM, or on several VMs. Without the three options it is one
# process on this VM: the mesh spans its local GPUs. With them, run the same command on every
# VM, each with its own --process_id (0 to N-1; HOST:PORT is process 0's address and a free
# port there): they are exported as JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
# JAX_PROCESS_ID, from which arc_jax.launch calls jax.distributed.initialize(). Point
# config.workdir at storage that every VM sees. The virtualenv and the launch command are
# launch/gpu.sh's.
set -euo pipefail

usage() {
  echo "error: $1" >&2
  echo "usage: bash launch/gpu_vm.sh [--coordinator=HOST:PORT --num_processes=N" \
    "--process_id=I] --config=configs/<name>.py [--config.field=value ...]" >&2
  exit 2
}

coordinator="" num_processes="" process_id=""
args=()
for arg in "$@"; do
  case "$arg" in
    --coordinator=*) coordinator="${arg#*=}" ;;
    --num_processes=*) num_processes="${arg#*=}" ;;
    --process_id=*) process_id="${arg#*=}" ;;
    --coordinator | --num_processes | --process_id) usage "write $arg=VALUE" ;;
    *) args+=("$arg") ;;
  esac
done

has_config=false
for arg in "${args[@]}"; do
  case "$arg" in --config=* | --config | -h | --help | --helpfull) has_config=true ;; esac
done
$has_config || usage "--config=configs/<name>.py is required"

if [ -n "$coordinator$num_processes$process_id" ]; then
  if [ -z "$coordinator" ] || [ -z "$num_processes" ] || [ -z "$process_id" ]; then
    usage "give --coordinator, --num_processes and --process_id together"
  fi
  [[ "$coordinator" =~ ^[^:]+:[0-9]+$ ]] || usage "--coordinator=$coordinator: expected HOST:PORT"
  [[ "$num_processes" =~ ^[1-9][0-9]*$ ]] \
    || usage "--num_processes=$num_processes: expected an integer >= 1"
  [[ "$process_id" =~ ^[0-9]+$ ]] && [ "$process_id" -lt "$num_processes" ] \
    || usage "--process_id=$process_id: expected an integer in [0, $num_processes)"
  export JAX_COORDINATOR_ADDRESS="$coordinator"
  export JAX_NUM_PROCESSES="$num_processes"
  export JAX_PROCESS_ID="$process_id"
  echo "gpu_vm.sh: process $process_id of $num_processes, coordinator $coordinator" >&2
fi

# NVLink multicast (NVLS) stays off, in NCCL and in a vLLM sidecar's PyTorch and NVSHMEM: a
# program using it can take a shared host's GPUs out of service. Collectives work without it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec bash "$(dirname "$0")/gpu.sh" "${args[@]}"

"""Multi-process runs: one JAX process per host, every process running the same program.

Each process draws the same prompts (the draws are pure functions of seed and step) and the
rollout engine samples them as one SPMD computation whose rows are split over the devices of
all hosts; its results are gathered to every host. Every host scores the programs in its own
execution pool; the rewards and metrics of process 0 are then taken by all (`agree`), so that
a program timing out on one host only cannot make the hosts' updates or collapse-guard
decisions differ. Files other than checkpoints (which Orbax writes collectively) are written
by process 0 into the workdir and by the others into `workdir/process_<i>`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from arc_jax.errors import UserError

VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedSettingsError(UserError, ValueError):
    """The multi-process variables are incomplete or malformed (names them)."""


def initialize_from_environment(environ=os.environ) -> bool:
    """`jax.distributed.initialize` from the variables launch/gpu_vm.sh exports; returns
    whether this process joined a multi-process run."""
    given = [name for name in VARIABLES if environ.get(name)]
    if not given:
        return False
    if len(given) != len(VARIABLES):
        raise DistributedSettingsError(f"a multi-process run needs all of {', '.join(VARIABLES)}"
                                       f"; only {', '.join(given)} set")
    try:
        count, index = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
    except ValueError:
        raise DistributedSettingsError(
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
            f"{environ['JAX_NUM_PROCESSES']!r} and {environ['JAX_PROCESS_ID']!r}") from None
    if not 0 <= index < count:
        raise DistributedSettingsError(f"JAX_PROCESS_ID={index} must be in [0, "
                                       f"JAX_NUM_PROCESSES={count})")
    jax.distributed.initialize(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=count, process_id=index)
    return True


def is_main() -> bool:
    return jax.process_index() == 0


def output_dir(workdir: pathlib.Path) -> pathlib.Path:
    """Where this process writes its logs and reports: the workdir for process 0."""
    return workdir if is_main() else workdir / f"process_{jax.process_index()}"


def to_host(tree: Any) -> Any:
    """The values of a pytree of (possibly multi-host) arrays as numpy arrays, on every host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def agree(value: Any) -> Any:
    """Process 0's value of a JSON-serialisable `value`, on every process (the identity in a
    one-process run). Every process must call it at the same point."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main() else None
    size = multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size))
    buffer = data if data is not None else np.zeros(int(size), np.uint8)
    received = multihost_utils.broadcast_one_to_all(buffer)
    return json.loads(np.asarray(received, np.uint8).tobytes().decode())

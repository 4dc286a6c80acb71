"""Multi-process runs: `distributed.initialize_from_environment` and the GRPO update under two
JAX processes on this machine (jax.distributed over localhost, CPU collectives through gloo).
The whole training loop under two processes is tested in test_train_loop.py."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from arc_jax.distributed import DistributedSettingsError, initialize_from_environment

TESTS = os.path.dirname(os.path.abspath(__file__))

UPDATE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from arc_jax.distributed import initialize_from_environment
    joined = initialize_from_environment()
    import numpy as np
    from jax.sharding import Mesh
    sys.path.insert(0, {tests!r})
    from test_update import make_model, make_batch, OPTIMIZER
    from arc_jax.model import Sharding
    from arc_jax.train.grpo import GRPOLossConfig
    from arc_jax.train.update import GRPOUpdater
    from jax.experimental import multihost_utils

    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(len(devices), 1, 1), ("data", "fsdp", "tensor"))
    model = make_model(sharding=Sharding(mesh), layers=1)
    updater = GRPOUpdater(model, GRPOLossConfig(beta=0.04), OPTIMIZER, num_micro_batches=2)
    batch = make_batch(p=4, g=2, s=12, t=5)  # every process passes the same global batch
    losses = [updater.step(batch)["loss"] for _ in range(3)]
    lora = multihost_utils.process_allgather(model.layers[0].mlp.up_proj.lora_b[...], tiled=True)
    print(json.dumps({{"joined": joined, "processes": jax.process_count(),
                      "devices": len(devices), "losses": losses,
                      "lora": np.asarray(lora).tolist()}}))
""").format(tests=TESTS)


def run_processes(count: int, devices_per_process: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    if count > 1:
        env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(count)}
    processes = [subprocess.Popen([sys.executable, "-c", UPDATE_SCRIPT],
                                  env=env | ({"JAX_PROCESS_ID": str(i)} if count > 1 else {}),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(count)]
    results = []
    for p in processes:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_two_processes_update_as_one_process_with_two_devices():
    one = run_processes(1, devices_per_process=2)[0]
    two = run_processes(2, devices_per_process=1)
    assert not one["joined"] and one["devices"] == 2
    for result in two:
        assert result["joined"] and (result["processes"], result["devices"]) == (2, 2)
        np.testing.assert_allclose(result["losses"], one["losses"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result["lora"], one["lora"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("environ, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "only JAX_COORDINATOR_ADDRESS set"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "must be integers"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)"),
])
def test_incomplete_distributed_settings_are_refused(environ, message):
    with pytest.raises(DistributedSettingsError, match=message):
        initialize_from_environment(environ)
    assert initialize_from_environment({}) is False

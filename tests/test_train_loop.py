"""The GRPO loop end to end on the CPU demo: it learns, it resumes exactly after SIGKILL,
and a 4-device mesh gives the 1-device losses.

All runs share one toy policy, built once (about three minutes on two cores) by the first
run and copied into the others' workdirs, where the cache picks it up.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from arc_jax.train.metrics_log import read_metrics

pytestmark = pytest.mark.slow  # trains the demo (minutes per test on two cores)

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Wall-clock figures differ between any two runs, and so do compilations (a resumed process
# compiles its first step again); everything else must not.
_TIMING_KEYS = ("time/rollout_s", "time/reward_s", "time/update_s", "time/step_s",
                "time/compile_s", "time/sync_s", "tokens_per_s", "compiles", "compile_cache_hits")


def _command(workdir: pathlib.Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "arc_jax.launch", "--config=configs/demo.py:smoke",
            f"--config.workdir={workdir}", *overrides]


def _run(workdir: pathlib.Path, *overrides: str, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(workdir, *overrides), cwd=_ROOT, capture_output=True,
                            text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _without_timings(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in _TIMING_KEYS} for m in metrics]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    """The shortened demo (configs/demo.py:smoke): builds the toy policy, then 100 GRPO steps."""
    workdir = tmp_path_factory.mktemp("smoke")
    _run(workdir)
    return workdir


def _with_toy_policy(smoke_run: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    shutil.copytree(smoke_run / "toy_policy", workdir / "toy_policy")
    return workdir


def test_demo_smoke_run_learns(smoke_run):
    metrics = read_metrics(smoke_run)
    assert [m["step"] for m in metrics] == list(range(1, 101))
    first = np.mean([m["reward/mean"] for m in metrics[:20]])
    last = np.mean([m["reward/mean"] for m in metrics[-20:]])
    assert last > first, (first, last)
    assert (smoke_run / "reward_per_step.png").stat().st_size > 0
    assert (smoke_run / "checkpoints" / "100").is_dir()


def test_compiles_only_come_with_a_new_prompt_bucket(smoke_run):
    """Every step logs `compiles`; the first step compiles the sampler and the update, and a
    later step compiles only when its padded prompt length or its padded completion length
    is one no earlier step had, or right after the first checkpoint (save_steps = 50), whose
    finiteness check compiles once."""
    metrics = read_metrics(smoke_run)
    assert all("compiles" in m and "prompt_padded_len" in m for m in metrics)
    assert metrics[0]["compiles"] > 0
    shape = lambda m: (m["prompt_padded_len"], m["completion_padded_len"])
    seen = {shape(metrics[0])}
    for m in metrics[1:]:
        if m["compiles"] > 0 and m["step"] != 51:
            assert shape(m) not in seen, m["step"]
        seen.add(shape(m))
    assert metrics[50]["step"] == 51 and metrics[50]["compiles"] >= 1


def test_killed_run_resumes_with_the_same_metrics(smoke_run, tmp_path):
    steps = ("--config.max_steps=8", "--config.save_steps=2")
    straight = _with_toy_policy(smoke_run, tmp_path / "straight")
    _run(straight, *steps)
    expected = _without_timings(read_metrics(straight))

    resumed = _with_toy_policy(smoke_run, tmp_path / "resumed")
    process = subprocess.Popen(_command(resumed, *steps), cwd=_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics_file = resumed / "metrics.jsonl"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)  # in step 6: step 4 is the newest checkpoint
    process.wait()
    assert len(read_metrics(resumed)) < 8

    result = _run(resumed, *steps)
    assert "resumed from the checkpoint of step" in result.stdout
    assert _without_timings(read_metrics(resumed)) == expected


def test_four_device_mesh_gives_the_one_device_losses(smoke_run, tmp_path):
    steps = ("--config.max_steps=3",)
    one = _with_toy_policy(smoke_run, tmp_path / "one")
    _run(one, *steps)
    four = _with_toy_policy(smoke_run, tmp_path / "four")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    _run(four, *steps, "--config.mesh.data=2", "--config.mesh.fsdp=2", env=env)
    for a, b in zip(read_metrics(one), read_metrics(four), strict=True):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-3, atol=1e-6)
        assert b["reward/mean"] == pytest.approx(a["reward/mean"], rel=1e-6)


def test_two_processes_train_resume_and_match_one_process(smoke_run, tmp_path):
    """The demo under two JAX processes on localhost (jax.distributed, one CPU device each):
    2 steps and a checkpoint, then a second launch resumes from it for steps 3-4. The losses
    and rewards equal those of one process with two devices; process 0 writes the workdir's
    metrics, process 1 its own under process_1/."""
    one = _with_toy_policy(smoke_run, tmp_path / "one")
    _run(one, "--config.max_steps=4",
         env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"))

    two = _with_toy_policy(smoke_run, tmp_path / "two")

    def launch_pair(max_steps: int) -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
        command = _command(two, f"--config.max_steps={max_steps}", "--config.save_steps=2",
                           "--config.compilation_cache=False")
        processes = [subprocess.Popen(command, cwd=_ROOT, env=dict(env, JAX_PROCESS_ID=str(i)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for i in range(2)]
        outputs = []
        for p in processes:
            out, err = p.communicate(timeout=1200)
            assert p.returncode == 0, err[-3000:]
            outputs.append(out)
        return outputs

    launch_pair(2)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2"]
    main_out, _ = launch_pair(4)
    assert "resumed from the checkpoint of step 2" in main_out
    merged, single = read_metrics(two), read_metrics(one)
    assert [m["step"] for m in merged] == [1, 2, 3, 4]
    assert [m["step"] for m in read_metrics(two / "process_1")] == [1, 2, 3, 4]
    for a, b in zip(single, merged, strict=True):
        assert b["reward/mean"] == pytest.approx(a["reward/mean"], rel=1e-6)
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)

"""Training checkpoints: real Orbax saves in tmp_path, including processes killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arc_jax.train.checkpoint import UNREADABLE_SUFFIX, Checkpointer, CheckpointError
from arc_jax.train.metrics_log import TENSORBOARD_DIR, read_metrics

TMP_SUFFIX = ".orbax-checkpoint-tmp"


def small_state(scale):
    return {"lora": {"a": jnp.full((2, 3), scale, jnp.float32),
                     "b": jnp.full((3,), scale, jnp.bfloat16)},
            "count": jnp.array(7, jnp.int32), "key": jax.random.key(11)}


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def run_python(script, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_save_restore_round_trip_onto_target_shardings(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    state = small_state(1.5)
    state["lora"]["a"] = jax.device_put(state["lora"]["a"], replicated)
    meta = {"data_position": 17, "np_rng": {"state": 2**100 + 3}, "config": {"lr": 1e-6}}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        ckpt.save(5, state, meta)
        ckpt.wait()
        arrays, restored_meta = ckpt.restore(abstract_arrays=abstract(state))
    assert restored_meta == {"data_position": 17, "np_rng": {"state": 2**100 + 3},
                             "config": {"lr": 1e-6}, "step": 5}
    np.testing.assert_array_equal(arrays["lora"]["a"], np.full((2, 3), 1.5, np.float32))
    assert arrays["lora"]["b"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(arrays["lora"]["b"].astype(np.float32), [1.5, 1.5, 1.5])
    assert int(arrays["count"]) == 7
    assert arrays["lora"]["a"].sharding == replicated
    np.testing.assert_array_equal(jax.random.key_data(arrays["key"]),
                                  jax.random.key_data(jax.random.key(11)))


def test_keeps_the_newest_steps_and_rolls_back(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (1, 2, 3, 4):
            ckpt.save(step, small_state(step), {})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_step(at_most=3) == 3 and ckpt.latest_step(at_most=2) is None
        assert ckpt.delete_after(3) == [4]
        ckpt.save(4, small_state(40), {})
        ckpt.wait()
        arrays, meta = ckpt.restore()
    assert meta == {"step": 4}
    assert float(arrays["lora"]["a"][0, 0]) == 40.0
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_bad_saves_are_refused_with_the_field_named(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, small_state(1.0), {})
        with pytest.raises(CheckpointError, match="step is not after the latest saved step 2"):
            ckpt.save(2, small_state(1.0), {})
        bad = small_state(1.0)
        bad["lora"]["b"] = bad["lora"]["b"].at[1].set(jnp.nan)
        with pytest.raises(CheckpointError, match=r"step 3 .*array \['lora'\]\['b'\] has a NaN"):
            ckpt.save(3, bad, {})
        with pytest.raises(CheckpointError, match="meta fields 'rng' do not survive a JSON"):
            ckpt.save(3, small_state(1.0), {"rng": (1, 2)})
        with pytest.raises(CheckpointError, match="meta is not JSON-serialisable"):
            ckpt.save(3, small_state(1.0), {"x": float("nan")})
        with pytest.raises(CheckpointError, match=r"meta\['step'\] is 4"):
            ckpt.save(3, small_state(1.0), {"step": 4})
        with pytest.raises(CheckpointError, match=r"step 9 not in .* \(steps: \[2\]\)"):
            ckpt.restore(9)
        assert ckpt.all_steps() == [2]


def test_restore_of_an_empty_directory_says_so(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore()


def test_sigkill_during_async_save_keeps_the_last_good_step(tmp_path):
    # max_to_keep=1: a save that replaced step 1 before being complete would lose both.
    result = run_python("""
        import os, signal, sys
        import numpy as np, jax.numpy as jnp
        from arc_jax.train.checkpoint import Checkpointer
        ckpt = Checkpointer(sys.argv[1], max_to_keep=1)
        ckpt.save(1, {"w": jnp.ones((4,), jnp.float32)}, {"position": 1})
        ckpt.wait()
        big = jnp.asarray(np.random.default_rng(0).random(16_000_000, dtype=np.float32))  # 64 MB
        ckpt.save(2, {"w": big}, {"position": 2})
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr
    left = sorted(os.listdir(tmp_path))
    assert "1" in left and "2" not in left
    assert any(name.startswith("2" + TMP_SUFFIX) for name in left), left

    with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        assert ckpt.latest_step() == 1
        arrays, meta = ckpt.restore()
        assert meta == {"position": 1, "step": 1}
        np.testing.assert_array_equal(arrays["w"], np.ones(4, np.float32))
    assert os.listdir(tmp_path) == ["1"]  # the killed save's temporary directory is gone

    with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(2, {"w": jnp.zeros((4,), jnp.float32)}, {"position": 2})
        ckpt.wait()
        assert ckpt.all_steps() == [2]


def test_unreadable_newest_step_falls_back_and_is_set_aside(tmp_path, caplog):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, small_state(1.0), {})
        ckpt.save(2, small_state(2.0), {})
    os.makedirs(tmp_path / "3")
    (tmp_path / "3" / "garbage").write_text("not a checkpoint")

    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 3
        arrays, meta = ckpt.restore(abstract_arrays=abstract(small_state(0.0)))
        assert meta == {"step": 2}
        assert float(arrays["lora"]["a"][0, 0]) == 2.0
        assert ckpt.all_steps() == [1, 2]
        ckpt.save(3, small_state(3.0), {})
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2, 3]
    assert "step 3:" in caplog.text and "renamed with suffix" in caplog.text
    assert (tmp_path / ("3" + UNREADABLE_SUFFIX) / "garbage").exists()


def test_no_restorable_step_lists_every_failure(tmp_path):
    for step in ("4", "6"):
        os.makedirs(tmp_path / step)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"(?s)no checkpoint in .* restores:\n"
                                                  r"step 6: .*\nstep 4: "):
            ckpt.restore()


# A toy training run with everything a GRPO run checkpoints: params, optimizer state, a JAX key,
# a data position, a numpy RNG, the collapse guard; metrics logged every step, saved every 3.
TOY_RUN = """
    import os, signal, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from arc_jax.train.checkpoint import Checkpointer
    from arc_jax.train.collapse import CollapseConfig, CollapseGuard
    from arc_jax.train.metrics_log import MetricsLogger

    workdir, total_steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    optimizer = optax.adam(0.1)

    @jax.jit
    def train_step(state, batch):
        key, noise_key = jax.random.split(state["key"])
        targets = batch @ jnp.arange(4.0) + 0.1 * jax.random.normal(noise_key, (batch.shape[0],))
        loss_fn = lambda params: jnp.mean((batch @ params["w"] - targets) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt": opt_state, "key": key}, loss

    params = {"w": jnp.zeros(4)}
    state = {"params": params, "opt": optimizer.init(params), "key": jax.random.key(1)}
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
    np_rng = np.random.default_rng(2)
    guard = CollapseGuard(CollapseConfig(patience=2, truncated_ratio_threshold=0.15,
                                         repetition_threshold=0.0))
    step, position = 0, 0
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    logger = MetricsLogger(workdir)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(abstract_arrays=target)
        step, position = meta["step"], meta["position"]
        np_rng.bit_generator.state = meta["np_rng"]
        guard.load_state_dict(meta["guard"])
    logger.truncate_after(step)
    while step < total_steps:
        step += 1
        batch = data[position:position + 5]
        position = (position + 5) % len(data)
        state, loss = train_step(state, batch)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        metrics = {"loss": loss, "truncated_ratio": np_rng.random(), "repetition/4gram": 0.5}
        metrics["collapse/streak"] = guard.update(step, metrics).streak
        logger.log(step, metrics)
        if step % 3 == 0:
            ckpt.save(step, state, {"position": position, "np_rng": np_rng.bit_generator.state,
                                    "guard": guard.state_dict()})
    ckpt.close()
    logger.close()
    print(np.asarray(state["params"]["w"]).tobytes().hex())
"""


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = run_python(TOY_RUN, whole, 10, 0)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    first = run_python(TOY_RUN, killed, 10, 8)   # killed inside step 8; last checkpoint: 6
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert (killed / "metrics.jsonl").read_text().count("\n") == 7
    resumed = run_python(TOY_RUN, killed, 10, 0)
    assert resumed.returncode == 0, resumed.stderr

    assert resumed.stdout == uninterrupted.stdout  # final params, bit for bit
    expected = (whole / "metrics.jsonl").read_text()
    assert expected.count("\n") == 10
    assert read_metrics(whole)[6]["collapse/streak"] == 3  # step 7 depends on the guard's state
    assert (killed / "metrics.jsonl").read_text() == expected

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    curves = []
    for workdir in (whole, killed):
        events = EventAccumulator(str(workdir / TENSORBOARD_DIR))
        events.Reload()
        curves.append([(e.step, e.value) for e in events.Scalars("loss")])
    assert [step for step, _ in curves[1]] == list(range(1, 11))
    assert curves[1] == curves[0]


def random_state(seed):
    rng = np.random.default_rng(seed)
    return {"lora": {"a": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32),
                     "b": jnp.asarray(rng.normal(size=(256,)), jnp.bfloat16)},
            "count": jnp.array(7, jnp.int32), "key": jax.random.key(11)}


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_in_the_newest_step_is_detected_and_the_previous_restores(
        tmp_path, caplog, where):
    """One byte of the largest array file of step 2 inverted (the file keeps its size): step 2
    does not restore, step 1 does, with its exact arrays, and the log names step 2."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, random_state(1), {"position": 1})
        ckpt.save(2, random_state(2), {"position": 2})
    files = [f for f in (tmp_path / "2").rglob("*") if f.is_file()]
    largest = max(files, key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    largest.write_bytes(bytes(data))

    with Checkpointer(tmp_path) as ckpt:
        arrays, meta = ckpt.restore(abstract_arrays=abstract(random_state(0)))
    assert meta == {"step": 1, "position": 1}
    for got, want in zip(jax.tree.leaves(jax.random.key_data(arrays["key"])),
                         jax.tree.leaves(jax.random.key_data(random_state(1)["key"]))):
        np.testing.assert_array_equal(got, want)
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.asarray(arrays["lora"][name], np.float32),
                                      np.asarray(random_state(1)["lora"][name], np.float32))
    assert "step 2:" in caplog.text


def test_changed_array_values_are_named(tmp_path):
    """The fingerprint check itself: a step whose saved values were replaced by others of the
    same shape (here: step 1's arrays written under step 2's metadata) names the arrays."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, random_state(1), {})
        ckpt.save(2, random_state(2), {})
    import shutil

    shutil.rmtree(tmp_path / "2" / "arrays")
    shutil.copytree(tmp_path / "1" / "arrays", tmp_path / "2" / "arrays")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"checkpoint step 2 in .*: arrays "
                                                  r"\['lora'\]\['a'\], \['lora'\]\['b'\] differ "
                                                  r"from what was saved"):
            ckpt.restore(2, abstract_arrays=abstract(random_state(0)))

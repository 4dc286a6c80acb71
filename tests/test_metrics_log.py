"""Metrics on disk: metrics.jsonl and its truncation, TensorBoard events read back, progress bar."""

import io
import math
import os
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from arc_jax.train.metrics_log import (METRICS_FILE, TENSORBOARD_DIR, MetricsError, MetricsLogger,
                                       ProgressBar, read_metrics)


def jsonl_text(workdir):
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return f.read()


def tensorboard_scalars(workdir, tag):
    events = EventAccumulator(os.path.join(workdir, TENSORBOARD_DIR))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_log_writes_one_json_object_per_step(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"reward/mean": 0.25, "skipped_prompts": np.int64(3),
                       "grad_norm": jnp.float32(1.5)})
        logger.log(4, {"reward/mean": np.float32(0.5), "kl": float("nan"),
                       "loss": float("inf"), "min": -math.inf})
    assert jsonl_text(tmp_path) == (
        '{"step": 1, "reward/mean": 0.25, "skipped_prompts": 3, "grad_norm": 1.5}\n'
        '{"step": 4, "reward/mean": 0.5, "kl": "nan", "loss": "inf", "min": "-inf"}\n')
    records = read_metrics(tmp_path)
    assert records[0] == {"step": 1, "reward/mean": 0.25, "skipped_prompts": 3, "grad_norm": 1.5}
    assert math.isnan(records[1]["kl"])
    assert (records[1]["loss"], records[1]["min"]) == (math.inf, -math.inf)


def test_tensorboard_events_hold_the_logged_values(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(2, {"reward/mean": 0.125, "time/update_s": 3.0})
        logger.log(5, {"reward/mean": 0.75, "time/update_s": 2.5})
    assert tensorboard_scalars(tmp_path, "reward/mean") == [(2, 0.125), (5, 0.75)]
    assert tensorboard_scalars(tmp_path, "time/update_s") == [(2, 3.0), (5, 2.5)]


def test_resume_truncates_to_the_restored_step(tmp_path):
    with MetricsLogger(tmp_path) as killed_run:
        for step in range(1, 6):
            killed_run.log(step, {"reward/mean": step / 8})
    with MetricsLogger(tmp_path) as resumed:      # restored from the checkpoint of step 3
        resumed.truncate_after(3)
        resumed.log(4, {"reward/mean": 0.0})
        resumed.log(5, {"reward/mean": 1.0})
    assert jsonl_text(tmp_path) == (
        '{"step": 1, "reward/mean": 0.125}\n{"step": 2, "reward/mean": 0.25}\n'
        '{"step": 3, "reward/mean": 0.375}\n{"step": 4, "reward/mean": 0.0}\n'
        '{"step": 5, "reward/mean": 1.0}\n')
    assert tensorboard_scalars(tmp_path, "reward/mean") == [
        (1, 0.125), (2, 0.25), (3, 0.375), (4, 0.0), (5, 1.0)]


def test_truncate_after_zero_starts_afresh(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a": 1.0})
        logger.truncate_after(0)
        logger.log(1, {"a": 2.0})
    assert jsonl_text(tmp_path) == '{"step": 1, "a": 2.0}\n'
    assert not os.path.exists(os.path.join(tmp_path, TENSORBOARD_DIR))


def test_torn_last_line_is_dropped_on_truncate(tmp_path):
    path = os.path.join(tmp_path, METRICS_FILE)
    with open(path, "w") as f:
        f.write('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.truncate_after(1)
        logger.log(2, {"a": 5.0})
    assert jsonl_text(tmp_path) == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 5.0}\n'


def test_malformed_line_is_named(tmp_path):
    with open(os.path.join(tmp_path, METRICS_FILE), "w") as f:
        f.write('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=rf"{METRICS_FILE}:2: not a JSON object"):
        MetricsLogger(tmp_path, tensorboard=False)


def test_out_of_order_file_is_named(tmp_path):
    with open(os.path.join(tmp_path, METRICS_FILE), "w") as f:
        f.write('{"step": 2}\n{"step": 2}\n')
    expected = rf"{METRICS_FILE}:2: expected an object with an int 'step' after step 2"
    with pytest.raises(MetricsError, match=expected):
        read_metrics(tmp_path)


def test_bad_log_calls_are_refused(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(3, {"a": 1.0})
        with pytest.raises(MetricsError, match="step 3 is not after the last logged step 3"):
            logger.log(3, {"a": 1.0})
        with pytest.raises(MetricsError, match="'step' is not a metric name"):
            logger.log(4, {"step": 4})
        expected = (r"metric 'lengths' at step 5 must be a real scalar, "
                    r"got ndarray of dtype int64 and shape \[2\]")
        with pytest.raises(MetricsError, match=expected):
            logger.log(5, {"lengths": np.array([1, 2])})
        with pytest.raises(MetricsError, match="metric 'name' at step 5 must be a real scalar"):
            logger.log(5, {"name": "x"})
    assert jsonl_text(tmp_path) == '{"step": 3, "a": 1.0}\n'


def test_logged_lines_survive_sigkill(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from arc_jax.train.metrics_log import MetricsLogger
        logger = MetricsLogger({str(tmp_path)!r})
        for step in (1, 2, 3):
            logger.log(step, {{"reward/mean": step / 4}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [0.25, 0.5, 0.75]


def test_wandb_without_the_package_says_how_to_fix_it(tmp_path):
    # wandb is not installed in the test environment; this checks the error a user then gets.
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed; the missing-package error cannot be observed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"wandb_project='arc' needs the `wandb` package"):
        MetricsLogger(tmp_path, tensorboard=False, wandb_project="arc")


def test_progress_bar_shows_position_and_latest_reward():
    out = io.StringIO()
    bar = ProgressBar(10, initial_step=4, file=out)
    bar.update(6, {"reward/mean": 0.5, "solved_ratio": np.float32(0.125), "kl": 3.0})
    bar.update(10, {"reward/mean": 0.75})
    bar.close()
    final = out.getvalue().split("\r")[-1]
    assert "10/10" in final
    assert "reward=0.75" in final and "solved=0.125" in final and "kl" not in final


def test_the_run_report_prints_the_table_and_names_its_files(tmp_path, capsys):
    from arc_jax.train import report

    with MetricsLogger(str(tmp_path), tensorboard=False) as logger:
        for step in (1, 2):
            logger.log(step, {"reward/mean": 1.0 * step, "reward/min": 0.0, "reward/max": 2.0,
                              "solved_ratio": 0.5})
    rates = {"sample_solve_rate": 0.25, "tasks_solved": 0.5, "valid_code_ratio": 1.0,
             "samples_per_task": 8, "per_task": {"a": 0.25, "b": 0.25}}
    report.write_summary(tmp_path, rates, rates)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "solved samples" in lines[1] and "25.0%" in lines[1]
    assert lines[-1] == (f"wrote {tmp_path / 'metrics.jsonl'}, {tmp_path / 'reward_per_step.png'}, "
                         f"{tmp_path / 'checkpoints'}, {tmp_path / 'summary.json'}")
    assert (tmp_path / "reward_per_step.png").read_bytes()[:4] == b"\x89PNG"

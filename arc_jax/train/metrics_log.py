"""Training metrics on disk (JSON lines, TensorBoard, optionally W&B) and a terminal progress bar.

`workdir/metrics.jsonl` holds one JSON object per logged step, `{"step": s, "<name>": value, ...}`,
in increasing step order. JSON has no NaN or infinity, so non-finite values are written as the
strings "nan", "inf" and "-inf"; `read_metrics` turns them back into floats. Each line is flushed
and fsynced before `log` returns, so a killed process loses nothing it logged.

TensorBoard event files go to `workdir/tensorboard`, written with the `tensorboard` package's own
event writer (no TensorFlow needed).

Resuming: call `truncate_after(s)` with the step training resumes from (the restored checkpoint's
step, 0 on a fresh start) before logging. It drops the jsonl lines after step s, which a killed run
logged past its last checkpoint, and writes TensorBoard's restart marker (a SessionLog START event
at step s + 1), which makes TensorBoard discard the older events from step s + 1 on. A resumed
run's logs then equal an uninterrupted run's. Weights & Biases reuses the run id stored in
`workdir/wandb_run_id` but cannot take back points it has received.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np
import tqdm
from absl import logging

from arc_jax.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_RUN_ID_FILE = "wandb_run_id"
PROGRESS_SHOW = (("reward", "reward/mean"), ("solved", "solved_ratio"))
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsError(UserError, ValueError):
    """A metric value or a metrics file is malformed (names the file, line, step and key)."""


def to_number(value: Any, what: str) -> int | float:
    """A metric value (Python, numpy or JAX scalar) as a plain int or float."""
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        raise MetricsError(f"{what} must be a real scalar, got {type(value).__name__} "
                           f"of dtype {array.dtype} and shape {list(array.shape)}")
    return float(array) if array.dtype.kind == "f" else int(array)


def _json_value(x: int | float) -> int | float | str:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _parse_lines(path: str) -> list[tuple[str, dict]]:
    """(line, record) pairs of a metrics file; a torn last line (killed mid-write) is dropped."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    torn_tail = lines.pop()  # "" when the file ends with a newline
    if torn_tail:
        logging.warning("%s: dropping an incomplete last line (the process was killed while "
                        "writing it): %r", path, torn_tail[:200])
    parsed, last_step = [], None
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsError(f"{path}:{number}: not a JSON object: {e}") from e
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or (last_step is not None and step <= last_step):
            raise MetricsError(f"{path}:{number}: expected an object with an int 'step' after "
                               f"step {last_step}, got {line[:200]!r}")
        parsed.append((line, record))
        last_step = step
    return parsed


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, int | float]]:
    """The records of `workdir/metrics.jsonl`, non-finite values back as floats."""
    path = os.path.join(workdir, METRICS_FILE)
    return [{k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}
            for _, record in _parse_lines(path)]


def _write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """Appends each logged step to metrics.jsonl, TensorBoard and (if a project is set) W&B."""

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
                 wandb_project: str | None = None, config: Mapping[str, Any] | None = None):
        self.workdir = os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.path = os.path.join(self.workdir, METRICS_FILE)
        records = _parse_lines(self.path)
        self._last_step = records[-1][1]["step"] if records else None
        self._tensorboard = (_TensorBoard(os.path.join(self.workdir, TENSORBOARD_DIR))
                             if tensorboard else None)
        self._wandb = _wandb_run(wandb_project, self.workdir, config) if wandb_project else None

    def truncate_after(self, step: int) -> None:
        """Forget every step after `step` (see the module docstring); call it on (re)start."""
        kept = [line for line, record in _parse_lines(self.path) if record["step"] <= step]
        _write_atomically(self.path, "".join(line + "\n" for line in kept))
        self._last_step = json.loads(kept[-1])["step"] if kept else None
        if self._tensorboard is not None:
            self._tensorboard.restart_at(step + 1)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write one step's metrics everywhere; durable in metrics.jsonl once this returns."""
        if self._last_step is not None and step <= self._last_step:
            raise MetricsError(f"{self.path}: step {step} is not after the last logged step "
                               f"{self._last_step}; call truncate_after() when resuming")
        if "step" in metrics:
            raise MetricsError(f"{self.path}: step {step}: 'step' is not a metric name")
        values = {str(k): to_number(v, f"metric {k!r} at step {step}") for k, v in metrics.items()}
        line = json.dumps({"step": int(step)} | {k: _json_value(v) for k, v in values.items()},
                          allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._last_step = step
        if self._tensorboard is not None:
            self._tensorboard.scalars(int(step), values)
        if self._wandb is not None:
            self._wandb.log(values, step=int(step))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _TensorBoard:
    """Scalar summaries in an event file of `logdir`, through the `tensorboard` package."""

    def __init__(self, logdir: str):
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as e:
            raise ImportError("TensorBoard logging needs the `tensorboard` package (pip install "
                              "tensorboard), or pass tensorboard=False") from e
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._writer = EventFileWriter(logdir)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        Value = self._summary_pb2.Summary.Value
        summary = self._summary_pb2.Summary(value=[Value(tag=k, simple_value=v)
                                                   for k, v in values.items()])
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def restart_at(self, step: int) -> None:
        """TensorBoard's restart marker: readers drop the earlier events from `step` on."""
        start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, session_log=start))

    def _write(self, event) -> None:
        self._writer.add_event(event)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _wandb_run(project: str, workdir: str, config: Mapping[str, Any] | None):
    """A W&B run that continues the run id stored in workdir, so a resumed job stays one run."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError(f"wandb_project={project!r} needs the `wandb` package (pip install "
                          "wandb); leave wandb_project unset to log without it") from e
    id_path = os.path.join(workdir, WANDB_RUN_ID_FILE)
    if os.path.exists(id_path):
        with open(id_path, encoding="utf-8") as f:
            run_id = f.read().strip()
    else:
        run_id = wandb.util.generate_id()
        _write_atomically(id_path, run_id + "\n")
    return wandb.init(project=project, id=run_id, resume="allow", dir=workdir,
                      config=dict(config) if config is not None else None)


class ProgressBar:
    """Terminal progress bar over training steps with ETA and the latest logged values (tqdm).

    show: (label, metric name) pairs of the values displayed after the bar.
    """

    def __init__(self, total_steps: int, initial_step: int = 0, *, file: TextIO | None = None,
                 show: Sequence[tuple[str, str]] = PROGRESS_SHOW):
        self._show = dict(show)
        self._latest: dict[str, str] = {}  # label -> latest value shown
        self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", desc="train",
                              file=file, dynamic_ncols=True, smoothing=0.1)

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Move the bar to `step`; show the latest values of the `show` metrics seen so far."""
        for label, name in self._show.items():
            if metrics and name in metrics:
                self._latest[label] = f"{to_number(metrics[name], name):.3g}"
        self._bar.set_postfix(self._latest, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

"""Score sampled completions: `python -m arc_jax.score --dataset=<source> --predictions=<file.jsonl>`.

Each line of the predictions file is one JSON object:

    {"task_id": "007bbfb7", "completion": "...```python\\n...\\n```",
     "test_index": 0, "augmentation": {"hflip": true, "n_rot90": 1, "colour_map": [...]}}

`task_id` and `completion` are required. `augmentation` (optional) is the augmentation
the prompt showed, as written by `Augmentation.to_json`: the program then runs on the
augmented inputs and its outputs are reverted before they are compared with the task.
`test_index` (optional) records which test input the prompt showed; it is checked but
does not change scoring, since every program runs on all test inputs. Blank lines are
skipped; any other malformed line (not UTF-8, bad or too deeply nested JSON, a missing,
unknown or mistyped key) stops the run with an error naming the line.

Every task id must be in the dataset: unknown ids stop the run before anything is
executed, with their count and ids. Metrics cover the tasks that have predictions (the
number of dataset tasks without any is printed); the table has one row per task and a
MEAN row, and `--output` writes the per-task and mean metrics as JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import stat
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

from arc_jax import data
from arc_jax import execution
from arc_jax import rewards
from arc_jax.errors import UserError


def define_flags() -> types.SimpleNamespace:
    """The command line's flags, defined only when this module runs as a program (importing it
    as a library defines none), as one object handed to `main`."""
    return types.SimpleNamespace(
        dataset=flags.DEFINE_string("dataset", None, "Tasks to score against, e.g. arc-agi-1/training or a JSON file."),
        predictions=flags.DEFINE_string("predictions", None, "JSONL file, one prediction per line."),
        output=flags.DEFINE_string("output", None, "If set, write per-task and mean metrics to this JSON file."),
        scheme=flags.DEFINE_enum("reward_scheme", rewards.DEFAULT_SCHEME, sorted(rewards.SCHEMES),
                                 "Reward scheme for the reward column."),
        pass_at_k=flags.DEFINE_list("pass_at_k", ["1", "2"], "Values of k for the pass@k columns."),
        timeout_s=flags.DEFINE_float("timeout_s", execution.ExecutionConfig.timeout_s,
                                     "CPU-time limit per program, all its inputs together (a wall-clock "
                                     "backstop of 5x stops programs that sleep)."),
        memory_limit_mb=flags.DEFINE_integer("memory_limit_mb", execution.ExecutionConfig.memory_limit_mb,
                                             "Address-space limit of each program's process."),
        num_workers=flags.DEFINE_integer("num_workers", 0, "Worker processes; 0 = one per CPU."),
        common_path=flags.DEFINE_string("common_path", None,
                                        "A `common.py` for programs to import instead of the bundled DSL."),
        task_rows=flags.DEFINE_bool("task_rows", True, "Print one table row per task, not only the MEAN row."),
        required=("dataset", "predictions"))


# key -> (Python type, JSON type name)
_KEYS = {"task_id": (str, "string"), "completion": (str, "string"), "test_index": (int, "integer"),
         "augmentation": (dict, "object")}
_REQUIRED = ("task_id", "completion")
# Predictions in flight at once: bounds memory for files with very many lines.
_CHUNK = 2048
MAX_LINE_BYTES = 1 << 24  # a predictions line longer than this is refused


class PredictionFormatError(UserError, ValueError):
    """A predictions file line is malformed or names a task that is not in the dataset."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    task_id: str
    completion: str
    line: int  # 1-based line number in the predictions file
    test_index: int | None = None
    augmentation: data.Augmentation | None = None


def parse_prediction(text: str, where: str, line: int) -> Prediction:
    """Reads one JSONL line; `where` (e.g. "preds.jsonl line 3") prefixes every error."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise PredictionFormatError(f"{where}: not valid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise PredictionFormatError(f"{where}: not valid JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise PredictionFormatError(f"{where}: expected a JSON object, got {_json_type(record)}")
    unknown = sorted(set(record) - set(_KEYS))
    if unknown:
        raise PredictionFormatError(f"{where}: unknown keys {unknown}; expected keys {sorted(_KEYS)}")
    for key in _REQUIRED:
        if key not in record:
            raise PredictionFormatError(f"{where}: missing key {key!r}")
    for key, value in record.items():
        expected_type, type_name = _KEYS[key]
        optional_null = value is None and key not in _REQUIRED
        if not optional_null and (not isinstance(value, expected_type) or isinstance(value, bool)):
            raise PredictionFormatError(f"{where}: {key!r} must be a JSON {type_name}, got {_json_type(value)}")
    test_index = record.get("test_index")
    if test_index is not None and test_index < 0:
        raise PredictionFormatError(f"{where}: 'test_index' must be >= 0, got {test_index}")
    augmentation = record.get("augmentation")
    if augmentation is not None:
        try:
            augmentation = data.Augmentation.from_json(augmentation)
        except ValueError as e:
            raise PredictionFormatError(f"{where}: 'augmentation': {e}") from None
    return Prediction(record["task_id"], record["completion"], line, test_index, augmentation)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def decode_line(raw: bytes, where: str) -> str:
    """One line's bytes as UTF-8 text; a bad byte is an error naming `where` and its column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PredictionFormatError(
            f"{where}: not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None


def read_predictions(path: str) -> list[Prediction]:
    """All predictions of a JSONL file, in file order. Read as bytes and decoded per line, so
    that a bad byte is reported with its line; a regular file only, lines of at most
    MAX_LINE_BYTES, so any input is read in time linear in its size."""
    predictions = []
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: a FIFO would block it
            raise PredictionFormatError(f"{path}: not a regular file (expected a JSONL file)")
        f = open(path, "rb")
    except OSError as e:
        raise PredictionFormatError(f"{path}: cannot be read: {e.strerror or e}") from None
    with f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            where = f"{path} line {number}"
            if len(raw) > MAX_LINE_BYTES:
                raise PredictionFormatError(f"{where}: longer than {MAX_LINE_BYTES} bytes")
            text = decode_line(raw, where)
            if text.strip():
                predictions.append(parse_prediction(text, where, number))
    if not predictions:
        raise PredictionFormatError(f"{path}: no predictions")
    return predictions


def check_predictions(predictions: Sequence[Prediction], tasks: Mapping[str, data.Task], path: str) -> None:
    """Raises PredictionFormatError for unknown task ids (all of them) or a test_index out of range."""
    unknown = sorted({p.task_id for p in predictions} - set(tasks))
    if unknown:
        shown = ", ".join(map(data.printable, unknown[:20])) + (
            f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise PredictionFormatError(f"{path}: {len(unknown)} task ids are not in the dataset: {shown}")
    for p in predictions:
        num_tests = len(tasks[p.task_id].test)
        if p.test_index is not None and p.test_index >= num_tests:
            raise PredictionFormatError(
                f"{path} line {p.line}: test_index {p.test_index} is out of range; "
                f"task {p.task_id} has {num_tests} test inputs"
            )


def score_predictions(pool: execution.ExecutionPool, predictions: Sequence[Prediction], tasks: Mapping[str, data.Task],
                      scheme: str) -> dict[str, list[rewards.CompletionRecord]]:
    """Runs every prediction and returns the records grouped by task, in dataset order."""
    by_task: dict[str, list[rewards.CompletionRecord]] = {task_id: [] for task_id in tasks}
    for start in range(0, len(predictions), _CHUNK):
        chunk = predictions[start:start + _CHUNK]
        pending = [rewards.submit_completion(pool, p.completion, tasks[p.task_id], p.augmentation)
                   for p in chunk]
        for p, job in zip(chunk, pending):
            by_task[p.task_id].append(job.record(scheme))
        logging.info("scored %d of %d predictions", start + len(chunk), len(predictions))
    return {task_id: records for task_id, records in by_task.items() if records}


def summarize(records_by_task: Mapping[str, Sequence[rewards.CompletionRecord]],
              ks: Sequence[int]) -> tuple[dict[str, rewards.Metrics], rewards.Metrics]:
    """Per-task metrics and their mean over tasks."""
    per_task = {task_id: rewards.task_metrics(records, ks) for task_id, records in records_by_task.items()}
    return per_task, rewards.mean_metrics(per_task)


class _FlagError(UserError, ValueError):
    """A flag's value is out of range: the message names the flag and what was expected."""


def _parse_ks(values: Sequence[str]) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in values)
    except ValueError:
        ks = ()
    if not ks or any(not 1 <= k <= 10_000 for k in ks):
        raise _FlagError(f"--pass_at_k={','.join(values)}: expected integers from 1 to 10000")
    return ks


def _execution_config(timeout: float, memory: int, workers: int, common: str | None
                      ) -> execution.ExecutionConfig:
    """The pool's settings from the flags, each checked before any work."""
    try:
        execution.ExecutionConfig(num_workers=workers, timeout_s=timeout, memory_limit_mb=memory)
        execution.check_machine_memory(workers, memory)
    except ValueError as e:  # ExecutionMemoryError too: both name the settings, here flags
        raise _FlagError(str(e).replace("ExecutionConfig.", "--").replace("execution.", "--")) from None
    if common is not None:
        try:
            if not stat.S_ISREG(os.stat(common).st_mode):  # before open: a FIFO would block it
                raise _FlagError(f"--common_path={common}: not a regular file (expected a common.py)")
            with open(common, "rb") as source:
                compile(source.read(), common, "exec")
        except OSError as e:
            raise _FlagError(f"--common_path={common}: cannot be read: {e.strerror or e}") from None
        except (SyntaxError, ValueError) as e:
            raise _FlagError(f"--common_path={common}: not valid Python: {data.printable(e)}") from None
    return execution.ExecutionConfig(num_workers=workers, timeout_s=timeout, memory_limit_mb=memory,
                                     common_path=common)


def _check_output(path: str | None) -> None:
    """--output must be writable where it points; checked before scoring, not after."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise _FlagError(f"--output={path}: is a directory (expected a JSON file to write)")
    if not os.path.isdir(folder):
        raise _FlagError(f"--output={path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise _FlagError(f"--output={path}: cannot be written")


def main(f: types.SimpleNamespace, argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {data.printable(' '.join(argv[1:]))}")
    try:
        ks = _parse_ks(f.pass_at_k.value)
        config = _execution_config(f.timeout_s.value, f.memory_limit_mb.value, f.num_workers.value,
                                   f.common_path.value)
        _check_output(f.output.value)
        tasks = data.load_tasks(f.dataset.value)
        predictions = read_predictions(f.predictions.value)
        check_predictions(predictions, tasks, f.predictions.value)
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")

    try:
        with execution.ExecutionPool(config) as pool:
            records_by_task = score_predictions(pool, predictions, tasks, f.scheme.value)
    except execution.WorkerStartError as e:
        sys.exit(f"error: --common_path={config.common_path}: {e}" if config.common_path else f"error: {e}")
    per_task, mean = summarize(records_by_task, ks)
    errors = rewards.error_counts(r for records in records_by_task.values() for r in records)

    print(rewards.format_table(per_task, mean, show_tasks=f.task_rows.value))
    print(f"{len(predictions)} predictions on {len(per_task)} tasks; "
          f"{len(tasks) - len(per_task)} of the {len(tasks)} dataset tasks have no predictions")
    print("errors: " + (", ".join(f"{name} {count}" for name, count in errors.items()) or "none"))
    if f.output.value:
        report = {
            "dataset": f.dataset.value,
            "predictions": f.predictions.value,
            "reward_scheme": f.scheme.value,
            "execution": dataclasses.asdict(config),
            "num_predictions": len(predictions),
            "num_dataset_tasks": len(tasks),
            "error_counts": errors,
            "mean": mean,
            "tasks": per_task,
        }
        try:
            with open(f.output.value, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        except OSError as e:
            sys.exit(f"error: --output={f.output.value}: cannot be written: {e.strerror or e}")


if __name__ == "__main__":
    command_flags = define_flags()
    flags.mark_flags_as_required(command_flags.required)
    app.run(functools.partial(main, command_flags))

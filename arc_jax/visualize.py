"""Pictures of ARC tasks: `python -m arc_jax.visualize --dataset=<source> --task_ids=a,b --output_dir=DIR`.

A figure has one column per train pair (input above output), then one column per test
input: the input, the expected output when it is known, and the attempts, labelled
"attempt 1", "attempt 2", ... and marked correct or incorrect when the expected output is
known. `--submission` takes the attempts from an ARC Prize submission file
`{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}` (one object per test input).
The CLI writes DIR/<task_id>.png for every task id.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app
from absl import flags
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from arc_jax import data
from arc_jax.errors import UserError



def define_flags() -> types.SimpleNamespace:
    """The command line's flags, defined only when this module runs as a program (importing it
    as a library, next to other modules with a --dataset flag, defines none), as one object
    handed to `main`."""
    return types.SimpleNamespace(
        dataset=flags.DEFINE_string("dataset", None, "Tasks to draw from, e.g. arc-agi-1/training or a JSON file."),
        task_ids=flags.DEFINE_list("task_ids", None, "Comma-separated ids of the tasks to draw."),
        output_dir=flags.DEFINE_string("output_dir", None, "Directory for the PNG files (created if missing)."),
        submission=flags.DEFINE_string("submission", None, "ARC Prize submission JSON whose attempts to draw."),
        required=("dataset", "task_ids", "output_dir"))


# ARC colour index -> hex colour.
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
COLOUR_MAP = ListedColormap(PALETTE, name="arc")
_GRID_LINE_COLOUR = "#555555"
_CORRECT_COLOUR, _INCORRECT_COLOUR = "#1E8C2E", "#C0392B"
_PANEL_INCHES = 2.0
_ATTEMPT_KEY = re.compile(r"attempt_[1-9][0-9]?")
MAX_ATTEMPTS = 8  # attempts drawn per test input; a submission with more is refused
MAX_PAIRS = 30  # train and test pairs of a task drawn; a task with more is refused

# attempts[i] = the attempted output grids for test input i.
Attempts = Sequence[Sequence[Any]]


def draw_grid(ax: Axes, grid: np.ndarray, title: str, title_colour: str = "black") -> None:
    """Draws one grid on `ax` in the ARC palette, with thin lines between cells and no ticks."""
    height, width = grid.shape
    ax.set_axis_on()
    ax.imshow(grid, cmap=COLOUR_MAP, vmin=0, vmax=9, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xticks(np.arange(width + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(height + 1) - 0.5, minor=True)
    ax.tick_params(which="minor", length=0)
    ax.grid(which="minor", color=_GRID_LINE_COLOUR, linewidth=0.5)
    ax.set_title(title, fontsize=9, color=title_colour)


def render_task(task: data.Task, attempts: Attempts | None = None, *, title: str | None = None) -> Figure:
    """One figure of the task's train pairs, test inputs, expected outputs and attempts.

    `attempts` holds one list of grids per test input; `title` defaults to the task id.
    """
    attempts = _checked_attempts(task, attempts)
    has_expected = any(pair.output is not None for pair in task.test)
    num_rows = 3 + has_expected + max(map(len, attempts), default=0)
    num_columns = max(len(task.train), len(task.test))
    figure = Figure(figsize=(_PANEL_INCHES * num_columns, (_PANEL_INCHES + 0.3) * num_rows + 0.3),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, num_columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for j, pair in enumerate(task.train):
        draw_grid(axes[0, j], pair.input, f"train {j + 1} input")
        draw_grid(axes[1, j], pair.output, f"train {j + 1} output")
    for j, (pair, grids) in enumerate(zip(task.test, attempts)):
        column = axes[2:, j]
        draw_grid(column[0], pair.input, f"test {j + 1} input")
        if pair.output is not None:
            draw_grid(column[1], pair.output, f"test {j + 1} expected")
        for k, grid in enumerate(grids):
            ax = column[1 + has_expected + k]
            if _is_filler(grid) and not _is_filler(pair.output):
                ax.set_title(f"attempt {k + 1}: none", fontsize=9, color="grey")
                continue
            draw_grid(ax, grid, *_attempt_label(k, grid, pair.output))
    figure.suptitle(task.id if title is None else title)
    return figure


def _checked_attempts(task: data.Task, attempts: Attempts | None) -> list[list[np.ndarray]]:
    """The attempts as validated grids, one list per test input; raises ValueError naming the task."""
    if attempts is None:
        return [[] for _ in task.test]
    if len(attempts) != len(task.test):
        raise data.TaskFormatError(f"task {task.id}: got attempts for {len(attempts)} test inputs, "
                         f"expected {len(task.test)} (one list per test input)")
    return [[data.grid_from_json(grid.tolist() if isinstance(grid, np.ndarray) else grid,
                                 f"task {task.id}: attempts[{i}][{k}]")
             for k, grid in enumerate(grids)]
            for i, grids in enumerate(attempts)]


def _is_filler(grid: np.ndarray | None) -> bool:
    """The [[0]] a submission holds where it has no attempt (`arc_jax.submission`)."""
    return grid is not None and np.shape(grid) == (1, 1) and int(np.asarray(grid)[0, 0]) == 0


def _attempt_label(k: int, grid: np.ndarray, expected: np.ndarray | None) -> tuple[str, str]:
    """The title of attempt `k` (from 0) and its colour."""
    label = f"attempt {k + 1}"
    if expected is None:
        return label, "black"
    if np.array_equal(grid, expected):
        return f"{label}: correct", _CORRECT_COLOUR
    return f"{label}: incorrect", _INCORRECT_COLOUR


def save_task_png(task: data.Task, path: str | os.PathLike, attempts: Attempts | None = None) -> None:
    """Writes `render_task(task, attempts)` to `path` as a PNG."""
    render_task(task, attempts).savefig(path, format="png")


def most_different(scores_a: Mapping[str, float], scores_b: Mapping[str, float], n: int) -> list[str]:
    """The `n` task ids of both mappings whose scores differ most, largest |a - b| first.

    Ties are broken by task id; ids in only one mapping are left out.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    differences = {task_id: abs(scores_a[task_id] - scores_b[task_id])
                   for task_id in scores_a.keys() & scores_b.keys()}
    for task_id, difference in differences.items():
        if math.isnan(difference):
            raise ValueError(f"task {task_id}: score is NaN, expected a number")
    return sorted(differences, key=lambda task_id: (-differences[task_id], task_id))[:n]


def read_submission(path: str | os.PathLike) -> dict[str, list[list[np.ndarray]]]:
    """The attempts of an ARC Prize submission file: task id -> one list of grids per test input.

    Attempts are ordered by their number (attempt_1 to attempt_99), at most MAX_ATTEMPTS
    per test input.
    """
    record = data.read_json_file(path)
    if not isinstance(record, dict):
        raise data.TaskFormatError(f"{path}: must be an object mapping task id to a list of attempts")
    return {task_id: _task_attempts(entries, f"{path}: task {data.printable(task_id)}")
            for task_id, entries in record.items()}


def _task_attempts(entries: Any, where: str) -> list[list[np.ndarray]]:
    if not isinstance(entries, list):
        raise data.TaskFormatError(f"{where}: must be a list with one object of attempts per test input")
    attempts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry or not all(map(_ATTEMPT_KEY.fullmatch, entry)):
            raise data.TaskFormatError(
                f"{where}: test[{i}] must be an object with keys attempt_1, attempt_2, ... (up to attempt_99)")
        if len(entry) > MAX_ATTEMPTS:
            raise data.TaskFormatError(f"{where}: test[{i}] has {len(entry)} attempts; expected at most {MAX_ATTEMPTS}")
        keys = sorted(entry, key=lambda key: int(key.removeprefix("attempt_")))
        attempts.append([data.grid_from_json(entry[key], f"{where}: test[{i}].{key}") for key in keys])
    return attempts


def main(f: types.SimpleNamespace, argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {data.printable(' '.join(argv[1:]))}")
    if not f.task_ids.value:
        sys.exit("error: --task_ids must name at least one task")
    if os.path.exists(f.output_dir.value) and not os.path.isdir(f.output_dir.value):
        sys.exit(f"error: --output_dir={data.printable(f.output_dir.value)}: is a file (expected a directory)")
    try:
        tasks = data.load_tasks(f.dataset.value)
        unknown = [task_id for task_id in f.task_ids.value if task_id not in tasks]
        if unknown:
            raise UserError(f"--task_ids: not in {f.dataset.value}: {', '.join(map(data.printable, unknown[:20]))}")
        for task_id in f.task_ids.value:
            pairs = len(tasks[task_id].train) + len(tasks[task_id].test)
            if pairs > MAX_PAIRS:
                raise UserError(f"task {task_id}: {pairs} train and test pairs; expected at most {MAX_PAIRS} to draw")
        submission = read_submission(f.submission.value) if f.submission.value else {}
        os.makedirs(f.output_dir.value, exist_ok=True)
        for task_id in f.task_ids.value:  # ids of the dataset: safe file names
            path = os.path.join(f.output_dir.value, f"{task_id}.png")
            save_task_png(tasks[task_id], path, submission.get(task_id))
            print(path)
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    command_flags = define_flags()
    flags.mark_flags_as_required(command_flags.required)
    app.run(functools.partial(main, command_flags))

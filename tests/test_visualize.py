"""arc_jax.visualize on real ARC-AGI-1 training tasks.

- 67a3c6ac: the output is the input flipped left-right; 3 train pairs (4x4, 7x7, 6x6) in
  colours 1, 2, 6, 7 and one test pair [[7,6,1],[6,7,6],[6,2,2]] -> [[1,6,7],[6,7,6],[2,2,6]].
- 6150a2bd: the output is the input turned by 180 degrees; 2 train pairs and one test
  pair of 3x3 grids in colours 0, 3, 4, 5, 6, 7, 8.
An all-9 attempt adds the last colour, so the pixel test sees all ten.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from arc_jax import visualize
from arc_jax.data import TaskFormatError, load_tasks

ARC_HEX = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]
NINES = np.full((2, 3), 9)


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("arc-agi-1/training")


def rgb(hex_colour):
    return tuple(round(255 * c) for c in to_rgb(hex_colour))


def cell_centre_colours(figure, image, title):
    """The image's RGB at the centre of every cell of the panel titled `title`, as a grid."""
    ax = next(ax for ax in figure.axes if ax.axison and ax.get_title() == title)
    height, width = ax.get_images()[0].get_array().shape
    colours = np.empty((height, width), dtype=object)
    for r in range(height):
        for c in range(width):
            x, y = ax.transData.transform((c, r))  # display pixels, origin bottom left
            colours[r, c] = tuple(image[int(image.shape[0] - y), int(x), :3])
    return colours


def expected_colours(grid):
    return np.vectorize(lambda value: rgb(ARC_HEX[value]), otypes=[object])(grid)


def test_palette_is_the_standard_arc_palette():
    assert [c.upper() for c in visualize.PALETTE] == ARC_HEX


@pytest.mark.parametrize("task_id", ["67a3c6ac", "6150a2bd"])
def test_png_cells_have_exact_palette_colours(tasks, tmp_path, task_id):
    task = tasks[task_id]
    attempts = [[task.test[0].output, NINES]]
    path = tmp_path / f"{task_id}.png"
    visualize.save_task_png(task, path, attempts)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        assert png.format == "PNG"
        image = np.asarray(png.convert("RGB"))
    figure = visualize.render_task(task, attempts)  # same layout as the saved PNG
    figure.canvas.draw()
    assert image.shape[:2] == figure.canvas.buffer_rgba().shape[:2]
    panels = {f"train {j + 1} input": pair.input for j, pair in enumerate(task.train)}
    panels |= {f"train {j + 1} output": pair.output for j, pair in enumerate(task.train)}
    panels |= {"test 1 input": task.test[0].input, "test 1 expected": task.test[0].output,
               "attempt 1: correct": task.test[0].output, "attempt 2: incorrect": NINES}
    for title, grid in panels.items():
        np.testing.assert_array_equal(cell_centre_colours(figure, image, title), expected_colours(grid),
                                      err_msg=title)


def test_attempts_are_labelled_and_marked(tasks):
    task = tasks["67a3c6ac"]
    attempts = [[task.test[0].input, task.test[0].output]]
    titles = [ax.get_title() for ax in visualize.render_task(task, attempts).axes if ax.axison]
    assert titles == ["train 1 input", "train 2 input", "train 3 input",
                      "train 1 output", "train 2 output", "train 3 output",
                      "test 1 input", "test 1 expected", "attempt 1: incorrect", "attempt 2: correct"]


def test_the_filler_attempt_is_drawn_as_no_attempt(tasks):
    import numpy as np

    task = tasks["67a3c6ac"]
    figure = visualize.render_task(task, [[task.test[0].output, np.zeros((1, 1), int)]])
    drawn = [ax.get_title() for ax in figure.axes if ax.axison]
    assert drawn[-1] == "attempt 1: correct"  # the [[0]] filler is not drawn as a grid
    assert "attempt 2: none" in [ax.get_title() for ax in figure.axes if not ax.axison]


def test_hidden_test_output_leaves_attempts_unmarked(tasks):
    task = tasks["6150a2bd"]
    hidden = dataclasses.replace(task, test=(dataclasses.replace(task.test[0], output=None),))
    figure = visualize.render_task(hidden, [[task.test[0].output]], title="hidden")
    titles = [ax.get_title() for ax in figure.axes if ax.axison]
    assert titles[-2:] == ["test 1 input", "attempt 1"]
    assert figure.get_suptitle() == "hidden"


def test_render_task_rejects_bad_attempts(tasks):
    task = tasks["67a3c6ac"]
    with pytest.raises(ValueError, match="task 67a3c6ac: got attempts for 2 test inputs, expected 1"):
        visualize.render_task(task, [[], []])
    with pytest.raises(ValueError, match=r"task 67a3c6ac: attempts\[0\]\[1\] row 0 column 0 is 10"):
        visualize.render_task(task, [[NINES, np.full((2, 2), 10)]])


def test_most_different_orders_by_absolute_difference_then_id():
    a = {"t1": 0.0, "t2": 1.0, "t3": 0.5, "t4": 0.25, "t5": 1.0, "only_a": 1.0}
    b = {"t1": 1.0, "t2": 0.0, "t3": 0.5, "t4": 0.75, "t5": 0.5, "only_b": 0.0}
    # |a - b| (exact in binary): t1 1, t2 1, t3 0, t4 0.5, t5 0.5; only_a/only_b are in one mapping.
    assert visualize.most_different(a, b, 4) == ["t1", "t2", "t4", "t5"]
    assert visualize.most_different(b, a, 1) == ["t1"]
    assert visualize.most_different(a, b, 10) == ["t1", "t2", "t4", "t5", "t3"]
    assert visualize.most_different(a, b, 0) == []


def test_most_different_rejects_bad_input():
    with pytest.raises(ValueError, match="n must be >= 0"):
        visualize.most_different({}, {}, -1)
    with pytest.raises(ValueError, match="task t2: score is NaN"):
        visualize.most_different({"t1": 0.0, "t2": float("nan")}, {"t1": 1.0, "t2": 0.0}, 1)


def test_read_submission_orders_attempts_by_number(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text(json.dumps({"x": [{"attempt_2": [[2]], "attempt_10": [[3]], "attempt_1": [[1]]}]}))
    attempts = visualize.read_submission(path)
    assert [[grid.tolist() for grid in grids] for grids in attempts["x"]] == [[[[1]], [[2]], [[3]]]]


@pytest.mark.parametrize("record, message", [
    ([], "must be an object mapping task id"),
    ({"x": {"attempt_1": [[1]]}}, "task x: must be a list"),
    ({"x": [{"guess": [[1]]}]}, r"task x: test\[0\] must be an object with keys attempt_1"),
    ({"x": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3]]}]},
     r"task x: test\[0\].attempt_2 row 1 has length 1, expected 2"),
])
def test_read_submission_names_the_bad_field(tmp_path, record, message):
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(record))
    with pytest.raises(TaskFormatError, match=message):
        visualize.read_submission(path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "arc_jax.visualize", "--dataset=arc-agi-1/training", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_one_png_per_task(tmp_path):
    submission = tmp_path / "submission.json"
    submission.write_text(json.dumps({"67a3c6ac": [{"attempt_1": [[1, 6, 7], [6, 7, 6], [2, 2, 6]],
                                                    "attempt_2": [[0]]}]}))
    output_dir = tmp_path / "pictures"
    result = run_cli("--task_ids=67a3c6ac,6150a2bd", f"--output_dir={output_dir}",
                     f"--submission={submission}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in output_dir.iterdir()) == ["6150a2bd.png", "67a3c6ac.png"]
    for path in output_dir.iterdir():
        with Image.open(path) as png:
            assert png.format == "PNG"


def test_cli_unknown_task_id_is_one_error_line(tmp_path):
    result = run_cli("--task_ids=67a3c6ac,nosuchid", f"--output_dir={tmp_path / 'pictures'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --task_ids: not in arc-agi-1/training: nosuchid"]
    assert not (tmp_path / "pictures").exists()

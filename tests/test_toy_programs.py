"""The toy program family: numpy meaning, program text in the real sandbox, real ARC tasks,
and the synthetic tasks built from it."""

import numpy as np
import pytest

from arc_jax.data import Pair, Task, load_tasks
from arc_jax.execution import ExecutionConfig, ExecutionPool
from arc_jax.toy.programs import (
    GEOMETRIC_PROGRAMS,
    color_map_program,
    find_solvable_tasks,
    infer_color_map,
    solves,
)
from arc_jax.toy.synthetic import SyntheticConfig, synthetic_task, synthetic_tasks

PROGRAMS = {p.name: p for p in GEOMETRIC_PROGRAMS}

G = np.array([[1, 2, 3],
              [4, 5, 6]])
SQUARE = np.array([[1, 2],
                   [3, 4]])

# Expected outputs written by hand from each program's description.
EXPECTED = {
    "flip_lr": (G, [[3, 2, 1], [6, 5, 4]]),
    "flip_ud": (G, [[4, 5, 6], [1, 2, 3]]),
    "rotate_90": (G, [[3, 6], [2, 5], [1, 4]]),  # counterclockwise
    "rotate_180": (G, [[6, 5, 4], [3, 2, 1]]),
    "rotate_270": (G, [[4, 1], [5, 2], [6, 3]]),  # clockwise
    "transpose": (G, [[1, 4], [2, 5], [3, 6]]),
    "anti_transpose": (G, [[6, 3], [5, 2], [4, 1]]),
    "tile_1x2": (G, [[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]]),
    "tile_2x1": (G, [[1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 6]]),
    "tile_2x2": (G, [[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6],
                     [1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]]),
    "scale_2": (SQUARE, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]),
    "scale_3": (np.array([[1, 2]]), [[1, 1, 1, 2, 2, 2]] * 3),
    "mirror_right": (G, [[1, 2, 3, 3, 2, 1], [4, 5, 6, 6, 5, 4]]),
    "mirror_left": (G, [[3, 2, 1, 1, 2, 3], [6, 5, 4, 4, 5, 6]]),
    "mirror_down": (G, [[1, 2, 3], [4, 5, 6], [4, 5, 6], [1, 2, 3]]),
    "mirror_up": (G, [[4, 5, 6], [1, 2, 3], [1, 2, 3], [4, 5, 6]]),
    "mirror_quad": (G, [[1, 2, 3, 3, 2, 1], [4, 5, 6, 6, 5, 4],
                        [4, 5, 6, 6, 5, 4], [1, 2, 3, 3, 2, 1]]),
    # input, clockwise | counterclockwise, 180 degrees
    "rotate_quad": (SQUARE, [[1, 2, 3, 1], [3, 4, 4, 2], [2, 4, 4, 3], [1, 3, 2, 1]]),
}

# Checked by eye on the task files: e.g. 67a3c6ac reverses every row, 6150a2bd turns the grid
# upside down and reverses it, b1948b0a turns pink (6) into red (2), 7fe24cdd shows the grid
# with its clockwise, counterclockwise and 180-degree rotations around it.
SOLVABLE = {
    "0d3d703e": "color_map", "3af2c5a8": "mirror_quad", "3c9b0459": "rotate_180",
    "46442a0e": "rotate_quad", "4c4377d9": "mirror_up", "6150a2bd": "rotate_180",
    "62c24649": "mirror_quad", "67a3c6ac": "flip_lr", "67e8384a": "mirror_quad",
    "68b16354": "flip_ud", "6d0aefbc": "mirror_right", "6fa7a44f": "mirror_down",
    "74dd1130": "transpose", "7fe24cdd": "rotate_quad", "8be77c9e": "mirror_down",
    "9172f3a0": "scale_3", "9dfd6313": "transpose", "a416b8f3": "tile_1x2",
    "b1948b0a": "color_map", "c59eb873": "scale_2", "c8f0f002": "color_map",
    "c9e6f938": "mirror_right", "d511f180": "color_map", "ed36ccf7": "rotate_90",
}


@pytest.fixture(scope="module")
def arc_training():
    return load_tasks("arc-agi-1/training")


def test_every_geometric_program_has_a_hand_written_case():
    assert sorted(PROGRAMS) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_numpy_meaning(name):
    grid, expected = EXPECTED[name]
    np.testing.assert_array_equal(PROGRAMS[name].apply(grid), np.array(expected))


def test_color_map_recolours_all_cells_at_once():
    program = color_map_program({1: 2, 2: 1, 5: 0, 3: 3})
    np.testing.assert_array_equal(program.apply(G), [[2, 1, 3], [4, 0, 6]])
    assert "Color.BLUE] = Color.RED" in program.source
    assert "Color.GREEN" not in program.source  # 3 -> 3 is no change


def test_color_map_rejects_bad_mappings():
    with pytest.raises(ValueError, match="changes no colour"):
        color_map_program({4: 4})
    with pytest.raises(ValueError, match="0-9"):
        color_map_program({1: 12})


def test_rotate_quad_refuses_non_square_grids():
    with pytest.raises(ValueError, match="square"):
        PROGRAMS["rotate_quad"].apply(G)


def test_source_layout_follows_barc():
    source = PROGRAMS["flip_lr"].source
    assert source.startswith("from common import *\n\nimport numpy as np\nfrom typing import *\n\n"
                             "# concepts:\n# reflection\n\n# description:\n# ")
    assert "\ndef transform(input_grid):\n" in source
    assert source.endswith("\n    return output_grid")


def test_program_text_in_the_sandbox_matches_numpy_meaning():
    """Every program's source, run by the real execution pool with the project's DSL."""
    grids = [np.array([[1, 2, 0], [4, 5, 6], [7, 8, 9]]), np.array([[3, 0], [5, 6]])]
    rectangular = [G, np.array([[0, 7, 8, 8]])]
    programs = list(GEOMETRIC_PROGRAMS) + [color_map_program({5: 8, 8: 5, 1: 0})]
    jobs = []
    for program in programs:
        inputs = grids if program.name == "rotate_quad" else grids + rectangular
        jobs.append((program.source, inputs))
    with ExecutionPool(ExecutionConfig(num_workers=2)) as pool:
        results = pool.run(jobs)
    for program, (_, inputs), result in zip(programs, jobs, results):
        assert result.error_type is None, (program.name, result.error_message)
        for grid, output in zip(inputs, result.outputs):
            np.testing.assert_array_equal(output, program.apply(grid), err_msg=program.name)


def test_find_solvable_tasks_on_arc_agi_1_training(arc_training):
    found = find_solvable_tasks(arc_training)
    assert {task_id: program.name for task_id, program in found.items()} == SOLVABLE
    assert found["b1948b0a"].apply(np.array([[6, 7]])).tolist() == [[2, 7]]
    assert found["d511f180"].apply(np.array([[5, 8, 1]])).tolist() == [[8, 5, 1]]


def test_infer_color_map(arc_training):
    assert infer_color_map(arc_training["c8f0f002"]) == {7: 5}
    assert infer_color_map(arc_training["67a3c6ac"]) is None  # a flip is no colour map


def test_a_task_with_hidden_test_output_is_not_solved():
    grid = np.array([[1, 2]])
    task = Task("hidden", (Pair(grid, np.fliplr(grid)),), (Pair(grid, None),))
    assert not solves(PROGRAMS["flip_lr"], task)


def test_synthetic_tasks_are_solved_by_their_program_and_only_by_it():
    config = SyntheticConfig()
    for task, program in synthetic_tasks(60, seed=3, config=config):
        assert solves(program, task)
        assert config.min_train <= len(task.train) <= config.max_train and len(task.test) == 1
        for pair in task.train + task.test:
            assert max(pair.output.shape) <= config.max_output_side
            assert min(pair.input.shape) >= config.min_side
        others = [p for p in GEOMETRIC_PROGRAMS if p.name != program.name]
        assert not any(all(_explains(p, pair) for pair in task.train) for p in others)


def _explains(program, pair):
    try:
        output = program.apply(pair.input)
    except ValueError:
        return False
    return output.shape == pair.output.shape and np.array_equal(output, pair.output)


def test_synthetic_color_map_tasks_show_every_mapped_colour():
    rng = np.random.default_rng(0)
    config = SyntheticConfig(color_map_probability=1.0)
    for i in range(20):
        task, program = synthetic_task(rng, f"t{i}", config)
        assert program.name == "color_map"
        mapping = infer_color_map(task)
        assert mapping is not None
        np.testing.assert_array_equal(color_map_program(mapping).apply(task.test[0].input),
                                      task.test[0].output)


def test_synthetic_tasks_are_reproducible():
    a = synthetic_tasks(5, seed=7)
    b = synthetic_tasks(5, seed=7)
    for (task_a, program_a), (task_b, program_b) in zip(a, b):
        assert program_a.source == program_b.source
        for pa, pb in zip(task_a.train + task_a.test, task_b.train + task_b.test):
            np.testing.assert_array_equal(pa.input, pb.input)


def test_synthetic_config_validation():
    with pytest.raises(ValueError, match="max_side"):
        SyntheticConfig(min_side=5, max_side=3)
    with pytest.raises(ValueError, match="color_map_probability"):
        SyntheticConfig(color_map_probability=1.5)

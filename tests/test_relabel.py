"""`arc_jax.relabel`: a relabelled pair is correct by construction; the kept set is bounded,
deduplicated by outputs and prefers programs with more train pairs right."""

import numpy as np
import pytest

from arc_jax import data, relabel, rewards
from arc_jax.execution import ExecutionConfig, ExecutionPool

# Programs as a policy writes them: right, wrong in different ways, crashing on some inputs.
PROGRAMS = {
    "flip": "def transform(grid):\n    return grid[:, ::-1]\n",
    "transpose": "def transform(grid):\n    return grid.T.copy()\n",
    "recolour": "import numpy as np\n\ndef transform(grid):\n    return np.where(grid == 0, 5, grid)\n",
    "crop": "def transform(grid):\n    return grid[:2, :2]\n",
    "crash": "def transform(grid):\n    assert grid.shape[0] < 5\n    return grid\n",
}


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(ExecutionConfig(num_workers=2)) as pool:
        yield pool


@pytest.fixture(scope="module")
def tasks():
    return dict(sorted(data.load_tasks("arc-agi-1/training").items())[:4])


def completion(code: str) -> str:
    return f"Here is the program.\n```python\n{code}```"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_relabelled_task_is_solved_by_its_own_program(pool, tasks, seed):
    # Under a random augmentation (as in rounds after the first): running the program on the
    # relabelled task's inputs reproduces the relabelled outputs exactly, train and test.
    augmentation = data.Augmentation.sample(np.random.default_rng(seed), 0.5)
    checked = 0
    for task in tasks.values():
        hidden = data.Task(task.id, task.train, tuple(data.Pair(p.input, None) for p in task.test))
        for name, code in PROGRAMS.items():
            record = rewards.submit_completion(pool, completion(code), hidden,
                                               augmentation).record("arc-v1")
            item = relabel.relabel(hidden, record, augmentation, completion(code), 0, 0)
            if not record.valid:
                assert item is None
                continue
            relabelled = item.task
            assert relabelled.id == task.id
            assert len(relabelled.train) == len(task.train) and len(relabelled.test) == len(task.test)
            # its inputs are the inputs the prompt showed
            for mine, theirs in zip(relabelled.train + relabelled.test, task.train + task.test):
                np.testing.assert_array_equal(mine.input, augmentation.apply_grid(theirs.input))
            again = pool.submit(code, [p.input for p in relabelled.train + relabelled.test]).result()
            assert again.error_type is None
            for pair, output in zip(relabelled.train + relabelled.test, again.outputs):
                np.testing.assert_array_equal(np.asarray(output), pair.output)
            assert item.train_correct == record.train.num_correct
            checked += 1
    assert checked >= 10


def test_a_program_that_fails_on_an_input_is_not_relabelled(pool):
    small, large = np.ones((3, 3), int), np.ones((6, 6), int)
    task = data.Task("mixed", (data.Pair(small, small), data.Pair(large, large)),
                     (data.Pair(small, None),))
    record = rewards.submit_completion(pool, completion(PROGRAMS["crash"]), task).record("arc-v1")
    assert not record.valid and record.train_outputs[0] is not None  # ran on the small input
    assert relabel.relabel(task, record, data.Augmentation.identity(), "", 0, 0) is None


def item(fingerprint: str, train_correct: int, round_index: int, index: int) -> relabel.Relabelled:
    task = data.Task("t", (), ())
    return relabel.Relabelled(task, f"c{round_index}{index}", "code", round_index, index,
                              train_correct, fingerprint)


def test_keep_prefers_train_right_then_earliest_and_drops_equal_outputs():
    items = [item("a", 1, 0, 0), item("b", 3, 1, 2), item("a", 3, 2, 0), item("c", 0, 0, 1),
             item("b", 3, 0, 5), item("d", 2, 0, 3)]
    kept = relabel.keep(items, limit=10)
    # b (3 right, round 0), a (3 right, round 2), d (2), c (0); the duplicates of a and b go
    assert [(k.fingerprint, k.round, k.index) for k in kept] == [
        ("b", 0, 5), ("a", 2, 0), ("d", 0, 3), ("c", 0, 1)]
    assert [k.fingerprint for k in relabel.keep(items, limit=2)] == ["b", "a"]
    # keeping again from a kept set and new programs equals keeping from everything at once
    first, second = items[:3], items[3:]
    assert relabel.keep(relabel.keep(first, 2) + second, 2) == relabel.keep(items, 2)


def test_the_jsonl_line_has_the_task_the_relabelled_pairs_and_the_program():
    grid = np.array([[1, 2], [3, 4]])
    task = data.Task("abc", (data.Pair(grid, grid.T),), (data.Pair(grid, grid[::-1]),))
    line = relabel.Relabelled(task, "text", "code", 1, 2, 0, "f").to_json()
    assert line == {"task_id": "abc", "round": 1, "index": 2, "train_correct": 0,
                    "train": [{"input": [[1, 2], [3, 4]], "output": [[1, 3], [2, 4]]}],
                    "test": [{"input": [[1, 2], [3, 4]], "output": [[3, 4], [1, 2]]}],
                    "code": "code", "completion": "text"}

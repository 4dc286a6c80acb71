"""The GRPO task stream: epochs, shuffling, augmentation, resumable position."""

import numpy as np
import pytest

from arc_jax.data import Pair, Task
from arc_jax.data.task_stream import TaskStream


def _task(task_id: str, value: int) -> Task:
    grid = np.array([[value, 0], [0, 0]])
    return Task(task_id, (Pair(grid, grid),), (Pair(grid, None),))


TASKS = {f"t{i}": _task(f"t{i}", i) for i in range(1, 6)}


def test_each_epoch_visits_every_task_once_in_a_new_order():
    stream = TaskStream(TASKS, seed=3, augment=False)
    epochs = [[stream.next().task.id for _ in range(5)] for _ in range(3)]
    for ids in epochs:
        assert sorted(ids) == sorted(TASKS)
    assert len({tuple(ids) for ids in epochs}) > 1


def test_same_seed_same_draws_and_resume_from_a_position():
    a = TaskStream(TASKS, seed=7)
    draws = [a.next() for _ in range(12)]
    b = TaskStream(TASKS, seed=7, position=8)
    for expected in draws[8:]:
        got = b.next()
        assert got.index == expected.index and got.task.id == expected.task.id
        assert got.augmentation == expected.augmentation
        np.testing.assert_array_equal(got.task.train[0].input, expected.task.train[0].input)


def test_augmented_task_reverts_to_the_original():
    stream = TaskStream(TASKS, seed=0, change_background_probability=1.0)
    changed = 0
    for _ in range(10):
        draw = stream.next()
        original = TASKS[draw.task.id].train[0].input
        shown = draw.task.train[0].input
        np.testing.assert_array_equal(draw.augmentation.revert_grid(shown), original)
        changed += not np.array_equal(shown, original)
    assert changed > 0
    assert draw.task.test[0].output is None


def test_different_seeds_differ_and_empty_is_an_error():
    a = [TaskStream(TASKS, seed=0).draw(i).task.id for i in range(5)]
    b = [TaskStream(TASKS, seed=1).draw(i).task.id for i in range(5)]
    assert a != b
    with pytest.raises(ValueError, match="no tasks"):
        TaskStream({}, seed=0)

"""The GRPO task stream: epochs, shuffling, augmentation, resumable position."""

import json

import numpy as np
import pytest

from arc_jax.data import Pair, Task
from arc_jax.data.task_stream import TaskSelection, TaskStream


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


def test_task_selection_weights_by_hand():
    selection = TaskSelection(floor=0.1, decay=0.5)
    assert selection.weight(0, 0) == 1.0                     # never drawn: p = 1/2
    assert selection.weight(0, 16) == pytest.approx(4 / 18 * 17 / 18)  # p = 1/18: 0.2099
    assert selection.weight(8, 16) == pytest.approx(1.0)               # p = 1/2
    assert selection.weight(16, 16) == pytest.approx(4 / 18 * 17 / 18)  # p = 17/18
    assert selection.weight(0, 64) == 0.1                              # p = 1/66: the floor


def test_task_selection_draws_tasks_with_signal_more_often_and_resumes():
    tasks = {f"t{i}": _task(f"t{i}", i) for i in range(3)}
    make = lambda: TaskStream(tasks, seed=3, augment=False,
                              selection=TaskSelection(floor=0.1, decay=1.0))
    stream = make()
    for _ in range(4):  # t0 never solved, t1 always, t2 half the time
        stream.observe("t0", 0, 16)
        stream.observe("t1", 16, 16)
        stream.observe("t2", 8, 16)
    # p: 1/66, 65/66, 1/2 -> weights 0.1 (floor), 0.1 (floor), 1: t2 drawn 1/1.2 of the time
    np.testing.assert_allclose(stream.weights(), [0.1, 0.1, 1.0])
    drawn = [stream.next().task.id for _ in range(600)]
    assert 0.78 < drawn.count("t2") / 600 < 0.89
    assert drawn.count("t0") > 20 and drawn.count("t1") > 20  # the floor: none forgotten
    # The state (position and counts) resumes the same draws.
    stream = make()
    for _ in range(4):
        stream.observe("t0", 0, 16)
        stream.observe("t1", 16, 16)
        stream.observe("t2", 8, 16)
    head = [stream.next().task.id for _ in range(10)]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(stream.state_dict())))
    assert [stream.next().task.id for _ in range(20)] == [resumed.next().task.id for _ in range(20)]
    assert len(set(head)) > 1


def test_without_selection_observations_change_nothing():
    a, b = TaskStream(TASKS, seed=5), TaskStream(TASKS, seed=5)
    a.observe("t1", 16, 16)
    assert [a.next().task.id for _ in range(10)] == [b.next().task.id for _ in range(10)]
    assert a.state_dict()["counts"] == {}

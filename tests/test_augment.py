"""Tests for dihedral + colour augmentation (arc_jax.data.augment)."""

import collections
import itertools
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from arc_jax.data import Augmentation, Pair, Task, load_tasks

IDENTITY_COLOURS = tuple(range(10))
GRID = np.array([[1, 2, 3],
                 [4, 5, 6]])

# Each of the 8 (hflip, n_rot90) transforms written with transposes and reversals,
# independently of np.rot90 / np.flip.
DIHEDRAL_BY_HAND = {
    (False, 0): lambda g: g,
    (False, 1): lambda g: g.T[::-1],
    (False, 2): lambda g: g[::-1, ::-1],
    (False, 3): lambda g: g.T[:, ::-1],
    (True, 0): lambda g: g[:, ::-1],
    (True, 1): lambda g: g.T,
    (True, 2): lambda g: g[::-1],
    (True, 3): lambda g: g[::-1, ::-1].T,
}

grids = hnp.arrays(
    dtype=np.int64,
    shape=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    elements=st.integers(0, 9),
)
augmentations = st.builds(
    Augmentation,
    hflip=st.booleans(),
    n_rot90=st.integers(0, 3),
    colour_map=st.permutations(range(10)).map(tuple),
)


# --- Hand-written expected values -----------------------------------------------------


@pytest.mark.parametrize(
    "hflip, n_rot90, expected",
    [
        (False, 0, [[1, 2, 3], [4, 5, 6]]),
        (False, 1, [[3, 6], [2, 5], [1, 4]]),
        (False, 2, [[6, 5, 4], [3, 2, 1]]),
        (False, 3, [[4, 1], [5, 2], [6, 3]]),
        (True, 0, [[3, 2, 1], [6, 5, 4]]),
        (True, 1, [[1, 4], [2, 5], [3, 6]]),
        (True, 2, [[4, 5, 6], [1, 2, 3]]),
        (True, 3, [[6, 3], [5, 2], [4, 1]]),
    ],
)
def test_dihedral_transforms_of_a_small_grid(hflip, n_rot90, expected):
    augmentation = Augmentation(hflip, n_rot90, IDENTITY_COLOURS)
    assert augmentation.apply_grid(GRID).tolist() == expected
    assert augmentation.revert_grid(np.array(expected)).tolist() == GRID.tolist()


def test_rotation_and_colour_map_together():
    swap_1_and_2 = (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
    augmentation = Augmentation(hflip=False, n_rot90=1, colour_map=swap_1_and_2)
    assert augmentation.apply_grid(GRID).tolist() == [[3, 6], [1, 5], [2, 4]]
    assert augmentation.revert_grid(np.array([[3, 6], [1, 5], [2, 4]])).tolist() == GRID.tolist()


def test_colour_map_sends_colour_c_to_colour_map_c():
    shift_by_one = (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)
    augmentation = Augmentation(hflip=True, n_rot90=0, colour_map=shift_by_one)
    assert augmentation.apply_grid(np.array([[0, 9, 4]])).tolist() == [[5, 0, 1]]
    assert augmentation.inverse_colour_map == (9, 0, 1, 2, 3, 4, 5, 6, 7, 8)
    assert augmentation.revert_grid(np.array([[5, 0, 1]])).tolist() == [[0, 9, 4]]


def test_identity_changes_nothing():
    assert Augmentation.identity() == Augmentation(False, 0, IDENTITY_COLOURS)
    assert Augmentation.identity().apply_grid(GRID).tolist() == GRID.tolist()


def test_the_eight_dihedral_transforms_are_distinct_on_an_asymmetric_grid():
    asymmetric = np.array([[1, 2], [3, 4]])  # Square, so equal shapes cannot hide a collision.
    results = {
        Augmentation(hflip, k, IDENTITY_COLOURS).apply_grid(asymmetric).tobytes()
        for hflip, k in itertools.product((False, True), range(4))
    }
    assert len(results) == 8


# --- Properties -------------------------------------------------------------------------


@given(augmentations, grids)
def test_apply_matches_the_hand_written_transform_and_colour_map(augmentation, grid):
    by_hand = DIHEDRAL_BY_HAND[(augmentation.hflip, augmentation.n_rot90)](grid)
    expected = [[augmentation.colour_map[c] for c in row] for row in by_hand.tolist()]
    assert augmentation.apply_grid(grid).tolist() == expected


@given(augmentations, grids)
def test_revert_undoes_apply_and_apply_undoes_revert(augmentation, grid):
    augmented = augmentation.apply_grid(grid)
    np.testing.assert_array_equal(augmentation.revert_grid(augmented), grid)
    np.testing.assert_array_equal(augmentation.apply_grid(augmentation.revert_grid(grid)), grid)
    assert augmented.dtype == grid.dtype


@given(augmentations)
def test_apply_task_applies_the_same_augmentation_to_every_grid(augmentation):
    # Grids of different shapes, so a swapped or skipped grid would show.
    grid_list = [np.arange(h * w).reshape(h, w) % 10 for h, w in [(1, 2), (2, 3), (3, 1), (2, 2), (4, 1)]]
    task = Task(
        id="t",
        train=(Pair(grid_list[0], grid_list[1]), Pair(grid_list[2], grid_list[3])),
        test=(Pair(grid_list[4], None),),
    )
    augmented = augmentation.apply_task(task)
    assert augmented.id == "t"
    assert augmented.test[0].output is None
    got = [augmented.train[0].input, augmented.train[0].output, augmented.train[1].input,
           augmented.train[1].output, augmented.test[0].input]
    for grid, result in zip(grid_list, got):
        by_hand = DIHEDRAL_BY_HAND[(augmentation.hflip, augmentation.n_rot90)](grid)
        assert result.tolist() == [[augmentation.colour_map[c] for c in row] for row in by_hand.tolist()]


def test_apply_task_on_real_tasks_reverts_to_the_original():
    tasks = list(load_tasks("arc-agi-1/training").values())[:20]
    rng = np.random.default_rng(3)
    for task in tasks:
        augmentation = Augmentation.sample(rng)
        augmented = augmentation.apply_task(task)
        assert len(augmented.train) == len(task.train) and len(augmented.test) == len(task.test)
        for pair, new in zip(task.train + task.test, augmented.train + augmented.test):
            for grid, new_grid in ((pair.input, new.input), (pair.output, new.output)):
                assert not new_grid.flags.writeable
                np.testing.assert_array_equal(augmentation.revert_grid(new_grid), grid)


# --- Sampling -------------------------------------------------------------------------


def test_same_seed_gives_the_same_augmentations():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [Augmentation.sample(rng) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampled_colour_0_stays_fixed_in_about_91_percent():
    # P(colour 0 fixed) = 0.9 (background kept) + 0.1 * 1/10 (full shuffle happens to keep it).
    rng = np.random.default_rng(0)
    samples = [Augmentation.sample(rng) for _ in range(4000)]
    fixed = np.mean([a.colour_map[0] == 0 for a in samples])
    assert abs(fixed - 0.91) < 0.02  # Standard error is about 0.0045.
    transforms = collections.Counter((a.hflip, a.n_rot90) for a in samples)
    assert len(transforms) == 8
    assert all(abs(count - 500) < 100 for count in transforms.values())  # SE about 21.


@pytest.mark.parametrize("probability, expected_fixed", [(0.0, 1.0), (1.0, 0.1)])
def test_change_background_probability_controls_colour_0(probability, expected_fixed):
    rng = np.random.default_rng(1)
    samples = [Augmentation.sample(rng, change_background_probability=probability)
               for _ in range(2000)]
    fixed = np.mean([a.colour_map[0] == 0 for a in samples])
    assert abs(fixed - expected_fixed) < 0.03


def test_change_background_probability_outside_0_1_is_rejected():
    with pytest.raises(ValueError, match=r"change_background_probability must be in \[0, 1\], got 1.5"):
        Augmentation.sample(np.random.default_rng(0), change_background_probability=1.5)


# --- Validation and JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    "hflip, n_rot90, colour_map, message",
    [
        (1, 0, IDENTITY_COLOURS, "Augmentation.hflip must be a bool, got 1"),
        (False, 4, IDENTITY_COLOURS, "Augmentation.n_rot90 must be an integer 0-3, got 4"),
        (False, -1, IDENTITY_COLOURS, "Augmentation.n_rot90 must be an integer 0-3, got -1"),
        (False, True, IDENTITY_COLOURS, "Augmentation.n_rot90 must be an integer 0-3, got True"),
        (False, 1.0, IDENTITY_COLOURS, "Augmentation.n_rot90 must be an integer 0-3, got 1.0"),
        (False, 0, (0, 1, 2), "Augmentation.colour_map must be a permutation of 0-9, got (0, 1, 2)"),
        (False, 0, (1,) * 10,
         "Augmentation.colour_map must be a permutation of 0-9, got (1, 1, 1, 1, 1, 1, 1, 1, 1, 1)"),
        (False, 0, (0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
         "Augmentation.colour_map must be a permutation of 0-9, got (0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
        (False, 0, "0123456789", "Augmentation.colour_map must be a permutation of 0-9, got '0123456789'"),
    ],
)
def test_bad_parameters_are_rejected(hflip, n_rot90, colour_map, message):
    with pytest.raises(ValueError) as error:
        Augmentation(hflip, n_rot90, colour_map)
    assert str(error.value) == message


def test_numpy_parameters_are_stored_as_plain_python_values():
    augmentation = Augmentation(np.bool_(True), np.int64(2), np.arange(10)[::-1])
    assert augmentation == Augmentation(True, 2, (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
    assert type(augmentation.hflip) is bool and type(augmentation.n_rot90) is int
    assert all(type(c) is int for c in augmentation.colour_map)


def test_json_round_trip():
    augmentation = Augmentation(True, 3, (0, 5, 2, 3, 4, 1, 6, 7, 8, 9))
    record = augmentation.to_json()
    assert record == {"hflip": True, "n_rot90": 3, "colour_map": [0, 5, 2, 3, 4, 1, 6, 7, 8, 9]}
    assert Augmentation.from_json(json.loads(json.dumps(record))) == augmentation


@pytest.mark.parametrize(
    "record, message",
    [
        ({"hflip": True, "n_rot90": 3},
         "augmentation record must have exactly the fields ('hflip', 'n_rot90', 'colour_map'), "
         "got ['hflip', 'n_rot90']"),
        ({"hflip": True, "n_rot90": 3, "colour_map": list(range(10)), "seed": 1},
         "augmentation record must have exactly the fields ('hflip', 'n_rot90', 'colour_map'), "
         "got ['colour_map', 'hflip', 'n_rot90', 'seed']"),
        ([True, 3],
         "augmentation record must have exactly the fields ('hflip', 'n_rot90', 'colour_map'), "
         "got list"),
        ({"hflip": "yes", "n_rot90": 3, "colour_map": list(range(10))},
         "Augmentation.hflip must be a bool, got 'yes'"),
    ],
)
def test_bad_json_records_are_rejected(record, message):
    with pytest.raises(ValueError) as error:
        Augmentation.from_json(record)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "grid, message",
    [
        (np.array([1, 2, 3]), "expected a 2-D integer grid, got shape (3,) dtype int64"),
        (np.array([[1.0, 2.0]]), "expected a 2-D integer grid, got shape (1, 2) dtype float64"),
        (np.array([[True]]), "expected a 2-D integer grid, got shape (1, 1) dtype bool"),
        (np.array([[1, 10]]), "expected grid colours 0-9, got values from 1 to 10"),
        (np.array([[-1, 3]]), "expected grid colours 0-9, got values from -1 to 3"),
    ],
)
def test_bad_grids_are_rejected(grid, message):
    augmentation = Augmentation.identity()
    for method in (augmentation.apply_grid, augmentation.revert_grid):
        with pytest.raises(ValueError) as error:
            method(grid)
        assert str(error.value) == message

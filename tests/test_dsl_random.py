"""Random-generation, legacy and debugging functions of the `common` DSL.

Exact random streams are not BARC's; these tests pin what is documented:
which RNG is used, the ranges and invariants, the failure modes, and
determinism under the seeds the sandbox sets.
"""

import random
import re

import numpy as np
import pytest

from arc_jax.dsl import common


def grid(rows):
    return np.array(rows, dtype=int)


def draws(function, n=200, seed=0):
    random.seed(seed)
    return [function() for _ in range(n)]


# --- randomly_spaced_indices --------------------------------------------------


@pytest.mark.parametrize("border", [1, 2, 3])
def test_randomly_spaced_indices_range_quirk(border):
    seen = {int(i) for d in draws(lambda: common.randomly_spaced_indices(10, 1, border))
            for i in d}
    assert min(seen) == border
    assert max(seen) == 7  # max_len - 3, whatever the border


def test_randomly_spaced_indices_spacing_and_order():
    for indices in draws(lambda: common.randomly_spaced_indices(12, 3, border_size=0,
                                                                padding=1)):
        assert indices.dtype.kind == "i" and len(indices) == 3
        assert list(indices) == sorted(indices)
        assert np.all(np.diff(indices) >= 2)
        assert 0 <= indices.min() and indices.max() <= 11


def test_randomly_spaced_indices_greedy_picks_can_fail_on_a_tight_fit():
    # Only [0, 2, 4] fits, but a first pick of 1 or 3 leaves no room: IndexError.
    def attempt():
        try:
            return tuple(common.randomly_spaced_indices(5, 3, border_size=0).tolist())
        except IndexError:
            return "IndexError"
    assert set(draws(attempt, n=100)) == {(0, 2, 4), "IndexError"}


def test_randomly_spaced_indices_is_deterministic_under_random_seed():
    assert [d.tolist() for d in draws(lambda: common.randomly_spaced_indices(20, 4), 5)] == \
        [d.tolist() for d in draws(lambda: common.randomly_spaced_indices(20, 4), 5)]


def test_randomly_spaced_indices_infeasible_is_index_error():
    with pytest.raises(IndexError):
        common.randomly_spaced_indices(5, 4, border_size=0)


# --- random_free_location_for_sprite ------------------------------------------


def test_free_location_avoids_occupied_cells():
    g = np.zeros((3, 3), dtype=int)
    g[1, 1] = 4
    found = set(draws(lambda: common.random_free_location_for_sprite(g, grid([[1]]))))
    assert found == {(x, y) for x in range(3) for y in range(3)} - {(1, 1)}


def test_free_location_transparent_sprite_pixels_may_overlap():
    g = np.zeros((2, 2), dtype=int)
    g[1, 1] = 4
    sprite = grid([[1, 0], [0, 0]])
    assert common.random_free_location_for_sprite(g, sprite) == (0, 0)


@pytest.mark.parametrize("connectivity, expected", [
    (4, {(0, 0), (0, 2), (2, 0), (2, 2)}),
    (8, set()),
])
def test_free_location_padding(connectivity, expected):
    g = np.zeros((3, 3), dtype=int)
    g[1, 1] = 4
    sprite = grid([[1]])

    def place():
        return common.random_free_location_for_sprite(g, sprite, padding=1,
                                                      padding_connectivity=connectivity)
    if expected:
        assert set(draws(place)) == expected
    else:
        with pytest.raises(ValueError, match="No free location for sprite found."):
            place()


def test_free_location_border_size():
    g = np.zeros((5, 5), dtype=int)
    found = set(draws(lambda: common.random_free_location_for_sprite(
        g, grid([[1, 1]]), border_size=1)))
    assert found == {(x, y) for x in (1, 2, 3) for y in (1, 2)}


def test_free_location_sprite_too_big():
    with pytest.raises(ValueError, match="No free location for sprite found."):
        common.random_free_location_for_sprite(np.zeros((2, 2), dtype=int),
                                               np.ones((3, 1), dtype=int))


def test_free_location_connectivity_checked_only_with_padding():
    g, sprite = np.zeros((2, 2), dtype=int), grid([[1]])
    assert common.random_free_location_for_sprite(g, sprite, padding_connectivity=5) in \
        {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        common.random_free_location_for_sprite(g, sprite, padding=1, padding_connectivity=5)


def test_free_location_for_object_is_an_alias():
    g = np.zeros((3, 3), dtype=int)
    random.seed(5)
    a = common.random_free_location_for_sprite(g, grid([[1]]))
    random.seed(5)
    assert common.random_free_location_for_object(g, grid([[1]])) == a


# --- random_sprite / generate_sprite -------------------------------------------


def _touches_all_borders(sprite):
    solid = sprite != 0
    return solid[0].any() and solid[-1].any() and solid[:, 0].any() and solid[:, -1].any()


@pytest.mark.parametrize("symmetry, is_symmetric", [
    ("horizontal", lambda s: np.array_equal(s, np.flipud(s))),
    ("vertical", lambda s: np.array_equal(s, np.fliplr(s))),
    ("mirror", lambda s: np.array_equal(s, np.flipud(s)) and np.array_equal(s, np.fliplr(s))),
    ("diagonal", lambda s: np.array_equal(s, s.T) or np.array_equal(s, np.rot90(s, 2).T)),
    ("radial", lambda s: np.array_equal(s != 0, np.rot90(s != 0))),
    ("not_symmetric", lambda s: True),
])
def test_random_sprite_symmetry_and_invariants(symmetry, is_symmetric):
    random.seed(0)
    for _ in range(5):
        sprite = common.random_sprite([4, 5], [4, 5, 6], symmetry=symmetry,
                                      color_palette=[2, 7])
        assert sprite.shape[0] in (4, 5) and sprite.shape[1] in (4, 5, 6)
        if symmetry in ("diagonal", "radial"):
            assert sprite.shape[0] == sprite.shape[1]
        assert is_symmetric(sprite), sprite
        assert set(np.unique(sprite)) <= {0, 2, 7}
        assert common.is_contiguous(sprite)
        assert _touches_all_borders(sprite)


def test_random_sprite_is_deterministic_under_random_seed():
    first = draws(lambda: common.random_sprite(range(3, 7), range(3, 7)), 4)
    second = draws(lambda: common.random_sprite(range(3, 7), range(3, 7)), 4)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_random_sprite_thin_sprite_is_full():
    random.seed(0)
    np.testing.assert_array_equal(common.random_sprite(1, 4, color_palette=[3]),
                                  [[3, 3, 3, 3]])


def test_random_sprite_custom_background():
    random.seed(1)
    sprite = common.random_sprite(4, 4, symmetry="not_symmetric", color_palette=[1],
                                  background=9)
    assert set(np.unique(sprite)) <= {1, 9}
    assert common.is_contiguous(sprite, background=9)


def test_random_sprite_square_symmetry_needs_a_square_size():
    with pytest.raises(IndexError):
        common.random_sprite(3, 4, symmetry="radial")


def test_generate_sprite_rejects_unknown_symmetry():
    with pytest.raises(ValueError, match="'spiral'"):
        common.generate_sprite(3, 3, "spiral")


def test_generate_sprite_rejects_impossible_fill():
    with pytest.raises(ValueError, match="fill_percentage"):
        common.generate_sprite(3, 3, "not_symmetric", fill_percentage=1.5)


def test_generate_sprite_fill_and_palette():
    random.seed(0)
    sprite = common.generate_sprite(4, 5, "not_symmetric", fill_percentage=0.5,
                                    color_palate=[6])
    assert int((sprite == 6).sum()) >= 10 and set(np.unique(sprite)) <= {0, 6}


def test_generate_sprite_palette_is_drawn_from_non_background_colours():
    random.seed(0)
    for _ in range(10):
        sprite = common.generate_sprite(4, 4, "vertical", max_colors=3, background=4)
        colours = set(np.unique(sprite).tolist()) - {4}
        assert 1 <= len(colours) <= 3


# --- apply_symmetry, apply_diagonal_symmetry -----------------------------------


def test_apply_symmetry_horizontal_pairs_rows_in_place():
    sprite = grid([[1, 0], [0, 2]])
    assert common.apply_symmetry(sprite, "horizontal") is sprite
    np.testing.assert_array_equal(sprite, [[1, 2], [1, 2]])


def test_apply_symmetry_vertical_pairs_columns_and_keeps_middle():
    sprite = grid([[1, 5, 0], [0, 6, 2]])
    common.apply_symmetry(sprite, "vertical")
    np.testing.assert_array_equal(sprite, [[1, 5, 1], [2, 6, 2]])


def test_apply_symmetry_rejects_other_types():
    with pytest.raises(ValueError, match="diagonal"):
        common.apply_symmetry(grid([[1]]), "diagonal")


def test_apply_diagonal_symmetry():
    sprite = grid([[0, 1, 0],
                   [2, 0, 3],
                   [0, 0, 0]])
    assert common.apply_diagonal_symmetry(sprite) is sprite
    np.testing.assert_array_equal(sprite, [[0, 1, 0],
                                           [1, 0, 3],
                                           [0, 3, 0]])


def test_apply_diagonal_symmetry_requires_square():
    with pytest.raises(ValueError, match="Diagonal symmetry requires a square sprite."):
        common.apply_diagonal_symmetry(np.zeros((2, 3), dtype=int))


# --- legacy names ----------------------------------------------------------------


def test_generate_position_has_interval_uses_numpy_rng_and_keeps_gaps():
    np.random.seed(0)
    for _ in range(50):
        positions = common.generate_position_has_interval(9, 3)
        assert len(positions) == 3 and positions.min() >= 0 and positions.max() <= 8
        assert np.all(np.diff(positions) >= 2)


def test_generate_position_has_interval_exact_fit_and_overflow():
    np.testing.assert_array_equal(common.generate_position_has_interval(5, 3), [0, 2, 4])
    np.testing.assert_array_equal(
        common.generate_position_has_interval(7, 3, if_padding=True), [1, 3, 5])
    assert common.generate_position_has_interval(4, 3) is None
    assert common.generate_position_has_interval(6, 3, if_padding=True) is None


def test_generate_position_has_interval_padding_keeps_ends_free():
    np.random.seed(1)
    for _ in range(50):
        positions = common.generate_position_has_interval(8, 2, if_padding=True)
        assert positions.min() >= 1 and positions.max() <= 6


def test_find_monochromatic_sprite():
    g = grid([[1, 2], [2, 3]])
    parts = common.find_monochromatic_sprite(g, [2, 3])
    assert [p.tolist() for p in parts] == [[[0, 2], [2, 0]], [[0, 0], [0, 3]]]


def test_calc_neighbors():
    g = grid([[1, 2], [3, 4]])
    assert common.calc_neighbors(g, 0, 1) == {(1, 0): 4, (-1, 0): None,
                                              (0, 1): None, (0, -1): 1}


# --- debugging printers ----------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_show_colored_grid_prints_one_line_per_column(capsys):
    common.show_colored_grid(grid([[1, 2, 3], [4, 5, 6]]))
    assert _ANSI.sub("", capsys.readouterr().out).splitlines() == ["14", "25", "36"]


def test_visualize_prints_examples_and_skips_failures(capsys):
    calls = []

    def generator():
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("odd attempt")
        return grid([[1]])

    common.visualize(generator, lambda g: g + 1, n_examples=2, n_attempts=10)
    out = _ANSI.sub("", capsys.readouterr().out)
    assert out.count("Input:") == 2 and out.count("attempt failed") == 2
    assert "Output:\n2\n" in out
    assert len(calls) == 4

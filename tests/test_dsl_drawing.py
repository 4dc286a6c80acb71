"""Drawing and editing functions of the `common` DSL, on small hand-made grids."""

import numpy as np
import pytest

from arc_jax.dsl import common


def grid(rows):
    return np.array(rows, dtype=int)


# --- flood_fill --------------------------------------------------------------


def test_flood_fill_4_connectivity_does_not_cross_diagonals():
    g = grid([[0, 1, 0],
              [1, 0, 0],
              [0, 0, 1]])
    assert common.flood_fill(g, 1, 1, 7) is None
    np.testing.assert_array_equal(g, [[0, 1, 7],
                                      [1, 7, 7],
                                      [7, 7, 1]])


def test_flood_fill_8_connectivity_crosses_diagonals():
    g = grid([[0, 1, 0],
              [1, 0, 0],
              [0, 0, 1]])
    common.flood_fill(g, 1, 1, 7, connectivity=8)
    np.testing.assert_array_equal(g, [[7, 1, 7],
                                      [1, 7, 7],
                                      [7, 7, 1]])


def test_flood_fill_fills_a_region_of_a_nonzero_colour():
    g = grid([[2, 2, 0],
              [0, 2, 0],
              [2, 0, 2]])
    common.flood_fill(g, 0, 0, 5)
    np.testing.assert_array_equal(g, [[5, 5, 0],
                                      [0, 5, 0],
                                      [2, 0, 2]])


def test_flood_fill_same_colour_is_a_no_op():
    g = grid([[3, 3], [0, 3]])
    common.flood_fill(g, 0, 0, 3)
    np.testing.assert_array_equal(g, [[3, 3], [0, 3]])


def test_flood_fill_whole_30x30_canvas():
    g = np.zeros((30, 30), dtype=int)
    common.flood_fill(g, 0, 0, 3)
    assert int((g == 3).sum()) == 900


def test_flood_fill_fails_like_upstream_when_colour_casts_to_the_old_one():
    # 3.7 is stored as 3 in an int grid, so upstream's recursion never sees the new colour
    # and ends in RecursionError; this one raises the same error instead of looping.
    g = np.full((2, 2), 3)
    with pytest.raises(RecursionError):
        common.flood_fill(g, 0, 0, 3.7)


def test_flood_fill_rejects_other_connectivity():
    with pytest.raises(AssertionError, match="Connectivity must be 4 or 8"):
        common.flood_fill(np.zeros((2, 2), dtype=int), 0, 0, 1, connectivity=6)


# --- draw_line (conformance vectors of the reference, section 8) ------------


def test_draw_line_diagonal_with_length():
    g = np.zeros((5, 5), dtype=int)
    assert common.draw_line(g, 0, 0, length=3, color=1, direction=(1, 1)) == (2, 2)
    expected = np.zeros((5, 5), dtype=int)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1
    np.testing.assert_array_equal(g, expected)


def test_draw_line_to_end_point_beyond_the_canvas():
    g = np.zeros((3, 3), dtype=int)
    assert common.draw_line(g, 1, 1, end_x=1, end_y=4, color=2) == (1, 2)
    np.testing.assert_array_equal(g, [[0, 0, 0], [0, 2, 2], [0, 0, 0]])


def test_draw_line_stops_before_stop_colour_at_start():
    g = np.zeros((3, 3), dtype=int)
    g[0, 0] = 5
    result = common.draw_line(g, 0, 0, length=3, color=2, direction=(0, 1), stop_at_color=[5])
    assert result == (0, 0)
    np.testing.assert_array_equal(g, [[5, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_draw_line_stops_before_stop_colour_midway():
    g = np.zeros((1, 5), dtype=int)
    g[0, 3] = 4
    result = common.draw_line(g, 0, 0, direction=(0, 1), color=1, stop_at_color=[4])
    assert result == (0, 2)
    np.testing.assert_array_equal(g, [[1, 1, 1, 4, 0]])


def test_draw_line_may_start_off_canvas():
    g = np.zeros((3, 3), dtype=int)
    assert common.draw_line(g, 1, -2, length=5, color=3, direction=(0, 1)) == (1, 2)
    np.testing.assert_array_equal(g, [[0, 0, 0], [3, 3, 3], [0, 0, 0]])


def test_draw_line_default_length_crosses_the_canvas():
    g = np.zeros((2, 4), dtype=int)
    assert common.draw_line(g, 1, 0, direction=(0, 1), color=6) == (1, 3)
    np.testing.assert_array_equal(g, [[0, 0, 0, 0], [6, 6, 6, 6]])


def test_draw_line_odd_end_point_gives_45_degree_line():
    # Direction (3, -2) is reduced to (1, -1); length = max(3, 2) + 1 = 4.
    g = np.zeros((5, 5), dtype=int)
    assert common.draw_line(g, 0, 3, end_x=3, end_y=1, color=1) == (3, 0)
    expected = np.zeros((5, 5), dtype=int)
    for x, y in [(0, 3), (1, 2), (2, 1), (3, 0)]:
        expected[x, y] = 1
    np.testing.assert_array_equal(g, expected)


def test_draw_line_zero_length_paints_nothing_and_returns_start():
    g = np.zeros((3, 3), dtype=int)
    assert common.draw_line(g, 2, 1, length=0, direction=(1, 0), color=1) == (2, 1)
    assert not g.any()


def test_draw_line_accepts_integral_floats_and_returns_ints():
    g = np.zeros((3, 3), dtype=int)
    stop = common.draw_line(g, 2.0, 0.0, direction=(-1, 0), color=1)
    assert stop == (0, 0) and all(type(v) is int for v in stop)


def test_draw_line_rejects_fractional_start():
    with pytest.raises(AssertionError):
        common.draw_line(np.zeros((3, 3), dtype=int), 2.5, 0, direction=(1, 0), color=1)


def test_draw_line_requires_both_end_coordinates():
    with pytest.raises(AssertionError):
        common.draw_line(np.zeros((3, 3), dtype=int), 0, 0, end_x=2, color=1)


def test_draw_line_without_direction_or_end_is_a_type_error():
    with pytest.raises(TypeError):
        common.draw_line(np.zeros((3, 3), dtype=int), 0, 0, color=1)


# --- blit family ------------------------------------------------------------


def test_blit_clips_and_allows_negative_offsets():
    g = np.zeros((3, 3), dtype=int)
    sprite = grid([[1, 2], [3, 4]])
    out = common.blit(g, sprite, -1, 2)
    assert out is g
    # sprite[1, 0] lands on (0, 2); every other pixel is off the canvas.
    np.testing.assert_array_equal(g, [[0, 0, 3], [0, 0, 0], [0, 0, 0]])


def test_blit_without_background_copies_every_pixel():
    g = np.full((2, 2), 5)
    common.blit(g, grid([[0, 1]]), 1, 0)
    np.testing.assert_array_equal(g, [[5, 5], [0, 1]])


def test_blit_with_background_skips_those_pixels():
    g = np.full((2, 2), 5)
    common.blit(g, grid([[0, 1]]), 1, 0, background=0)
    np.testing.assert_array_equal(g, [[5, 5], [5, 1]])


def test_blit_truncates_offsets_toward_zero():
    g = np.zeros((3, 3), dtype=int)
    common.blit(g, grid([[7]]), 1.9, -0.7)
    assert g[1, 0] == 7 and int(g.sum()) == 7


def test_blit_sprite_treats_black_as_transparent_by_default():
    g = np.full((3, 3), 2)
    out = common.blit_sprite(g, grid([[1, 0], [0, 1]]), x=1, y=1)
    assert out is g
    np.testing.assert_array_equal(g, [[2, 2, 2], [2, 1, 2], [2, 2, 1]])


def test_blit_object_draws_full_canvas_object_at_origin():
    g = grid([[3, 3], [3, 3]])
    out = common.blit_object(g, grid([[0, 4], [0, 0]]))
    assert out is g
    np.testing.assert_array_equal(g, [[3, 4], [3, 3]])


def test_blit_entirely_off_canvas_changes_nothing():
    g = np.zeros((2, 2), dtype=int)
    common.blit(g, grid([[1]]), 5, 5)
    assert not g.any()


# --- randomly_scatter_points -----------------------------------------------


def test_randomly_scatter_points_paints_density_share_of_background_only():
    g = np.zeros((4, 5), dtype=int)
    g[0, :] = 3
    np.random.seed(0)
    out = common.randomly_scatter_points(g, 7, density=0.25)
    assert out is g
    assert int((g == 7).sum()) == 5  # 0.25 * 4 * 5
    assert (g[0] == 3).all()


def test_randomly_scatter_points_rounds_the_count_up():
    g = np.zeros((3, 3), dtype=int)
    np.random.seed(1)
    common.randomly_scatter_points(g, 1, density=0.3)  # 2.7 -> 3 points
    assert int(g.sum()) == 3


def test_randomly_scatter_points_is_deterministic_under_numpy_seed():
    grids = []
    for _ in range(2):
        np.random.seed(0)
        grids.append(common.randomly_scatter_points(np.zeros((6, 6), dtype=int), 2))
    np.testing.assert_array_equal(grids[0], grids[1])


def test_randomly_scatter_points_uses_numpy_rng_not_python_random():
    np.random.seed(3)
    common.random.seed(1)
    a = common.randomly_scatter_points(np.zeros((6, 6), dtype=int), 2, density=0.2)
    np.random.seed(3)
    common.random.seed(2)
    b = common.randomly_scatter_points(np.zeros((6, 6), dtype=int), 2, density=0.2)
    np.testing.assert_array_equal(a, b)


def test_randomly_scatter_points_impossible_density_raises_instead_of_hanging():
    g = np.ones((2, 2), dtype=int)
    g[0, 0] = 0
    with pytest.raises(ValueError, match="background cells"):
        common.randomly_scatter_points(g, 5, density=0.5)


def test_random_scatter_points_is_the_legacy_name():
    assert common.random_scatter_points is common.randomly_scatter_points


# --- scale, translate -------------------------------------------------------


def test_scale_sprite_conformance_vector():
    np.testing.assert_array_equal(common.scale_sprite(grid([[1, 2]]), 2),
                                  [[1, 1, 2, 2], [1, 1, 2, 2]])


def test_scale_sprite_keeps_dtype():
    out = common.scale_sprite(np.array([[1], [2]], dtype=np.int32), 3)
    assert out.dtype == np.int32 and out.shape == (6, 3)
    np.testing.assert_array_equal(out[:, 0], [1, 1, 1, 2, 2, 2])


def test_scale_pattern_prints_deprecation_and_scales(capsys):
    out = common.scale_pattern(grid([[5]]), 2)
    np.testing.assert_array_equal(out, [[5, 5], [5, 5]])
    assert capsys.readouterr().out == "scale_pattern: DEPRECATED, switch to scale_sprite\n"


def test_translate_conformance_vector():
    obj = grid([[1, 2], [3, 4]])
    np.testing.assert_array_equal(common.translate(obj, 1, 0), [[0, 0], [1, 2]])
    np.testing.assert_array_equal(obj, [[1, 2], [3, 4]])  # not modified


def test_translate_negative_and_both_axes():
    obj = grid([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(common.translate(obj, -1, 1),
                                  [[0, 4, 5], [0, 7, 8], [0, 0, 0]])


def test_translate_fills_with_background_and_keeps_dtype():
    obj = np.array([[0, 1], [2, 3]], dtype=np.int8)
    out = common.translate(obj, 0, 1, background=7)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [[7, 0], [7, 2]])


def test_translate_everything_off_canvas():
    np.testing.assert_array_equal(common.translate(grid([[1, 2]]), 0, 5), [[0, 0]])
    np.testing.assert_array_equal(common.translate(grid([[1, 2]]), -3, 0), [[0, 0]])


def test_translate_accepts_numpy_integer_shifts():
    np.testing.assert_array_equal(common.translate(grid([[1, 2]]), np.int64(0), np.int64(1)),
                                  [[0, 1]])


@pytest.mark.parametrize("x, y", [(0.5, 0), (1.0, 0), (0, 2.0)])
def test_translate_non_integer_shift_is_an_index_error(x, y):
    with pytest.raises(IndexError):
        common.translate(grid([[1, 2], [3, 4]]), x, y)

"""Symmetry classes, `orbit` and the symmetry detectors of the `common` DSL."""

import numpy as np

from arc_jax.dsl import common


def grid(rows):
    return np.array(rows, dtype=int)


# --- TranslationalSymmetry ---------------------------------------------------


def test_translational_apply_on_ints_and_iterations():
    t = common.TranslationalSymmetry(2, -1)
    assert t.apply(1, 1) == (3, 0)
    assert t.apply(1, 1, iters=-2) == (-3, 3)
    assert all(type(v) is int for v in t.apply(1, 1))


def test_translational_apply_casts_floats_and_arrays():
    t = common.TranslationalSymmetry(0.5, 1)
    assert t.apply(1, 1, iters=3) == (2, 4)  # 2.5 rounds half to even
    xs, ys = t.apply(np.array([0, 1]), np.array([2, 3]), iters=2)
    assert xs.dtype.kind == "i"
    np.testing.assert_array_equal(xs, [1, 2])
    np.testing.assert_array_equal(ys, [4, 5])


def test_translational_repr_and_str():
    t = common.TranslationalSymmetry(translate_x=-1, translate_y=0)
    assert repr(t) == "TranslationalSymmetry(translate_x=-1, translate_y=0)"
    assert str(t) == repr(t)
    assert (t.translate_x, t.translate_y) == (-1, 0)


def test_translational_iter_range():
    assert common.TranslationalSymmetry(2, 3)._iter_range((5, 7)) == (-3, 4)
    assert common.TranslationalSymmetry(0, -2)._iter_range((5, 7)) == (-4, 5)
    assert common.TranslationalSymmetry(0, 0)._iter_range((5, 7)) == (0, 1)


def test_class_hierarchy():
    assert isinstance(common.TranslationalSymmetry(1, 0), common.Symmetry)
    assert not isinstance(common.MirrorSymmetry(1, None), common.Symmetry)
    assert common.Symmetry().apply(1, 2) is None


# --- MirrorSymmetry ----------------------------------------------------------


def test_mirror_conformance_vector():
    assert common.MirrorSymmetry(1.5, None).apply(0, 5) == (3, 5)


def test_mirror_both_axes_and_iterations():
    m = common.MirrorSymmetry(1, 2)
    assert m.apply(0, 0) == (2, 4)
    assert m.apply(0, 0, iters=2) == (0, 0)
    assert m.apply(0, 0, iters=-1) == (2, 4)
    assert m.apply(0, 0, iters=3) == (2, 4)


def test_mirror_repr_and_iter_range():
    m = common.MirrorSymmetry(mirror_x=None, mirror_y=1.5)
    assert repr(m) == "MirrorSymmetry(mirror_x=None, mirror_y=1.5)"
    assert str(m) == repr(m)
    assert m._iter_range((9, 9)) == (0, 2)


# --- rotational symmetry ----------------------------------------------------

PLUS = grid([[0, 1, 0],
             [1, 1, 1],
             [0, 1, 0]])


def test_rotational_conformance_vector():
    r = common.detect_rotational_symmetry(PLUS)
    assert (r.center_x, r.center_y) == (1, 1)
    assert type(r.center_x) is int and type(r.center_y) is int
    assert r.apply(0, 0) == (0, 2)
    assert r.apply(0, 0, iters=-1) == (0, 0)  # negative iterations do nothing
    assert r.apply(0, 0, iters=2) == (2, 2)
    assert r.apply(0, 0, iters=4) == (0, 0)
    assert r._iter_range(PLUS.shape) == (0, 4)


def test_rotational_half_integer_centre():
    g = grid([[3, 3],
              [3, 3]])
    r = common.detect_rotational_symmetry(g)
    assert (r.center_x, r.center_y) == (0.5, 0.5)
    assert r.apply(0, 0) == (0, 1)
    assert r.apply(0, 1) == (1, 1)


def test_rotational_only_180_degree_pattern_gives_none():
    assert common.detect_rotational_symmetry(grid([[1, 2], [2, 1]])) is None


def test_rotational_empty_grid_gives_none():
    assert common.detect_rotational_symmetry(np.zeros((3, 3), dtype=int)) is None


# --- orbit ------------------------------------------------------------------


def test_orbit_without_symmetries_is_the_point():
    assert common.orbit(np.zeros((3, 3), dtype=int), 1, 2, []) == [(1, 2)]


def test_orbit_of_translation_stays_on_canvas():
    result = common.orbit(np.zeros((1, 5), dtype=int), 0, 0,
                          [common.TranslationalSymmetry(0, 2)])
    assert sorted(result) == [(0, 0), (0, 2), (0, 4)]


def test_orbit_of_mirror():
    result = common.orbit(np.zeros((3, 3), dtype=int), 0, 2, [common.MirrorSymmetry(1, None)])
    assert sorted(result) == [(0, 2), (2, 2)]


def test_orbit_of_rotation_and_combination():
    r = common.detect_rotational_symmetry(PLUS)
    assert sorted(common.orbit(PLUS, 0, 0, [r])) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    mirror = common.MirrorSymmetry(None, 1)
    assert sorted(common.orbit(PLUS, 0, 1, [r, mirror])) == [(0, 1), (1, 0), (1, 2), (2, 1)]


def test_orbit_on_a_rectangle_drops_off_canvas_images():
    rotation = common.detect_rotational_symmetry(PLUS)
    # The same rotation about (1, 1) on a 3x5 canvas: (0, 4) maps off it.
    assert sorted(common.orbit(np.zeros((3, 5), dtype=int), 0, 0, [rotation])) == \
        [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert common.orbit(np.zeros((3, 5), dtype=int), 0, 4, [rotation]) == [(0, 4)]


# --- detectors --------------------------------------------------------------


def test_score_symmetry_counts():
    g = grid([[1, 2, 0]])
    mirror = common.MirrorSymmetry(None, 1)
    assert common._score_symmetry(g, mirror, [0]) == (1, 0, 0)
    assert common._score_symmetry(g, mirror, [0], background=2) == (0, 0, 0)
    assert common._score_symmetry(g, mirror, []) == (1, 0, 2)
    assert common._score_symmetry(g, common.TranslationalSymmetry(0, 2), [0]) == (0, 1, 0)


def test_translational_conformance_vector_most_negative_shift_wins():
    g = grid([[1, 2, 1, 2, 1, 2],
              [1, 2, 1, 2, 1, 2]])
    assert [repr(s) for s in common.detect_translational_symmetry(g)] == [
        "TranslationalSymmetry(translate_x=-1, translate_y=0)",
        "TranslationalSymmetry(translate_x=0, translate_y=-2)",
    ]


def test_translational_falls_back_to_diagonal():
    g = grid([[1, 0, 0],
              [0, 1, 0],
              [0, 0, 1]])
    assert [repr(s) for s in common.detect_translational_symmetry(g)] == [
        "TranslationalSymmetry(translate_x=1, translate_y=1)"]


def test_translational_ignore_colors():
    g = grid([[1, 5, 1, 5, 5]])
    assert common.detect_translational_symmetry(g) == []
    (found,) = common.detect_translational_symmetry(g, ignore_colors=[5])
    assert (found.translate_x, found.translate_y) == (0, 2)


def test_translational_empty_grid():
    assert common.detect_translational_symmetry(np.zeros((3, 3), dtype=int)) == []


def test_mirror_detection_conformance_vector_with_degenerate_axis():
    found = common.detect_mirror_symmetry(grid([[1, 2, 2, 1]]))
    assert [repr(s) for s in found] == ["MirrorSymmetry(mirror_x=0, mirror_y=None)",
                                       "MirrorSymmetry(mirror_x=None, mirror_y=1.5)"]


def test_mirror_detection_single_axis():
    g = grid([[1, 2, 3],
              [4, 5, 6],
              [1, 2, 3]])
    assert [repr(s) for s in common.detect_mirror_symmetry(g)] == [
        "MirrorSymmetry(mirror_x=1, mirror_y=None)"]


def test_mirror_detection_asymmetric_grid_still_finds_degenerate_axes():
    # A line through row 0 maps row 0 onto itself and row 1 off the canvas:
    # 2 perfect - 0.01 * 2 off = 1.98, tied by the other three edge lines.
    found = common.detect_mirror_symmetry(grid([[1, 2], [3, 4]]))
    assert [(s.mirror_x, s.mirror_y) for s in found] == [(0, None), (1, None),
                                                          (None, 0), (None, 1)]


def test_mirror_detection_empty_grid():
    assert common.detect_mirror_symmetry(np.zeros((2, 2), dtype=int)) == []

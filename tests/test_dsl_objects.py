"""Objects, boxes and positions in the `common` DSL, on small hand-made grids."""

import numpy as np
import pytest

from arc_jax.dsl import common


def grid(rows):
    return np.array(rows, dtype=int)


def pixels(obj, background=0):
    """Sorted (x, y) cells of `obj` that are not background."""
    return sorted(zip(*(a.tolist() for a in np.nonzero(obj != background))))


# --- find_connected_components ----------------------------------------------


def test_components_conformance_vector_colour_order():
    g = grid([[1, 0, 8],
              [0, 0, 0],
              [9, 0, 1]])
    components = common.find_connected_components(g)
    assert [sorted(set(c[c != 0].tolist())) for c in components] == [[8], [1], [1], [9]]
    assert [pixels(c) for c in components] == [[(0, 2)], [(0, 0)], [(2, 2)], [(2, 0)]]
    assert all(c.shape == (3, 3) for c in components)


def test_components_4_vs_8_connectivity():
    g = grid([[2, 0],
              [0, 2]])
    assert len(common.find_connected_components(g)) == 2
    (only,) = common.find_connected_components(g, connectivity=8)
    np.testing.assert_array_equal(only, g)


def test_components_multicoloured_when_not_monochromatic():
    g = grid([[1, 2, 0],
              [0, 0, 0],
              [0, 3, 3]])
    components = common.find_connected_components(g, monochromatic=False)
    assert [pixels(c) for c in components] == [[(0, 0), (0, 1)], [(2, 1), (2, 2)]]
    np.testing.assert_array_equal(components[0], [[1, 2, 0], [0, 0, 0], [0, 0, 0]])


def test_components_with_custom_background():
    g = grid([[5, 5, 1],
              [5, 0, 5]])
    components = common.find_connected_components(g, background=5, monochromatic=False)
    assert [c.tolist() for c in components] == [[[5, 5, 1], [5, 5, 5]],
                                                [[5, 5, 5], [5, 0, 5]]]


def test_components_returns_new_arrays_of_same_dtype():
    g = np.array([[4, 0]], dtype=np.int8)
    (component,) = common.find_connected_components(g)
    assert component.dtype == np.int8 and not np.shares_memory(component, g)


def test_components_rejects_other_connectivity():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        common.find_connected_components(grid([[1]]), connectivity=6)


# --- detect_objects ---------------------------------------------------------


def test_detect_objects_default_finds_nothing():
    assert common.detect_objects(grid([[0, 1], [0, 0]])) == []


TWO_OBJECTS = [[2, 0, 0, 0],
               [0, 0, 0, 0],
               [0, 0, 3, 3]]


def test_detect_objects_with_connectivity_sorted_by_area():
    objects = common.detect_objects(grid(TWO_OBJECTS), connectivity=4)
    assert [pixels(o) for o in objects] == [[(2, 2), (2, 3)], [(0, 0)]]


def test_detect_objects_colour_filter():
    objects = common.detect_objects(grid(TWO_OBJECTS), connectivity=4, colors=[2])
    assert [pixels(o) for o in objects] == [[(0, 0)]]


def test_detect_objects_predicate_sees_the_cropped_object():
    seen = []

    def wide(sprite):
        seen.append(sprite.shape)
        return sprite.shape == (1, 2)

    objects = common.detect_objects(grid(TWO_OBJECTS), connectivity=4, predicate=wide)
    assert [pixels(o) for o in objects] == [[(2, 2), (2, 3)]]
    assert sorted(seen) == [(1, 1), (1, 2)]


def test_detect_objects_allowed_dimensions_drop_components_and_scan_windows():
    objects = common.detect_objects(grid(TWO_OBJECTS), connectivity=4,
                                    allowed_dimensions=[(1, 2)], can_overlap=True)
    assert [pixels(o) for o in objects] == [[(0, 0)], [(2, 2)], [(2, 2), (2, 3)]]
    assert all(o.shape == (3, 4) for o in objects)


def test_detect_objects_allowed_dimensions_matching_canvas_keep_components():
    g = grid(TWO_OBJECTS)
    objects = common.detect_objects(g, connectivity=4, allowed_dimensions=[(3, 4)],
                                    can_overlap=True)
    assert [pixels(o) for o in objects] == [[(0, 0)], [(2, 2), (2, 3)],
                                            [(0, 0), (2, 2), (2, 3)]]


def test_detect_objects_window_equal_to_a_component_is_not_repeated():
    g = grid([[0, 0], [0, 6]])
    objects = common.detect_objects(g, connectivity=4, allowed_dimensions=[(2, 2)],
                                    can_overlap=True)
    assert len(objects) == 1
    np.testing.assert_array_equal(objects[0], g)


def test_detect_objects_dimensions_as_lists_never_match_components():
    g = grid([[0, 0], [0, 6]])
    objects = common.detect_objects(g, connectivity=4, allowed_dimensions=[[2, 2]],
                                    can_overlap=True)
    # The component is dropped (a list never equals a shape tuple); the window comes back.
    assert len(objects) == 1
    np.testing.assert_array_equal(objects[0], g)


def test_detect_objects_window_predicate_gets_raw_window():
    seen = []
    common.detect_objects(grid([[0, 1]]), allowed_dimensions=[(1, 2)],
                          predicate=lambda w: seen.append(w.tolist()) or True)
    assert seen == [[[0, 1]]]


def test_detect_objects_overlap_removal_keeps_the_covering_object():
    g = grid([[1, 1, 0],
              [1, 1, 0],
              [0, 0, 0]])
    every = common.detect_objects(g, allowed_dimensions=[(2, 2)], can_overlap=True)
    assert [pixels(o) for o in every] == [[(0, 0), (0, 1), (1, 0), (1, 1)],
                                          [(0, 1), (1, 1)], [(1, 0), (1, 1)], [(1, 1)]]
    kept = common.detect_objects(g, allowed_dimensions=[(2, 2)])
    assert [pixels(o) for o in kept] == [[(0, 0), (0, 1), (1, 0), (1, 1)]]


def test_detect_objects_overlap_tie_prefers_skipping_the_first():
    # Windows (0,0)-(0,1) and (0,1)-(0,2) overlap and tie on coverage: the
    # search keeps the second, because "skip" wins ties.
    objects = common.detect_objects(grid([[1, 1, 1]]), allowed_dimensions=[(1, 2)])
    assert [o.tolist() for o in objects] == [[[0, 1, 1]]]


# --- bounding boxes, crop ---------------------------------------------------


def test_bounding_box_of_an_object():
    g = grid([[0, 0, 0, 0],
              [0, 0, 4, 0],
              [0, 4, 4, 0]])
    box = common.bounding_box(g)
    assert box == (1, 1, 2, 2) and all(type(v) is int for v in box)


def test_bounding_box_empty_grid_quirk():
    assert common.bounding_box(np.zeros((3, 4), dtype=int)) == (3, 4, -3, -4)


def test_bounding_box_custom_background():
    assert common.bounding_box(grid([[7, 7, 0], [7, 7, 7]]), background=7) == (0, 2, 1, 1)


def test_bounding_box_mask():
    g = grid([[0, 0, 0],
              [0, 5, 0],
              [5, 0, 0]])
    np.testing.assert_array_equal(common.bounding_box_mask(g),
                                  [[False, False, False], [True, True, False],
                                   [True, True, False]])
    assert not common.bounding_box_mask(np.zeros((2, 2), dtype=int)).any()


def test_crop_is_a_view():
    g = grid([[0, 0, 0],
              [0, 3, 3],
              [0, 0, 3]])
    sprite = common.crop(g)
    np.testing.assert_array_equal(sprite, [[3, 3], [0, 3]])
    sprite[1, 0] = 9
    assert g[2, 1] == 9


def test_crop_empty_grid_has_shape_0_0():
    assert common.crop(np.zeros((3, 4), dtype=int)).shape == (0, 0)


def test_crop_custom_background():
    np.testing.assert_array_equal(common.crop(grid([[1, 1], [1, 0]]), background=1), [[0]])


# --- object_position, object_colors -----------------------------------------

# A 2 (axis 0) x 3 (axis 1) block with its corner at (1, 2) on a 5x6 canvas.
BLOCK = np.zeros((5, 6), dtype=int)
BLOCK[1:3, 2:5] = 4


@pytest.mark.parametrize("anchor, expected", [
    ("upper left", (1, 2)),
    ("upper right", (2, 2)),
    ("lower left", (1, 4)),
    ("lower right", (2, 4)),
    ("center", (1.5, 3)),
    ("upper center", (1.5, 2)),
    ("lower center", (1.5, 4)),
    ("left center", (1, 3)),
    ("right center", (2, 3)),
    ("Top Left", (1, 2)),
    ("BOTTOM right", (2, 4)),
])
def test_object_position_anchors(anchor, expected):
    result = common.object_position(BLOCK, anchor=anchor)
    assert result == expected
    assert [type(v) for v in result] == [type(v) for v in expected]


def test_object_position_conformance_vectors():
    g = np.zeros((4, 4), dtype=int)
    g[:2, :2] = 1
    assert common.object_position(g, anchor="center") == (0.5, 0.5)
    assert common.object_position(g, anchor="Bottom Right") == (1, 1)


def test_object_position_rejects_underscored_anchor():
    with pytest.raises(AssertionError, match="Invalid anchor"):
        common.object_position(BLOCK, anchor="upper_left")


def test_object_colors_set_order_of_numpy_ints():
    colors = common.object_colors(grid([[1, 8], [5, 9]]))
    assert colors == [8, 1, 5, 9]
    assert all(isinstance(c, np.integer) for c in colors)


def test_object_colors_drops_background():
    assert common.object_colors(grid([[0, 3], [3, 6]]), background=6) == [0, 3]


# --- collision, contact -----------------------------------------------------

CORNER = grid([[1, 0], [0, 0]])
DOT = grid([[1]])


def test_collision_conformance_vector():
    assert common.collision(object1=CORNER, object2=DOT, x2=0, y2=0) is True


def test_collision_misses_and_uses_relative_offsets():
    assert common.collision(object1=CORNER, object2=DOT, x2=0, y2=1) is False
    # Both objects moved by the same amount still collide.
    assert common.collision(object1=CORNER, object2=DOT, x1=3, y1=2, x2=3, y2=2) is True


def test_collision_ignores_object2_background_pixels():
    # object2's background pixel lies on object1's pixel; its 2 lies on background.
    assert common.collision(object1=CORNER, object2=grid([[0, 2]]), x2=0, y2=0) is False
    assert common.collision(object1=CORNER, object2=grid([[2, 0]]), x2=0, y2=0) is True


def test_contact_conformance_vectors():
    assert common.contact(object1=CORNER, object2=DOT, x2=0, y2=1) is True
    assert common.contact(object1=CORNER, object2=DOT, x2=1, y2=1) is False
    assert common.contact(object1=CORNER, object2=DOT, x2=1, y2=1, connectivity=8) is True


def test_contact_counts_overlap_and_not_distance_two():
    assert common.contact(object1=CORNER, object2=DOT) is True
    assert common.contact(object1=CORNER, object2=DOT, x2=0, y2=2, connectivity=8) is False


def test_contact_rejects_other_connectivity_before_looking_at_pixels():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        common.contact(object1=np.zeros((1, 1), dtype=int), object2=DOT, connectivity=5)


# --- check_between_objects --------------------------------------------------

# Box 1: x 0-1, y 0-2.  Box 2: x 4-5, y 1-3.  Gap along axis 0: x = 2, 3.
_LEFT = np.zeros((6, 5), dtype=int)
_LEFT[0:2, 0:3] = 1
_RIGHT = np.zeros((6, 5), dtype=int)
_RIGHT[4:6, 1:4] = 2


@pytest.mark.parametrize("x, y, padding, expected", [
    (2, 1, 0, True),
    (3, 2, 0, True),
    (2, 0, 0, False),   # only box 1 spans y = 0
    (2, 3, 0, False),   # only box 2 spans y = 3
    (4, 1, 0, False),   # inside box 2, not in the gap
    (1, 1, 0, False),   # inside box 1
    (2, 2, 1, False),   # y + padding = 3 leaves the common band
])
def test_check_between_objects_axis_0_gap(x, y, padding, expected):
    assert common.check_between_objects(_LEFT, _RIGHT, x, y, padding=padding) is expected
    assert common.check_between_objects(_RIGHT, _LEFT, x, y, padding=padding) is expected


def test_check_between_objects_axis_1_gap_with_padding():
    upper = np.zeros((5, 7), dtype=int)
    upper[0:5, 0:2] = 3      # x 0-4, y 0-1
    lower = np.zeros((5, 7), dtype=int)
    lower[1:4, 5:7] = 3      # x 1-3, y 5-6
    assert common.check_between_objects(upper, lower, 2, 3, padding=1) is True
    assert common.check_between_objects(upper, lower, 3, 3, padding=1) is False
    assert common.check_between_objects(upper, lower, 3, 3) is True


# --- interior, boundary, neighbours, contiguity ------------------------------


def _ring():
    g = np.zeros((5, 5), dtype=int)
    g[1:4, 1:4] = 2
    g[2, 2] = 0
    return g


def _mask(shape, cells):
    m = np.zeros(shape, dtype=bool)
    for x, y in cells:
        m[x, y] = True
    return m


def test_object_interior_of_a_ring_includes_the_hole():
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:4, 1:4] = True
    np.testing.assert_array_equal(common.object_interior(_ring()), expected)


def test_object_interior_of_an_open_ring_excludes_the_gap_and_hole():
    g = _ring()
    g[1, 2] = 0
    expected = _mask((5, 5), [(1, 1), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)])
    np.testing.assert_array_equal(common.object_interior(g), expected)


def test_object_boundary_of_a_ring():
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False
    np.testing.assert_array_equal(common.object_boundary(_ring()), expected)


def test_object_boundary_excludes_cells_touching_only_the_hole():
    g = np.zeros((7, 7), dtype=int)
    g[1:6, 1:6] = 4
    g[3, 3] = 0
    expected = np.zeros((7, 7), dtype=bool)
    expected[1:6, 1:6] = True
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(common.object_boundary(g), expected)


def test_object_boundary_includes_canvas_edge():
    expected = np.ones((3, 3), dtype=bool)
    expected[1, 1] = False
    np.testing.assert_array_equal(common.object_boundary(np.full((3, 3), 6)), expected)


def test_object_neighbors_of_a_ring():
    outer = [(0, 1), (0, 2), (0, 3), (4, 1), (4, 2), (4, 3),
             (1, 0), (2, 0), (3, 0), (1, 4), (2, 4), (3, 4)]
    expected = _mask((5, 5), outer + [(2, 2)])
    np.testing.assert_array_equal(common.object_neighbors(_ring()), expected)


def test_object_neighbors_8_adds_the_corners():
    corners = [(0, 0), (0, 4), (4, 0), (4, 4)]
    result = common.object_neighbors(_ring(), connectivity=8)
    np.testing.assert_array_equal(result, common.object_neighbors(_ring()) | _mask((5, 5), corners))
    assert int(result.sum()) == 17


def test_object_neighbors_rejects_other_connectivity():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        common.object_neighbors(_ring(), connectivity=3)


def test_is_contiguous():
    diagonal = grid([[1, 0], [0, 1]])
    assert common.is_contiguous(np.zeros((2, 2), dtype=int)) is False
    assert common.is_contiguous(diagonal) is False
    assert common.is_contiguous(diagonal, connectivity=8) is True
    assert common.is_contiguous(grid([[1, 2], [0, 0]])) is True
    assert common.is_contiguous(np.array([[True, False, True]])) is False
    assert common.is_contiguous(grid([[5, 1, 5]]), background=5) is True
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        common.is_contiguous(diagonal, connectivity=2)

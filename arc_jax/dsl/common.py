"""The `common` DSL that BARC-generated programs import with `from common import *`.

A clean-room implementation, written from a description of the behaviour of
BARC's `seeds/common.py` (last DSL revision, 2024-10-19), quirks included,
because the BARC model learnt to write programs against exactly that behaviour.

Conventions (the DSL's, not ARC's):
  * A grid is a 2-D integer numpy array with colours 0-9.
  * `(x, y)` means `grid[x, y]`: x indexes axis 0, y indexes axis 1.
    "width" is the extent along axis 0, "height" the extent along axis 1.
  * An "object" is a canvas-sized array holding background outside the object;
    a "sprite" is a small, usually cropped, array.

This file imports only the standard library, numpy and (lazily) scipy, so it
can be loaded as a top-level module named `common`. There is no `__all__`:
star-import exports every public name, including `np` and `random`, which
generated programs use without importing them.
"""

import itertools as _itertools
import math as _math
import random

import numpy as np

# Restarts allowed to the random-generation functions before they give up.
_MAX_ATTEMPTS = 1000


class Color:
    """The ten ARC colours as plain ints.

    PURPLE/BROWN/GRAY are the names the BARC model writes (its training
    answers renamed TEAL/MAROON/GREY); both spellings are kept.
    """

    BLACK = 0
    BLUE = 1
    RED = 2
    GREEN = 3
    YELLOW = 4
    GREY = 5
    GRAY = 5
    PINK = 6
    ORANGE = 7
    TEAL = 8
    PURPLE = 8
    MAROON = 9
    BROWN = 9
    TRANSPARENT = 0
    BACKGROUND = 0

    ALL_COLORS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    NOT_BLACK = [1, 2, 3, 4, 5, 6, 7, 8, 9]


# ---------------------------------------------------------------------------
# Private building blocks.
# ---------------------------------------------------------------------------


def _structure(connectivity, centre=True):
    """3x3 bool neighbourhood: the cross for 4-connectivity, the full block for 8."""
    if connectivity == 4:
        structure = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    elif connectivity == 8:
        structure = np.ones((3, 3), dtype=bool)
    else:
        raise ValueError("Connectivity must be 4 or 8.")
    structure[1, 1] = centre
    return structure


def _offsets(connectivity, centre=True):
    """The (dx, dy) steps of the 4- or 8-neighbourhood, with (0, 0) if `centre`."""
    xs, ys = np.nonzero(_structure(connectivity, centre))
    return [(int(x) - 1, int(y) - 1) for x, y in zip(xs, ys)]


def _label(mask, connectivity):
    """Connected components of a bool mask: (labels, count), labels in raster order."""
    from scipy import ndimage

    return ndimage.label(mask, structure=_structure(connectivity))


def _dilate(mask, structure, iterations=1):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=structure, iterations=iterations)


def _in_canvas(shape, x, y):
    """Whether (x, y) lies on a canvas of `shape`; works on scalars and arrays."""
    return (0 <= x) & (x < shape[0]) & (0 <= y) & (y < shape[1])


def _only(grid, mask, background):
    """A copy of `grid` with `background` wherever `mask` is False."""
    out = np.full_like(grid, background)
    out[mask] = grid[mask]
    return out


def _is_any_of(values, colors):
    """Elementwise `value in colors`; faster than np.isin for a few colours."""
    mask = np.zeros(np.shape(values), dtype=bool)
    for color in colors:
        mask |= values == color
    return mask


def _int_if_integral(value):
    """`value` as an int when it is within 1e-6 of one, else unchanged."""
    if abs(value - round(value)) < 1e-6:
        return int(round(value))
    return value


def _cast_coordinate(value):
    """Symmetry outputs: arrays to int arrays, Python floats rounded to int.

    As in BARC, only `float` instances are rounded: np.float64 (a float
    subclass) is, np.float32 and other numpy floats come back unchanged.
    """
    if isinstance(value, np.ndarray):
        return value.astype(int)
    if isinstance(value, float):
        return int(round(value))
    return value


# ---------------------------------------------------------------------------
# Drawing and editing.
# ---------------------------------------------------------------------------


def flood_fill(grid, x, y, color, connectivity=4):
    """Recolour, in place, the region of `grid[x, y]`'s colour that contains (x, y).

    As BARC's recursive version: a depth-first walk in raw coordinates, so that a negative
    (wrapped) start gives upstream's result too (the walk and its order are in
    `_flood_steps`); iterative here, so a 30x30 region needs no deep recursion.
    """
    assert connectivity in [4, 8], "flood_fill: Connectivity must be 4 or 8."
    old = grid[x, y]  # raises IndexError off the canvas; negative indices wrap
    if old == color:
        return None
    height, width = grid.shape
    seen = set()  # a cell set twice can only mean `color` stored as `old` (see below)

    def enter(cx, cy):
        value = grid[cx, cy]
        if value != old or value == color:
            return False
        cell = (cx % height, cy % width)
        if cell in seen:  # upstream recurses without end here; so does this, in effect
            raise RecursionError("flood_fill: maximum recursion depth exceeded")
        seen.add(cell)
        grid[cx, cy] = color
        return True

    stack = [_flood_steps(x, y, height, width, connectivity)] if enter(x, y) else []
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
        elif enter(*step):
            stack.append(_flood_steps(*step, height, width, connectivity))
    return None


def _flood_steps(x, y, height, width, connectivity):
    """The raw-coordinate neighbours BARC's flood fill visits from (x, y), in its order."""
    up, down, left, right = x > 0, x < height - 1, y > 0, y < width - 1
    steps = [(x - 1, y, up), (x + 1, y, down), (x, y - 1, left), (x, y + 1, right)]
    if connectivity == 8:
        steps += [(x - 1, y - 1, up and left), (x - 1, y + 1, up and right),
                  (x + 1, y - 1, down and left), (x + 1, y + 1, down and right)]
    return ((sx, sy) for sx, sy, allowed in steps if allowed)


def draw_line(grid, x, y, end_x=None, end_y=None, length=None, direction=None,
              color=None, stop_at_color=[]):
    """Paint a straight line in place; return the last painted cell.

    The line starts at (x, y) and steps by the sign of each `direction`
    component (so every line is axis-aligned or at 45 degrees). Off-canvas
    cells are skipped; the line stops before the first cell whose colour is in
    `stop_at_color`. If nothing is painted, the start point is returned.
    """
    assert (end_x is None) == (end_y is None), \
        "draw_line: end_x and end_y must be given together"
    assert x == int(x) and y == int(y), "draw_line: x and y must be integers"
    x, y = int(x), int(y)
    if end_x is not None:
        direction = (end_x - x, end_y - y)
        length = max(abs(end_x - x), abs(end_y - y)) + 1
    if length is None:
        length = 2 * max(grid.shape)
    dx, dy = (d // abs(d) if d != 0 else 0 for d in direction)

    stop_x, stop_y = x, y
    for i in range(length):
        cx, cy = x + i * dx, y + i * dy
        if not _in_canvas(grid.shape, cx, cy):
            continue
        if grid[cx, cy] in stop_at_color:
            break
        grid[cx, cy] = color
        stop_x, stop_y = cx, cy
    return stop_x, stop_y


def blit(grid, sprite, x=0, y=0, background=None):
    """Copy `sprite` onto `grid` with its corner at (x, y), in place; return `grid`.

    Parts falling off the canvas are clipped. Sprite pixels equal to
    `background` are transparent unless `background` is None. As in BARC,
    pixels are copied one by one in row-major order, so a sprite that is a
    view of `grid` sees the pixels already written.
    """
    x, y = int(x), int(y)
    if np.may_share_memory(grid, sprite):
        for i in range(sprite.shape[0]):
            for j in range(sprite.shape[1]):
                value = sprite[i, j]  # read after the writes before it
                if (background is None or value != background) and \
                        _in_canvas(grid.shape, x + i, y + j):
                    grid[x + i, y + j] = value
        return grid
    x0, x1 = max(x, 0), min(x + sprite.shape[0], grid.shape[0])
    y0, y1 = max(y, 0), min(y + sprite.shape[1], grid.shape[1])
    if x0 >= x1 or y0 >= y1:
        return grid
    patch = sprite[x0 - x:x1 - x, y0 - y:y1 - y]
    target = grid[x0:x1, y0:y1]  # a view: writes land in `grid`
    if background is None:
        target[...] = patch
    else:
        opaque = patch != background
        target[opaque] = patch[opaque]
    return grid


def blit_object(grid, obj, background=Color.BLACK):
    """Draw a canvas-sized object onto `grid`, in place; background is transparent."""
    return blit(grid, obj, 0, 0, background)


def blit_sprite(grid, sprite, x, y, background=Color.BLACK):
    """Draw `sprite` at (x, y) onto `grid`, in place; background is transparent."""
    return blit(grid, sprite, x, y, background)


def randomly_scatter_points(grid, color, density=0.5, background=Color.BLACK):
    """Paint random background cells with `color` until density*H*W are painted.

    Uses numpy's global RNG. Raises ValueError where the request can never be
    met (the loop would otherwise run forever).
    """
    n, m = grid.shape
    needed = density * n * m
    free = int(np.count_nonzero(grid == background))
    if needed > 0 and (free == 0 or (color != background and free < needed)):
        raise ValueError(
            f"randomly_scatter_points: density {density} needs {_math.ceil(needed)} "
            f"background cells, the grid has {free}")
    painted = 0
    while painted < needed:
        x = np.random.randint(0, n)
        y = np.random.randint(0, m)
        if grid[x, y] == background:
            grid[x, y] = color
            painted += 1
    return grid


def scale_sprite(sprite, factor):
    """Blow every pixel up into a factor x factor block."""
    sprite = np.asarray(sprite)
    return np.kron(sprite, np.ones((factor, factor), dtype=sprite.dtype))


def scale_pattern(pattern, scale_factor):
    """Deprecated name of `scale_sprite`."""
    print("scale_pattern: DEPRECATED, switch to scale_sprite")
    return scale_sprite(pattern, scale_factor)


def translate(obj, x, y, background=Color.BLACK):
    """A copy of `obj` shifted by (x, y); what leaves the canvas is lost."""
    for name, shift in (("x", x), ("y", y)):
        if not isinstance(shift, (int, np.integer)):
            raise IndexError(f"translate: {name}={shift!r} must be an integer")
    n, m = obj.shape
    out = np.full_like(obj, background)
    src_x, dst_x = slice(max(-x, 0), max(n - x, 0)), slice(max(x, 0), max(n + x, 0))
    src_y, dst_y = slice(max(-y, 0), max(m - y, 0)), slice(max(y, 0), max(m + y, 0))
    out[dst_x, dst_y] = obj[src_x, src_y]
    return out


# ---------------------------------------------------------------------------
# Objects, boxes, positions.
# ---------------------------------------------------------------------------


def find_connected_components(grid, background=Color.BLACK, connectivity=4,
                              monochromatic=True):
    """Connected components of the non-background cells, as canvas-sized arrays.

    Monochromatic components are found one colour at a time, colours taken in
    Python set order; within a colour, components come in raster order.
    """
    _structure(connectivity)  # validate before any work
    if monochromatic:
        masks = [grid == color for color in set(grid.flatten()) - {background}]
    else:
        masks = [grid != background]
    components = []
    for mask in masks:
        labels, count = _label(mask, connectivity)
        components.extend(_only(grid, labels == k, background) for k in range(1, count + 1))
    return components


def detect_objects(grid, _=None, predicate=None, background=Color.BLACK,
                   monochromatic=False, connectivity=None, allowed_dimensions=None,
                   colors=None, can_overlap=False):
    """Objects found by connected components and/or by scanning fixed-size windows.

    Faithful to BARC rather than to its docstring: with `connectivity=None`
    no components are searched, and `allowed_dimensions` filters the
    components by their (canvas) shape before windows are scanned. As in
    BARC, `allowed_dimensions` and the components' `colors` filter are tested
    for truth (an empty list filters nothing), while scanned windows are kept
    only if `colors is None` or their pixels are in `colors` (so `colors=[]`
    keeps no window).
    """
    def colors_ok(pixels):
        return np.all(_is_any_of(pixels, colors) | (pixels == background))

    objects = []
    if connectivity:
        objects = find_connected_components(grid, background, connectivity, monochromatic)
        if colors:  # truthiness, as upstream: [] filters nothing, an array of 2+ raises
            objects = [obj for obj in objects if colors_ok(obj)]
        if predicate is not None:
            objects = [obj for obj in objects if predicate(crop(obj, background))]

    if allowed_dimensions:
        objects = [obj for obj in objects if obj.shape in allowed_dimensions]
        components = list(objects)
        for n, m in allowed_dimensions:
            for i in range(grid.shape[0] - n + 1):
                for j in range(grid.shape[1] - m + 1):
                    window = grid[i:i + n, j:j + m]
                    if not np.any(window != background):
                        continue
                    if colors is not None and not colors_ok(window):  # identity, as upstream
                        continue
                    if predicate is not None and not predicate(window):
                        continue
                    mask = np.zeros(grid.shape, dtype=bool)
                    mask[i:i + n, j:j + m] = True
                    obj = _only(grid, mask, background)
                    if not any(np.array_equal(obj, c) for c in components):
                        objects.append(obj)

    if not can_overlap:
        objects = _remove_overlaps(objects, background)
    return objects


def _remove_overlaps(objects, background):
    """Objects overlapping nothing, then a best-coverage non-overlapping subset of the rest.

    Objects are ranked by (crop area, pixel count), largest first (stable).
    """
    def rank(obj):
        return crop(obj, background).size, int(np.count_nonzero(obj != background))

    objects = sorted(objects, key=rank, reverse=True)
    masks = [obj != background for obj in objects]
    overlaps = [[i != j and bool(np.any(a & b)) for j, b in enumerate(masks)]
                for i, a in enumerate(masks)]
    alone = [i for i in range(len(objects)) if not any(overlaps[i])]
    rest = [i for i in range(len(objects)) if any(overlaps[i])]
    chosen = _best_cover([masks[i] for i in rest])
    return [objects[i] for i in alone] + [objects[rest[k]] for k in chosen]


def _best_cover(masks):
    """Indices of a non-overlapping subset of `masks`, chosen by BARC's rule.

    BARC's rule, depth-first over the masks in order: a mask overlapping the
    cover so far is skipped; otherwise "pick" is tried first and kept outright
    if the cover then holds every pixel of every mask, else "skip" is tried
    and wins unless "pick" covers strictly more (ties prefer skipping).

    The same answer, faster: what the search does from mask i on depends only
    on the covered pixels that masks[i:] can reach (`frontier`) and on whether
    every pixel out of their reach is covered (`full`), so it is memoised on
    those; and a branch is dropped once it cannot reach the score it must
    beat (`need`). Still exponential in the worst case.
    """
    if not masks:
        return []
    n = len(masks)
    # reachable[i]: union of masks[i:]; last[i]: its pixels that no later mask has.
    reachable = [np.zeros_like(masks[0])] * (n + 1)
    for i in range(n - 1, -1, -1):
        reachable[i] = reachable[i + 1] | masks[i]
    last = [reachable[i] & ~reachable[i + 1] for i in range(n)]
    reachable_count = [int(np.count_nonzero(r)) for r in reachable]
    last_count = [int(np.count_nonzero(m)) for m in last]
    memo = {}  # (i, frontier, full) -> (True, result), or (False, b): the score is below b

    def search(i, frontier, full, need):
        """(pixels of reachable[i] covered at the end, picks) from mask i on; None if below `need`.

        One frame per mask (no helper calls), as deep as BARC's recursion.
        """
        if reachable_count[i] < need:
            return None
        if i == n:
            return 0, ()
        key = (i, frontier.tobytes(), full)
        exact, known = memo.get(key, (False, None))
        if exact:
            return known if known[0] >= need else None
        if known is not None and need >= known:
            return None
        result = None
        for pick in ([False] if np.any(masks[i] & frontier) else [True, False]):
            covered = frontier | masks[i] if pick else frontier
            kept = int(np.count_nonzero(covered & last[i]))  # final: no later mask has them
            rest = search(i + 1, covered & reachable[i + 1], full and kept == last_count[i],
                          need - kept)
            if rest is None:
                continue
            result = rest[0] + kept, (i,) + rest[1] if pick else rest[1]
            if pick and full and result[0] == reachable_count[i]:
                break  # every pixel is covered: BARC keeps the pick outright
            need = result[0]  # "skip" wins a tie, so it must reach the pick's score
        memo[key] = (False, need) if result is None else (True, result)
        return result

    return list(search(0, np.zeros_like(masks[0]), True, 0)[1])


def bounding_box(grid, background=Color.BLACK):
    """(x, y, width, height) of the non-background cells, as Python ints.

    An all-background grid gives (H, W, -H, -W), as in BARC.
    """
    xs, ys = np.nonzero(grid != background)
    if xs.size == 0:
        n, m = grid.shape
        return n, m, -n, -m
    x, y = int(xs.min()), int(ys.min())
    return x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1


def bounding_box_mask(grid, background=Color.BLACK):
    """Bool mask of the grid's shape, True inside the bounding box."""
    x, y, w, h = bounding_box(grid, background)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[x:x + w, y:y + h] = True
    return mask


_ANCHORS = {  # anchor -> (fraction of (w - 1), fraction of (h - 1)) added to (x, y)
    "upperleft": (0, 0),
    "upperright": (1, 0),
    "lowerleft": (0, 1),
    "lowerright": (1, 1),
    "center": (0.5, 0.5),
    "uppercenter": (0.5, 0),
    "lowercenter": (0.5, 1),
    "leftcenter": (0, 0.5),
    "rightcenter": (1, 0.5),
}


def object_position(obj, background=Color.BLACK, anchor="upper left"):
    """A point of the object's bounding box; ints where integral, else floats.

    `anchor` is matched ignoring case and spaces; "top"/"bottom" mean "upper"/"lower".
    """
    anchor = anchor.lower().replace(" ", "").replace("top", "upper").replace("bottom", "lower")
    assert anchor in _ANCHORS, "Invalid anchor"
    x, y, w, h = bounding_box(obj, background)
    fx, fy = _ANCHORS[anchor]
    return _int_if_integral(x + fx * (w - 1)), _int_if_integral(y + fy * (h - 1))


def object_colors(obj, background=Color.BLACK):
    """The non-background colours present, in Python set order (not sorted)."""
    return list(set(obj.flatten()) - {background})


def crop(grid, background=Color.BLACK):
    """The bounding box of the non-background cells, as a view of `grid`."""
    x, y, w, h = bounding_box(grid, background)
    return grid[x:x + w, y:y + h]


def _touches(object1, object2, x1, y1, x2, y2, background, offsets):
    """Whether a pixel of object1, moved by one of `offsets`, lands on a pixel of object2."""
    dx, dy = int(x2 - x1), int(y2 - y1)
    xs, ys = np.nonzero(object1 != background)
    for ox, oy in offsets:
        tx, ty = xs - dx + ox, ys - dy + oy
        inside = _in_canvas(object2.shape, tx, ty)
        if np.any(object2[tx[inside], ty[inside]] != background):
            return True
    return False


def collision(_=None, object1=None, object2=None, x1=0, y1=0, x2=0, y2=0,
              background=Color.BLACK):
    """Whether object1 placed at (x1, y1) overlaps object2 placed at (x2, y2)."""
    return _touches(object1, object2, x1, y1, x2, y2, background, [(0, 0)])


def contact(_=None, object1=None, object2=None, x1=0, y1=0, x2=0, y2=0,
            background=Color.BLACK, connectivity=4):
    """Whether the placed objects overlap or are adjacent (4- or 8-connected)."""
    offsets = _offsets(connectivity)
    return _touches(object1, object2, x1, y1, x2, y2, background, offsets)


def check_between_objects(obj1, obj2, x, y, padding=0, background=Color.BLACK):
    """Whether (x, y) lies in the gap between the two objects' bounding boxes.

    The gap is along one axis; along the other, the point (widened by
    `padding`) must lie within both boxes' common extent.
    """
    box1, box2 = bounding_box(obj1, background), bounding_box(obj2, background)
    point = (x, y)
    for axis in (0, 1):
        other = 1 - axis
        start1, size1, start2, size2 = box1[axis], box1[axis + 2], box2[axis], box2[axis + 2]
        across1, extent1 = box1[other], box1[other + 2]
        across2, extent2 = box2[other], box2[other + 2]
        p, q = point[axis], point[other]
        in_gap = start1 + size1 <= p < start2 or start2 + size2 <= p < start1
        in_band = (q - padding >= max(across1, across2)
                   and q + padding < min(across1 + extent1, across2 + extent2))
        if in_gap and in_band:
            return True
    return False


def object_interior(grid, background=Color.BLACK):
    """Cells not reachable from the border through background: the object plus its holes."""
    labels, _ = _label(grid == background, 4)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.isin(labels, border[border > 0])
    return ~outside


def object_boundary(grid, background=Color.BLACK):
    """Object cells next to the outside (4-connected) or on the canvas edge."""
    exterior = ~object_interior(grid, background)
    edge = np.zeros(grid.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    return (grid != background) & (_dilate(exterior, _structure(4)) | edge)


def object_neighbors(grid, background=Color.BLACK, connectivity=4):
    """Background cells adjacent to the object's boundary (enclosed holes included)."""
    ring = _structure(connectivity, centre=False)
    return _dilate(object_boundary(grid, background), ring) & (grid == background)


def is_contiguous(bitmask, background=Color.BLACK, connectivity=4):
    """Whether the non-background cells form exactly one connected component."""
    _, count = _label(bitmask != background, connectivity)
    return count == 1


# ---------------------------------------------------------------------------
# Random generation (Python `random` unless stated otherwise).
# ---------------------------------------------------------------------------


def randomly_spaced_indices(max_len, n_indices, border_size=1, padding=1):
    """`n_indices` sorted random indices, at least `padding` free slots apart.

    As in BARC, a positive `border_size` shrinks the range by border_size + 2
    and then shifts it, so the largest index is always max_len - 3.
    Raises IndexError when the request cannot be met.
    """
    if border_size > 0:
        inner = randomly_spaced_indices(max_len - border_size - 2, n_indices,
                                        border_size=0, padding=padding)
        return inner + border_size
    taken = [False] * max_len
    count = 0
    while count < n_indices:  # as in BARC: a float count such as 2.5 rounds up
        free = [i for i in range(max_len)
                if not any(taken[max(i - padding, 0):i + padding + 1])]
        taken[random.choice(free)] = True
        count += 1
    return np.array([i for i, t in enumerate(taken) if t], dtype=int)


def random_free_location_for_sprite(grid, sprite, background=Color.BLACK, border_size=0,
                                    padding=0, padding_connectivity=8):
    """A random corner (x, y) where `sprite` fits without touching anything.

    Occupied cells are grown by `padding` steps first. Raises ValueError if
    there is no free location.
    """
    occupied = grid != background
    if padding > 0:
        occupied = _dilate(occupied, _structure(padding_connectivity), iterations=padding)
    solid = sprite != background
    h, w = sprite.shape
    free = [(x, y)
            for x in range(border_size, grid.shape[0] - border_size - h + 1)
            for y in range(border_size, grid.shape[1] - border_size - w + 1)
            if not np.any(occupied[x:x + h, y:y + w] & solid)]
    if not free:
        raise ValueError("No free location for sprite found.")
    return random.choice(free)


def random_free_location_for_object(*args, **kwargs):
    """Old name of `random_free_location_for_sprite`, kept for old programs."""
    return random_free_location_for_sprite(*args, **kwargs)


def random_sprite(n, m, density=0.5, symmetry=None, color_palette=None, connectivity=4,
                  background=Color.BLACK):
    """A random contiguous n x m sprite touching all four of its borders.

    `n` and `m` may be ints or lists/ranges of candidate sizes. `symmetry` is
    one of 'horizontal', 'vertical', 'diagonal', 'radial', 'mirror',
    'not_symmetric', or None for a random choice.
    """
    ns = [n] if isinstance(n, (int, np.integer)) else list(n)
    ms = [m] if isinstance(m, (int, np.integer)) else list(m)
    for _ in range(_MAX_ATTEMPTS):
        kind = symmetry
        if kind is None:
            options = ["horizontal", "vertical", "not_symmetric", "mirror"]
            if any(size in ms for size in ns):
                options += ["diagonal", "radial"]
            kind = random.choice(options)
        if kind in ("diagonal", "radial"):
            rows = cols = random.choice([size for size in ns if size in ms])
        else:
            rows, cols = random.choice(ns), random.choice(ms)

        fill = density
        if 1 in (rows, cols):
            fill = 1
        elif 2 in (rows, cols):
            fill = max(fill, 0.6)
        elif 3 in (rows, cols):
            fill = max(fill, 0.5)
        elif fill != 1:
            fill = min(max(random.gauss(fill, 0.1), 0.4), 0.95)

        sprite = generate_sprite(rows, cols, kind, fill_percentage=fill,
                                 color_palate=color_palette, connectivity=connectivity,
                                 background=background)
        assert is_contiguous(sprite, background=background, connectivity=connectivity), \
            "random_sprite: generated sprite is not contiguous"
        solid = sprite != background
        if solid[0].any() and solid[-1].any() and solid[:, 0].any() and solid[:, -1].any():
            return sprite
    raise RuntimeError(f"random_sprite: no sprite touching all borders in {_MAX_ATTEMPTS} attempts")


_SYMMETRY_TYPES = ("not_symmetric", "horizontal", "vertical", "diagonal", "mirror", "radial")


def generate_sprite(n, m, symmetry_type, fill_percentage=0.5, max_colors=9,
                    color_palate=None, connectivity=4, background=Color.BLACK):
    """Internal function not used by LLM: the random-walk sprite behind `random_sprite`."""
    if symmetry_type not in _SYMMETRY_TYPES:
        raise ValueError(f"generate_sprite: unknown symmetry_type {symmetry_type!r}, "
                         f"expected one of {_SYMMETRY_TYPES}")
    if not 0 <= fill_percentage <= 1:
        raise ValueError(f"generate_sprite: fill_percentage={fill_percentage} must be in [0, 1]")
    for _ in range(_MAX_ATTEMPTS):
        sprite = _generate_sprite_once(n, m, symmetry_type, fill_percentage, max_colors,
                                       color_palate, connectivity, background)
        # Mirror tiling can split the walk into pieces; BARC then starts over.
        if symmetry_type != "mirror" or is_contiguous(sprite, background, connectivity):
            return sprite
    raise RuntimeError(f"generate_sprite: no contiguous mirror sprite in {_MAX_ATTEMPTS} attempts")


def _generate_sprite_once(n, m, symmetry_type, fill, max_colors, palette, connectivity,
                          background):
    if palette is None:
        count = 1
        while random.random() < 0.3 and count < max_colors:
            count += 1
        palette = random.sample([c for c in Color.ALL_COLORS if c != background], count)
    moves = _offsets(connectivity, centre=False)

    if symmetry_type in ("mirror", "radial"):
        quadrant = np.full(((n + 1) // 2, (m + 1) // 2), background)
        qn, qm = quadrant.shape
        if symmetry_type == "radial":
            start = (qn - 1, qm - 1)  # the corner that ends up at the centre
        else:
            start = (random.randint(0, qn - 1), random.randint(0, qm - 1))
        _random_walk(quadrant, start, palette, fill, moves, background)
        if symmetry_type == "mirror":
            top = np.concatenate([quadrant, np.fliplr(quadrant)[:, m % 2:]], axis=1)
            return np.concatenate([top, np.flipud(top)[n % 2:]], axis=0)
        sprite = np.full((n, m), background)
        blit(sprite, quadrant, 0, 0, background)
        for _ in range(3):
            blit(sprite, np.rot90(sprite).copy(), 0, 0, background)
        return sprite

    sprite = np.full((n, m), background)
    if symmetry_type == "not_symmetric":
        start = (random.randint(0, n - 1), random.randint(0, m - 1))
    elif symmetry_type == "horizontal":
        start = (random.randint(0, n - 1), m // 2)
    elif symmetry_type == "vertical":
        start = (n // 2, random.randint(0, m - 1))
    else:  # diagonal: start on the main diagonal or on the anti-diagonal
        anti = random.random() < 0.5
        i = random.randint(0, n - 1)
        start = (i, n - 1 - i) if anti else (i, i)
    _random_walk(sprite, start, palette, fill, moves, background)

    if symmetry_type in ("horizontal", "vertical"):
        apply_symmetry(sprite, symmetry_type, background)
    elif symmetry_type == "diagonal":
        if anti:  # flip so the anti-diagonal becomes the main diagonal, and back
            sprite = np.flipud(apply_diagonal_symmetry(np.flipud(sprite).copy(), background))
        else:
            apply_diagonal_symmetry(sprite, background)
    return sprite


def _random_walk(canvas, start, palette, fill, moves, background):
    """Paint `canvas` in place along a random walk until `fill` of it is non-background."""
    n, m = canvas.shape
    needed = fill * canvas.size
    painted = int(np.count_nonzero(canvas != background))
    x, y = start
    color = random.choice(palette)
    while painted < needed:
        painted += int(color != background) - int(canvas[x, y] != background)
        canvas[x, y] = color
        if random.random() < 0.33:
            color = random.choice(palette)
        dx, dy = random.choice(moves)
        x, y = min(max(x + dx, 0), n - 1), min(max(y + dy, 0), m - 1)


def apply_symmetry(sprite, symmetry_type, background=Color.BLACK):
    """Internal function not used by LLM: mirror `sprite` in place and return it.

    'horizontal' pairs row x with row n-1-x, 'vertical' column y with m-1-y.
    Each pair takes the first cell's colour, or its partner's if the first is background.
    """
    if symmetry_type == "horizontal":
        rows = sprite
    elif symmetry_type == "vertical":
        rows = sprite.T  # a view: writes land in `sprite`
    else:
        raise ValueError(f"apply_symmetry: unknown symmetry_type {symmetry_type!r}, "
                         "expected 'horizontal' or 'vertical'")
    half = rows.shape[0] // 2
    first, mirrored = rows[:half], rows[::-1][:half]
    merged = np.where(first != background, first, mirrored)
    rows[:half] = merged
    rows[::-1][:half] = merged
    return sprite


def apply_diagonal_symmetry(sprite, background=Color.BLACK):
    """Internal function not used by LLM: make `sprite` symmetric about its main diagonal, in place."""
    if sprite.shape[0] != sprite.shape[1]:
        raise ValueError("Diagonal symmetry requires a square sprite.")
    upper = np.triu_indices(sprite.shape[0], k=1)  # cells with x < y
    above, below = sprite[upper], sprite.T[upper]
    merged = np.where(above != background, above, below)
    sprite[upper] = merged
    sprite.T[upper] = merged
    return sprite


# ---------------------------------------------------------------------------
# Symmetries.
# ---------------------------------------------------------------------------


class Symmetry:
    """Base class of the symmetries; `apply(x, y, iters)` maps a point."""

    def apply(self, x, y, iters=1):
        """Map (x, y) through the symmetry `iters` times (stub)."""


class TranslationalSymmetry(Symmetry):
    """Shift by (translate_x, translate_y) per iteration."""

    def __init__(self, translate_x, translate_y):
        self.translate_x = translate_x
        self.translate_y = translate_y

    def apply(self, x, y, iters=1):
        return (_cast_coordinate(x + iters * self.translate_x),
                _cast_coordinate(y + iters * self.translate_y))

    def _iter_range(self, shape):
        """Iteration counts that can reach anywhere on a canvas of `shape`."""
        steps = [_math.ceil(size / abs(t))
                 for size, t in zip(shape, (self.translate_x, self.translate_y)) if t != 0]
        k = max(steps, default=0)
        return -k, k + 1

    def __repr__(self):
        return f"TranslationalSymmetry(translate_x={self.translate_x}, translate_y={self.translate_y})"


class MirrorSymmetry:
    """Reflection across x = mirror_x and/or y = mirror_y (None: that axis is kept).

    Mirror lines may be half-integers. Not a `Symmetry` subclass, as in BARC.
    """

    def __init__(self, mirror_x, mirror_y):
        self.mirror_x = mirror_x
        self.mirror_y = mirror_y

    def apply(self, x, y, iters=1):
        if iters % 2 == 0:
            return x, y
        if self.mirror_x is not None:
            x = 2 * self.mirror_x - x
        if self.mirror_y is not None:
            y = 2 * self.mirror_y - y
        return _cast_coordinate(x), _cast_coordinate(y)

    def _iter_range(self, shape):
        return 0, 2

    def __repr__(self):
        return f"MirrorSymmetry(mirror_x={self.mirror_x}, mirror_y={self.mirror_y})"


class _RotationalSymmetry(Symmetry):
    """Rotation by 90 degrees about (center_x, center_y), per iteration.

    Negative `iters` rotates zero times, as in BARC.
    """

    def __init__(self, center_x, center_y):
        self.center_x = center_x
        self.center_y = center_y

    def apply(self, x, y, iters=1):
        x, y = x - self.center_x, y - self.center_y
        for _ in range(iters):
            x, y = y, -x
        return (_cast_coordinate(x + self.center_x),
                _cast_coordinate(y + self.center_y))

    def _iter_range(self, shape):
        return 0, 4

    def __repr__(self):
        return f"RotationalSymmetry(center_x={self.center_x}, center_y={self.center_y})"


def orbit(grid, x, y, symmetries):
    """All canvas points reachable from (x, y) by combining `symmetries` (unordered)."""
    points = set()
    ranges = [range(*s._iter_range(grid.shape)) for s in symmetries]
    for counts in _itertools.product(*ranges):
        px, py = x, y
        for symmetry, k in zip(symmetries, counts):
            px, py = symmetry.apply(px, py, iters=k)
            if not _in_canvas(grid.shape, px, py):
                break
        else:
            points.add((px, py))
    return list(points)


def _score_symmetry(grid, symmetry, ignore_colors, background=None):
    """(perfect, off_canvas, conflicts) counts of mapping occupied cells once.

    `ignore_colors` is read as np.isin reads it: None ignores no colour and a
    scalar (a set too, which numpy sees as one object) is a single value.
    """
    if ignore_colors is None:
        ignore_colors = []
    elif np.ndim(ignore_colors) == 0:
        ignore_colors = [ignore_colors]
    occupied = ~_is_any_of(grid, ignore_colors)
    if background is not None:
        occupied &= grid != background
    xs, ys = np.nonzero(occupied)
    tx, ty = symmetry.apply(xs, ys)
    inside = _in_canvas(grid.shape, tx, ty)
    source = grid[xs[inside], ys[inside]]
    target = grid[tx[inside], ty[inside]]
    perfect = int(np.count_nonzero(target == source))
    off_canvas = int(np.count_nonzero(~inside))
    conflicts = int(np.count_nonzero((target != source) & ~_is_any_of(target, ignore_colors)))
    return perfect, off_canvas, conflicts


def detect_translational_symmetry(grid, ignore_colors=[Color.BLACK], background=None):
    """The best shift along axis 0 and the best along axis 1 (else the best diagonal one).

    On equal scores the most negative shift wins, as in BARC.
    """
    n, m = grid.shape

    def best(candidates, tiebreak):
        scored = []
        for symmetry in candidates:
            perfect, off, conflicts = _score_symmetry(grid, symmetry, ignore_colors, background)
            score = perfect - 0.01 * off - 100000 * conflicts
            if score > 0:
                scored.append(((score, tiebreak(symmetry)), symmetry))
        return [max(scored, key=lambda item: item[0])[1]] if scored else []

    def shifts(size):
        return [*range(1, size), *range(-1, -size, -1)]

    found = (best([TranslationalSymmetry(t, 0) for t in shifts(n)], lambda s: -s.translate_x)
             + best([TranslationalSymmetry(0, t) for t in shifts(m)], lambda s: -s.translate_y))
    if found:
        return found
    diagonal = [TranslationalSymmetry(tx, ty) for tx in range(1, n) for ty in range(1, m)]
    return best(diagonal, lambda s: -s.translate_x - s.translate_y)


def detect_mirror_symmetry(grid, ignore_colors=[Color.BLACK], background=None):
    """All mirror lines tied for the best score, in candidate order (maybe [])."""
    n, m = grid.shape
    candidates = ([MirrorSymmetry(c + z, None) for c in range(n) for z in (0, 0.5)]
                  + [MirrorSymmetry(None, c + z) for c in range(m) for z in (0, 0.5)]
                  + [MirrorSymmetry(cx + z, cy + z)
                     for cx in range(n) for cy in range(m) for z in (0, 0.5)])
    scored = []
    for symmetry in candidates:
        perfect, off, conflicts = _score_symmetry(grid, symmetry, ignore_colors, background)
        if conflicts > 0 or perfect == 0:
            continue
        scored.append((perfect - 0.01 * off, symmetry))
    top = max((score for score, _ in scored), default=0)
    if top <= 0:
        return []
    return [symmetry for score, symmetry in scored if score == top]


def detect_rotational_symmetry(grid, ignore_colors=[Color.BLACK], background=None):
    """The first 90-degree rotation centre with the best positive score, else None."""
    best, best_score = None, 0
    for cx in range(grid.shape[0]):
        for cy in range(grid.shape[1]):
            for z in (0, 0.5):
                symmetry = _RotationalSymmetry(cx + z, cy + z)
                perfect, off, conflicts = _score_symmetry(grid, symmetry, ignore_colors,
                                                          background)
                score = perfect - 5 * off - 1000 * conflicts
                if score > best_score:
                    best, best_score = symmetry, score
    return best


# ---------------------------------------------------------------------------
# Debugging (exported; not used at evaluation).
# ---------------------------------------------------------------------------

# ANSI 256-colour codes for colours 0-9.
_ANSI_CODES = (240, 21, 196, 46, 226, 250, 201, 208, 51, 88)


def show_colored_grid(grid, text=True):
    """Internal function not used by LLM: print the grid, one line per column (x across).

    The plot that `text=False` asked for in BARC is replaced by the same text.
    """
    for y in range(grid.shape[1]):
        print("".join(f"\033[38;5;{_ANSI_CODES[int(grid[x, y]) % 10]}m{int(grid[x, y])}\033[0m"
                      for x in range(grid.shape[0])))


def visualize(input_generator, transform, n_examples=5, n_attempts=100):
    """Internal function not used by LLM: print generated inputs and their transforms.

    Attempts that raise are reported and skipped; at most `n_attempts` are made.
    """
    shown = 0
    for _ in range(n_attempts):
        if shown == n_examples:
            return
        try:
            grid = input_generator()
            output = transform(grid.copy())
        except Exception as error:  # a debugging aid: report and go on
            print(f"visualize: attempt failed: {error!r}")
            continue
        print("Input:")
        show_colored_grid(grid)
        print("Output:")
        show_colored_grid(output)
        shown += 1


# ---------------------------------------------------------------------------
# Names from older DSL revisions, still called by programs of that era.
# ---------------------------------------------------------------------------

random_scatter_points = randomly_scatter_points


def generate_position_has_interval(max_len, position_num, if_padding=False):
    """`position_num` random indices in [0, max_len) with gaps of at least one (numpy RNG).

    With `if_padding` the first and last slots stay free. None if they cannot fit.
    """
    pattern = [1] + [0, 1] * (position_num - 1) if position_num > 0 else []
    if if_padding:
        pattern = [0] + pattern + [0]
    if len(pattern) > max_len:
        return None
    while len(pattern) < max_len:
        pattern.insert(np.random.randint(0, len(pattern) + 1), 0)
    return np.array([i for i, v in enumerate(pattern) if v == 1], dtype=int)


def find_monochromatic_sprite(grid, color_palate, background=Color.BLACK):
    """One copy of `grid` per palette colour, other colours set to background."""
    return [_only(grid, grid == color, background) for color in color_palate]


def calc_neighbors(grid, start_x, start_y):
    """The colours of the four edge neighbours of (start_x, start_y); None off canvas."""
    neighbors = {}
    for dx, dy in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        x, y = start_x + dx, start_y + dy
        neighbors[(dx, dy)] = grid[x, y] if _in_canvas(grid.shape, x, y) else None
    return neighbors

"""What counts as a valid ARC output grid.

A valid output is a 2-D grid of integers 0-9 whose two sides are both in
1..max_grid_side. Accepted forms:

- an integer numpy array;
- a float numpy array whose values are all whole numbers (e.g. from np.full(..., 1.0));
- a list or tuple of equally long lists/tuples of ints (converted).

Rejected, each with an InvalidOutputError that says why: None, scalars, strings,
generators and other non-grid objects; boolean arrays (a mask, not colours:
ARC colours are ints); float arrays with non-whole values or NaN; object or
complex arrays; other than 2 dimensions; ragged rows; empty or oversized sides;
values outside 0-9.

Sizes are checked before values are read, so a huge output is rejected in
constant time. This module uses only numpy: the worker imports it by file.
"""

from __future__ import annotations

import numpy as np


class InvalidOutputError(ValueError):
    """A program's return value is not a valid ARC grid."""


def _rows_from_sequence(value: list | tuple, max_grid_side: int) -> np.ndarray:
    """Convert a list of rows, refusing oversized or ragged ones before converting."""
    if not 1 <= len(value) <= max_grid_side:
        raise InvalidOutputError(f"the grid has {len(value)} rows; expected 1 to {max_grid_side}")
    widths = set()
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple, np.ndarray)):
            raise InvalidOutputError(f"row {i} is a {type(row).__name__}; expected a list of ints")
        widths.add(len(row))
    if len(widths) != 1:
        raise InvalidOutputError(f"the rows have different lengths {sorted(widths)}; expected a rectangular grid")
    if not 1 <= widths.pop() <= max_grid_side:
        raise InvalidOutputError(f"the rows have {len(value[0])} cells; expected 1 to {max_grid_side}")
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise InvalidOutputError(f"the rows do not form a grid: {e}") from None


def _as_int_grid(grid: np.ndarray) -> np.ndarray:
    """Return `grid` as int64 if its dtype holds colour numbers, else raise."""
    kind = grid.dtype.kind
    if kind in "iu":
        return grid.astype(np.int64, copy=False)
    if kind == "f":
        if not np.all(np.isfinite(grid)) or not np.all(grid == np.round(grid)):
            raise InvalidOutputError("the grid has non-integer float values; expected ints 0-9")
        return grid.astype(np.int64)
    if kind == "b":
        raise InvalidOutputError("the grid is boolean (a mask); expected colour ints 0-9")
    raise InvalidOutputError(f"the grid has dtype {grid.dtype}; expected ints 0-9")


def validate_output(value: object, max_grid_side: int = 30) -> np.ndarray:
    """Return `value` as a (rows, cols) int64 array, or raise InvalidOutputError."""
    if isinstance(value, (list, tuple)):
        value = _rows_from_sequence(value, max_grid_side)
    if not isinstance(value, np.ndarray):
        raise InvalidOutputError(f"the program returned a {type(value).__name__}; expected a 2-D grid")
    if value.ndim != 2:
        raise InvalidOutputError(f"the grid has shape {value.shape}; expected 2 dimensions")
    rows, cols = value.shape
    if not (1 <= rows <= max_grid_side and 1 <= cols <= max_grid_side):
        raise InvalidOutputError(f"the grid has shape {value.shape}; expected both sides in 1..{max_grid_side}")
    grid = _as_int_grid(value)
    low, high = int(grid.min()), int(grid.max())
    if low < 0 or high > 9:
        raise InvalidOutputError(f"the grid has values in {low}..{high}; expected 0-9")
    return np.array(grid, dtype=np.int64)  # a private copy, detached from the program's array

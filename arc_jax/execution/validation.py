"""What counts as a valid ARC output grid, converted in the program's own process.

A valid output is a 2-D grid of integers 0-9 whose two sides are both in
1..max_grid_side. It is accepted in every form the reference's grading accepts
(`np.array(x, dtype=int)`): a numpy array of integers, booleans (0/1) or whole
floats, an object array of such scalars, or a list or tuple of equally long
rows of them. Only plain ints leave the program's process (the worker sends
the grid as bytes).

Rejected, each with an InvalidOutputError that names what was found: None,
scalars, strings, generators and other non-grid objects; numpy array
subclasses; cells that are not Python or numpy ints, bools or floats exactly
(so no object with its own __eq__, __index__, __int__ or __array__ is ever
asked for a value); floats that are not whole numbers, NaN or infinite;
complex, string and other dtypes; other than 2 dimensions; ragged rows; empty
or oversized sides; values outside 0-9.

Sizes are checked before values are read, so a huge output is rejected in
constant time. This module uses only numpy: the worker imports it by file.
"""

from __future__ import annotations

import numpy as np


class InvalidOutputError(ValueError):
    """A program's return value is not a valid ARC grid."""


_SCALARS = (int, bool, float)  # exact types; subclasses are refused


def _cell_ok(cell: object) -> bool:
    """A plain Python or numpy int, bool or float (exact types: no user subclass)."""
    kind = type(cell)
    if kind in _SCALARS:
        return True
    return (kind.__module__ == "numpy"
            and isinstance(cell, (np.integer, np.bool_, np.floating)))


def _check_cells(cells, where: str) -> None:
    for i, cell in enumerate(cells):
        if not _cell_ok(cell):
            raise InvalidOutputError(f"{where} {i} is a {type(cell).__name__}; expected ints 0-9")


def _rows_from_sequence(value: list | tuple, max_grid_side: int) -> np.ndarray:
    """Convert a list of rows, refusing oversized, ragged or non-numeric ones first."""
    if not 1 <= len(value) <= max_grid_side:
        raise InvalidOutputError(f"the grid has {len(value)} rows; expected 1 to {max_grid_side}")
    widths = set()
    for i, row in enumerate(value):
        if type(row) not in (list, tuple, np.ndarray):
            raise InvalidOutputError(f"row {i} is a {type(row).__name__}; expected a list of ints")
        widths.add(len(row))
    if len(widths) != 1:
        raise InvalidOutputError(f"the rows have different lengths {sorted(widths)}; expected a rectangular grid")
    if not 1 <= widths.pop() <= max_grid_side:
        raise InvalidOutputError(f"the rows have {len(value[0])} cells; expected 1 to {max_grid_side}")
    cells = np.empty((len(value), len(value[0])), dtype=object)
    for i, row in enumerate(value):
        if type(row) is np.ndarray:
            if row.ndim != 1:
                raise InvalidOutputError(f"row {i} has shape {row.shape}; expected a row of ints")
            row = _as_int_grid(row[None, :])[0] if row.dtype.kind != "O" else row
        _check_cells(row, f"row {i}, cell")
        cells[i, :] = list(row)
    return cells


def _as_int_grid(grid: np.ndarray) -> np.ndarray:
    """Return `grid` as int64 if it holds colour numbers, else raise naming what it holds."""
    kind = grid.dtype.kind
    if kind == "O":
        _check_cells(grid.flat, "cell")
        floats = [float(v) for v in grid.flat if type(v) is float or isinstance(v, np.floating)]
        if any(not np.isfinite(v) or v != round(v) for v in floats):
            raise InvalidOutputError("the grid has non-integer float values; expected ints 0-9")
        values = [[int(v) for v in row] for row in grid]
        low, high = min(map(min, values)), max(map(max, values))
        if low < 0 or high > 9:
            raise InvalidOutputError(f"the grid has values in {low}..{high}; expected 0-9")
        return np.array(values, dtype=np.int64)
    if kind in "iub":
        return grid.astype(np.int64)
    if kind == "f":
        if not np.all(np.isfinite(grid)) or not np.all(grid == np.round(grid)):
            raise InvalidOutputError("the grid has non-integer float values; expected ints 0-9")
        return grid.astype(np.int64)
    raise InvalidOutputError(f"the grid has dtype {grid.dtype}; expected ints 0-9")


def validate_output(value: object, max_grid_side: int = 30) -> np.ndarray:
    """Return `value` as a (rows, cols) int64 array, or raise InvalidOutputError."""
    if type(value) in (list, tuple):
        value = _rows_from_sequence(value, max_grid_side)
    if type(value) is not np.ndarray:
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

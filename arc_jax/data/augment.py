"""Dihedral and colour augmentation of ARC tasks, with an exact inverse.

An augmentation flips, rotates and recolours every grid of a task in the same way.
`revert_grid` undoes it, so a grid that a program predicts for the augmented task
can be mapped back to the original task.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from arc_jax.data.types import Pair, Task

NUM_COLOURS = 10
_FIELDS = ("hflip", "n_rot90", "colour_map")
_SEQUENCES = (tuple, list, np.ndarray)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Flip along axis 1 if `hflip`, then `np.rot90(k=n_rot90)`, then colour c -> colour_map[c].

    `hflip` and `n_rot90` together pick one of the 8 dihedral transforms.
    `colour_map` is a permutation of 0-9 (any sequence; stored as a tuple of ints).
    """

    hflip: bool
    n_rot90: int
    colour_map: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.hflip, (bool, np.bool_)):
            raise ValueError(f"Augmentation.hflip must be a bool, got {self.hflip!r}")
        if not _is_int(self.n_rot90) or not 0 <= self.n_rot90 <= 3:
            raise ValueError(f"Augmentation.n_rot90 must be an integer 0-3, got {self.n_rot90!r}")
        colour_map = tuple(self.colour_map) if isinstance(self.colour_map, _SEQUENCES) else ()
        if not all(map(_is_int, colour_map)) or sorted(colour_map) != list(range(NUM_COLOURS)):
            raise ValueError(
                f"Augmentation.colour_map must be a permutation of 0-9, got {self.colour_map!r}"
            )
        # Plain Python values, so that equal augmentations compare and serialise equally.
        object.__setattr__(self, "hflip", bool(self.hflip))
        object.__setattr__(self, "n_rot90", int(self.n_rot90))
        object.__setattr__(self, "colour_map", tuple(int(c) for c in colour_map))

    @classmethod
    def identity(cls) -> Augmentation:
        return cls(hflip=False, n_rot90=0, colour_map=tuple(range(NUM_COLOURS)))

    @classmethod
    def sample(cls, rng: np.random.Generator,
               change_background_probability: float = 0.1) -> Augmentation:
        """Draws a uniform dihedral transform and a colour permutation.

        With probability `change_background_probability` all 10 colours are shuffled;
        otherwise colour 0 (the usual background) stays and colours 1-9 are shuffled.
        """
        if not 0.0 <= change_background_probability <= 1.0:
            raise ValueError(
                "change_background_probability must be in [0, 1], "
                f"got {change_background_probability}"
            )
        hflip = bool(rng.integers(2))
        n_rot90 = int(rng.integers(4))
        if rng.random() < change_background_probability:
            colour_map = rng.permutation(NUM_COLOURS)
        else:
            colour_map = np.concatenate([[0], 1 + rng.permutation(NUM_COLOURS - 1)])
        return cls(hflip=hflip, n_rot90=n_rot90, colour_map=tuple(colour_map.tolist()))

    @property
    def inverse_colour_map(self) -> tuple[int, ...]:
        """The permutation that undoes `colour_map`: inverse[colour_map[c]] == c."""
        return tuple(np.argsort(self.colour_map).tolist())

    def apply_grid(self, grid: np.ndarray) -> np.ndarray:
        """The augmented copy of a 2-D grid of colours 0-9 (same dtype)."""
        grid = _checked_grid(grid)
        if self.hflip:
            grid = np.flip(grid, axis=1)
        return _recolour(np.rot90(grid, k=self.n_rot90), self.colour_map)

    def revert_grid(self, grid: np.ndarray) -> np.ndarray:
        """Maps a grid of the augmented task back to the original task (inverts `apply_grid`)."""
        grid = np.rot90(_checked_grid(grid), k=-self.n_rot90)
        if self.hflip:
            grid = np.flip(grid, axis=1)
        return _recolour(grid, self.inverse_colour_map)

    def apply_task(self, task: Task) -> Task:
        """Applies the augmentation to every grid of `task`; hidden (None) outputs stay None."""

        def apply_pair(pair: Pair) -> Pair:
            output = None if pair.output is None else _read_only(self.apply_grid(pair.output))
            return Pair(input=_read_only(self.apply_grid(pair.input)), output=output)

        return Task(
            id=task.id,
            train=tuple(apply_pair(pair) for pair in task.train),
            test=tuple(apply_pair(pair) for pair in task.test),
        )

    def to_json(self) -> dict[str, Any]:
        return {"hflip": self.hflip, "n_rot90": self.n_rot90, "colour_map": list(self.colour_map)}

    @classmethod
    def from_json(cls, record: Any) -> Augmentation:
        """Reads the record written by `to_json`; raises ValueError naming a bad field."""
        if not isinstance(record, dict) or set(record) != set(_FIELDS):
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(
                f"augmentation record must have exactly the fields {_FIELDS}, got {got}"
            )
        return cls(**record)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _checked_grid(grid: Any) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.dtype.kind not in "iu":
        raise ValueError(f"expected a 2-D integer grid, got shape {grid.shape} dtype {grid.dtype}")
    if grid.size and (grid.min() < 0 or grid.max() >= NUM_COLOURS):
        raise ValueError(
            f"expected grid colours 0-9, got values from {grid.min()} to {grid.max()}"
        )
    return grid


def _recolour(grid: np.ndarray, colour_map: tuple[int, ...]) -> np.ndarray:
    """Colour c -> colour_map[c] for every cell; a new array of the grid's dtype."""
    return np.asarray(colour_map, dtype=grid.dtype)[grid]


def _read_only(grid: np.ndarray) -> np.ndarray:
    grid.flags.writeable = False
    return grid

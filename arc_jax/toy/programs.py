"""A small family of BARC-style programs for whole-grid transformations.

Each `Program` carries two things that must agree: the source text the toy policy learns
to write (laid out like the BARC model's output: `from common import *`, concepts,
description, `def transform(input_grid)`), and a numpy function with the same meaning,
used to make synthetic training tasks and to find the real ARC tasks the family solves.

The family: flips, rotations, transposes, tilings, scalings, mirror concatenations and
colour maps (any set of colour replacements, swaps included).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from arc_jax.data.types import Task

# The names the BARC model writes for the ten colours (`Color.PURPLE` is 8, `Color.BROWN` 9).
COLOR_CONSTANTS = (
    "BLACK", "BLUE", "RED", "GREEN", "YELLOW", "GRAY", "PINK", "ORANGE", "PURPLE", "BROWN"
)

HEADER = "from common import *\n\nimport numpy as np\nfrom typing import *"


@dataclasses.dataclass(frozen=True)
class Program:
    """One program of the family.

    name: short identifier, e.g. "flip_lr" or "color_map".
    concepts, description: the comment blocks of the source (one line each).
    body: the indented lines of `transform`, ending with `return output_grid`.
    apply: the numpy meaning of the program, grid [H, W] -> grid.
    """

    name: str
    concepts: str
    description: str
    body: str
    apply: Callable[[np.ndarray], np.ndarray]

    @property
    def source(self) -> str:
        """The program text, as the toy policy writes it inside its ```python block."""
        return (
            f"{HEADER}\n\n# concepts:\n# {self.concepts}\n\n# description:\n"
            f"# {self.description}\n\ndef transform(input_grid):\n{self.body}"
        )


def _program(name: str, concepts: str, description: str, lines: Sequence[str], apply) -> Program:
    body = "".join(f"    {line}\n" for line in lines) + "    return output_grid"
    return Program(name, concepts, description, body, apply)


def _concat(*parts: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate(parts, axis=axis)


def _mirror_quad(g: np.ndarray) -> np.ndarray:
    top = _concat(g, np.fliplr(g), axis=1)
    return _concat(top, np.flipud(top), axis=0)


def _rotate_quad(g: np.ndarray) -> np.ndarray:
    if g.shape[0] != g.shape[1]:
        raise ValueError(f"rotate_quad needs a square grid, got shape {g.shape}")
    top = _concat(g, np.rot90(g, -1), axis=1)
    bottom = _concat(np.rot90(g), np.rot90(g, 2), axis=1)
    return _concat(top, bottom, axis=0)


GEOMETRIC_PROGRAMS: tuple[Program, ...] = (
    _program("flip_lr", "reflection", "Mirror the grid from left to right.",
             ["output_grid = np.fliplr(input_grid)"], np.fliplr),
    _program("flip_ud", "reflection", "Mirror the grid from top to bottom.",
             ["output_grid = np.flipud(input_grid)"], np.flipud),
    _program("rotate_90", "rotation", "Rotate the grid 90 degrees counterclockwise.",
             ["output_grid = np.rot90(input_grid)"], np.rot90),
    _program("rotate_180", "rotation", "Rotate the grid 180 degrees.",
             ["output_grid = np.rot90(input_grid, 2)"], lambda g: np.rot90(g, 2)),
    _program("rotate_270", "rotation", "Rotate the grid 90 degrees clockwise.",
             ["output_grid = np.rot90(input_grid, -1)"], lambda g: np.rot90(g, -1)),
    _program("transpose", "reflection, diagonal", "Reflect the grid across its main diagonal.",
             ["output_grid = input_grid.T"], np.transpose),
    _program("anti_transpose", "reflection, diagonal",
             "Reflect the grid across its anti-diagonal.",
             ["output_grid = np.rot90(input_grid, 2).T"], lambda g: np.rot90(g, 2).T),
    _program("tile_1x2", "repetition", "Repeat the grid twice side by side.",
             ["output_grid = np.tile(input_grid, (1, 2))"], lambda g: np.tile(g, (1, 2))),
    _program("tile_2x1", "repetition", "Repeat the grid twice, one copy above the other.",
             ["output_grid = np.tile(input_grid, (2, 1))"], lambda g: np.tile(g, (2, 1))),
    _program("tile_2x2", "repetition", "Repeat the grid in a 2x2 pattern.",
             ["output_grid = np.tile(input_grid, (2, 2))"], lambda g: np.tile(g, (2, 2))),
    _program("scale_2", "scaling", "Scale the grid up by a factor of 2.",
             ["output_grid = np.kron(input_grid, np.ones((2, 2), dtype=int))"],
             lambda g: np.kron(g, np.ones((2, 2), dtype=int))),
    _program("scale_3", "scaling", "Scale the grid up by a factor of 3.",
             ["output_grid = np.kron(input_grid, np.ones((3, 3), dtype=int))"],
             lambda g: np.kron(g, np.ones((3, 3), dtype=int))),
    _program("mirror_right", "reflection, concatenation",
             "Put the mirror image of the grid to its right.",
             ["output_grid = np.concatenate([input_grid, np.fliplr(input_grid)], axis=1)"],
             lambda g: _concat(g, np.fliplr(g), axis=1)),
    _program("mirror_left", "reflection, concatenation",
             "Put the mirror image of the grid to its left.",
             ["output_grid = np.concatenate([np.fliplr(input_grid), input_grid], axis=1)"],
             lambda g: _concat(np.fliplr(g), g, axis=1)),
    _program("mirror_down", "reflection, concatenation",
             "Put the mirror image of the grid below it.",
             ["output_grid = np.concatenate([input_grid, np.flipud(input_grid)], axis=0)"],
             lambda g: _concat(g, np.flipud(g), axis=0)),
    _program("mirror_up", "reflection, concatenation",
             "Put the mirror image of the grid above it.",
             ["output_grid = np.concatenate([np.flipud(input_grid), input_grid], axis=0)"],
             lambda g: _concat(np.flipud(g), g, axis=0)),
    _program("mirror_quad", "reflection, symmetry",
             "Mirror the grid to the right, then mirror the result downwards.",
             ["top = np.concatenate([input_grid, np.fliplr(input_grid)], axis=1)",
              "output_grid = np.concatenate([top, np.flipud(top)], axis=0)"],
             _mirror_quad),
    _program("rotate_quad", "rotation, symmetry",
             "Place four rotated copies of the grid around its bottom right corner.",
             ["top = np.concatenate([input_grid, np.rot90(input_grid, -1)], axis=1)",
              "bottom = np.concatenate([np.rot90(input_grid), np.rot90(input_grid, 2)], axis=1)",
              "output_grid = np.concatenate([top, bottom], axis=0)"],
             _rotate_quad),
)


def color_map_program(mapping: Mapping[int, int]) -> Program:
    """Recolours every cell of colour `a` to `mapping[a]` (all at once, so swaps work)."""
    changes = sorted((int(a), int(b)) for a, b in mapping.items() if a != b)
    if not changes:
        raise ValueError(f"color_map_program: the mapping {dict(mapping)} changes no colour")
    for a, b in changes:
        if not (0 <= a <= 9 and 0 <= b <= 9):
            raise ValueError(f"color_map_program: colours must be 0-9, got {a} -> {b}")
    lines = ["output_grid = input_grid.copy()"] + [
        f"output_grid[input_grid == Color.{COLOR_CONSTANTS[a]}] = Color.{COLOR_CONSTANTS[b]}"
        for a, b in changes
    ]
    table = np.arange(10)
    for a, b in changes:
        table[a] = b
    description = "Recolor each pixel with the color mapping below."
    return _program("color_map", "color mapping", description, lines, lambda g: table[g])


def infer_color_map(task: Task) -> dict[int, int] | None:
    """The cell-wise colour mapping that turns every train input into its output, or None.

    None when shapes differ, when one input colour becomes two different colours, or when
    no colour changes.
    """
    mapping: dict[int, int] = {}
    for pair in task.train:
        if pair.output is None or pair.input.shape != pair.output.shape:
            return None
        for a, b in zip(pair.input.ravel().tolist(), pair.output.ravel().tolist()):
            if mapping.setdefault(a, b) != b:
                return None
    changes = {a: b for a, b in mapping.items() if a != b}
    return changes or None


def solves(program: Program, task: Task) -> bool:
    """Whether `program` maps every train and test input of `task` exactly to its output.

    A task with a hidden test output cannot be checked, so it is never solved.
    """
    for pair in task.train + task.test:
        if pair.output is None:
            return False
        try:
            predicted = program.apply(pair.input)
        except ValueError:  # e.g. rotate_quad on a non-square grid
            return False
        if predicted.shape != pair.output.shape or not np.array_equal(predicted, pair.output):
            return False
    return True


def candidate_programs(task: Task) -> list[Program]:
    """The programs of the family worth checking on `task`: the geometric ones, and the
    colour map read off its train pairs when there is one."""
    candidates = list(GEOMETRIC_PROGRAMS)
    mapping = infer_color_map(task)
    if mapping is not None:
        candidates.append(color_map_program(mapping))
    return candidates


def find_solvable_tasks(tasks: Mapping[str, Task]) -> dict[str, Program]:
    """Task id -> the first program of the family that solves it (train and test pairs)."""
    found = {}
    for task_id, task in tasks.items():
        for program in candidate_programs(task):
            if solves(program, task):
                found[task_id] = program
                break
    return found

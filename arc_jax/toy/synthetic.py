"""Synthetic ARC tasks for the toy policy: random small grids and a program of the family.

A task is drawn as: a program (geometric, or a random colour map), 2-4 train pairs and one
test pair whose outputs are the program's numpy meaning applied to random grids. Tasks that
another geometric program also explains are redrawn, so every example has one answer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from arc_jax.data.types import Pair, Task
from arc_jax.toy.programs import GEOMETRIC_PROGRAMS, Program, color_map_program

_MAX_REDRAWS = 100


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic tasks are drawn.

    min_side, max_side: input grid sides (max_side is lowered for programs that grow the
      grid, so that no output side exceeds max_output_side).
    min_train, max_train: number of train pairs (there is always one test pair).
    color_map_probability: share of tasks whose program is a colour map.
    """

    min_side: int = 2
    max_side: int = 5
    max_output_side: int = 9
    min_train: int = 2
    max_train: int = 4
    color_map_probability: float = 0.25

    def __post_init__(self):
        if not 1 <= self.min_side <= self.max_side <= self.max_output_side:
            raise ValueError(
                "SyntheticConfig: expected 1 <= min_side <= max_side <= max_output_side, got "
                f"{self.min_side}, {self.max_side}, {self.max_output_side}")
        if not 1 <= self.min_train <= self.max_train:
            raise ValueError(f"SyntheticConfig: expected 1 <= min_train <= max_train, got "
                             f"{self.min_train}, {self.max_train}")
        if not 0 <= self.color_map_probability <= 1:
            raise ValueError(f"SyntheticConfig.color_map_probability must be in [0, 1], got "
                             f"{self.color_map_probability}")


def growth(program: Program) -> int:
    """How many times larger than its input side the program's largest output side is."""
    probe = np.zeros((2, 2), dtype=int)
    return max(program.apply(probe).shape) // 2


def needs_square(program: Program) -> bool:
    """Whether the program only accepts square grids."""
    try:
        program.apply(np.zeros((2, 3), dtype=int))
    except ValueError:
        return True
    return False


def random_grid(rng: np.random.Generator, shape: tuple[int, int],
                colors: np.ndarray, sparse: bool) -> np.ndarray:
    """A grid [H, W] of the given colours; when sparse, mostly black (colour 0)."""
    grid = rng.choice(colors, size=shape)
    if sparse:
        grid = np.where(rng.random(shape) < 0.6, 0, grid)
    return grid.astype(np.int64)


def random_color_map(rng: np.random.Generator) -> dict[int, int]:
    """1-2 replacements (a -> b) or 1-4 swaps (a <-> b) of distinct colours."""
    if rng.random() < 0.5:
        count = int(rng.integers(1, 3))
        sources = rng.choice(10, size=count, replace=False)
        return {int(a): int(rng.choice([c for c in range(10) if c != a])) for a in sources}
    count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.15, 0.15]))
    colors = rng.choice(10, size=2 * count, replace=False).tolist()
    mapping = {}
    for a, b in zip(colors[::2], colors[1::2]):
        mapping[a], mapping[b] = b, a
    return mapping


def _shape(rng, program: Program, config: SyntheticConfig) -> tuple[int, int]:
    max_side = min(config.max_side, config.max_output_side // growth(program))
    rows, cols = rng.integers(config.min_side, max(config.min_side, max_side) + 1, size=2)
    return (int(rows), int(rows)) if needs_square(program) else (int(rows), int(cols))


def _inputs(rng, program: Program, config: SyntheticConfig, count: int,
            sources: list[int]) -> list[np.ndarray]:
    """Random input grids; for colour maps, their colours include every mapped colour."""
    if sources:
        extra = [c for c in range(10) if c not in sources]
        colors = np.array(sources + rng.choice(extra, size=int(rng.integers(0, 2))).tolist())
        return [random_grid(rng, _shape(rng, program, config), colors, sparse=False)
                for _ in range(count)]
    colors = rng.choice(np.arange(1, 10), size=int(rng.integers(2, 5)), replace=False)
    sparse = bool(rng.random() < 0.5)
    return [random_grid(rng, _shape(rng, program, config), colors, sparse) for _ in range(count)]


def _ambiguous(program: Program, train: list[Pair]) -> bool:
    """Whether a geometric program other than `program` also explains every train pair."""
    for other in GEOMETRIC_PROGRAMS:
        if other.name == program.name:
            continue
        try:
            outputs = [other.apply(pair.input) for pair in train]
        except ValueError:
            continue
        if all(o.shape == p.output.shape and np.array_equal(o, p.output)
               for o, p in zip(outputs, train)):
            return True
    return False


def _covers(sources: list[int], train: list[Pair]) -> bool:
    seen = set(np.concatenate([pair.input.ravel() for pair in train]).tolist())
    return set(sources) <= seen


def synthetic_task(rng: np.random.Generator, task_id: str,
                   config: SyntheticConfig = SyntheticConfig()) -> tuple[Task, Program]:
    """A random task and the program that solves it."""
    if rng.random() < config.color_map_probability:
        mapping = random_color_map(rng)
        program, sources = color_map_program(mapping), sorted(mapping)
    else:
        program, sources = GEOMETRIC_PROGRAMS[int(rng.integers(len(GEOMETRIC_PROGRAMS)))], []
    num_train = int(rng.integers(config.min_train, config.max_train + 1))
    for _ in range(_MAX_REDRAWS):
        grids = _inputs(rng, program, config, num_train + 1, sources)
        pairs = [Pair(g, program.apply(g)) for g in grids]
        train = pairs[:num_train]
        if not _ambiguous(program, train) and _covers(sources, train):
            return Task(task_id, tuple(train), tuple(pairs[num_train:])), program
    raise RuntimeError(f"synthetic_task {task_id}: no unambiguous task for {program.name} after "
                       f"{_MAX_REDRAWS} draws; widen SyntheticConfig's grid sizes")


def synthetic_tasks(count: int, seed: int,
                    config: SyntheticConfig = SyntheticConfig()) -> list[tuple[Task, Program]]:
    """`count` tasks, reproducible from `seed`, with ids "synthetic-0", "synthetic-1", ..."""
    rng = np.random.default_rng(seed)
    return [synthetic_task(rng, f"synthetic-{i}", config) for i in range(count)]

"""ARC task types: a Task is a list of train pairs and a list of test pairs."""

from __future__ import annotations

import dataclasses

import numpy as np

from arc_jax.errors import UserError


class TaskFormatError(UserError, ValueError):
    """A task file or record does not follow the ARC format.

    The message names the file (when there is one), the task id and the exact field.
    """


@dataclasses.dataclass(frozen=True)
class Pair:
    """One example: `input` and `output` are 2-D integer arrays (row = axis 0).

    `output` is None for a hidden test output (Kaggle challenges without solutions).
    """

    input: np.ndarray
    output: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Task:
    id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]

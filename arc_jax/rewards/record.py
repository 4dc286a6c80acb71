"""The per-completion record: what one sampled completion did on one task."""

from __future__ import annotations

import dataclasses

import numpy as np

from arc_jax.rewards.grading import PartitionGrade

# error_type of a completion without a complete ```python block (the name arc25 uses).
PARSE_ERROR = "ParsingCodeFailed"


@dataclasses.dataclass(frozen=True)
class CompletionRecord:
    """Code, execution outcome, grades and reward of one completion.

    Outputs are in the orientation and colours of the task they were compared with: the
    original task when the completion was scored with an augmentation (outputs reverted),
    else the task as given. A prediction that is not valid (any error) is graded as if it
    had produced no grid at all, so its grades and fingerprint say nothing about the
    outputs it did produce; those stay in `train_outputs`/`test_outputs`.
    """

    code: str | None  # None: the completion had no complete ```python block
    error_type: str | None  # None iff the code ran and every output is a valid grid
    error_message: str
    train_outputs: tuple[np.ndarray | None, ...]
    test_outputs: tuple[np.ndarray | None, ...]
    train: PartitionGrade
    test: PartitionGrade | None  # None when the task's test outputs are hidden
    fingerprint: str | None  # None unless valid
    reward: float
    duration_s: float = 0.0  # execution wall time

    @property
    def parsed(self) -> bool:
        return self.code is not None

    @property
    def valid(self) -> bool:
        return self.error_type is None

    @property
    def solved(self) -> bool:
        """Valid, every train grid right, and every test grid right where the test outputs are
        known (a task with hidden test outputs is judged on its train pairs). The one definition
        behind `solved_ratio`, solve rates and the demo's counts."""
        return self.valid and self.train.is_correct and (self.test is None or self.test.is_correct)

    @property
    def shown_only(self) -> bool:
        """Valid, every train grid right (the pairs the prompt shows) but some test grid wrong:
        what a program that copies the prompt's outputs achieves. False when the test outputs
        are hidden."""
        return (self.valid and self.train.is_correct and self.test is not None
                and not self.test.is_correct)

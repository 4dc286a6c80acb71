"""Reward schemes for GRPO: a completion's outcome -> one float.

Every scheme rewards a valid prediction (code ran, every output a valid grid) with
`1 + grids_weight * cg + pixel_weight * px`, where over all graded grids of the task,
train and test together,
    cg = correct grids / graded grids,  px = mean pixel score,
and gives fixed values to completions without code and to code that fails.

| name                    | no code | code fails | valid            | range    |
|-------------------------|---------|------------|------------------|----------|
| `arc-v0`                | -1      | 0          | 1 + 8 cg + px    | [-1, 10] |
| `arc-v1` (default)      | 0       | 0          | 1 + 8 cg + px    | [0, 10]  |
| `arc-v2-no-pixel-score` | 0       | 0          | 1 + 9 cg         | [0, 10]  |
| `arc-unseen`            | 0       | 0          | 1 + 8 cg' + px'  | [0, 10]  |

`arc-unseen` grades only the grids whose outputs the prompt does not show: cg' and px' are
taken over the test grids alone (the prompt shows every train pair, but only the test
inputs). The reference schemes pool the train grids too, and those can be copied from the
prompt: a program that returns the shown output when its input is a shown train input, and
its input otherwise, solves nothing yet scores about 7.8 of 10 under `arc-v1` on ARC tasks;
under `arc-unseen` it scores what the identity scores. With hidden test outputs nothing is
graded and a valid prediction gets 1.

`arc-v0` is arc25's reward of Sept 19-25 2025 (its "new reward" of Iteration 24), `arc-v1`
its default from Sept 25 and `arc-v2-no-pixel-score` the one from Oct 5. A reward of 10
means every grid is correct. The weight 8 keeps one more correct grid worth more than any
pixel score for tasks of up to 8 grids.
"""

from __future__ import annotations

import dataclasses

from arc_jax.rewards.grading import PartitionGrade
from arc_jax.rewards.record import CompletionRecord


@dataclasses.dataclass(frozen=True)
class RewardScheme:
    no_code: float  # the completion has no complete ```python block
    invalid: float  # code that fails: error, timeout, or an invalid output
    grids_weight: float
    pixel_weight: float
    unseen_only: bool = False  # grade only the grids the prompt does not show (the test)


SCHEMES: dict[str, RewardScheme] = {
    "arc-v0": RewardScheme(no_code=-1.0, invalid=0.0, grids_weight=8.0, pixel_weight=1.0),
    "arc-v1": RewardScheme(no_code=0.0, invalid=0.0, grids_weight=8.0, pixel_weight=1.0),
    "arc-v2-no-pixel-score": RewardScheme(no_code=0.0, invalid=0.0, grids_weight=9.0, pixel_weight=0.0),
    "arc-unseen": RewardScheme(no_code=0.0, invalid=0.0, grids_weight=8.0, pixel_weight=1.0,
                               unseen_only=True),
}
DEFAULT_SCHEME = "arc-v1"


def get_scheme(name: str) -> RewardScheme:
    """The scheme called `name`, or a ValueError listing the known names."""
    if name not in SCHEMES:
        raise ValueError(f"unknown reward scheme {name!r}; expected one of {sorted(SCHEMES)}")
    return SCHEMES[name]


def pooled_scores(train: PartitionGrade, test: PartitionGrade | None) -> tuple[float, float]:
    """(correct grids, mean pixel score) over the train and test grids together.

    The test partition is left out when its outputs are hidden (None).
    """
    grades = [train] if test is None else [train, test]
    num_grids = sum(g.num_grids for g in grades)
    correct_grids = sum(g.num_correct for g in grades) / num_grids
    pixel_score = sum(sum(g.pixel_scores) for g in grades) / num_grids
    return correct_grids, pixel_score


def reward(
    scheme: str, *, parsed: bool, valid: bool, train: PartitionGrade, test: PartitionGrade | None
) -> float:
    """The reward of one completion under `scheme`."""
    weights = get_scheme(scheme)
    if not parsed:
        return weights.no_code
    if not valid:
        return weights.invalid
    if weights.unseen_only:
        if test is None:
            return 1.0
        correct_grids, pixel_score = test.correct_grids, test.pixel_score
    else:
        correct_grids, pixel_score = pooled_scores(train, test)
    return 1.0 + weights.grids_weight * correct_grids + weights.pixel_weight * pixel_score


def reward_from_record(record: CompletionRecord, scheme: str = DEFAULT_SCHEME) -> float:
    """The reward `record` would get under `scheme` (to compare schemes on the same outcome)."""
    return reward(scheme, parsed=record.parsed, valid=record.valid, train=record.train, test=record.test)

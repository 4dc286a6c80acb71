"""Collapse guard: detect GRPO runs degenerating into long, repetitive, truncated completions.

Every long arc25 run of this recipe eventually collapsed: completions became repetitive text that
ran into the token limit. The guard watches two metrics of each logged step,

- `truncated_ratio`: the fraction of completions that hit the limit without ending, and
- `repetition/4gram`: the mean fraction of a completion's 4-grams that repeat an earlier one
  (`arc_jax.train.grpo.repeated_ngram_fractions`),

and calls a logged step *bad* when both are at or above their thresholds. After `patience`
consecutive bad logged steps the run is *collapsed*: the guard logs a warning with the numbers
on every collapsed step and, with `action="rollback"`, asks the trainer to restore an earlier
checkpoint and continue with a lower learning rate.

Knobs (`CollapseConfig`):
- `enabled`: False turns the guard off (every verdict is ok; the metrics are not needed).
- `truncated_ratio_threshold`, `repetition_threshold`: a logged step is bad when
  truncated_ratio >= the first and repetition/4gram >= the second. A threshold of 0 makes the
  guard watch only the other metric. Healthy runs of the BARC model truncate a few percent of
  completions; collapsed ones most of them.
- `patience`: consecutive bad logged steps before the run counts as collapsed (measured in
  logged steps, so the time it covers is `patience * logging_steps` training steps).
- `action`: "warn" only logs; "rollback" also returns a rollback verdict.
- `rollback_lr_factor`: each rollback multiplies the learning rate by this factor, so after k
  rollbacks the trainer uses `lr * rollback_lr_factor ** k` (`Verdict.lr_scale`).
- `max_rollbacks`: rollbacks allowed in one run. A collapse after the last one (or one with no
  healthy step to return to) gives a stop verdict: the trainer ends the run, keeping its
  checkpoints. `max_rollbacks=0` therefore stops at the first collapse.

Which checkpoint: the checkpoint of step s holds the state after s updates, and the metrics
logged at step s describe completions sampled by the state before update s, i.e. state s - 1.
So the newest state known to be healthy is (last healthy logged step) - 1, given as
`Verdict.rollback_to`: the trainer restores its newest checkpoint at or before that step,
deletes the later ones, and carries on with `lr_scale`; with no such checkpoint it stops.
It keeps this guard's state across the rollback (the restored checkpoint holds the guard's
older state); on a resume after a crash it loads the guard state saved with the checkpoint
(`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from absl import logging

TRUNCATED_RATIO = "truncated_ratio"
REPETITION = "repetition/4gram"
ACTIONS = ("warn", "rollback")


@dataclasses.dataclass(frozen=True)
class CollapseConfig:
    """Settings of the collapse guard; the module docstring explains each."""

    enabled: bool = True
    truncated_ratio_threshold: float = 0.5
    repetition_threshold: float = 0.5
    patience: int = 3
    action: str = "warn"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 2

    def __post_init__(self):
        for name in ("truncated_ratio_threshold", "repetition_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CollapseConfig.{name} must be in [0, 1], "
                                 f"got {getattr(self, name)}")
        if self.patience < 1:
            raise ValueError(f"CollapseConfig.patience must be >= 1, got {self.patience}")
        if self.action not in ACTIONS:
            raise ValueError(f"CollapseConfig.action must be one of {ACTIONS}, got {self.action!r}")
        if not 0.0 < self.rollback_lr_factor <= 1.0:
            raise ValueError("CollapseConfig.rollback_lr_factor must be in (0, 1], "
                             f"got {self.rollback_lr_factor}")
        if self.max_rollbacks < 0:
            raise ValueError(f"CollapseConfig.max_rollbacks must be >= 0, got {self.max_rollbacks}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The guard's reading of one logged step.

    collapsed: this step ends a run of `patience` or more consecutive bad logged steps.
    rollback: restore the newest checkpoint at or before `rollback_to`, then use `lr_scale`.
    stop: collapsed with no rollback left (or nothing healthy to return to): end the run.
    streak: consecutive bad logged steps up to this one (0 after a rollback verdict).
    rollback_to: with `rollback`, the newest step whose state is known to be healthy.
    lr_scale: the factor on the configured learning rate from now on.
    """

    collapsed: bool = False
    rollback: bool = False
    stop: bool = False
    streak: int = 0
    rollback_to: int | None = None
    lr_scale: float = 1.0


def _metric(metrics: Mapping[str, Any], name: str, step: int) -> float:
    if name not in metrics:
        raise KeyError(f"collapse guard: metric {name!r} missing at step {step} "
                       f"(logged: {sorted(metrics)})")
    value = float(metrics[name])
    if not math.isfinite(value):
        raise ValueError(f"collapse guard: metric {name!r} at step {step} is {value}")
    return value


class CollapseGuard:
    """A state machine over logged steps; its state is checkpointed for an exact resume."""

    def __init__(self, config: CollapseConfig):
        self.config = config
        self._streak = 0
        self._last_ok_step: int | None = None  # newest healthy logged step since the last rollback
        self._rollbacks = 0
        self._floor: int | None = None  # rollback_to of the last rollback

    @property
    def lr_scale(self) -> float:
        return self.config.rollback_lr_factor ** self._rollbacks

    def update(self, step: int, metrics: Mapping[str, Any]) -> Verdict:
        """Read one logged step's metrics and say whether the run has collapsed."""
        config = self.config
        if not config.enabled:
            return Verdict(lr_scale=self.lr_scale)
        truncated = _metric(metrics, TRUNCATED_RATIO, step)
        repetition = _metric(metrics, REPETITION, step)
        if truncated < config.truncated_ratio_threshold or repetition < config.repetition_threshold:
            self._streak, self._last_ok_step = 0, step
            return Verdict(lr_scale=self.lr_scale)
        self._streak += 1
        if self._streak < config.patience:
            return Verdict(streak=self._streak, lr_scale=self.lr_scale)

        target = self._last_ok_step - 1 if self._last_ok_step is not None else self._floor
        can_roll_back = self._rollbacks < config.max_rollbacks and target is not None
        if config.action == "warn":
            outcome = "action=warn: training continues"
        elif can_roll_back:
            outcome = (f"rolling back to the newest checkpoint at or before step {target} with "
                       f"learning-rate scale {config.rollback_lr_factor ** (self._rollbacks + 1):g}"
                       f" (rollback {self._rollbacks + 1} of {config.max_rollbacks})")
        else:
            outcome = ("stopping: " + ("no rollback left" if target is not None
                                        else "no healthy logged step to roll back to"))
        logging.warning(
            "TRAINING COLLAPSE at step %d: %s=%.3f (threshold %.3f) and %s=%.3f (threshold %.3f) "
            "for %d consecutive logged steps; %s", step, TRUNCATED_RATIO, truncated,
            config.truncated_ratio_threshold, REPETITION, repetition, config.repetition_threshold,
            self._streak, outcome)

        if config.action == "warn":
            return Verdict(collapsed=True, streak=self._streak, lr_scale=self.lr_scale)
        if not can_roll_back:
            return Verdict(collapsed=True, stop=True, streak=self._streak, lr_scale=self.lr_scale)
        self._rollbacks += 1
        self._streak, self._last_ok_step, self._floor = 0, None, target
        return Verdict(collapsed=True, rollback=True, rollback_to=target, lr_scale=self.lr_scale)

    def state_dict(self) -> dict[str, int | None]:
        """JSON-safe state, for the checkpoint's meta."""
        return {"streak": self._streak, "last_ok_step": self._last_ok_step,
                "rollbacks": self._rollbacks, "floor": self._floor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state_dict` (on resume from a checkpoint)."""
        expected = {"streak", "last_ok_step", "rollbacks", "floor"}
        if set(state) != expected:
            raise ValueError(f"collapse guard state must have keys {sorted(expected)}, "
                             f"got {sorted(state)}")
        self._streak, self._last_ok_step = state["streak"], state["last_ok_step"]
        self._rollbacks, self._floor = state["rollbacks"], state["floor"]

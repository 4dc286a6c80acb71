"""AdamW with global-norm clipping and Hugging Face learning-rate schedules, in optax.

Names and meanings follow `transformers.TrainingArguments`, so a TRL configuration carries over:
the gradient is clipped to `max_grad_norm` (global L2 norm), then AdamW with decoupled weight
decay updates the parameters at the scheduled learning rate of the update's index (0-based).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant_with_warmup", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser settings (Hugging Face `TrainingArguments` names).

    learning_rate: the peak learning rate.
    lr_scheduler_type: "constant_with_warmup" (linear warmup, then constant) or "cosine"
      (linear warmup, then a half cosine from the peak down to 0 at total_steps).
    warmup_ratio: warmup length as a fraction of total_steps (rounded up, as in transformers).
    total_steps: the number of optimiser updates the schedule spans.
    weight_decay, adam_beta1, adam_beta2, adam_epsilon: AdamW's (torch's AdamW semantics).
    max_grad_norm: clip the gradient to this global norm; None or 0 disables clipping.
    """

    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_ratio: float = 0.0
    total_steps: int = 1000
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.lr_scheduler_type must be one of {SCHEDULES}, "
                             f"got {self.lr_scheduler_type!r}")
        if self.learning_rate < 0:
            raise ValueError("OptimizerConfig.learning_rate must be >= 0, got "
                             f"{self.learning_rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError("OptimizerConfig.warmup_ratio must be in [0, 1], got "
                             f"{self.warmup_ratio}")
        if self.total_steps < 1:
            raise ValueError(f"OptimizerConfig.total_steps must be >= 1, got {self.total_steps}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError("OptimizerConfig.max_grad_norm must be >= 0 or None, got "
                             f"{self.max_grad_norm}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"OptimizerConfig.{name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.total_steps * self.warmup_ratio)


def make_schedule(config: OptimizerConfig) -> Callable[[jax.Array], jax.Array]:
    """step (0-based update index) -> learning rate, as transformers' `get_scheduler`."""
    peak, warmup, total = config.learning_rate, config.warmup_steps, config.total_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(1, warmup)
        if config.lr_scheduler_type == "constant_with_warmup":
            after = jnp.ones_like(step)
        else:
            progress = (step - warmup) / max(1, total - warmup)
            after = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return peak * jnp.where(step < warmup, warm, after)

    return schedule


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping (if max_grad_norm) followed by AdamW on `make_schedule(config)`."""
    adamw = optax.adamw(make_schedule(config), b1=config.adam_beta1, b2=config.adam_beta2,
                        eps=config.adam_epsilon, weight_decay=config.weight_decay)
    if not config.max_grad_norm:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)

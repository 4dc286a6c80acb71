"""GRPO advantages, losses and metrics with the semantics of TRL's `GRPOTrainer`.

One optimiser step sees a batch of B completions: B / G prompts with G = `num_generations`
completions each, in consecutive blocks of G. A trainer uses the pieces in this order:

1. `group_advantages(rewards, G, scale_rewards)`: advantages [B] and reward statistics.
2. `completion_mask(completion_ids, eos_ids, pad_id, ...)`: loss mask [B, T] and truncation [B].
3. `batch_normaliser(mask)`: the loss denominators, computed once over the whole batch.
4. For each micro-batch, `grpo_loss(logprobs, old_logprobs, advantages, mask, normaliser, config,
   ref_logprobs=..., sampler_logprobs=...)` gives `(loss, metrics)`. With `num_iterations == 1`,
   `old_logprobs` may be `jax.lax.stop_gradient(logprobs)`.

Gradient accumulation is exact. Every loss type is a weighted sum of per-token losses,
`loss = sum_{i,t} m_{i,t} L_{i,t} / D_i`, whose denominators `D_i` depend only on the whole
batch (the `Normaliser`) and on row i. So the micro-batch losses and gradients of any split sum
to those of the whole batch. Metric means are normalised by whole-batch counts in the same way,
and micro-batch metrics combine with `merge_metrics`.

| loss_type | D_i here                               | TRL with g micro-batches on one process    |
|-----------|----------------------------------------|--------------------------------------------|
| `grpo`, `sapo` | num_sequences * max(sum_t m_{i,t}, 1) | the same when micro-batches are equal-sized |
| `bnpo`    | num_tokens of the whole batch          | micro-batch token count * g                |
| `dr_grpo` | num_sequences * max_completion_length  | the same when micro-batches are equal-sized |
| `dapo`, `cispo`, `vespo` | num_tokens of the whole batch | the same                        |
| `luspo`   | num_sequences                          | the same when micro-batches are equal-sized |

With one micro-batch every loss type, option and logged loss metric equals TRL 1.16's
`_compute_loss` on the same tensors (tests/test_trl_parity.py runs TRL's own code).

Where this differs from TRL:
- TRL's `bnpo` averages the token means of the micro-batches, which is not the batch token mean
  when micro-batches hold different numbers of tokens. Here `bnpo` is the batch token mean
  (`bnpo_scope="batch"`, equal to `dapo` on one process); `bnpo_scope="micro_batch"` gives TRL's.
- The token count is taken from the mask the trainer passes, i.e. after truncated completions are
  masked, as on TRL main (v0.23 still counted their tokens).
- A group whose rewards are all equal gets advantage exactly 0 (TRL: 0 up to rounding).
  `reward_std` and `frac_reward_zero_std` are logged as TRL 1.16 logs them (`group_advantages`).
- The importance-sampling options drop TRL's `vllm_` prefix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # -min(w A, clip(w) A)
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
BNPO_SCOPES = ("batch", "micro_batch")

STD_EPS = 1e-4  # added to the reward std before dividing, as in TRL
_ZERO_STD = 1e-8  # torch.isclose(std, 0)'s tolerance, below which a group carries no signal


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """Loss settings. Names and meanings follow TRL's `GRPOConfig` (1.16); the defaults are
    v0.23's, the version of the reference runs (`trl_1_16_defaults` gives 1.16's).

    loss_type: the clipped objective `grpo`, `bnpo`, `dr_grpo`, `dapo`, `luspo` (which differ in
      how per-token losses are averaged: table in the module docstring), or `cispo`
      (-sg(min(w, epsilon_high)) A logp), `sapo` (-sigmoid(tau (w - 1)) 4 / tau A) or `vespo`
      (-phi(w) A logp with phi a Gamma weight of the sequence ratio).
    beta: weight of the k3 KL estimate to the reference policy (the base model with adapters
      disabled). With beta == 0 no reference log-probs are needed.
    epsilon, epsilon_high: the ratio is clipped to [1 - epsilon, 1 + epsilon_high];
      epsilon_high defaults to epsilon. For `cispo`, epsilon_high is the ratio's cap itself.
    importance_sampling_level: "token" (one ratio w per token) or "sequence" (GSPO: the mean
      log-ratio of the sequence, one w per sequence).
    use_bias_correction_kl: multiply the KL term by w (TRL 1.16's default True).
    sapo_temperature_pos, sapo_temperature_neg: sapo's tau for A > 0 and A <= 0.
    vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: vespo's phi(w) =
      exp(lambda + k log w - lambda w) for A >= 0 and A < 0.
    off_policy_mask_threshold: if set, drop sequences with A < 0 whose mean (sampler - current)
      log-prob exceeds it (DeepSeek-V3.2's off-policy sequence mask).
    delta: if set, the unclipped ratio is also capped at delta (INTELLECT-2 two-sided clipping).
    top_entropy_quantile: rho in [0, 1]; below 1, only the tokens whose entropy is at least
      the (1 - rho) quantile of the micro-batch's completion tokens keep their policy loss
      (TRL's entropy mask, "80/20": the high-entropy forking tokens); the KL term is kept on
      every token and the normaliser is unchanged, as in TRL.
    scale_rewards: advantage scaling, "group", "batch" or "none" (see `group_advantages`).
    mask_truncated_completions: remove the loss of completions that never emit EOS.
    max_completion_length: the per-sequence denominator of `dr_grpo`.
    importance_sampling_correction: reweight the loss by the detached ratio between the trainer's
      and the sampler's probabilities (TRL's `vllm_importance_sampling_correction`).
    importance_sampling_mode: "token_truncate" (TRL v0.23's only mode), "token_mask",
      "sequence_truncate" or "sequence_mask" (TRL main's `vllm_importance_sampling_mode`).
    importance_sampling_cap, importance_sampling_min: the ratio's bounds (TRL's
      `vllm_importance_sampling_cap` / `_clip_max` and `_clip_min`); None means no lower bound.
    bnpo_scope: "batch" (exact batch token mean) or "micro_batch" (TRL's per-micro-batch mean).
    soft_punish_cache: DAPO's soft overlong punishment (TRL's `get_soft_overlong_punishment`),
      added to the rewards before the advantages: 0 up to max_completion_length - cache
      tokens, then falling linearly to -1 at max_completion_length. 0 = off.
    """

    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    importance_sampling_level: str = "token"
    use_bias_correction_kl: bool = False
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    off_policy_mask_threshold: float | None = None
    top_entropy_quantile: float = 1.0
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    max_completion_length: int = 256
    importance_sampling_correction: bool = False
    importance_sampling_mode: str = "token_truncate"
    importance_sampling_cap: float = 2.0
    importance_sampling_min: float | None = None
    bnpo_scope: str = "batch"
    soft_punish_cache: int = 0

    def __post_init__(self):
        for name, allowed in (("loss_type", LOSS_TYPES), ("scale_rewards", SCALE_REWARDS),
                              ("importance_sampling_level", IMPORTANCE_SAMPLING_LEVELS),
                              ("importance_sampling_mode", IMPORTANCE_SAMPLING_MODES),
                              ("bnpo_scope", BNPO_SCOPES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"GRPOLossConfig.{name} must be one of {allowed}, got {value!r}")
        for field in dataclasses.fields(self):  # every number finite (a NaN passes any >=)
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"GRPOLossConfig.{field.name} must be a finite number, "
                                 f"got {value}")
        if self.beta < 0:
            raise ValueError(f"GRPOLossConfig.beta must be >= 0, got {self.beta}")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"GRPOLossConfig.epsilon must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise ValueError(
                f"GRPOLossConfig.epsilon_high must be >= 0 or None, got {self.epsilon_high}")
        if not 0 <= self.top_entropy_quantile <= 1:
            raise ValueError("GRPOLossConfig.top_entropy_quantile must be in [0, 1], got "
                             f"{self.top_entropy_quantile}")
        if self.delta is not None and self.delta <= 1:
            raise ValueError(f"GRPOLossConfig.delta must be > 1 or None, got {self.delta}")
        for name in ("sapo_temperature_pos", "sapo_temperature_neg", "vespo_lambda_pos",
                     "vespo_lambda_neg"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GRPOLossConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.soft_punish_cache <= self.max_completion_length:
            raise ValueError("GRPOLossConfig.soft_punish_cache must be in [0, "
                             f"max_completion_length={self.max_completion_length}], got "
                             f"{self.soft_punish_cache}")
        if self.max_completion_length < 1:
            raise ValueError("GRPOLossConfig.max_completion_length must be >= 1, got "
                             f"{self.max_completion_length}")
        if self.importance_sampling_cap <= 0:
            raise ValueError("GRPOLossConfig.importance_sampling_cap must be > 0, got "
                             f"{self.importance_sampling_cap}")
        low = self.importance_sampling_min
        if low is not None and not 0 <= low < self.importance_sampling_cap:
            raise ValueError("GRPOLossConfig.importance_sampling_min must be None or in [0, "
                             f"importance_sampling_cap={self.importance_sampling_cap}), got {low}")

    @property
    def clip_range(self) -> tuple[float, float]:
        """(1 - epsilon, 1 + epsilon_high): the interval the clipped ratio lives in."""
        high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        return 1.0 - self.epsilon, 1.0 + high


# ----------------------------------------------------------------------------------- rewards


def _nan_mean_std(x: jax.Array, axis=None) -> tuple[jax.Array, jax.Array]:
    """Mean and Bessel-corrected std of the non-NaN entries of x along axis.

    The mean is 0 where there is no entry and the std is 0 where there are fewer than two.
    """
    valid = ~jnp.isnan(x)
    count = valid.sum(axis)
    mean = jnp.where(valid, x, 0.0).sum(axis) / jnp.maximum(count, 1)
    centred = x - (mean if axis is None else jnp.expand_dims(mean, axis))
    squares = jnp.where(valid, centred**2, 0.0).sum(axis)
    std = jnp.where(count > 1, jnp.sqrt(squares / jnp.maximum(count - 1, 1)), 0.0)
    return mean, std


def soft_overlong_penalty(lengths: np.ndarray, max_completion_length: int, cache: int
                          ) -> np.ndarray:
    """DAPO's soft overlong punishment of completions of `lengths` tokens [N]: 0 up to
    max_completion_length - cache, (max_completion_length - cache - L) / cache above it, -1
    beyond max_completion_length; all 0 when cache is 0."""
    lengths = np.asarray(lengths, np.float64)
    if cache == 0:
        return np.zeros_like(lengths)
    start = max_completion_length - cache
    return np.where(lengths > max_completion_length, -1.0,
                    np.minimum(0.0, (start - lengths) / cache))


def group_advantages(rewards: jax.Array, num_generations: int,
                     scale_rewards: str = "group") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Group-centred advantages A_i = (r_i - mean_g) / (std + 1e-4), and reward statistics.

    rewards [B] holds B / num_generations groups of consecutive completions; NaN marks a missing
    reward, which is left out of every mean and std and gets advantage 0. The std (Bessel-corrected)
    is the group's for "group", the whole batch's for "batch"; "none" does not divide (Dr. GRPO).
    A group whose valid rewards are all equal has advantage 0.
    Statistics, as TRL 1.16 logs them: `reward` (mean), `reward_std` (std of all rewards, NaN
    with fewer than two), `frac_reward_zero_std` (fraction of completions whose scaling std,
    the group's or for "batch" the batch's, is defined and zero; a group with fewer than two
    valid rewards has no std and does not count).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape [B], got {rewards.shape}")
    if num_generations < 1 or rewards.shape[0] % num_generations:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, which is not a positive "
                         f"multiple of num_generations={num_generations}")
    groups = rewards.reshape(-1, num_generations)              # [B/G, G]
    group_mean, group_std = _nan_mean_std(groups, axis=1)      # [B/G], [B/G]
    batch_mean, batch_std = _nan_mean_std(rewards)             # [], []
    centred = groups - group_mean[:, None]                     # [B/G, G]
    if scale_rewards == "batch":
        std = jnp.broadcast_to(batch_std, (groups.shape[0], 1))
    else:  # for "none" the group std is only logged
        std = group_std[:, None]                               # [B/G, 1]
    scaled = centred if scale_rewards == "none" else centred / (std + STD_EPS)
    zero_std = group_std <= _ZERO_STD                          # [B/G], also undefined stds
    advantages = jnp.where(zero_std[:, None] | jnp.isnan(groups), 0.0, scaled)
    group_counts = (~jnp.isnan(groups)).sum(axis=1)            # [B/G]
    batch_count = (~jnp.isnan(rewards)).sum()                  # []
    # TRL takes a std over one element to be 0, and nanstd over fewer than two valid ones NaN.
    if scale_rewards == "batch":
        defined = (batch_count > 1) | (rewards.shape[0] == 1)
        logged_zero = jnp.broadcast_to(defined & (batch_std <= _ZERO_STD), group_counts.shape)
    else:
        logged_zero = ((group_counts > 1) | (num_generations == 1)) & zero_std
    stats = {
        "reward": batch_mean,
        "reward_std": jnp.where(batch_count > 1, batch_std, jnp.nan),
        "frac_reward_zero_std": logged_zero.mean(),
    }
    return advantages.reshape(-1), stats


# -------------------------------------------------------------------------------------- masks


def completion_mask(completion_ids: jax.Array, eos_ids: Sequence[int], pad_id: int, *,
                    mask_truncated: bool = False,
                    truncated: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Loss mask [B, T] (float32) and truncation flags [B] (bool) of right-padded completions.

    The mask covers each completion up to and including its first EOS (any of eos_ids); a
    completion without EOS is covered up to its last non-pad token. A completion is truncated if
    it has no EOS (TRL's definition) unless `truncated` [B] is given, e.g. from the sampler's
    finish reasons. With mask_truncated, the rows of truncated completions are all zero.
    """
    ids = jnp.asarray(completion_ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"completion_ids must be integer token ids [B, T], got {ids.dtype}"
                         f"{list(ids.shape)}")
    if not eos_ids:
        raise ValueError("eos_ids must name at least one end-of-sequence token id")
    batch, length = ids.shape
    is_eos = jnp.isin(ids, jnp.asarray(eos_ids, ids.dtype))            # [B, T]
    has_eos = is_eos.any(axis=1)                                       # [B]
    first_eos = jnp.argmax(is_eos, axis=1)                             # [B]
    is_token = (ids != pad_id) | is_eos                                # [B, T]
    last_token = length - 1 - jnp.argmax(is_token[:, ::-1], axis=1)    # [B]
    end = jnp.where(has_eos, first_eos + 1, jnp.where(is_token.any(axis=1), last_token + 1, 0))
    mask = jnp.arange(length)[None, :] < end[:, None]                  # [B, T]
    if truncated is None:
        truncated = ~has_eos
    else:
        truncated = jnp.asarray(truncated, bool)
        if truncated.shape != (batch,):
            raise ValueError(f"truncated must have shape [{batch}] (one flag per completion), "
                             f"got {list(truncated.shape)}")
    if mask_truncated:
        mask = mask & ~truncated[:, None]
    return mask.astype(jnp.float32), truncated


# --------------------------------------------------------------------------------------- loss


class Normaliser(NamedTuple):
    """Loss denominators of a whole batch, shared by all of its micro-batches."""

    num_tokens: jax.Array         # [] sum of the loss mask, at least 1
    num_sequences: jax.Array      # [] rows of the batch, masked rows included (as in TRL)
    num_micro_batches: jax.Array  # [] read only by bnpo_scope="micro_batch"


def batch_normaliser(mask: jax.Array, num_micro_batches: int = 1) -> Normaliser:
    """The `Normaliser` of a batch with loss mask [B, T], to be split into num_micro_batches."""
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [B, T], got {list(mask.shape)}")
    if num_micro_batches < 1:
        raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
    return Normaliser(num_tokens=jnp.maximum(mask.sum(), 1.0),
                      num_sequences=jnp.asarray(mask.shape[0], jnp.float32),
                      num_micro_batches=jnp.asarray(num_micro_batches, jnp.float32))


def _check_inputs(logprobs, old_logprobs, advantages, mask, config, ref_logprobs,
                  sampler_logprobs, entropies) -> None:
    """Raise a ValueError naming the tensor or option that does not fit."""
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must have shape [B, T], got {list(logprobs.shape)}")
    shape = logprobs.shape
    for name, x in (("old_logprobs", old_logprobs), ("mask", mask),
                    ("ref_logprobs", ref_logprobs), ("sampler_logprobs", sampler_logprobs),
                    ("entropies", entropies)):
        if x is not None and x.shape != shape:
            raise ValueError(f"{name} must have the shape of logprobs {list(shape)}, "
                             f"got {list(x.shape)}")
    if advantages.shape != shape[:1]:
        raise ValueError(f"advantages must have shape [{shape[0]}] (one per completion), "
                         f"got {list(advantages.shape)}")
    if config.beta != 0 and ref_logprobs is None:
        raise ValueError(f"beta={config.beta} needs ref_logprobs (log-probs of the reference "
                         "policy, the base model with adapters disabled)")
    if config.beta == 0 and ref_logprobs is not None:
        raise ValueError("ref_logprobs were given but beta == 0: the KL term is off, so do not "
                         "compute them")
    if config.importance_sampling_correction and sampler_logprobs is None:
        raise ValueError("importance_sampling_correction needs sampler_logprobs (the sampler's "
                         "log-probs of the completion tokens)")
    if not config.importance_sampling_correction and sampler_logprobs is not None:
        raise ValueError("sampler_logprobs were given but importance_sampling_correction is off")
    if config.top_entropy_quantile < 1 and entropies is None:
        raise ValueError(f"top_entropy_quantile={config.top_entropy_quantile} needs the "
                         "entropies of the completion tokens")
    if config.loss_type == "dr_grpo" and shape[1] > config.max_completion_length:
        raise ValueError(f"completions have {shape[1]} tokens, more than "
                         f"max_completion_length={config.max_completion_length} (dr_grpo's "
                         "denominator)")


def importance_sampling_ratio(old_logprobs: jax.Array, sampler_logprobs: jax.Array,
                              mask: jax.Array, config: GRPOLossConfig) -> jax.Array:
    """Detached sampler-correction weights: [B, T] for token modes, [B, 1] for sequence modes.

    delta_{i,t} = (old - sampler) * m; token modes use exp(delta_{i,t}), sequence modes
    exp(sum_t delta_{i,t}). "*_truncate" clamps to [importance_sampling_min, cap]; "*_mask" sets
    ratios outside that interval to 0.
    """
    delta = (old_logprobs - sampler_logprobs) * mask                    # [B, T]
    if config.importance_sampling_mode.startswith("sequence"):
        delta = delta.sum(axis=1, keepdims=True)                         # [B, 1]
    ratio = jnp.exp(delta)
    low, high = config.importance_sampling_min, config.importance_sampling_cap
    if config.importance_sampling_mode.endswith("truncate"):
        ratio = jnp.clip(ratio, low, high)
    else:
        outside = (ratio > high) | (ratio < (0.0 if low is None else low))
        ratio = jnp.where(outside, 0.0, ratio)
    return jax.lax.stop_gradient(ratio)


def log_importance_weights(logprobs: jax.Array, old_logprobs: jax.Array, mask: jax.Array,
                           level: str) -> jax.Array:
    """log w: [B, T] per token (logprobs - old), or [B, 1] per sequence (GSPO: their mean over
    the sequence's tokens)."""
    log_ratio = logprobs - old_logprobs                                # [B, T]
    if level == "token":
        return log_ratio
    return ((log_ratio * mask).sum(axis=1, keepdims=True)
            / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0))        # [B, 1]


def vespo_weights(log_ratio: jax.Array, advantages: jax.Array, mask: jax.Array,
                  config: GRPOLossConfig, sampler_weight: jax.Array | None = None) -> jax.Array:
    """VESPO's detached phi(w) [B, 1] = exp(lambda + k log w - lambda w) of the sequence ratio
    w = exp(sum_t m (logprobs - old)) (times the sampler correction's weights, if given), with
    log w clamped to [log 1e-8, 20]; k, lambda by the sign of A [B, 1]."""
    floor = float(np.log(1e-8))
    log_w = (jnp.clip(log_ratio, -20.0, 20.0) * mask).sum(axis=1, keepdims=True)   # [B, 1]
    if sampler_weight is not None:
        log_w = log_w + jnp.clip(jnp.log(sampler_weight), floor, 20.0).sum(axis=1, keepdims=True)
    log_w = jnp.clip(log_w, floor, 20.0)
    positive = advantages >= 0
    k = jnp.where(positive, config.vespo_k_pos, config.vespo_k_neg)
    lam = jnp.where(positive, config.vespo_lambda_pos, config.vespo_lambda_neg)
    phi = jnp.exp(lam + k * log_w - lam * jnp.exp(log_w))
    return jax.lax.stop_gradient(jnp.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0))


def off_policy_mask(logprobs: jax.Array, sampling_logprobs: jax.Array, advantages: jax.Array,
                    mask: jax.Array, threshold: float) -> jax.Array:
    """DeepSeek-V3.2's off-policy sequence mask [B, 1]: keep a sequence if A >= 0 or its mean
    (sampling - current) log-prob is at most threshold."""
    gap = jnp.nan_to_num(sampling_logprobs - jax.lax.stop_gradient(logprobs), nan=0.0)
    mean_gap = ((gap * mask).sum(axis=1, keepdims=True)
                / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0))   # [B, 1]
    return ((advantages >= 0) | (mean_gap <= threshold)).astype(jnp.float32)


def high_entropy_mask(entropies: jax.Array, mask: jax.Array, quantile: float) -> jax.Array:
    """[B, T] bool: completion tokens (mask) whose entropy is at least the `quantile` quantile
    (linear interpolation, as `torch.quantile`) of the completion tokens' entropies; all False
    when there is no completion token."""
    valid = mask > 0
    count = valid.sum()
    ordered = jnp.sort(jnp.where(valid, entropies, jnp.inf).reshape(-1))      # valid ones first
    position = quantile * (jnp.maximum(count, 1) - 1).astype(jnp.float32)
    below = jnp.floor(position).astype(jnp.int32)
    above = jnp.minimum(below + 1, jnp.maximum(count - 1, 0))
    low, high = ordered[below], ordered[above]
    threshold = low + (position - below) * jnp.where(above > below, high - low, 0.0)
    return valid & (entropies >= threshold) & (count > 0)


def per_token_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                   mask: jax.Array, config: GRPOLossConfig, *,
                   ref_logprobs: jax.Array | None = None,
                   sampler_logprobs: jax.Array | None = None,
                   entropies: jax.Array | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Unmasked per-token loss L [B, T] and the per-token terms that the metrics need.

    With w = exp(log_importance_weights) (capped at delta if set, for the clipped objective):
    the clipped objective L = -min(w A, clip(w, 1 - eps, 1 + eps_high) A); cispo, sapo and
    vespo as in `GRPOLossConfig`. Then, in TRL's order: the off-policy sequence mask, the
    entropy mask (top_entropy_quantile < 1; entropies [B, T] of the policy's distributions),
    the importance-sampling weight (folded into phi for vespo), and beta * k3 with
    k3 = exp(ref - logprobs) - (ref - logprobs) - 1 (times w with use_bias_correction_kl).
    Gradients flow only through logprobs (and through w).
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask, config, ref_logprobs,
                  sampler_logprobs, entropies)
    logprobs = logprobs.astype(jnp.float32)
    old_logprobs = jax.lax.stop_gradient(old_logprobs.astype(jnp.float32))
    advantages = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]  # [B, 1]
    low, high = config.clip_range
    ratio = jnp.exp(log_importance_weights(logprobs, old_logprobs, mask,
                                           config.importance_sampling_level))  # [B, T] or [B, 1]
    terms = {}
    weight = None
    if config.importance_sampling_correction:
        sampler_logprobs = jax.lax.stop_gradient(sampler_logprobs.astype(jnp.float32))
        weight = importance_sampling_ratio(old_logprobs, sampler_logprobs, mask, config)
        terms["importance_sampling_ratio"] = weight
        terms["sampling_logp_difference"] = jnp.abs(old_logprobs - sampler_logprobs)

    if config.loss_type in CLIPPED_LOSS_TYPES:
        clipped_ratio = jnp.clip(ratio, low, high)
        capped = ratio if config.delta is None else jnp.minimum(ratio, config.delta)
        loss = -jnp.minimum(capped * advantages, clipped_ratio * advantages)
        terms["low_clipped"] = (capped < low) & (advantages < 0)  # TRL counts after delta
        terms["high_clipped"] = (capped > high) & (advantages > 0)
    elif config.loss_type == "cispo":
        cap = config.clip_range[1] - 1.0  # epsilon_high (or epsilon) itself
        loss = -jax.lax.stop_gradient(jnp.minimum(ratio, cap)) * advantages * logprobs
        terms["cispo_clipped"] = (ratio > cap) & (advantages > 0)
    elif config.loss_type == "sapo":
        tau = jnp.where(advantages > 0, config.sapo_temperature_pos, config.sapo_temperature_neg)
        loss = -(jax.nn.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau) * advantages
    else:  # vespo
        phi = vespo_weights(logprobs - old_logprobs, advantages, mask, config, weight)
        loss = -phi * advantages * logprobs
        terms["vespo_phi"] = phi
    loss = jnp.broadcast_to(loss, logprobs.shape)

    if config.off_policy_mask_threshold is not None:
        sampling = old_logprobs if sampler_logprobs is None else sampler_logprobs
        loss = loss * off_policy_mask(logprobs, sampling, advantages, mask,
                                      config.off_policy_mask_threshold)
    if config.top_entropy_quantile < 1:
        entropies = jax.lax.stop_gradient(entropies.astype(jnp.float32))
        kept = high_entropy_mask(entropies, mask, 1.0 - config.top_entropy_quantile)
        loss = loss * kept
        terms["entropy_kept"] = kept
    if weight is not None and config.loss_type != "vespo":
        loss = loss * weight

    if config.beta != 0:
        ref_logprobs = jax.lax.stop_gradient(ref_logprobs.astype(jnp.float32))
        log_ref_ratio = ref_logprobs - logprobs                        # [B, T]
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0              # [B, T], >= 0
        if config.use_bias_correction_kl:
            kl = kl * ratio
        loss = loss + config.beta * kl
        terms["kl"] = kl
    return loss, terms


def aggregate(loss: jax.Array, mask: jax.Array, normaliser: Normaliser,
              config: GRPOLossConfig) -> jax.Array:
    """Scalar loss of a (micro-)batch from per-token losses [B, T] and the batch normaliser."""
    masked = loss * mask                                                # [B, T]
    if config.loss_type in ("grpo", "sapo"):
        lengths = jnp.maximum(mask.sum(axis=1), 1.0)                    # [B]
        return (masked.sum(axis=1) / lengths).sum() / normaliser.num_sequences
    if config.loss_type == "luspo":  # sequence sums, averaged over sequences
        return masked.sum() / normaliser.num_sequences
    if config.loss_type == "dr_grpo":
        return masked.sum() / (normaliser.num_sequences * config.max_completion_length)
    if config.loss_type == "bnpo" and config.bnpo_scope == "micro_batch":
        return masked.sum() / (jnp.maximum(mask.sum(), 1.0) * normaliser.num_micro_batches)
    return masked.sum() / normaliser.num_tokens                         # dapo, bnpo, cispo, vespo


def loss_metrics(terms: Mapping[str, jax.Array], mask: jax.Array, normaliser: Normaliser,
                 config: GRPOLossConfig) -> dict[str, jax.Array]:
    """TRL's loss metrics of a (micro-)batch: means are normalised by whole-batch counts.

    Names: `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean` (clipped
    objectives), `cispo_clip_ratio`, `vespo/phi_seq_mean`, `kl` (beta != 0),
    `entropy_mask/kept_fraction` (top_entropy_quantile < 1: the share of tokens with a policy loss),
    `sampling/importance_sampling_ratio/{min,mean,max}` and
    `sampling/sampling_logp_difference/{mean,max}` (importance sampling on). A term with one
    value per sequence (sequence-level ratios, vespo's phi) is averaged over sequences.
    """
    token = mask > 0
    sequence_ratio = config.importance_sampling_level == "sequence"

    def token_mean(x, per_sequence=False):
        if per_sequence:
            return x.sum() / normaliser.num_sequences
        return (x * mask).sum() / normaliser.num_tokens

    def token_min(x):
        return jnp.where(token, x, jnp.inf).min()

    def token_max(x):
        return jnp.where(token, x, -jnp.inf).max()

    metrics = {}
    if "low_clipped" in terms:
        low, high = terms["low_clipped"], terms["high_clipped"]
        metrics |= {"clip_ratio/low_mean": token_mean(low, sequence_ratio),
                    "clip_ratio/high_mean": token_mean(high, sequence_ratio),
                    "clip_ratio/region_mean": token_mean(low | high, sequence_ratio)}
    if "cispo_clipped" in terms:
        metrics["cispo_clip_ratio"] = token_mean(terms["cispo_clipped"], sequence_ratio)
    if "vespo_phi" in terms:
        metrics["vespo/phi_seq_mean"] = token_mean(terms["vespo_phi"], per_sequence=True)
    if "kl" in terms:
        metrics["kl"] = token_mean(terms["kl"])
    if "entropy_kept" in terms:
        metrics["entropy_mask/kept_fraction"] = token_mean(terms["entropy_kept"])
    if "importance_sampling_ratio" in terms:
        ratio = terms["importance_sampling_ratio"]
        prefix = "sampling/importance_sampling_ratio/"
        if config.importance_sampling_mode.startswith("sequence"):  # one ratio per sequence
            metrics |= {prefix + "min": ratio.min(),
                        prefix + "mean": ratio.sum() / normaliser.num_sequences,
                        prefix + "max": ratio.max()}
        else:
            metrics |= {prefix + "min": token_min(ratio), prefix + "mean": token_mean(ratio),
                        prefix + "max": token_max(ratio)}
        difference = terms["sampling_logp_difference"]
        metrics |= {"sampling/sampling_logp_difference/mean": token_mean(difference),
                    "sampling/sampling_logp_difference/max": token_max(difference)}
    return metrics


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
              mask: jax.Array, normaliser: Normaliser, config: GRPOLossConfig, *,
              ref_logprobs: jax.Array | None = None,
              sampler_logprobs: jax.Array | None = None,
              entropies: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss and metrics of one micro-batch (or of the whole batch).

    logprobs [B, T]: the policy's log-probs of the completion tokens (temperature-scaled logits),
    the only input gradients flow through. old_logprobs [B, T]: the same under the policy that
    generated the batch. advantages [B], mask [B, T] (float). normaliser: `batch_normaliser` of
    the whole batch. ref_logprobs [B, T]: required iff config.beta != 0. sampler_logprobs [B, T]:
    required iff config.importance_sampling_correction. entropies [B, T]: required iff
    config.top_entropy_quantile < 1 (the quantile is taken over this call's tokens, as TRL
    takes it per micro-batch).
    """
    mask = jnp.asarray(mask, jnp.float32)
    loss, terms = per_token_loss(logprobs, old_logprobs, advantages, mask, config,
                                 ref_logprobs=ref_logprobs, sampler_logprobs=sampler_logprobs,
                                 entropies=entropies)
    return aggregate(loss, mask, normaliser, config), loss_metrics(terms, mask, normaliser, config)


def merge_metrics(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Combine the metrics of two micro-batches: min of `*/min`, max of `*/max`, sum of the rest."""
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge metrics with different names: {sorted(a)} vs {sorted(b)}")
    combine = {"min": jnp.minimum, "max": jnp.maximum}
    return {k: combine.get(k.rsplit("/", 1)[-1], jnp.add)(a[k], b[k]) for k in a}


def sampler_agreement(trainer_logprobs: np.ndarray, sampler_logprobs: np.ndarray,
                      mask: np.ndarray) -> dict[str, float]:
    """How far the sampler's log-probs of its own tokens are from the trainer's, before the
    update: per token |trainer - sampler| (mean, max), per sequence |sum of the differences|
    (mean, max), and the importance ratio exp(trainer - sampler) per token (min, mean, max).

    trainer_logprobs, sampler_logprobs, mask: [..., T] (mask 1 on completion tokens).
    """
    trainer = np.asarray(trainer_logprobs, np.float64)
    sampler = np.asarray(sampler_logprobs, np.float64)
    keep = np.asarray(mask) > 0
    if trainer.shape != sampler.shape or trainer.shape != keep.shape:
        raise ValueError(f"sampler_agreement: shapes {trainer.shape}, {sampler.shape} and "
                         f"{keep.shape} differ")
    if not keep.any():
        return {}
    delta = np.where(keep, trainer - sampler, 0.0)                      # [..., T]
    per_sequence = np.abs(delta.sum(-1))[keep.any(-1)]                 # [sequences]
    ratio = np.exp(delta[keep])                                        # [tokens]
    return {"sampling/logprob_diff/mean": float(np.abs(delta[keep]).mean()),
            "sampling/logprob_diff/max": float(np.abs(delta[keep]).max()),
            "sampling/seq_logprob_diff/mean": float(per_sequence.mean()),
            "sampling/seq_logprob_diff/max": float(per_sequence.max()),
            "sampling/ratio/min": float(ratio.min()), "sampling/ratio/mean": float(ratio.mean()),
            "sampling/ratio/max": float(ratio.max())}


# -------------------------------------------------------------------------------- repetition


def repeated_ngram_fraction(token_ids: Sequence[int] | np.ndarray, n: int = 4) -> float:
    """Fraction of a completion's n-grams that repeat an earlier n-gram of it (collapse signal).

    1 - distinct / total over the len - n + 1 n-grams; 0.0 for a completion shorter than n.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"token_ids must be one completion's ids [T], got shape {ids.shape}")
    if ids.shape[0] < n:
        return 0.0
    ngrams = np.lib.stride_tricks.sliding_window_view(ids, n)        # [T - n + 1, n]
    return 1.0 - len(np.unique(ngrams, axis=0)) / ngrams.shape[0]


def repeated_ngram_fractions(completion_ids: np.ndarray, mask: np.ndarray,
                             n: int = 4) -> np.ndarray:
    """`repeated_ngram_fraction` [B] of each row's tokens under mask [B, T]."""
    ids, mask = np.asarray(completion_ids), np.asarray(mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"completion_ids {list(ids.shape)} and mask {list(mask.shape)} must "
                         "both have shape [B, T]")
    return np.array([repeated_ngram_fraction(row[keep > 0], n) for row, keep in zip(ids, mask)])

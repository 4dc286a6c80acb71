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
| `grpo`    | num_sequences * max(sum_t m_{i,t}, 1)  | the same when micro-batches are equal-sized |
| `bnpo`    | num_tokens of the whole batch          | micro-batch token count * g                |
| `dr_grpo` | num_sequences * max_completion_length  | the same when micro-batches are equal-sized |
| `dapo`    | num_tokens of the whole batch          | the same                                   |

Where this differs from TRL:
- TRL's `bnpo` averages the token means of the micro-batches, which is not the batch token mean
  when micro-batches hold different numbers of tokens. Here `bnpo` is the batch token mean
  (`bnpo_scope="batch"`, equal to `dapo` on one process); `bnpo_scope="micro_batch"` gives TRL's.
- The token count is taken from the mask the trainer passes, i.e. after truncated completions are
  masked, as on TRL main (v0.23 still counted their tokens).
- A group whose rewards are all equal gets advantage exactly 0 (TRL: 0 up to rounding), and
  `frac_reward_zero_std` always counts such groups (TRL derives it from the batch std under
  `scale_rewards="batch"`, which makes it 0 or 1).
- The importance-sampling options drop TRL's `vllm_` prefix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
BNPO_SCOPES = ("batch", "micro_batch")

STD_EPS = 1e-4  # added to the reward std before dividing, as in TRL
_ZERO_STD = 1e-8  # torch.isclose(std, 0)'s tolerance, below which a group carries no signal


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """Loss settings. Names, meanings and defaults follow TRL's `GRPOConfig` (v0.23).

    loss_type: how per-token losses are averaged (table in the module docstring).
    beta: weight of the k3 KL estimate to the reference policy (the base model with adapters
      disabled). With beta == 0 no reference log-probs are needed.
    epsilon, epsilon_high: the ratio is clipped to [1 - epsilon, 1 + epsilon_high];
      epsilon_high defaults to epsilon.
    delta: if set, the unclipped ratio is also capped at delta (INTELLECT-2 two-sided clipping).
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
    """

    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    max_completion_length: int = 256
    importance_sampling_correction: bool = False
    importance_sampling_mode: str = "token_truncate"
    importance_sampling_cap: float = 2.0
    importance_sampling_min: float | None = None
    bnpo_scope: str = "batch"

    def __post_init__(self):
        for name, allowed in (("loss_type", LOSS_TYPES), ("scale_rewards", SCALE_REWARDS),
                              ("importance_sampling_mode", IMPORTANCE_SAMPLING_MODES),
                              ("bnpo_scope", BNPO_SCOPES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"GRPOLossConfig.{name} must be one of {allowed}, got {value!r}")
        if self.beta < 0:
            raise ValueError(f"GRPOLossConfig.beta must be >= 0, got {self.beta}")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"GRPOLossConfig.epsilon must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise ValueError(
                f"GRPOLossConfig.epsilon_high must be >= 0 or None, got {self.epsilon_high}")
        if self.delta is not None and self.delta <= 1:
            raise ValueError(f"GRPOLossConfig.delta must be > 1 or None, got {self.delta}")
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


def group_advantages(rewards: jax.Array, num_generations: int,
                     scale_rewards: str = "group") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Group-centred advantages A_i = (r_i - mean_g) / (std + 1e-4), and reward statistics.

    rewards [B] holds B / num_generations groups of consecutive completions; NaN marks a missing
    reward, which is left out of every mean and std and gets advantage 0. The std (Bessel-corrected)
    is the group's for "group", the whole batch's for "batch"; "none" does not divide (Dr. GRPO).
    A group whose valid rewards are all equal has advantage 0.
    Statistics: `reward` (mean), `reward_std` (mean of the std used; group std for "none"),
    `frac_reward_zero_std` (fraction of groups with zero std).
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
    zero_std = group_std <= _ZERO_STD                          # [B/G]
    advantages = jnp.where(zero_std[:, None] | jnp.isnan(groups), 0.0, scaled)
    stats = {
        "reward": batch_mean,
        "reward_std": std.mean(),
        "frac_reward_zero_std": zero_std.mean(),
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
                  sampler_logprobs) -> None:
    """Raise a ValueError naming the tensor or option that does not fit."""
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must have shape [B, T], got {list(logprobs.shape)}")
    shape = logprobs.shape
    for name, x in (("old_logprobs", old_logprobs), ("mask", mask),
                    ("ref_logprobs", ref_logprobs), ("sampler_logprobs", sampler_logprobs)):
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


def per_token_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                   mask: jax.Array, config: GRPOLossConfig, *,
                   ref_logprobs: jax.Array | None = None,
                   sampler_logprobs: jax.Array | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Unmasked per-token loss L [B, T] and the per-token terms that the metrics need.

    L = -min(w A, clip(w, 1 - eps, 1 + eps_high) A) with w = exp(logprobs - old_logprobs)
    (w also capped at delta if set), times the importance-sampling weight if enabled, plus
    beta * k3 with k3 = exp(ref - logprobs) - (ref - logprobs) - 1. Gradients flow only through
    logprobs.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask, config, ref_logprobs,
                  sampler_logprobs)
    logprobs = logprobs.astype(jnp.float32)
    old_logprobs = jax.lax.stop_gradient(old_logprobs.astype(jnp.float32))
    advantages = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]  # [B, 1]
    low, high = config.clip_range

    ratio = jnp.exp(logprobs - old_logprobs)                           # [B, T]
    clipped_ratio = jnp.clip(ratio, low, high)                         # [B, T]
    if config.delta is not None:
        ratio = jnp.minimum(ratio, config.delta)
    loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    terms = {"low_clipped": (ratio < low) & (advantages < 0),
             "high_clipped": (ratio > high) & (advantages > 0)}

    if config.importance_sampling_correction:
        sampler_logprobs = jax.lax.stop_gradient(sampler_logprobs.astype(jnp.float32))
        weight = importance_sampling_ratio(old_logprobs, sampler_logprobs, mask, config)
        loss = loss * weight
        terms["importance_sampling_ratio"] = weight
        terms["sampling_logp_difference"] = jnp.abs(old_logprobs - sampler_logprobs)

    if config.beta != 0:
        ref_logprobs = jax.lax.stop_gradient(ref_logprobs.astype(jnp.float32))
        log_ref_ratio = ref_logprobs - logprobs                        # [B, T]
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0              # [B, T], >= 0
        loss = loss + config.beta * kl
        terms["kl"] = kl
    return loss, terms


def aggregate(loss: jax.Array, mask: jax.Array, normaliser: Normaliser,
              config: GRPOLossConfig) -> jax.Array:
    """Scalar loss of a (micro-)batch from per-token losses [B, T] and the batch normaliser."""
    masked = loss * mask                                                # [B, T]
    if config.loss_type == "grpo":
        lengths = jnp.maximum(mask.sum(axis=1), 1.0)                    # [B]
        return (masked.sum(axis=1) / lengths).sum() / normaliser.num_sequences
    if config.loss_type == "dr_grpo":
        return masked.sum() / (normaliser.num_sequences * config.max_completion_length)
    if config.loss_type == "bnpo" and config.bnpo_scope == "micro_batch":
        return masked.sum() / (jnp.maximum(mask.sum(), 1.0) * normaliser.num_micro_batches)
    return masked.sum() / normaliser.num_tokens                         # dapo, bnpo


def loss_metrics(terms: Mapping[str, jax.Array], mask: jax.Array,
                 normaliser: Normaliser) -> dict[str, jax.Array]:
    """TRL's loss metrics of a (micro-)batch: means are normalised by whole-batch counts.

    Names: `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`, `kl`
    (beta != 0), `sampling/importance_sampling_ratio/{min,mean,max}` and
    `sampling/sampling_logp_difference/{mean,max}` (importance sampling on; sequence modes
    take the ratio's statistics over sequences).
    """
    token = mask > 0

    def token_mean(x):
        return (x * mask).sum() / normaliser.num_tokens

    def token_min(x):
        return jnp.where(token, x, jnp.inf).min()

    def token_max(x):
        return jnp.where(token, x, -jnp.inf).max()

    low, high = terms["low_clipped"], terms["high_clipped"]
    metrics = {"clip_ratio/low_mean": token_mean(low),
               "clip_ratio/high_mean": token_mean(high),
               "clip_ratio/region_mean": token_mean(low | high)}
    if "kl" in terms:
        metrics["kl"] = token_mean(terms["kl"])
    if "importance_sampling_ratio" in terms:
        ratio = terms["importance_sampling_ratio"]
        prefix = "sampling/importance_sampling_ratio/"
        if ratio.shape[1] == 1:  # one ratio per sequence
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
              sampler_logprobs: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss and metrics of one micro-batch (or of the whole batch).

    logprobs [B, T]: the policy's log-probs of the completion tokens (temperature-scaled logits),
    the only input gradients flow through. old_logprobs [B, T]: the same under the policy that
    generated the batch. advantages [B], mask [B, T] (float). normaliser: `batch_normaliser` of
    the whole batch. ref_logprobs [B, T]: required iff config.beta != 0. sampler_logprobs [B, T]:
    required iff config.importance_sampling_correction.
    """
    mask = jnp.asarray(mask, jnp.float32)
    loss, terms = per_token_loss(logprobs, old_logprobs, advantages, mask, config,
                                 ref_logprobs=ref_logprobs, sampler_logprobs=sampler_logprobs)
    return aggregate(loss, mask, normaliser, config), loss_metrics(terms, mask, normaliser)


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

"""Sampling transforms: pure functions on float32 logits [B, V].

They run in the order of transformers' `generate` (and vLLM's sampler):
  1. repetition penalty (on raw logits),
  2. temperature,
  3. top-k,
  4. top-p (over what top-k kept, renormalised),
  5. min-p.
Removed tokens get -inf, so `log_softmax` of the result is the distribution actually sampled
from. (min-p compares each probability with the largest one, a ratio that the earlier
renormalisations do not change, so vLLM applying it before top-k/top-p gives the same set.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from arc_jax.rollout.interface import SamplingParams


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """Penalises tokens already seen [B, V] (bool): positive logits / p, negative logits * p."""
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def apply_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row (all ties with the k-th largest)."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def apply_top_p(logits: jax.Array, p: float, cuts: int = 1) -> jax.Array:
    """Keeps the most likely tokens until their probability sum reaches p (at least one).

    As transformers: in ascending order, a token is removed while the cumulative probability
    up to and including it is <= 1 - p, so a token is kept exactly when the probability of
    all tokens with a logit at or below its own exceeds 1 - p (ties are kept together). The
    smallest such logit is found by a search over the logits' ordered bit patterns, instead of
    sorting 128k logits per row at every decoding step: each pass takes `cuts` masked sums
    over [B, V] and keeps the (cuts + 1)-th of the interval that holds the threshold. cuts=1
    is a binary search (32 passes); cuts=7 takes 11 passes of 7 sums, fewer reads of [B, V]
    if the 7 sums share one (`benchmarks/sampler.py --top_p_cuts` times both).
    """
    probs = jax.nn.softmax(logits, axis=-1)                                     # [B, V]
    keys = ordered_keys(logits)                                                 # [B, V] int32
    parts = cuts + 1

    def narrow(_, bounds):  # invariant: mass(<= lo) <= 1 - p < mass(<= hi)
        lo, hi = bounds                                                         # [B, 1]
        # cut j = lo + floor(j * (hi - lo) / parts), in uint32 (hi - lo may exceed 2**31)
        width = jax.lax.bitcast_convert_type(hi - lo, jnp.uint32)
        j = jnp.arange(1, parts, dtype=jnp.uint32)                               # [cuts]
        step = width // parts * j + width % parts * j // parts                  # [B, cuts]
        points = lo + jax.lax.bitcast_convert_type(step, jnp.int32)             # [B, cuts]
        mass = jnp.stack([jnp.sum(jnp.where(keys <= points[:, i:i + 1], probs, 0.0), axis=-1)
                          for i in range(cuts)], axis=-1)                       # [B, cuts]
        below = jnp.sum(mass <= 1 - p, axis=-1, keepdims=True)                  # [B, 1]
        bounds = jnp.concatenate([lo, points, hi], axis=-1)                     # [B, cuts + 2]
        return (jnp.take_along_axis(bounds, below, axis=-1),
                jnp.take_along_axis(bounds, below + 1, axis=-1))

    lo = jnp.min(keys, axis=-1, keepdims=True) - 1                              # [B, 1]
    hi = jnp.max(keys, axis=-1, keepdims=True)
    passes = 1
    while parts ** passes < 2 ** 32:  # each pass leaves at most ceil(width / parts)
        passes += 1
    _, threshold = jax.lax.fori_loop(0, passes, narrow, (lo, hi))
    return jnp.where(keys < threshold, -jnp.inf, logits)


def ordered_keys(x: jax.Array) -> jax.Array:
    """int32 keys of float32 x that order as x does (-inf lowest; -0.0 and +0.0 equal)."""
    x = jnp.where(x == 0, 0.0, x.astype(jnp.float32))
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def apply_min_p(logits: jax.Array, min_p: float) -> jax.Array:
    """Removes tokens whose probability is below min_p times the row's largest probability."""
    probs = jax.nn.softmax(logits, axis=-1)
    threshold = min_p * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(probs < threshold, -jnp.inf, logits)


def process_logits(logits: jax.Array, seen: jax.Array | None,
                   sampling: SamplingParams) -> jax.Array:
    """All transforms of `sampling`, in the documented order; logits [B, V] float32.

    `seen` [B, V] marks tokens of the prompt and completion so far (needed only when
    repetition_penalty != 1). Greedy sampling (temperature 0) applies only the penalty.
    """
    if sampling.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("process_logits: repetition_penalty needs the `seen` token mask")
        logits = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
    if sampling.greedy:
        return logits
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    if sampling.top_k > 0:
        logits = apply_top_k(logits, sampling.top_k)
    if sampling.top_p < 1.0:  # the same tokens either way; 7 cuts read [B, V] fewer times
        logits = apply_top_p(logits, sampling.top_p, 7 if jax.default_backend() == "gpu" else 1)
    if sampling.min_p > 0.0:
        logits = apply_min_p(logits, sampling.min_p)
    return logits


def choose_tokens(keys: jax.Array, processed: jax.Array, greedy: bool) -> jax.Array:
    """Next tokens [B] (int32) from processed logits [B, V]: argmax, or one draw per row key."""
    if greedy:
        return jnp.argmax(processed, axis=-1).astype(jnp.int32)
    draw = jax.vmap(lambda key, row: jax.random.categorical(key, row))
    return draw(keys, processed).astype(jnp.int32)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log_softmax(logits)[b, tokens[b]] for logits [B, V], tokens [B] -> [B] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]

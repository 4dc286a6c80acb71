"""Prefill once per prompt, then decode n samples per prompt against that one prompt cache.

Shapes: P prompts, n samples per prompt, B = P * n rows, S prompt slots (prompts are
right-padded to S), T completion slots (max_new_tokens), D hidden size, N query heads,
K key/value heads, g = N / K query heads per key/value head, H head dim, V vocabulary.

The prompt cache holds one copy of each prompt's keys and values [P, S, K, H]; each sample
has its own completion cache [P, n, T, K, H]. A decoding query of sample (p, i) attends to
the softmax over [prompt p's keys ; sample (p, i)'s completion keys], so each decoding step
reads every prompt cache once, not n times.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from arc_jax.model.llama import KVCache, Llama, shared_prefix_attention
from arc_jax.model.sharding import constrain
from arc_jax.rollout.interface import SamplingParams
from arc_jax.rollout.sampling import choose_tokens, process_logits, token_logprobs


@flax.struct.dataclass
class PromptCache:
    """k[i], v[i]: layer i's [P, S, K, H]; valid [P, S]: slot holds a prompt token; lengths [P]."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    lengths: jax.Array


@flax.struct.dataclass
class CompletionCache:
    """k[i], v[i]: layer i's [P, n, T, K, H]; slot t holds the t-th generated token."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


@flax.struct.dataclass
class Rollout:
    """Decoding results, rows b = p * n + i.

    tokens, logprobs, temperature_logprobs [B, T]: entries past `lengths` are 0.
    lengths [B]: tokens generated. stopped [B]: the last one is a stop token.
    """

    tokens: jax.Array
    logprobs: jax.Array
    temperature_logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array


def prefill(model: Llama, tokens: jax.Array, lengths: jax.Array, adapters: bool = True
            ) -> tuple[PromptCache, jax.Array]:
    """Runs right-padded prompts tokens [P, S] (real lengths [P]) through the model.

    Returns their cache and the logits [P, V] at each prompt's last token. adapters=False
    runs the kernels alone (the sampler's merged weights).
    """
    p, s = tokens.shape
    valid = jnp.arange(s)[None, :] < lengths[:, None]  # [P, S]
    empty = KVCache.empty(model.config, p, s, model.numerics.compute_dtype)
    h, cache = model.hidden_states(tokens, attention_mask=valid, cache=empty, adapters=adapters)  # h [P, S, D]
    last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [P, D]
    prompt_axes = (None, "act_seq", "act_heads", None)
    prompt = PromptCache(k=tuple(constrain(k, model.sharding, prompt_axes) for k in cache.k),
                         v=tuple(constrain(v, model.sharding, prompt_axes) for v in cache.v),
                         valid=valid, lengths=lengths)
    return prompt, model.logits(last)


def empty_completion_cache(model: Llama, prompts: int, n: int, max_new_tokens: int
                           ) -> CompletionCache:
    c = model.config
    shape = (prompts, n, max_new_tokens, c.num_key_value_heads, c.head_dim)
    zeros = lambda: constrain(jnp.zeros(shape, model.numerics.compute_dtype), model.sharding,
                              (None, "batch", None, "act_heads", None))
    layers = range(c.num_hidden_layers)
    return CompletionCache(k=tuple(zeros() for _ in layers), v=tuple(zeros() for _ in layers))


def decode_step(model: Llama, tokens: jax.Array, step: jax.Array, prompt: PromptCache,
                own: CompletionCache, adapters: bool = True) -> tuple[jax.Array, CompletionCache]:
    """Feeds the step-th generated tokens [P, n]; returns next-token logits [P * n, V] and the
    completion cache with their keys and values written at slot `step`."""
    p, n = tokens.shape
    positions = jnp.repeat(prompt.lengths, n)[:, None] + step  # [B, 1]
    own_valid = jnp.arange(own.k[0].shape[2]) <= step  # [T]
    x = model.embed_tokens(tokens.reshape(p * n, 1))  # [B, 1, D]
    new_k, new_v = [], []
    for i, block in enumerate(model.layers):
        def attend(qkv, i=i):  # q [B, 1, N, H], k and v [B, 1, K, H]
            q, k, v = qkv
            own_k, own_v = (jax.lax.dynamic_update_slice(
                cache[i], new.reshape(p, n, 1, *new.shape[2:]).astype(cache[i].dtype),
                (0, 0, step, 0, 0)) for cache, new in ((own.k, k), (own.v, v)))
            attended = shared_prefix_attention(q.reshape(p, n, 1, *q.shape[2:]), prompt.k[i],
                                               prompt.v[i], prompt.valid, own_k, own_v,
                                               own_valid[None, :])  # [P, n, 1, N, H]
            return attended.reshape(p * n, 1, *attended.shape[3:]), (own_k, own_v)

        x, (own_k, own_v) = block(x, positions, attend, adapters)
        new_k.append(own_k)
        new_v.append(own_v)
    logits = model.logits(model.norm(x)[:, 0])
    return logits, CompletionCache(k=tuple(new_k), v=tuple(new_v))


def initial_seen(tokens: jax.Array, valid: jax.Array, vocab_size: int, n: int) -> jax.Array:
    """[P * n, V] bool: the token occurs in the row's prompt (for the repetition penalty)."""
    p, s = tokens.shape
    rows = jnp.broadcast_to(jnp.arange(p)[:, None], (p, s))
    seen = jnp.zeros((p, vocab_size), bool).at[rows, tokens].max(valid)
    return jnp.repeat(seen, n, axis=0)


def row_keys(seed: jax.Array, prompt_ids: jax.Array, n: int) -> jax.Array:
    """One PRNG key per row [B, 2], from the seed, the prompt's index in the call and the
    sample index, so a sample does not depend on which other prompts share its batch."""
    base = jax.random.PRNGKey(seed)
    per_prompt = jax.vmap(lambda i: jax.random.fold_in(base, i))(prompt_ids)
    per_row = jax.vmap(lambda key: jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n)))
    return per_row(per_prompt).reshape(-1, 2)


def decode(model: Llama, prompt: PromptCache, prompt_tokens: jax.Array, first_logits: jax.Array,
           active: jax.Array, keys: jax.Array, *, n: int, sampling: SamplingParams,
           adapters: bool = True) -> Rollout:
    """Samples up to sampling.max_new_tokens tokens for n samples of each prompt.

    first_logits [P, V]: from `prefill`. active [P]: False for padding prompts, whose samples
    count as finished from the start. keys [B, 2]: `row_keys`. The loop ends as soon as every
    sample has emitted a stop token.
    """
    p = prompt_tokens.shape[0]
    b, t_max = p * n, sampling.max_new_tokens
    stop_ids = jnp.asarray(sampling.stop_token_ids, jnp.int32)
    penalised = sampling.repetition_penalty != 1.0
    temperature = 1.0 if sampling.greedy else sampling.temperature
    zeros = lambda dtype: jnp.zeros((b, t_max), dtype)

    def cond(carry):
        step, finished = carry[0], carry[6]
        return (step < t_max) & ~jnp.all(finished)

    def body(carry):
        step, logits, own, tokens_out, lp_out, tlp_out, finished, lengths, seen = carry
        processed = process_logits(logits, seen, sampling)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
        running = ~finished
        tokens = jnp.where(running, choose_tokens(step_keys, processed, sampling.greedy), 0)
        lp = jnp.where(running, token_logprobs(processed, tokens), 0.0)
        tlp = jnp.where(running, token_logprobs(logits / temperature, tokens), 0.0)
        tokens_out = tokens_out.at[:, step].set(tokens)
        lp_out = lp_out.at[:, step].set(lp)
        tlp_out = tlp_out.at[:, step].set(tlp)
        lengths = lengths + running
        finished = finished | jnp.any(tokens[:, None] == stop_ids, axis=-1)
        if penalised:
            seen = seen.at[jnp.arange(b), tokens].set(True)
        logits, own = decode_step(model, tokens.reshape(p, n), step, prompt, own, adapters)
        return step + 1, logits, own, tokens_out, lp_out, tlp_out, finished, lengths, seen

    seen = (initial_seen(prompt_tokens, prompt.valid, model.config.vocab_size, n)
            if penalised else jnp.zeros((), bool))
    carry = (jnp.int32(0), jnp.repeat(first_logits, n, axis=0),
             empty_completion_cache(model, p, n, t_max), zeros(jnp.int32), zeros(jnp.float32),
             zeros(jnp.float32), ~jnp.repeat(active, n), jnp.zeros((b,), jnp.int32), seen)
    _, _, _, tokens, lp, tlp, finished, lengths, _ = jax.lax.while_loop(cond, body, carry)
    last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    stopped = (lengths > 0) & jnp.any(last[:, None] == stop_ids, axis=-1)
    return Rollout(tokens=tokens, logprobs=lp, temperature_logprobs=tlp, lengths=lengths,
                   stopped=stopped)

"""Continuous-batching decode: prompt slots, one paged cache, and segments of steps.

Shapes: P prompt slots, B decode rows, L lanes per slot (the most rows one slot's prompt
serves at once), M pages of `ps` tokens, n pages per row (ceil(max_new_tokens / ps)), np pages
per prompt slot (ceil(longest padded prompt / ps)), D hidden size, N query heads, K key/value
heads, H head dim, V vocabulary, k steps per segment.

Row b decodes one sample of the prompt in slot `layout.slot[b]`, in lane `layout.lane[b]` of
that slot (`Layout`): any row may decode any slot's prompt, so a row that finishes takes the
next waiting sample of any prompt. Keys and values live in pages of one pool (`PagePool`,
[M, ps, K, H]): each prompt's once, in the pages of its slot's row of the prompt table [P, np],
and the rows in its lanes attend to them as one matrix; a row's own in the pages of its row of
the page table [B, n]. So a prompt holds memory for its real length, a row for the tokens it
has, not for max_new_tokens, and attention reads only the pages written. Page 0 is never
given out: rows with nothing to do, and the padding of a prompt's last bucket, write there.
Attention of a decoding query = the softmax over [prompt keys ; own keys], computed as two
parts merged by their log-sum-exp (`arc_jax.rollout.attention`).

The host (`arc_jax.rollout.sampler`) assigns samples to rows and pages to rows between
segments; a segment (`decode_segment`) runs up to k steps on the device and stops early when
enough rows have finished to refill them. A row's draws depend only on its key (seed, prompt
index, sample index) and its own step, never on the other rows or on when it started.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from arc_jax.model.llama import KVCache, Llama
from arc_jax.rollout import attention as paged
from arc_jax.rollout.interface import SamplingParams
from arc_jax.rollout.sampling import choose_tokens, process_logits, token_logprobs

TRASH_PAGE = 0  # writes of idle rows go here; never read


@flax.struct.dataclass
class SlotCache:
    """The prompts in the P slots (their keys and values are in the pool's pages).

    lengths [P]: the prompts' lengths. first_logits [P, V]: logits at each prompt's last token
    (its samples' first draw). seen [P, V] bool: tokens of the prompt (for the repetition
    penalty; [P, 0] without it).
    """

    lengths: jax.Array
    first_logits: jax.Array
    seen: jax.Array

    @classmethod
    def empty(cls, model: Llama, prompts: int, penalised: bool) -> SlotCache:
        vocab = model.config.vocab_size
        return cls(lengths=jnp.ones((prompts,), jnp.int32),
                   first_logits=jnp.zeros((prompts, vocab), jnp.float32),
                   seen=jnp.zeros((prompts, vocab if penalised else 0), bool))


@flax.struct.dataclass
class PagePool:
    """k[i], v[i]: layer i's [M, ps, K, H] (prompts' and rows' pages); page 0 is the trash
    page."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @classmethod
    def empty(cls, model: Llama, pages: int, page_size: int, dtype=None) -> PagePool:
        """dtype: of the keys and values (default: the model's compute dtype)."""
        c = model.config
        shape = (pages, page_size, c.num_key_value_heads, c.head_dim)
        zeros = lambda: jnp.zeros(shape, dtype or model.numerics.compute_dtype)
        layers = range(c.num_hidden_layers)
        return cls(k=tuple(zeros() for _ in layers), v=tuple(zeros() for _ in layers))

    @property
    def page_size(self) -> int:
        return self.k[0].shape[1]


@flax.struct.dataclass
class Rows:
    """The state of the B decode rows between steps.

    logits [B, V] float32: the next draw's logits. pos [B]: tokens generated so far.
    keys [B, 2]: `row_key` of the row's sample. seen [B, V] (or [B, 0]): tokens of the prompt
    and the completion so far. live [B]: the row is generating.
    """

    logits: jax.Array
    pos: jax.Array
    keys: jax.Array
    seen: jax.Array
    live: jax.Array

    @classmethod
    def empty(cls, rows: int, vocab: int, penalised: bool) -> Rows:
        return cls(logits=jnp.zeros((rows, vocab), jnp.float32), pos=jnp.zeros((rows,), jnp.int32),
                   keys=jnp.zeros((rows, 2), jnp.uint32),
                   seen=jnp.zeros((rows, vocab if penalised else 0), bool),
                   live=jnp.zeros((rows,), bool))


@flax.struct.dataclass
class Layout:
    """Which prompt slot each row decodes, set by the host between segments.

    slot [B], lane [B]: row b reads the prompt of slot slot[b] as lane lane[b] of it (an idle
    row: any values; its outputs are not used). members [P, L]: the row in each lane (an
    empty lane: any row; its output is not used). used [P]: the slot has a row in a lane
    (the attention reads the prompts of the others only up to one token). With one slot and
    as many lanes as rows, row b must be lane b.
    """

    slot: jax.Array
    lane: jax.Array
    members: jax.Array
    used: jax.Array

    @classmethod
    def fixed(cls, prompts: int, rows_per_prompt: int) -> Layout:
        """Rows r * p ... r * p + r - 1 on slot p (lanes = rows per slot)."""
        rows = np.arange(prompts * rows_per_prompt, dtype=np.int32)
        return cls(slot=rows // rows_per_prompt, lane=rows % rows_per_prompt,
                   members=rows.reshape(prompts, rows_per_prompt), used=np.ones(prompts, bool))


@flax.struct.dataclass
class Segment:
    """What a segment produced. tokens, logprobs, temperature_logprobs [B, k]: row b's tokens of
    this segment are the first count[b] entries (entries past them are 0). steps: decoding
    steps run; own_read: own-key slots the paged attention read (whole pages, summed over
    steps and rows; for the bandwidth account)."""

    tokens: jax.Array
    logprobs: jax.Array
    temperature_logprobs: jax.Array
    count: jax.Array
    steps: jax.Array
    own_read: jax.Array


def row_key(seed: int, prompt_index: int, sample_index: int) -> jax.Array:
    """The PRNG key [2] of one sample: a function of the seed, the prompt's index in the call
    and the sample's index only, so a sample does not depend on the batch it ran in."""
    base = jax.random.PRNGKey(seed)
    return jax.random.fold_in(jax.random.fold_in(base, prompt_index), sample_index)


row_keys = jax.jit(jax.vmap(row_key, in_axes=(None, 0, 0)))


def prefill_slot(model: Llama, cache: SlotCache, pool: PagePool, slot: jax.Array,
                 tokens: jax.Array, length: jax.Array, pages: jax.Array, *,
                 adapters: bool = True) -> tuple[SlotCache, PagePool]:
    """Runs one right-padded prompt tokens [1, s] (real length `length`; s a multiple of the
    page size: the sampler pads it to its own bucket or the call's first prompts' length)
    through the model, writes its keys and values into pages [s / ps] of the pool (page t // ps
    holds tokens t; pages past the prompt's last are the trash page), and its length, last
    logits and token set into slot `slot`."""
    s = tokens.shape[1]
    ps = pool.page_size
    valid = jnp.arange(s)[None, :] < length                                       # [1, s]
    empty = KVCache.empty(model.config, 1, s, model.numerics.compute_dtype)
    h, kv = model.hidden_states(tokens, attention_mask=valid, cache=empty, adapters=adapters)
    logits = model.logits(jax.lax.dynamic_index_in_dim(h[0], length - 1, keepdims=False))
    put = lambda whole, part: jax.lax.dynamic_update_index_in_dim(whole, part, slot, 0)
    write = lambda pool, part: pool.at[pages].set(                       # part [1, s, K, H]
        part.reshape(s // ps, ps, *part.shape[2:]).astype(pool.dtype))
    seen = cache.seen
    if seen.shape[1]:
        seen = put(seen, jnp.zeros((seen.shape[1],), bool).at[tokens[0]].max(valid[0]))
    cache = SlotCache(lengths=put(cache.lengths, length),
                      first_logits=put(cache.first_logits, logits), seen=seen)
    return cache, PagePool(k=tuple(write(c, x) for c, x in zip(pool.k, kv.k)),
                           v=tuple(write(c, x) for c, x in zip(pool.v, kv.v)))


def decode_step(model: Llama, tokens: jax.Array, pos: jax.Array, writes: jax.Array,
                cache: SlotCache, pool: PagePool, prompt_table: jax.Array, table: jax.Array,
                layout: Layout, *, attention: str, adapters: bool = True
                ) -> tuple[jax.Array, PagePool]:
    """Feeds each row's token tokens [B] at its own index pos [B]; rows with writes [B] False
    write into the trash page and their outputs are meaningless. prompt_table [P, np], table
    [B, n]: the slots' and the rows' pages. Returns the next logits [B, V] and the pool with
    the fed tokens' keys and values written."""
    ps = pool.page_size
    positions = (cache.lengths[layout.slot] + pos)[:, None]                       # [B, 1]
    read = jnp.where(layout.used, cache.lengths, 1)                              # [P]
    # One slot with a lane per row: row b is lane b (the host's rule), no gathers needed.
    one_slot = layout.members.shape == (1, tokens.shape[0])
    page_index = jnp.minimum(pos // ps, table.shape[1] - 1)
    page = jnp.where(writes, jnp.take_along_axis(table, page_index[:, None], 1)[:, 0], TRASH_PAGE)
    offset = jnp.where(writes, pos % ps, 0)
    own_lengths = jnp.where(writes, pos + 1, 0)                                   # [B]
    x = model.embed_tokens(tokens[:, None])                                       # [B, 1, D]
    new_k, new_v = [], []
    for i, block in enumerate(model.layers):
        def attend(qkv, i=i):  # q [B, 1, N, H], k and v [B, 1, K, H]
            q, k, v = qkv
            with jax.named_scope("pool_write"):
                pool_k = pool.k[i].at[page, offset].set(k[:, 0].astype(pool.k[i].dtype))
                pool_v = pool.v[i].at[page, offset].set(v[:, 0].astype(pool.v[i].dtype))
            q = q[:, 0]                                                           # [B, N, H]
            with jax.named_scope("prefix_attention"):  # a slot's lanes as one matrix
                *prefix, pool_k, pool_v = paged.prefix_attention(
                    q[None] if one_slot else q[layout.members], pool_k, pool_v, prompt_table,
                    read, implementation=attention)
                prefix = jax.tree.map(
                    lambda x: x[0] if one_slot else x[layout.slot, layout.lane], prefix)
            with jax.named_scope("own_attention"):
                *own, pool_k, pool_v = paged.paged_attention(q, pool_k, pool_v, table,
                                                             own_lengths, implementation=attention)
            with jax.named_scope("merge"):
                out = paged.merge(prefix, own).astype(q.dtype)
            return out[:, None], (pool_k, pool_v)

        x, (pool_k, pool_v) = block(x, positions, attend, adapters)
        new_k.append(pool_k)
        new_v.append(pool_v)
    logits = model.logits(model.norm(x)[:, 0])
    return logits, PagePool(k=tuple(new_k), v=tuple(new_v))


def start_rows(rows: Rows, cache: SlotCache, layout: Layout, active: jax.Array,
               reset: jax.Array, keys: jax.Array) -> Rows:
    """Rows with reset [B] start a new sample (key keys[b]) of their slot's prompt; rows not
    active [B] stop."""
    slot = layout.slot
    pick = lambda new, old: jnp.where(reset.reshape(-1, *[1] * (old.ndim - 1)), new, old)
    return Rows(logits=pick(cache.first_logits[slot], rows.logits), pos=pick(0, rows.pos),
                keys=pick(keys, rows.keys), seen=pick(cache.seen[slot], rows.seen),
                live=active & (rows.live | reset))


def decode_segment(model: Llama, cache: SlotCache, pool: PagePool, prompt_table: jax.Array,
                   table: jax.Array, layout: Layout, rows: Rows, active: jax.Array,
                   reset: jax.Array, keys: jax.Array, exit_after: jax.Array, *, steps: int,
                   sampling: SamplingParams, attention: str, adapters: bool = True
                   ) -> tuple[PagePool, Rows, Segment]:
    """Up to `steps` decoding steps of the B rows.

    layout: the slot and lane of each row. active [B]: rows with a sample; reset [B], keys
    [B, 2]: rows that start a new sample now (`start_rows`). prompt_table [P, np]: the pages
    of each slot's prompt. table [B, n]: the pages of each row, which must cover every token a
    live row can reach in `steps` steps.
    The segment ends after `steps` steps, when no row is live, or as soon as `exit_after`
    rows have finished in it. A row finishes when it emits a stop token (kept) or reaches
    sampling.max_new_tokens.
    """
    rows = start_rows(rows, cache, layout, active, reset, keys)
    b = reset.shape[0]
    t_max = sampling.max_new_tokens
    stop_ids = jnp.asarray(sampling.stop_token_ids, jnp.int32)
    penalised = sampling.repetition_penalty != 1.0
    temperature = 1.0 if sampling.greedy else sampling.temperature
    out = Segment(tokens=jnp.zeros((b, steps), jnp.int32),
                  logprobs=jnp.zeros((b, steps), jnp.float32),
                  temperature_logprobs=jnp.zeros((b, steps), jnp.float32),
                  count=jnp.zeros((b,), jnp.int32), steps=jnp.int32(0), own_read=jnp.int32(0))
    page_size = pool.page_size

    def cond(carry):
        i, _, rows, _, finished = carry
        return (i < steps) & jnp.any(rows.live) & (finished < exit_after)

    def body(carry):
        i, pool, rows, out, finished = carry
        live = rows.live
        with jax.named_scope("sampling"):
            processed = process_logits(rows.logits, rows.seen, sampling)
            step_keys = jax.vmap(jax.random.fold_in)(rows.keys, rows.pos)
            tokens = jnp.where(live, choose_tokens(step_keys, processed, sampling.greedy), 0)
            lp = jnp.where(live, token_logprobs(processed, tokens), 0.0)
            tlp = jnp.where(live, token_logprobs(rows.logits / temperature, tokens), 0.0)
        stopped = jnp.any(tokens[:, None] == stop_ids, axis=-1)
        ended = live & (stopped | (rows.pos + 1 >= t_max))
        still = live & ~ended
        read = jnp.sum(jnp.where(still, (rows.pos // page_size + 1) * page_size, 0))
        out = Segment(tokens=out.tokens.at[:, i].set(tokens),
                      logprobs=out.logprobs.at[:, i].set(lp),
                      temperature_logprobs=out.temperature_logprobs.at[:, i].set(tlp),
                      count=out.count + live, steps=out.steps + 1, own_read=out.own_read + read)
        seen = rows.seen.at[jnp.arange(b), tokens].max(live) if penalised else rows.seen
        logits, pool = decode_step(model, tokens, rows.pos, still, cache, pool, prompt_table,
                                   table, layout, attention=attention, adapters=adapters)
        rows = Rows(logits=logits, pos=rows.pos + live, keys=rows.keys, seen=seen, live=still)
        return i + 1, pool, rows, out, finished + jnp.sum(ended)

    carry = (jnp.int32(0), pool, rows, out, jnp.int32(0))
    _, pool, rows, out, _ = jax.lax.while_loop(cond, body, carry)
    return pool, rows, out

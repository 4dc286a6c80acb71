"""Attention of one decoding query per row, in two parts merged by their log-sum-exp.

Shapes: B rows, P prompt slots with R query rows (lanes) each, M pages of ps tokens, n pages
per row (or per prompt), N query heads, K key/value heads, g = N / K, H head dim. Prompts and
completions keep their keys and values in pages of one pool.

softmax over [prompt keys ; own keys] = the two partial softmaxes weighted by exp(lse):
`prefix_attention` is one matmul per prompt slot over its R rows' queries (the prompt's keys
are read once per step, not once per row), `paged_attention` reads each row's own keys from
its pages, and `merge` combines them. Each part returns (out [.., N, H] float32 normalised
within the part, lse [.., N] float32); an empty part has lse = -inf and out = 0.

The pages may hold keys and values in a narrower type than the queries (fp8): both parts
read them in it and compute in the queries' type.

Both parts have two implementations of one function: "xla" (the reference, any backend; it
gathers every page of the tables, moving them through memory three times on a GPU, and scores
every gathered key in float32), and "pallas", kernels that read each row's and each slot's
pages only up to their lengths (`arc_jax.rollout.pallas_attention`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEVER = -jnp.inf


def _softmax_part(scores: jax.Array, values_fn) -> tuple[jax.Array, jax.Array]:
    """Normalised attention output and lse of masked float32 scores [..., T]; values_fn maps
    unnormalised weights to the output."""
    m = jnp.max(scores, axis=-1, keepdims=True)
    safe_m = jnp.where(jnp.isfinite(m), m, 0.0)
    weights = jnp.exp(scores - safe_m)                                           # 0 where masked
    total = jnp.sum(weights, axis=-1)
    out = values_fn(weights) / jnp.where(total > 0, total, 1.0)[..., None]
    lse = jnp.where(total > 0, safe_m[..., 0] + jnp.log(jnp.where(total > 0, total, 1.0)), NEVER)
    return out, lse


def prefix_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array,
                     lengths: jax.Array, *, implementation: str = "xla"
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q [P, R, N, H] over each slot's first lengths[p] (>= 1) prompt keys, token t of slot p
    being slot t % ps of page table[p, t // ps] of k_pages, v_pages [M, ps, K, H]
    -> out [P, R, N, H], lse [P, R, N], and the pages (the same values; the caller carries
    these on, see `pallas_attention`). "pallas" reads each slot's keys once for its R rows
    and only up to its length (`pallas_attention.prefix_attention`); "xla" gathers every page
    of the table and computes the scores of every key in them."""
    if implementation == "pallas":
        from arc_jax.rollout import pallas_attention

        return pallas_attention.prefix_attention(q, k_pages, v_pages, table, lengths)
    _check(implementation)
    p, r, n, h = q.shape
    _, ps, kh, _ = k_pages.shape
    k, v = (pages[table].reshape(p, -1, kh, h).astype(q.dtype)                   # [P, n*ps, K, H]
            for pages in (k_pages, v_pages))
    valid = jnp.arange(k.shape[1])[None, :] < lengths[:, None]                   # [P, n*ps]
    q = q.reshape(p, r, kh, n // kh, h) * jnp.asarray(h ** -0.5, q.dtype)
    scores = jnp.einsum("prkgh,pskh->prkgs", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(valid[:, None, None, None, :], scores, NEVER)
    values = lambda w: jnp.einsum("prkgs,pskh->prkgh", w.astype(v.dtype), v,
                                  preferred_element_type=jnp.float32)
    out, lse = _softmax_part(scores, values)
    return out.reshape(p, r, n, h), lse.reshape(p, r, n), k_pages, v_pages


def _check(implementation: str) -> None:
    if implementation != "xla":
        raise ValueError(f"attention: implementation must be 'xla' or 'pallas', got "
                         f"{implementation!r}")


def paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array,
                    lengths: jax.Array, *, implementation: str = "xla"
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q [B, N, H] over each row's first lengths[b] own keys, token t of row b being slot
    t % ps of page table[b, t // ps] of k_pages, v_pages [M, ps, K, H] -> out [B, N, H],
    lse [B, N], and the pages (the same values; the caller carries these on, see
    `pallas_attention`). Rows with length 0 get out 0, lse -inf."""
    if implementation == "pallas":
        from arc_jax.rollout import pallas_attention

        return pallas_attention.paged_attention(q, k_pages, v_pages, table, lengths)
    _check(implementation)
    b, n, h = q.shape
    _, ps, kh, _ = k_pages.shape
    gather = lambda pages: pages[table].reshape(b, -1, kh, h).astype(q.dtype)   # [B, n*ps, K, H]
    q = q.reshape(b, kh, n // kh, h) * jnp.asarray(h ** -0.5, q.dtype)
    scores = jnp.einsum("bkgh,btkh->bkgt", q, gather(k_pages), preferred_element_type=jnp.float32)
    visible = jnp.arange(scores.shape[-1])[None, :] < lengths[:, None]          # [B, n*ps]
    scores = jnp.where(visible[:, None, None, :], scores, NEVER)
    own_v = gather(v_pages)
    values = lambda w: jnp.einsum("bkgt,btkh->bkgh", w.astype(own_v.dtype), own_v,
                                  preferred_element_type=jnp.float32)
    out, lse = _softmax_part(scores, values)
    return out.reshape(b, n, h), lse.reshape(b, n), k_pages, v_pages


def merge(first: tuple[jax.Array, jax.Array], second: tuple[jax.Array, jax.Array]) -> jax.Array:
    """The attention over both key sets from their parts' (out [.., N, H], lse [.., N]); at
    least one part of each row must be non-empty."""
    (out1, lse1), (out2, lse2) = first, second
    m = jnp.maximum(lse1, lse2)
    w1, w2 = jnp.exp(lse1 - m), jnp.exp(lse2 - m)
    return (w1[..., None] * out1 + w2[..., None] * out2) / (w1 + w2)[..., None]

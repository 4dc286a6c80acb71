"""The two parts of the decoding attention as Pallas kernels that read only what is written.

`paged_attention` (the rows' own keys): one program per (row, key/value head) loads the row's
g query heads of that key/value head once (padded to 16 rows, the smallest matrix-unit tile),
walks the row's page table up to ceil(length / ps) pages with an online softmax, one page of
keys and values at a time, and writes the normalised output and the log-sum-exp. Bytes read
per step follow each row's length, not the longest row's or max_new_tokens.

`prefix_attention` (the prompt shared by a slot's R rows, in pages of the same pool): one
program per (slot, key/value head, chunk of the prompt's pages) takes the R x g queries of
that head as one matrix, so the prompt's keys and values are read once per step for all R
rows, only up to the slot's real length, and without float32 scores in memory; the chunks'
parts are merged by their log-sum-exp. Chunks are sized so the programs fill the GPU even
with one slot.

Off a GPU both run in Pallas' interpreter (for tests). Same contracts as
`arc_jax.rollout.attention.paged_attention` and `prefix_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MIN_TILE = 16  # Triton's smallest dot operand dimension
TARGET_PROGRAMS = 512  # the prefix kernel splits prompts into chunks until it has about this many


def _kernel(table_ref, length_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, k_out_ref, v_out_ref, *,
            groups: int, block_h: int, scale: float):
    # table_ref [n] int32, length_ref [1], q_ref [block_h, H] (rows >= groups are padding),
    # k_ref, v_ref [M, ps, H] (this head's slice of the pool), o_ref [block_h, H], lse_ref
    # [block_h]; k_out_ref, v_out_ref: the pool again (aliased, never written: see below)
    del k_out_ref, v_out_ref
    length = length_ref[0]
    page_size = k_ref.shape[1]
    real = jnp.arange(block_h) < groups
    q = plgpu.load(q_ref.at[pl.ds(0, block_h), :], mask=real[:, None], other=0.0)
    q = (q.astype(jnp.float32) * scale).astype(q_ref.dtype)

    def page(j, carry):
        out, top, total = carry
        index = table_ref[j]
        k = k_ref[index].astype(q.dtype)                                     # [ps, H]
        scores = plgpu.dot(q, k.T).astype(jnp.float32)                       # [block_h, ps]
        visible = j * page_size + jnp.arange(page_size) < length
        scores = jnp.where(visible[None, :], scores, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(scores, axis=1))
        correction = jnp.exp(top - new_top)
        weights = jnp.exp(scores - new_top[:, None])
        total = correction * total + jnp.sum(weights, axis=1)
        v = v_ref[index].astype(q.dtype)                                     # [ps, H]
        out = correction[:, None] * out + plgpu.dot(weights.astype(v.dtype), v).astype(jnp.float32)
        return out, new_top, total

    head_dim = q_ref.shape[1]
    init = (jnp.zeros((block_h, head_dim), jnp.float32),
            jnp.full((block_h,), jnp.finfo(jnp.float32).min, jnp.float32),
            jnp.zeros((block_h,), jnp.float32))
    out, top, total = jax.lax.fori_loop(0, pl.cdiv(length, page_size), page, init)
    seen = total > 0
    out = jnp.where(seen[:, None], out / jnp.where(seen, total, 1.0)[:, None], 0.0)
    lse = jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)
    plgpu.store(o_ref.at[pl.ds(0, block_h), :], out.astype(o_ref.dtype), mask=real[:, None])
    plgpu.store(lse_ref.at[pl.ds(0, block_h)], lse, mask=real)


def supported(page_size: int, head_dim: int) -> bool:
    """Whether the compiled (GPU) kernel handles these sizes (tiles of at least 16)."""
    power_of_two = lambda x: x & (x - 1) == 0
    return (page_size >= MIN_TILE and head_dim >= MIN_TILE and power_of_two(page_size)
            and power_of_two(head_dim))


def reads_fp8(device) -> bool:
    """Whether the compiled kernels can read fp8 pages on this GPU: Triton converts float8
    e4m3 from compute capability 8.9 (Ada, Hopper) on. A device that does not say is taken
    to."""
    capability = getattr(device, "compute_capability", None)
    if capability is None:
        return True
    return tuple(int(x) for x in str(capability).split(".")[:2]) >= (8, 9)


def paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array,
                    lengths: jax.Array, interpret: bool | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q [B, N, H] over each row's first lengths[b] keys in k_pages, v_pages [M, ps, K, H]
    through table [B, n] -> out [B, N, H] float32, lse [B, N] float32 (-inf, out 0 for rows
    with length 0), and the pages, unchanged. interpret: run in Pallas' interpreter (default:
    when not on a GPU).

    The pages go out as outputs aliased to the inputs: the kernel then counts as updating the
    pool in place, so that XLA, which updates the pool in place inside the decoding loop, does
    not copy it to keep a version for the kernel. Use the returned pages from here on."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    b, n, h = q.shape
    pages, page_size, kv_heads, _ = k_pages.shape
    groups = n // kv_heads
    block_h = max(MIN_TILE, pl.next_power_of_2(groups))
    program = lambda row, head: row * kv_heads + head
    pool_spec = pl.BlockSpec((pages, page_size, None, h), lambda row, head: (0, 0, head, 0))
    out, lse, k_pages, v_pages = pl.pallas_call(
        functools.partial(_kernel, groups=groups, block_h=block_h, scale=h ** -0.5),
        grid=(b, kv_heads),
        in_specs=[pl.BlockSpec((None, table.shape[1]), lambda row, head: (row, 0)),
                  pl.BlockSpec((1,), lambda row, head: (row,)),
                  pl.BlockSpec((None, block_h, h), lambda row, head: (program(row, head), 0, 0)),
                  pool_spec, pool_spec],
        out_specs=[pl.BlockSpec((None, block_h, h), lambda row, head: (program(row, head), 0, 0)),
                   pl.BlockSpec((None, block_h), lambda row, head: (program(row, head), 0)),
                   pool_spec, pool_spec],
        out_shape=[jax.ShapeDtypeStruct((b * kv_heads, groups, h), jnp.float32),
                   jax.ShapeDtypeStruct((b * kv_heads, groups), jnp.float32),
                   jax.ShapeDtypeStruct(k_pages.shape, k_pages.dtype),
                   jax.ShapeDtypeStruct(v_pages.shape, v_pages.dtype)],
        input_output_aliases={3: 2, 4: 3},
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
    )(table.astype(jnp.int32), lengths.astype(jnp.int32), q.reshape(b * kv_heads, groups, h),
      k_pages, v_pages)
    return out.reshape(b, n, h), lse.reshape(b, n), k_pages, v_pages


def _prefix_kernel(table_ref, length_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, k_out_ref,
                   v_out_ref, *, chunk: int, scale: float):
    # table_ref [n]: the slot's pages; length_ref [1]: its prompt length; q_ref [M, H]: the
    # slot's R x g queries of this key/value head (padded to M); k_ref, v_ref [pages, ps, H]:
    # this head's slice of the pool; o_ref [M, H], lse_ref [M]: this chunk's part; k_out_ref,
    # v_out_ref: the pool again (aliased, never written: see `paged_attention`)
    del k_out_ref, v_out_ref
    page_size = k_ref.shape[1]
    start = pl.program_id(2) * chunk
    end = jnp.minimum(start + chunk, length_ref[0])
    q = q_ref[...]
    q = (q.astype(jnp.float32) * scale).astype(q_ref.dtype)
    rows = q.shape[0]

    def step(j, carry):
        out, top, total = carry
        first = start + j * page_size
        index = table_ref[first // page_size]
        visible = first + jnp.arange(page_size) < end
        k = k_ref[index].astype(q.dtype)                                     # [ps, H]
        scores = plgpu.dot(q, k.T).astype(jnp.float32)                       # [M, ps]
        scores = jnp.where(visible[None, :], scores, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(scores, axis=1))
        correction = jnp.exp(top - new_top)
        weights = jnp.exp(scores - new_top[:, None])
        total = correction * total + jnp.sum(weights, axis=1)
        v = v_ref[index].astype(q.dtype)                                     # [ps, H]
        out = correction[:, None] * out + plgpu.dot(weights.astype(v.dtype), v).astype(jnp.float32)
        return out, new_top, total

    init = (jnp.zeros((rows, q.shape[1]), jnp.float32),
            jnp.full((rows,), jnp.finfo(jnp.float32).min, jnp.float32),
            jnp.zeros((rows,), jnp.float32))
    out, top, total = jax.lax.fori_loop(0, pl.cdiv(jnp.maximum(end - start, 0), page_size),
                                        step, init)
    seen = total > 0
    o_ref[...] = jnp.where(seen[:, None], out / jnp.where(seen, total, 1.0)[:, None], 0.0)
    lse_ref[...] = jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)


def prefix_chunk(prompts: int, kv_heads: int, prompt_len: int, page_size: int) -> int:
    """Prompt tokens per program: whole pages, few enough that the (slot, head, chunk)
    programs number about TARGET_PROGRAMS."""
    splits = max(1, -(-TARGET_PROGRAMS // (prompts * kv_heads)))
    return -(-prompt_len // (splits * page_size)) * page_size


def prefix_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array,
                     lengths: jax.Array, interpret: bool | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """q [P, R, N, H] over each slot's first lengths[p] (>= 1) prompt keys in k_pages, v_pages
    [M, ps, K, H] through table [P, n] -> out [P, R, N, H] float32, lse [P, R, N] float32, and
    the pages, unchanged (aliased as in `paged_attention`: use the returned ones)."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    p, r, n, h = q.shape
    pages, page_size, kv_heads, _ = k_pages.shape
    groups = n // kv_heads
    m = r * groups
    block_m = max(MIN_TILE, pl.next_power_of_2(m))
    chunk = prefix_chunk(p, kv_heads, table.shape[1] * page_size, page_size)
    splits = -(-table.shape[1] * page_size // chunk)
    # [P, R, K, g, H] -> [P, K, R * g, H]: a head's queries of all the slot's rows, one matrix
    rows = q.reshape(p, r, kv_heads, groups, h).transpose(0, 2, 1, 3, 4).reshape(p, kv_heads, m, h)
    rows = jnp.pad(rows, ((0, 0), (0, 0), (0, block_m - m), (0, 0)))
    pool_spec = pl.BlockSpec((pages, page_size, None, h),
                             lambda slot, head, split: (0, 0, head, 0))
    out, lse, k_pages, v_pages = pl.pallas_call(
        functools.partial(_prefix_kernel, chunk=chunk, scale=h ** -0.5),
        grid=(p, kv_heads, splits),
        in_specs=[pl.BlockSpec((None, table.shape[1]), lambda slot, head, split: (slot, 0)),
                  pl.BlockSpec((1,), lambda slot, head, split: (slot,)),
                  pl.BlockSpec((None, None, block_m, h),
                               lambda slot, head, split: (slot, head, 0, 0)),
                  pool_spec, pool_spec],
        out_specs=[pl.BlockSpec((None, None, None, block_m, h),
                                lambda slot, head, split: (slot, head, split, 0, 0)),
                   pl.BlockSpec((None, None, None, block_m),
                                lambda slot, head, split: (slot, head, split, 0)),
                   pool_spec, pool_spec],
        out_shape=[jax.ShapeDtypeStruct((p, kv_heads, splits, block_m, h), jnp.float32),
                   jax.ShapeDtypeStruct((p, kv_heads, splits, block_m), jnp.float32),
                   jax.ShapeDtypeStruct(k_pages.shape, k_pages.dtype),
                   jax.ShapeDtypeStruct(v_pages.shape, v_pages.dtype)],
        input_output_aliases={3: 2, 4: 3},
        compiler_params=plgpu.CompilerParams(num_warps=4 if block_m <= 64 else 8, num_stages=2),
        interpret=interpret,
    )(table.astype(jnp.int32), lengths.astype(jnp.int32), rows, k_pages, v_pages)
    # merge the chunks by their log-sum-exp; chunk 0 always holds a token
    top = jnp.max(lse, axis=2, keepdims=True)                             # [P, K, 1, M]
    weight = jnp.exp(lse - top)                                           # 0 for empty chunks
    total = jnp.sum(weight, axis=2)                                       # [P, K, M]
    out = jnp.sum(weight[..., None] * out, axis=2) / total[..., None]     # [P, K, M, H]
    lse = top[:, :, 0] + jnp.log(total)
    unrows = lambda x: x[:, :, :m].reshape(p, kv_heads, r, groups, *x.shape[3:]).swapaxes(1, 2)
    return (unrows(out).reshape(p, r, n, h), unrows(lse).reshape(p, r, n), k_pages, v_pages)

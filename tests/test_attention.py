"""The memory-bounded ways of `shared_prefix_attention` against the all-scores reference, and
against plain attention over each sequence's own [prefix ; completion] keys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arc_jax.model.llama import (
    _shared_prefix_blockwise, _shared_prefix_fused, attention, shared_prefix_attention,
    shared_prefix_scores,
)

P, G, S, T, N, K, H = 2, 3, 7, 11, 4, 2, 8


def inputs(seed, q_len=T):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    prefix_valid = np.ones((P, S), bool)
    prefix_valid[0, :3] = False   # left padding
    prefix_valid[1, -2:] = False  # right padding
    own_mask = np.tril(np.ones((q_len, T), bool))
    return (normal(P, G, q_len, N, H), normal(P, S, K, H), normal(P, S, K, H),
            jnp.asarray(prefix_valid), normal(P, G, T, K, H), normal(P, G, T, K, H),
            jnp.asarray(own_mask))


def per_sequence_attention(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask):
    """Independent reference: each sequence (p, g) attends over its own copy of the prefix keys
    followed by its completion keys, through `jax.nn.dot_product_attention`."""
    out = np.zeros(q.shape, np.float32)
    for p in range(q.shape[0]):
        for g in range(q.shape[1]):
            k = jnp.concatenate([prefix_k[p], own_k[p, g]])[None]
            v = jnp.concatenate([prefix_v[p], own_v[p, g]])[None]
            mask = jnp.concatenate([jnp.broadcast_to(prefix_valid[p], (q.shape[2], S)),
                                    own_mask], axis=1)[None, None]
            out[p, g] = np.asarray(attention(q[p, g][None], k, v, mask, False)[0])
    return out


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


VARIANTS = {
    "blockwise, chunk 4 (padded last block)": functools.partial(_shared_prefix_blockwise, chunk=4),
    "blockwise, chunk 1": functools.partial(_shared_prefix_blockwise, chunk=1),
    "fused layout (xla kernel)": functools.partial(_shared_prefix_fused, implementation="xla"),
}


def test_reference_equals_attention_over_each_sequence():
    args = inputs(0)
    close(shared_prefix_scores(*args), per_sequence_attention(*args))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_equals_reference_in_values_and_gradients(name):
    args = inputs(1)
    variant = VARIANTS[name]
    close(variant(*args), shared_prefix_scores(*args))
    cotangent = jax.random.normal(jax.random.key(2), args[0].shape)
    differentiable = (0, 1, 2, 4, 5)  # q, prefix_k, prefix_v, own_k, own_v

    def grads(fn):
        def objective(*arrays):
            full = list(args)
            for i, a in zip(differentiable, arrays):
                full[i] = a
            return jnp.sum(fn(*full) * cotangent)
        return jax.grad(objective, argnums=tuple(range(5)))(*(args[i] for i in differentiable))

    for got, want in zip(grads(variant), grads(shared_prefix_scores)):
        close(got, want)


def test_dispatch_picks_blockwise_for_long_queries_and_scores_for_decoding():
    """Q > query_chunk goes blockwise (same values); Q = 1 (decoding) takes the reference."""
    args = inputs(3)
    close(shared_prefix_attention(*args, query_chunk=4), shared_prefix_scores(*args))
    decode_args = inputs(4, q_len=1)
    close(shared_prefix_attention(*decode_args, implementation="cudnn"),
          shared_prefix_scores(*decode_args))


def test_blockwise_never_holds_all_scores():
    """The compiled blockwise attention's largest temporary is a block's scores, far below the
    [P, G, N, T, S+T] float32 scores of the reference."""
    q_len = 256
    rng = np.random.default_rng(5)
    s, t = 512, 256
    shapes = [(P, G, q_len, N, H), (P, s, K, H), (P, s, K, H), (P, G, t, K, H), (P, G, t, K, H)]
    arrays = [jnp.asarray(rng.normal(size=x), jnp.float32) for x in shapes]
    valid = jnp.ones((P, s), bool)
    mask = jnp.tril(jnp.ones((q_len, t), bool))

    def temp_bytes(fn):
        def loss(q, pk, pv, ok, ov):
            return jnp.sum(fn(q, pk, pv, valid, ok, ov, mask))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).lower(*arrays).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    all_scores = P * G * N * q_len * (s + t) * 4
    assert temp_bytes(shared_prefix_scores) > all_scores
    assert temp_bytes(functools.partial(_shared_prefix_blockwise, chunk=8)) < all_scores / 4

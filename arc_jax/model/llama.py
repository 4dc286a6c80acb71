"""Llama 3.x causal language model in Flax NNX, computing what Hugging Face `LlamaForCausalLM` does.

Shapes: B batch, T query length, S key length, D hidden size, N query heads, K key/value heads,
H head dim, V vocabulary. Module and parameter names follow the Hugging Face checkpoint
(`layers.3.self_attn.q_proj.kernel` is `model.layers.3.self_attn.q_proj.weight` transposed).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arc_jax.model.config import LlamaConfig, LoraConfig, Numerics
from arc_jax.model.lora import Linear
from arc_jax.model.sharding import Sharding, constrain

ROW_AXES = ("batch", "act_seq", "act_embed")  # logical axes of hidden states [B, T, D]
QUERY_CHUNK = 128  # queries per block of the blockwise shared-prefix attention

# ----------------------------------------------------------------------------- pure functions


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """RoPE inverse frequencies [H/2] in float32, with Llama 3.1's `llama3` scaling if set."""
    dim = config.head_dim
    inv = 1.0 / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    s = config.rope_scaling
    if s is None:
        return inv.astype(np.float32)
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_freq_wavelen, inv / s.factor, inv)
    smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
              / (s.high_freq_factor - s.low_freq_factor))
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B, T, heads, H] by positions [B, T] in the rotate-half layout of Hugging Face."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * weight, with the statistics in float32."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight * y.astype(x.dtype)).astype(x.dtype)


def prefill_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """Key-padding mask [B, 1, T, T] (to be combined with the causal mask), or None.

    It has the full query dimension because cuDNN attention requires it.
    """
    if attention_mask is None:
        return None
    b, t = attention_mask.shape
    return jnp.broadcast_to(attention_mask.astype(bool)[:, None, None, :], (b, 1, t, t))


def cached_mask(valid: jax.Array, end: jax.Array, num_queries: int) -> jax.Array:
    """Mask [B, 1, T, S] for T queries written at cache slots end .. end+T-1.

    A query sees every valid slot at or before its own slot.
    """
    query_slots = end + jnp.arange(num_queries)  # [T]
    causal = jnp.arange(valid.shape[1])[None, :] <= query_slots[:, None]  # [T, S]
    return valid[:, None, None, :] & causal[None, None]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, is_causal: bool,
              implementation: str | None = None) -> jax.Array:
    """Softmax attention of q [B, T, N, H] over k, v [B, S, K, H] -> [B, T, N, H].

    mask [B, 1, T or 1, S] (True = attend) or None; `is_causal` adds the causal mask (T == S).
    implementation: None or "xla" (materialises the scores), "cudnn" (a fused flash kernel).
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        implementation=implementation)


def shared_prefix_attention(q: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array,
                            prefix_valid: jax.Array, own_k: jax.Array, own_v: jax.Array,
                            own_mask: jax.Array, *, implementation: str | None = None,
                            query_chunk: int = QUERY_CHUNK) -> jax.Array:
    """Queries of G sequences over one shared prefix's keys and their own keys, in one softmax.

    q [P, G, Q, N, H]; prefix_k, prefix_v [P, S, K, H]; prefix_valid [P, S] bool;
    own_k, own_v [P, G, T, K, H]; own_mask [Q, T] bool (the own keys each query may see)
    -> [P, G, Q, N, H]. The sampler decodes G samples against one prompt cache (Q = 1), the
    trainer runs G completions against one prompt forward (Q = T, causal own_mask).

    Three ways to compute the same function, none of which copies the prefix per query:
    - Q <= query_chunk (decoding): `shared_prefix_scores`, the scores [.., Q, S+T] at once;
    - implementation "cudnn": the prefix's keys broadcast to the G sequences (a [P*G, S+T]
      key set, small next to the scores) and cuDNN's fused flash attention, which never
      materialises the scores;
    - otherwise blockwise: `query_chunk` queries at a time, each block rematerialised in the
      backward pass, so at most [.., query_chunk, S+T] scores exist at once.
    """
    nq = q.shape[2]
    if implementation == "cudnn" and nq > 1:
        return _shared_prefix_fused(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask)
    if nq <= query_chunk:
        return shared_prefix_scores(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask)
    return _shared_prefix_blockwise(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask,
                                    query_chunk)


def shared_prefix_scores(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask):
    """`shared_prefix_attention` by materialising all scores [P, G, K, N/K, Q, S+T] in float32
    (the reference the other two ways are tested against)."""
    p, g, nq, n, h = q.shape
    s, k = prefix_k.shape[1], prefix_k.shape[2]
    q = q.reshape(p, g, nq, k, n // k, h) * jnp.asarray(h ** -0.5, q.dtype)
    f32 = jnp.float32
    prefix_scores = jnp.einsum("pgqkrh,pskh->pgkrqs", q, prefix_k, preferred_element_type=f32)
    own_scores = jnp.einsum("pgqkrh,pgtkh->pgkrqt", q, own_k, preferred_element_type=f32)
    never = jnp.finfo(f32).min
    prefix_scores = jnp.where(prefix_valid[:, None, None, None, None, :], prefix_scores, never)
    own_scores = jnp.where(own_mask, own_scores, never)
    weights = jax.nn.softmax(jnp.concatenate([prefix_scores, own_scores], axis=-1), axis=-1)
    weights = weights.astype(prefix_v.dtype)                                   # [P,G,K,r,Q,S+T]
    out = (jnp.einsum("pgkrqs,pskh->pgqkrh", weights[..., :s], prefix_v, preferred_element_type=f32)
           + jnp.einsum("pgkrqt,pgtkh->pgqkrh", weights[..., s:], own_v, preferred_element_type=f32))
    return out.reshape(p, g, nq, n, h).astype(q.dtype)


def _shared_prefix_blockwise(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask, chunk):
    p, g, nq, n, h = q.shape
    blocks = -(-nq // chunk)
    pad = blocks * chunk - nq
    q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0)))
    own_mask = jnp.pad(own_mask, ((0, pad), (0, 0)))  # padded queries see only the prefix
    q_blocks = jnp.moveaxis(q.reshape(p, g, blocks, chunk, n, h), 2, 0)         # [Qb, P, G, c, N, H]
    mask_blocks = own_mask.reshape(blocks, chunk, -1)                           # [Qb, c, T]

    @jax.checkpoint
    def block(args):
        q_block, mask_block = args
        return shared_prefix_scores(q_block, prefix_k, prefix_v, prefix_valid, own_k, own_v,
                                    mask_block)

    out = jax.lax.map(block, (q_blocks, mask_blocks))                           # [Qb, P, G, c, N, H]
    return jnp.moveaxis(out, 0, 2).reshape(p, g, blocks * chunk, n, h)[:, :, :nq]


def _shared_prefix_fused(q, prefix_k, prefix_v, prefix_valid, own_k, own_v, own_mask,
                         implementation="cudnn"):
    p, g, nq, n, h = q.shape
    s, t = prefix_k.shape[1], own_k.shape[2]
    fan = lambda x: jnp.broadcast_to(x[:, None], (p, g, *x.shape[1:]))
    keys = lambda prefix, own: jnp.concatenate([fan(prefix), own], axis=2).reshape(
        p * g, s + t, *own.shape[3:])                                           # [P*G, S+T, K, H]
    mask = jnp.concatenate([jnp.broadcast_to(prefix_valid[:, None, None, :], (p, g, nq, s)),
                            jnp.broadcast_to(own_mask, (p, g, nq, t))], axis=-1)
    out = attention(q.reshape(p * g, nq, n, h), keys(prefix_k, own_k), keys(prefix_v, own_v),
                    mask.reshape(p * g, 1, nq, s + t), is_causal=False,
                    implementation=implementation)
    return out.reshape(p, g, nq, n, h)


# ----------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
    """Keys and values of all tokens seen so far, in fixed-size slot arrays.

    k[i], v[i]: layer i's [B, S_max, K, H]. valid [B, S_max]: the slot holds a real (non-padding)
    token. end: int32 scalar, the number of slots written; the next call writes at `end`.
    Writes must stay within max_len: checked when `end` is concrete; inside jit the caller
    sizes the cache (XLA would clamp an overflowing write).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    end: jax.Array

    @classmethod
    def empty(cls, config: LlamaConfig, batch: int, max_len: int, dtype) -> KVCache:
        shape = (batch, max_len, config.num_key_value_heads, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in layers),
                   v=tuple(jnp.zeros(shape, dtype) for _ in layers),
                   valid=jnp.zeros((batch, max_len), bool),
                   end=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times in place (row b becomes rows b*n .. b*n+n-1).

        Used to fan a prefilled prompt out to n samples.
        """
        rep = lambda x: jnp.repeat(x, n, axis=0)
        return KVCache(k=tuple(map(rep, self.k)), v=tuple(map(rep, self.v)),
                       valid=rep(self.valid), end=self.end)


# ----------------------------------------------------------------------------- modules


class RMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float, numerics: Numerics):
        self.weight = nnx.Param(jnp.ones((size,), numerics.param_dtype), logical_axes=("norm",))
        self.eps = eps
        self.dtype = numerics.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x.astype(self.dtype), self.weight[...].astype(self.dtype), self.eps)


class Embedding(nnx.Module):
    def __init__(self, vocab_size: int, size: int, numerics: Numerics, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(0.02)
        self.weight = nnx.Param(init(rngs.params(), (vocab_size, size), numerics.param_dtype),
                                logical_axes=("vocab", "embed"))
        self.dtype = numerics.compute_dtype

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], tokens, axis=0).astype(self.dtype)


def _linear(config_lora, name, in_features, out_features, axes, numerics, rngs):
    lora = config_lora if config_lora and name in config_lora.target_modules else None
    return Linear(in_features, out_features, axes, numerics=numerics, lora=lora, rngs=rngs)


class Attention(nnx.Module):
    """The projections of grouped-query self-attention with RoPE: `qkv` before the attention
    and `output` after it; the attention itself is the caller's (see `Block`)."""

    def __init__(self, config: LlamaConfig, numerics: Numerics, lora: LoraConfig | None,
                 sharding: Sharding | None, rngs: nnx.Rngs):
        d, n, k, h = (config.hidden_size, config.num_attention_heads,
                      config.num_key_value_heads, config.head_dim)
        self.q_proj = _linear(lora, "q_proj", d, n * h, ("embed", "heads"), numerics, rngs)
        self.k_proj = _linear(lora, "k_proj", d, k * h, ("embed", "kv_heads"), numerics, rngs)
        self.v_proj = _linear(lora, "v_proj", d, k * h, ("embed", "kv_heads"), numerics, rngs)
        self.o_proj = _linear(lora, "o_proj", n * h, d, ("heads", "embed"), numerics, rngs)
        self.config = config
        self.sharding = sharding

    def qkv(self, x: jax.Array, positions: jax.Array, adapters: bool = True):
        """x [B, T, D] -> q [B, T, N, H], k and v [B, T, K, H], with RoPE applied to q and k."""
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x, adapters).reshape(b, t, c.num_attention_heads, c.head_dim)
        k = self.k_proj(x, adapters).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = self.v_proj(x, adapters).reshape(b, t, c.num_key_value_heads, c.head_dim)
        q = constrain(q, self.sharding, ("batch", "act_seq", "act_heads", None))
        inv_freq = inverse_frequencies(c)
        return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

    def output(self, attended: jax.Array, adapters: bool = True) -> jax.Array:
        b, t, n, h = attended.shape
        return self.o_proj(attended.reshape(b, t, n * h), adapters)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, numerics: Numerics, lora: LoraConfig | None,
                 sharding: Sharding | None, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = _linear(lora, "gate_proj", d, f, ("embed", "mlp"), numerics, rngs)
        self.up_proj = _linear(lora, "up_proj", d, f, ("embed", "mlp"), numerics, rngs)
        self.down_proj = _linear(lora, "down_proj", f, d, ("mlp", "embed"), numerics, rngs)
        self.sharding = sharding

    def __call__(self, x: jax.Array, adapters: bool = True) -> jax.Array:
        hidden = jax.nn.silu(self.gate_proj(x, adapters)) * self.up_proj(x, adapters)
        hidden = constrain(hidden, self.sharding, ("batch", "act_seq", "act_mlp"))
        return self.down_proj(hidden, adapters)


class Block(nnx.Module):
    """One decoder layer, the only place the layer is spelled out.

    x: hidden states [B, T, D], or a tuple of such streams that share this layer's weights (the
    trainer's prompt stream and completion stream); positions: [B, T] per stream, like x.
    attend(qkv) -> (attended, aux) computes this call's attention: qkv is (q, k, v) of
    `Attention.qkv` per stream (a tuple of them for several streams), attended is like x with
    [B, T, N, H] per stream, and aux (the written KV cache, say) is returned next to the new x.
    """

    def __init__(self, config: LlamaConfig, numerics: Numerics, lora: LoraConfig | None,
                 sharding: Sharding | None, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, numerics)
        self.self_attn = Attention(config, numerics, lora, sharding, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, numerics)
        self.mlp = MLP(config, numerics, lora, sharding, rngs)
        self.sharding = sharding

    def __call__(self, x, positions, attend, adapters: bool = True):
        attn = self.self_attn
        qkv = jax.tree.map(lambda x, pos: attn.qkv(self.input_layernorm(x), pos, adapters),
                           x, positions)
        attended, aux = attend(qkv)
        x = jax.tree.map(lambda x, a: x + attn.output(a, adapters), x, attended)
        x = jax.tree.map(lambda x: x + self.mlp(self.post_attention_layernorm(x), adapters), x)
        return jax.tree.map(lambda x: constrain(x, self.sharding, ROW_AXES), x), aux


def run_block(block: Block, x, positions, attend, *, adapters: bool = True,
              remat_policy: str | None = None):
    """block(x, positions, attend, adapters), rematerialised under the named
    `jax.checkpoint_policies` policy if given (training memory: the backward pass recomputes
    the layer from its input instead of keeping its activations)."""
    if remat_policy is None:
        return block(x, positions, attend, adapters)
    graphdef, state = nnx.split(block)

    def pure(state, x, positions):
        return nnx.merge(graphdef, state)(x, positions, attend, adapters)

    policy = getattr(jax.checkpoint_policies, remat_policy)
    return jax.checkpoint(pure, policy=policy)(state, x, positions)


def scan_blocks(layers, x, positions, attend, *, adapters: bool = True,
                remat_policy: str | None = None):
    """All layers applied to x with `lax.scan` over their stacked weights: one compiled layer
    instead of L unrolled copies (compile time), at the cost of one stacked copy of the layer
    weights for the duration of the call. attend must not depend on the layer; returns x."""
    graphdef = nnx.graphdef(layers[0])
    stacked = jax.tree.map(lambda *w: jnp.stack(w), *[nnx.state(layer) for layer in layers])

    def layer(x, state):
        x, _ = run_block(nnx.merge(graphdef, state), x, positions, attend, adapters=adapters,
                         remat_policy=remat_policy)
        return x, None

    return jax.lax.scan(layer, x, stacked)[0]


class Llama(nnx.Module):
    """Llama causal LM. `model(tokens)` gives float32 logits [B, T, V].

    With `lora`, the projections listed in `lora.target_modules` carry adapters
    (`LoraParam`s); `adapters=False` runs the frozen base model (the KL reference).
    With `sharding`, activations are constrained to its mesh by logical axis names.
    """

    def __init__(self, config: LlamaConfig, *, numerics: Numerics = Numerics(),
                 lora: LoraConfig | None = None, sharding: Sharding | None = None,
                 rngs: nnx.Rngs):
        self.config = config
        self.numerics = numerics
        self.lora = lora
        self.sharding = sharding
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, numerics, rngs)
        self.layers = nnx.List([Block(config, numerics, lora, sharding, rngs)
                                for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, numerics)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, ("embed", "vocab"),
                                  numerics=numerics, lora=None, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, cache: KVCache | None = None,
                 adapters: bool = True):
        """Logits [B, T, V] (float32) for tokens [B, T]; with a cache, (logits, updated cache).

        positions [B, T]: RoPE positions; default 0..T-1, or cache.end + 0..T-1 with a cache.
          Pass them explicitly for left-padded rows (e.g. `positions_from_mask`).
        attention_mask [B, T]: 1 for real tokens, 0 for padding (keys that nobody attends to).
          Right padding needs no mask (causality already hides it from real tokens), and
          without a mask attention takes the fastest (purely causal) kernel.
        cache: the tokens are written at slots cache.end .. cache.end+T-1 and attend to every
          valid earlier slot; this serves both prompt prefill and one-token decoding steps.
        """
        h, cache = self.hidden_states(tokens, positions=positions, attention_mask=attention_mask,
                                      cache=cache, adapters=adapters)
        logits = self.logits(h)
        return logits if cache is None else (logits, cache)

    def hidden_states(self, tokens, *, positions=None, attention_mask=None, cache=None,
                      adapters=True):
        """Final-norm hidden states [B, T, D] and the updated cache (None without one)."""
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an integer array [batch, seq], got "
                             f"{tokens.dtype}{list(tokens.shape)}")
        b, t = tokens.shape
        for name, arr in (("positions", positions), ("attention_mask", attention_mask)):
            if arr is not None and tuple(arr.shape) != (b, t):
                raise ValueError(f"{name} must have the shape of tokens {(b, t)}, got "
                                 f"{tuple(arr.shape)}")
        if cache is None:
            end = None
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(t), (b, t))
            mask, is_causal = prefill_mask(attention_mask), True
        else:
            real = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
            _check_cache_room(cache, t)
            end = cache.end
            if positions is None:
                positions = jnp.broadcast_to(end + jnp.arange(t), (b, t))
            valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, end))
            mask, is_causal = cached_mask(valid, end, t), False

        impl = self.numerics.attention_impl
        x = constrain(self.embed_tokens(tokens), self.sharding, ROW_AXES)
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            if cache is None:
                def attend(qkv):
                    return attention(*qkv, mask, is_causal, impl), None
            else:
                def attend(qkv, i=i):
                    q, k, v = qkv
                    k = jax.lax.dynamic_update_slice(cache.k[i], k.astype(cache.k[i].dtype),
                                                     (0, end, 0, 0))
                    v = jax.lax.dynamic_update_slice(cache.v[i], v.astype(cache.v[i].dtype),
                                                     (0, end, 0, 0))
                    return attention(q, k, v, mask, False, impl), (k, v)
            x, kv = run_block(block, x, positions, attend, adapters=adapters,
                              remat_policy=self.numerics.remat_policy if cache is None else None)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        h = self.norm(x)
        if cache is not None:
            cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid=valid, end=end + t)
        return h, cache

    def logits(self, h: jax.Array) -> jax.Array:
        """Float32 logits [..., V] from hidden states [..., D] (callable on chunks of h)."""
        dtype = self.numerics.compute_dtype
        if self.lm_head is None:
            w = self.embed_tokens.weight[...].T
        else:
            w = self.lm_head.kernel[...]
        logits = jnp.dot(h.astype(dtype), w.astype(dtype), precision=self.numerics.precision,
                         preferred_element_type=jnp.float32)
        return constrain(logits, self.sharding, ("batch", "act_seq", "act_vocab")[-logits.ndim:])


def _check_cache_room(cache: KVCache, num_new: int):
    """Writing past the cache end would be clamped by XLA, so refuse it when `end` is known."""
    if isinstance(cache.end, jax.core.Tracer):
        return
    if int(cache.end) + num_new > cache.max_len:
        raise ValueError(f"KV cache overflow: {int(cache.end)} slots used + {num_new} new tokens "
                         f"> max_len {cache.max_len}")


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions [B, T] that count only real tokens (0 for leading padding)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)

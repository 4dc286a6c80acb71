"""Linear layers with optional LoRA adapters.

The base kernel is an `nnx.Param` (frozen in RL); the adapter matrices are `LoraParam`s, which
are not Params, so `nnx.state(model, LoraParam)` is exactly the trainable state and
`nnx.state(model, nnx.Param)` exactly the base weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from arc_jax.model.config import LoraConfig, Numerics


class LoraParam(nnx.Variable):
    """A trainable LoRA matrix."""


def init_lora_a(key: jax.Array, shape: tuple[int, int], dtype) -> jax.Array:
    """PEFT's default for A [in, r]: kaiming-uniform(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in))."""
    bound = shape[0] ** -0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class Linear(nnx.Module):
    """y = x W + s * (x A) B, with W [in, out] frozen, A [in, r], B [r, out] (B starts at 0).

    `axes` are the logical names of the (in, out) dimensions, used for sharding.
    """

    def __init__(self, in_features: int, out_features: int, axes: tuple[str, str], *,
                 numerics: Numerics, lora: LoraConfig | None, rngs: nnx.Rngs):
        self.numerics = numerics
        init = jax.nn.initializers.normal(0.02)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features),
                                     numerics.param_dtype), logical_axes=axes)
        if lora is None:
            self.lora_a = self.lora_b = self.scaling = None
        else:
            a = init_lora_a(rngs.params(), (in_features, lora.rank), numerics.lora_dtype)
            self.lora_a = LoraParam(a, logical_axes=(axes[0], "lora_rank"))
            self.lora_b = LoraParam(jnp.zeros((lora.rank, out_features), numerics.lora_dtype),
                                    logical_axes=("lora_rank", axes[1]))
            self.scaling = lora.scaling

    def __call__(self, x: jax.Array, adapters: bool = True) -> jax.Array:
        dtype, precision = self.numerics.compute_dtype, self.numerics.precision
        x = x.astype(dtype)
        y = jnp.dot(x, self.kernel[...].astype(dtype), precision=precision)
        if adapters and self.lora_a is not None:
            xa = jnp.dot(x, self.lora_a[...].astype(dtype), precision=precision)
            y = y + self.scaling * jnp.dot(xa, self.lora_b[...].astype(dtype), precision=precision)
        return y


def merge_lora(kernel: jax.Array, a: jax.Array, b: jax.Array, scaling: float) -> jax.Array:
    """W + s * A B in float32: kernel [in, out], a [in, r], b [r, out]."""
    delta = jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32), precision="highest")
    return kernel.astype(jnp.float32) + scaling * delta

"""Settings of the Llama model: architecture (from a Hugging Face config.json), LoRA, numerics."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax.numpy as jnp

from arc_jax.errors import UserError

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(UserError, ValueError):
    """A config.json or adapter_config.json is missing, unsupported or malformed."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """The `llama3` frequency scaling of Llama 3.1 (see `rope.inverse_frequencies`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama 3.x causal language model (field names follow Hugging Face)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072
    bos_token_id: int | tuple[int, ...] | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> LlamaConfig:
        """Parses a Hugging Face Llama config dict; `source` names it in errors."""
        def need(key):
            if key not in d:
                raise ConfigError(f"{source}: missing field {key!r}")
            return d[key]

        archs = d.get("architectures") or ["LlamaForCausalLM"]
        if d.get("model_type", "llama") != "llama" or archs != ["LlamaForCausalLM"]:
            raise ConfigError(
                f"{source}: unsupported architecture model_type={d.get('model_type')!r} "
                f"architectures={archs!r}; expected 'llama' / ['LlamaForCausalLM']")
        for key, expected in (("hidden_act", "silu"), ("attention_bias", False),
                              ("mlp_bias", False), ("pretraining_tp", 1)):
            if d.get(key, expected) != expected:
                raise ConfigError(f"{source}: unsupported {key}={d[key]!r}; expected {expected!r}")

        # transformers >= 5 writes `rope_parameters`; older files `rope_theta` + `rope_scaling`.
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "llama3":
            try:
                scaling = RopeScaling(
                    factor=float(rope["factor"]),
                    low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_position_embeddings=int(rope["original_max_position_embeddings"]))
            except KeyError as e:
                raise ConfigError(f"{source}: llama3 rope scaling lacks field {e.args[0]!r}") from None
        elif rope_type == "default":
            scaling = None
        else:
            raise ConfigError(f"{source}: unsupported rope type {rope_type!r}; "
                              "expected 'llama3' or none")

        heads = need("num_attention_heads")
        return cls(
            vocab_size=need("vocab_size"),
            hidden_size=need("hidden_size"),
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or need("hidden_size") // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            max_position_embeddings=d.get("max_position_embeddings", 131072),
            bos_token_id=_hashable(d.get("bos_token_id")),
            eos_token_id=_hashable(d.get("eos_token_id")),
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LlamaConfig:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: config file not found")
        with open(path) as f:
            return cls.from_hf_dict(json.load(f), source=path)

    def to_hf_dict(self, dtype: str) -> dict[str, Any]:
        """The config.json a Hugging Face `LlamaForCausalLM` checkpoint carries."""
        rope: dict[str, Any] = {"rope_type": "default"}
        if self.rope_scaling is not None:
            rope = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rms_norm_eps": self.rms_norm_eps,
            # Both spellings, so that old and new transformers (and vLLM) read the rope.
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else rope,
            "rope_parameters": {**rope, "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": _jsonable(self.bos_token_id),
            "eos_token_id": _jsonable(self.eos_token_id),
            "torch_dtype": dtype,
            "dtype": dtype,
        }


def _hashable(token_ids):
    return tuple(token_ids) if isinstance(token_ids, list) else token_ids


def _jsonable(token_ids):
    return list(token_ids) if isinstance(token_ids, tuple) else token_ids


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters `W x + s * B(A x)` on the listed projections; s = alpha/r or alpha/sqrt(r)."""

    rank: int = 16
    alpha: float = 64.0
    use_rslora: bool = True
    target_modules: tuple[str, ...] = LORA_MODULES

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"LoraConfig.rank must be >= 1, got {self.rank}")
        unknown = sorted(set(self.target_modules) - set(LORA_MODULES))
        if unknown or not self.target_modules:
            raise ConfigError(f"LoraConfig.target_modules={list(self.target_modules)}: expected "
                              f"a non-empty subset of {list(LORA_MODULES)}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclasses.dataclass(frozen=True)
class Numerics:
    """Dtypes and kernels of one model instance.

    param_dtype: storage of the frozen base weights (bf16 for the 8B model).
    dtype: compute dtype of activations; None means param_dtype.
    lora_dtype: storage of the trainable LoRA weights (kept in float32 for the optimizer).
    precision: matmul precision passed to every dot (e.g. "highest" for exact float32).
    attention_impl: None (let JAX choose), "xla" or "cudnn" for `jax.nn.dot_product_attention`.
    remat_policy: name of a `jax.checkpoint_policies` entry; each block is rematerialised
      under it (training memory), or None for no remat.
    """

    param_dtype: Any = jnp.bfloat16
    dtype: Any = None
    lora_dtype: Any = jnp.float32
    precision: str | None = None
    attention_impl: str | None = None
    remat_policy: str | None = None

    @property
    def compute_dtype(self):
        return self.param_dtype if self.dtype is None else self.dtype

"""Llama 3.x in Flax NNX with LoRA, loaded from and exported to Hugging Face checkpoints."""

from arc_jax.model.checkpoint import (
    CheckpointError,
    from_pretrained,
    load_peft_adapter,
    save_merged,
    save_peft_adapter,
)
from arc_jax.model.config import ConfigError, LlamaConfig, LoraConfig, Numerics, RopeScaling
from arc_jax.model.llama import KVCache, Llama, positions_from_mask
from arc_jax.model.lora import LoraParam
from arc_jax.model.safetensors_io import SafetensorsError
from arc_jax.model.sharding import DEFAULT_RULES, Sharding, state_shardings

__all__ = [
    "CheckpointError", "ConfigError", "DEFAULT_RULES", "KVCache", "Llama", "LlamaConfig",
    "LoraConfig", "LoraParam", "Numerics", "RopeScaling", "SafetensorsError", "Sharding",
    "from_pretrained", "load_peft_adapter", "positions_from_mask", "save_merged",
    "save_peft_adapter", "state_shardings",
]

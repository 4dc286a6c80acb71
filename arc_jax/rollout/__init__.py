"""Rollout engines: sample n completions per prompt for GRPO training and evaluation.

The names below load their module on first use, so that `arc_jax.rollout.interface` (plain
dataclasses, what the config checks need) imports without JAX or Flax.
"""

import importlib

_EXPORTS = {
    "interface": ("ENGINES", "LLAMA3_STOP_TOKEN_IDS", "VLLM_LORA_RANKS", "Completion",
                  "RolloutEngine", "SamplingParams"),
    "memory": ("RolloutMemoryError", "SlotPlan", "choose_slots"),
    "sampler": ("JaxSampler", "PromptBuckets", "SamplerConfig"),
    "vllm": ("VLLMConfig", "VLLMEngine", "VLLMError"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'arc_jax.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(f"arc_jax.rollout.{_HOME[name]}"), name)

"""Rollout engines: sample n completions per prompt for GRPO training and evaluation."""

from arc_jax.rollout.interface import (
    LLAMA3_STOP_TOKEN_IDS,
    Completion,
    RolloutEngine,
    SamplingParams,
)
from arc_jax.rollout.memory import RolloutMemoryError, SlotPlan, choose_slots
from arc_jax.rollout.sampler import JaxSampler, PromptBuckets, SamplerConfig
from arc_jax.rollout.vllm import VLLMConfig, VLLMEngine, VLLMError

__all__ = [
    "Completion",
    "JaxSampler",
    "LLAMA3_STOP_TOKEN_IDS",
    "PromptBuckets",
    "RolloutEngine",
    "RolloutMemoryError",
    "SamplerConfig",
    "SamplingParams",
    "VLLMConfig",
    "VLLMEngine",
    "VLLMError",
    "SlotPlan",
    "choose_slots",
]

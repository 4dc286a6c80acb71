"""How much device memory a rollout batch needs, and a clear refusal when it does not fit.

The sampler checks this before it allocates, so an oversized request fails with a message
saying what to lower instead of an XLA out-of-memory crash in the middle of a step.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from arc_jax.model.config import LlamaConfig

GiB = 2 ** 30


class RolloutMemoryError(MemoryError):
    """A rollout batch would not fit in the free device memory."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes needed by one batch of P prompts (S slots each) with n samples of T tokens.

    prompt_cache: one key/value copy per prompt, all layers.
    completion_cache: one key/value copy per sample, all layers.
    workspace: estimated transient buffers (prefill activations and attention scores, decoding
      logits and the sampling transforms' copies of them).
    """

    prompts: int
    prompt_len: int
    n: int
    max_new_tokens: int
    prompt_cache: int
    completion_cache: int
    workspace: int

    @property
    def total(self) -> int:
        return self.prompt_cache + self.completion_cache + self.workspace

    def describe(self) -> str:
        return (f"{self.total / GiB:.2f} GiB for {self.prompts} prompt(s) x {self.prompt_len} "
                f"slots with n={self.n} samples x {self.max_new_tokens} new tokens "
                f"(prompt KV cache {self.prompt_cache / GiB:.2f} GiB, completion KV cache "
                f"{self.completion_cache / GiB:.2f} GiB, workspace {self.workspace / GiB:.2f} GiB)")


def kv_bytes_per_token(config: LlamaConfig, dtype) -> int:
    """Keys and values of one token across all layers."""
    return (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
            * np.dtype(dtype).itemsize)


def plan_memory(config: LlamaConfig, dtype, prompts: int, prompt_len: int, n: int,
                max_new_tokens: int) -> MemoryPlan:
    """The memory one `JaxSampler` batch needs (caches exactly, workspace estimated)."""
    per_token = kv_bytes_per_token(config, dtype)
    itemsize = np.dtype(dtype).itemsize
    rows = prompts * n
    # Prefill: a few [P, S, D] and [P, S, F] activations plus float32 attention scores
    # [P, N, S, S] (materialised unless a fused kernel is used).
    prefill = (prompts * prompt_len * (4 * config.hidden_size + 3 * config.intermediate_size)
               * itemsize
               + prompts * config.num_attention_heads * prompt_len * prompt_len * 4)
    # Decoding: about eight float32 [B, V] arrays (logits, processed copy, sort, softmax,
    # cumulative sum, log-softmax) plus the [B, V] seen-token mask.
    decode = rows * config.vocab_size * (8 * 4 + 1)
    return MemoryPlan(prompts=prompts, prompt_len=prompt_len, n=n, max_new_tokens=max_new_tokens,
                      prompt_cache=prompts * prompt_len * per_token,
                      completion_cache=rows * max_new_tokens * per_token,
                      workspace=max(prefill, decode))


def free_device_bytes(device: jax.Device | None = None) -> int:
    """Free memory of the device (its allocator's limit minus what is in use); on CPU, the
    host's available physical memory."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(plan: MemoryPlan, free: int):
    """Raises RolloutMemoryError (what is needed, what is free, what to lower) if plan > free."""
    if plan.total <= free:
        return
    raise RolloutMemoryError(
        f"rollout needs {plan.describe()}, but only {free / GiB:.2f} GiB is free on the device. "
        f"Lower n (samples per prompt), max_new_tokens, the prompt length or the prompts per "
        f"batch, or raise the memory available to the sampler.")

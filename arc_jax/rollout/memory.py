"""How many decode rows and cache pages a rollout gets, and a clear refusal when none fit.

The sampler plans before it allocates, so an oversized request fails with a line saying which
setting to lower instead of an XLA out-of-memory crash in the middle of a step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np

from arc_jax.errors import UserError
from arc_jax.model.config import LlamaConfig

GiB = 2 ** 30


class RolloutMemoryError(UserError, MemoryError):
    """A rollout would not fit in the free device memory."""


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """The device memory of P prompt slots for prompts of up to S tokens, B decode rows
    (R = rows_per_prompt per prompt; see `lanes`), and M pages of `page_size` tokens, which
    hold the prompts' and the rows' keys and values (page 0 is the trash page).

    prompt_cache: the P prompts' last logits, token sets and page tables.
    page_pool: the M pages' keys and values.
    row_state: each row's next logits, token set and bookkeeping.
    workspace: estimated transient buffers: the sampling transforms' copies of the [B, V]
      logits during a step, or the activations of one prompt's prefill, whichever is larger.
    """

    prompts: int
    rows: int
    rows_per_prompt: int
    prompt_len: int
    max_new_tokens: int
    page_size: int
    pages: int
    prompt_cache: int
    page_pool: int
    row_state: int
    workspace: int

    @property
    def lanes(self) -> int:
        """The most rows one slot's prompt serves at once (L): twice its share of the rows, so
        that rows which finish can move on to another slot's prompt, and at most all rows."""
        return min(self.rows, 2 * self.rows_per_prompt)

    @property
    def pages_per_row(self) -> int:
        return -(-self.max_new_tokens // self.page_size)

    @property
    def pages_per_prompt(self) -> int:
        """Pages of the longest prompt, padded to its bucket (what its prefill writes)."""
        return -(-self.prompt_len // self.page_size)

    @property
    def total(self) -> int:
        return self.prompt_cache + self.page_pool + self.row_state + self.workspace

    def describe(self) -> str:
        return (f"{self.total / GiB:.2f} GiB for {self.rows} decode rows ({self.prompts} prompt "
                f"slot(s) for up to {self.prompt_len} tokens, up to {self.lanes} rows each) and "
                f"{self.pages - 1} pages of {self.page_size} tokens (prompt slots "
                f"{self.prompt_cache / GiB:.2f} GiB, pages {self.page_pool / GiB:.2f} GiB, rows "
                f"{self.row_state / GiB:.2f} GiB, workspace {self.workspace / GiB:.2f} GiB)")


def kv_bytes_per_token(config: LlamaConfig, dtype) -> int:
    """Keys and values of one token across all layers."""
    return (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
            * np.dtype(dtype).itemsize)


def plan_slots(config: LlamaConfig, dtype, *, prompts: int, rows_per_prompt: int,
               prompt_len: int, max_new_tokens: int, page_size: int, pages: int,
               rows: int | None = None, fused_prefill: bool = False,
               kv_dtype=None) -> SlotPlan:
    """The memory of one slot layout (caches exactly, workspace estimated); rows defaults to
    prompts * rows_per_prompt; the pages hold keys and values in kv_dtype (default: dtype,
    the activations')."""
    per_token = kv_bytes_per_token(config, kv_dtype or dtype)
    itemsize = np.dtype(dtype).itemsize
    vocab = config.vocab_size
    rows = rows or prompts * rows_per_prompt
    # Decoding: about eight float32 [B, V] arrays (processed logits, softmax, log-softmax, the
    # top-p masks) plus the [B, V] token sets.
    decode = rows * vocab * (8 * 4 + 1)
    # Prefill of one prompt: a few [S, D] and [S, F] activations, and the float32 attention
    # scores [N, S, S] unless a fused kernel computes them.
    prefill = prompt_len * (4 * config.hidden_size + 3 * config.intermediate_size) * itemsize
    if not fused_prefill:
        prefill += config.num_attention_heads * prompt_len * prompt_len * 4
    return SlotPlan(prompts=prompts, rows=rows, rows_per_prompt=rows_per_prompt,
                    prompt_len=prompt_len,
                    max_new_tokens=max_new_tokens, page_size=page_size, pages=pages,
                    prompt_cache=prompts * (vocab * 5 + 4 * -(-prompt_len // page_size)),
                    page_pool=pages * page_size * per_token,
                    row_state=rows * (vocab * 5 + 16),
                    workspace=max(decode, prefill))


def choose_slots(config: LlamaConfig, dtype, budget: int, *, num_prompts: int, n: int,
                 prompt_len: int, max_new_tokens: int, max_rows: int, rows_per_prompt: int,
                 page_size: int, fused_prefill: bool = False,
                 prompt_lengths: Sequence[int] = (), kv_dtype=None) -> SlotPlan:
    """The largest layout within `budget` bytes: R = min(n, rows_per_prompt) rows per prompt,
    B = R x as many prompts as the call has and `max_rows` allows, and pages for the prompts
    in the slots and for every row to reach max_new_tokens, or, when memory is short, for the
    prompts and for the rows to average at least half of max_new_tokens (longer rows then wait
    for pages; see the sampler). A prompt holds pages for its real length, so P slots never
    hold more than the P longest of `prompt_lengths` (the call's real prompt lengths; without
    them, every slot's prompt counts at prompt_len, the longest bucket). The page count itself
    depends on the bucket and the budget only (every slot's prompt at the bucket when that
    fits), so calls whose prompts differ but share a bucket share one decoding program. When
    the call has more prompts than that and the pages still fit, twice the prompt slots: the
    next prompts wait prefilled, so rows whose prompt has no sample left to start move on
    instead of idling. Fewer rows, then fewer rows per prompt, when even that does not fit;
    RolloutMemoryError when one prompt and one row do not."""
    r = max(1, min(n, rows_per_prompt, max_rows))
    p = max(1, min(num_prompts, max_rows // r))
    per_row = -(-max_new_tokens // page_size)
    per_prompt = -(-prompt_len // page_size)
    longest = sorted((-(-length // page_size) for length in prompt_lengths), reverse=True)
    # pages the prompts of p slots can hold at once
    prompt_pages = lambda p: sum(longest[:p]) if longest else p * per_prompt
    page_bytes = page_size * kv_bytes_per_token(config, kv_dtype or dtype)
    plan = lambda p, r, pages, rows=None: plan_slots(
        config, dtype, prompts=p, rows_per_prompt=r, prompt_len=prompt_len,
        max_new_tokens=max_new_tokens, page_size=page_size, pages=pages, rows=rows,
        fused_prefill=fused_prefill, kv_dtype=kv_dtype)

    def pages_within(p, r, rows):
        """1 + every page (prompts at the bucket), or what the budget holds rounded down to
        1/16 of that, so that small changes of the free memory between calls give the same
        count (a new count compiles a new decoding program)."""
        whole = p * per_prompt + rows * per_row
        quantum = max(1, whole // 16)
        affordable = max(0, budget - plan(p, r, 0, rows).total) // page_bytes
        return 1 + min(whole, (affordable - 1) // quantum * quantum)

    extra = min(num_prompts, 2 * p)
    if extra > p:
        pages = pages_within(extra, r, p * r)
        if pages - 1 >= prompt_pages(extra) + p * r * per_row:
            return plan(extra, r, pages, p * r)
    while True:
        row_pages = p * r * per_row
        pages = pages_within(p, r, p * r)
        if pages - 1 >= prompt_pages(p) + min(row_pages, max(per_row, row_pages // 2)):
            return plan(p, r, pages)
        if p > 1:
            p //= 2
        elif r > 1:
            r //= 2
        else:
            raise RolloutMemoryError(
                f"rollout needs {plan(1, 1, 1 + prompt_pages(1) + per_row).describe()}, but only "
                f"{budget / GiB:.2f} GiB is free for the sampler. Lower max_completion_length "
                "or the prompt length (max_seq_length), or raise sampler.memory_fraction")


def free_device_bytes(device: jax.Device | None = None) -> int:
    """Free memory of the device (its allocator's limit minus what is in use); on CPU, the
    host's available memory (MemAvailable: free pages plus reclaimable caches)."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return available_host_bytes()


def available_host_bytes(meminfo: str = "/proc/meminfo") -> int:
    """MemAvailable of /proc/meminfo in bytes (the free page count where it is missing)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

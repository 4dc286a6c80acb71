"""`JaxSampler`: the in-process rollout engine (CPU, GPU, TPU), with continuous batching.

A call's (prompt, sample) requests run on a fixed set of B decode rows and P prompt slots
(`arc_jax.rollout.decode`). The prompts go through the slots shortest first; a slot whose
prompt has all its samples done takes the next prompt (one prefill), and a row whose sample
finished takes the next sample of the oldest prompt with samples left to start, in any slot
with a free lane (L lanes per slot), so rows do not wait for the slowest sample of their
prompt. Prompts and rows hold their keys and values in pages of one pool, given out by the
host: a prompt's for its real length when it takes a slot (back when it is done), a row's
before each segment of decoding steps, enough for the segment, so memory follows the real
lengths. When the pool runs short,
the rows with the least progress give their pages back and their samples start again later;
since a sample's draws depend only on (seed, prompt index, sample index, own step), it comes
out the same. The slot layout and the page count are chosen from the free device memory
(`arc_jax.rollout.memory.choose_slots`).

With `merge_lora` (the default) the sampler decodes with merged weights W + s * A B, stored in
the base weights' dtype and recomputed at each `update_weights`, as TRL does when it hands a
LoRA policy to vLLM: one matmul per projection instead of three, and no per-step cast of the
float32 adapters, for one extra copy of the adapted kernels in device memory.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arc_jax import distributed
from arc_jax.model.llama import Llama
from arc_jax.model.lora import LoraParam, merge_lora
from arc_jax.rollout.decode import (Layout, PagePool, Rows, SlotCache, decode_segment,
                                    prefill_slot, row_keys)
from arc_jax.rollout.interface import Completion, SamplingParams
from arc_jax.rollout.memory import SlotPlan, choose_slots, free_device_bytes

ATTENTION = ("auto", "xla", "pallas")
# sampler.kv_cache_dtype (vLLM's --kv-cache-dtype names): the pages' keys and values
KV_CACHE_DTYPES = {"auto": None, "fp8": jnp.float8_e4m3fn}


@dataclasses.dataclass(frozen=True)
class PromptBuckets:
    """The padded prompt lengths: few of them, so that few programs compile. The sampler and
    the GRPO update pad with the same rule.

    minimum: the smallest padded length.
    bits: lengths are m * 2**e with m having this many significant bits: 1 gives powers of
      two (up to 2x padding), 2 gives 4, 6, 8, 12, ... (up to 1.5x); 0 gives one bucket, the
      maximum (compile once, pad every prompt to the longest a run admits).
    maximum: 0, or the longest prompt a run admits: no bucket is longer (rounded up to a
      multiple of minimum). A longer prompt gets the bucket of the rule without a maximum.
    """

    minimum: int = 64
    bits: int = 2
    maximum: int = 0

    def __post_init__(self):
        if self.minimum < 1 or self.bits < 0 or self.maximum < 0:
            raise ValueError(f"PromptBuckets: minimum must be >= 1 and bits, maximum >= 0, got "
                             f"{self}")
        if self.bits == 0 and not self.maximum:
            raise ValueError("PromptBuckets: bits=0 (one bucket) needs a maximum prompt length")

    @property
    def largest(self) -> int:
        """The longest bucket of prompts up to `maximum` (0 without a maximum)."""
        return -(-self.maximum // self.minimum) * self.minimum

    def __call__(self, length: int) -> int:
        if self.maximum and length <= self.maximum:
            if self.bits == 0:
                return self.largest
            return min(bucket_length(length, self.minimum, self.bits), self.largest)
        return bucket_length(length, self.minimum, max(self.bits, 1))


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Settings of a `JaxSampler`.

    max_rows: most sequences decoded at once (the decode rows); memory may lower it.
    rows_per_prompt: rows per prompt (R): a call's rows are min(n, R) per prompt for as many
      prompts as max_rows allows, and a prompt slot serves up to 2R rows at once.
    page_size: tokens per page of the key/value cache (prompts' and completions').
    segment_steps: most decoding steps between two visits of the host (which hands finished
      rows new samples and pages).
    refill_rows: a segment also ends once this many rows have finished, while there are samples
      to give them (0: B // 8, at least 1); fewer leave finished rows idle for fewer steps,
      for more host visits.
    attention: the decoding attention: "pallas" (kernels that read only the pages written;
      GPU), "xla" (gathers every page; any backend) or "auto" (pallas on a GPU).
    buckets: the padded prompt lengths.
    memory_fraction: share of the free device memory the sampler may plan to use.
    memory_bytes: a fixed memory budget instead of asking the device (None = ask).
    seed: seeds the engine's own source of seeds for calls with `SamplingParams.seed=None`.
    merge_lora: decode with the LoRA adapters merged into a copy of the adapted kernels
      (faster; rounds W + s * A B to the kernels' dtype, as vLLM fed by TRL does).
    kv_cache_dtype: the cached keys and values: "auto" (the model's compute dtype) or "fp8"
      (float8 e4m3 without scaling, as vLLM's --kv-cache-dtype fp8: half the bytes per token,
      so twice the tokens in the same memory and half the attention's reads, for rounding
      the model was not trained with; its log-probs are then not the trainer's).
    """

    max_rows: int = 256
    rows_per_prompt: int = 16
    page_size: int = 32
    segment_steps: int = 64
    refill_rows: int = 0
    attention: str = "auto"
    buckets: PromptBuckets = PromptBuckets()
    memory_fraction: float = 0.8
    memory_bytes: int | None = None
    seed: int = 0
    merge_lora: bool = True
    kv_cache_dtype: str = "auto"

    def __post_init__(self):
        for name in ("max_rows", "rows_per_prompt", "page_size", "segment_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"SamplerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.refill_rows < 0:
            raise ValueError(f"SamplerConfig.refill_rows must be >= 0, got {self.refill_rows}")
        if self.attention not in ATTENTION:
            raise ValueError(f"SamplerConfig.attention must be one of {ATTENTION}, got "
                             f"{self.attention!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"SamplerConfig.kv_cache_dtype must be one of "
                             f"{list(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"SamplerConfig.memory_fraction must be in (0, 1], got "
                             f"{self.memory_fraction}")


def bucket_length(length: int, minimum: int, bits: int) -> int:
    """Smallest m * 2**e >= length whose m has `bits` significant bits, and >= minimum."""
    if length <= minimum:
        return minimum
    step = 2 ** max(length.bit_length() - bits, 0)
    return -(-length // step) * step


@functools.partial(jax.jit, static_argnums=3)
def _merged_kernel(kernel, a, b, scaling):
    return merge_lora(kernel, a, b, scaling).astype(kernel.dtype)


def fresh_adapters(lora: nnx.State) -> bool:
    """Every LoRA B is zero: the adapters change nothing (the base model)."""
    return not any(bool(jax.numpy.any(x != 0)) for path, x in
                   jax.tree_util.tree_flatten_with_path(lora)[0]
                   if "lora_b" in jax.tree_util.keystr(path))


def _merger(lora: nnx.State, scaling: float, fresh: bool):
    """merged(path, array) for the leaves of the base weights: W + s * A B (in the kernel's
    dtype and placement) for an adapted kernel, the array itself otherwise. With `fresh`
    adapters, the kernel itself, placed as a merged one would be (no recompilation)."""
    key = jax.tree_util.keystr
    adapters = {key(path): x for path, x in jax.tree_util.tree_flatten_with_path(lora)[0]}

    def merged(path, kernel):
        a, b = (adapters.get(key(path).replace("['kernel']", f"['{name}']"))
                for name in ("lora_a", "lora_b"))
        if a is None or not key(path).endswith("['kernel'].value"):
            return kernel
        if fresh:
            return jax.device_put(kernel, kernel.sharding)
        return jax.device_put(_merged_kernel(kernel, a, b, scaling), kernel.sharding)

    return merged


def merge_adapters(lora: nnx.State, base: nnx.State, scaling: float, fresh: bool) -> nnx.State:
    """A copy of `base` in which each adapted kernel is W + s * A B (in the kernel's dtype and
    placement); the other arrays are shared, not copied, and `base` is left as it was. Run
    the result with adapters=False. With `fresh` adapters (`fresh_adapters`: every B is zero,
    the base model, as evaluated first) that is `base` itself, and no memory is spent on a
    copy."""
    return jax.tree_util.tree_map_with_path(_merger(lora, scaling, fresh), base)


def _prefill(graphdef, lora, base, cache, pool, slot, tokens, length, pages, *, adapters):
    return prefill_slot(nnx.merge(graphdef, lora, base), cache, pool, slot, tokens, length,
                        pages, adapters=adapters)


def _segment(graphdef, lora, base, cache, pool, prompt_table, table, layout, rows, active,
             reset, keys, exit_after, *, steps, sampling, attention, adapters):
    return decode_segment(nnx.merge(graphdef, lora, base), cache, pool, prompt_table, table,
                          layout, rows, active, reset, keys, exit_after, steps=steps,
                          sampling=sampling, attention=attention, adapters=adapters)


class JaxSampler:
    """Rollout engine running a `Llama` in this process.

    tokenizer: optional, only used to fill `Completion.text`.
    """

    def __init__(self, model: Llama, tokenizer: Any = None, config: SamplerConfig = SamplerConfig()):
        self.model_config = model.config
        self.dtype = model.numerics.compute_dtype
        self.kv_dtype = KV_CACHE_DTYPES[config.kv_cache_dtype] or self.dtype
        # the log-probs are the trainer's own only when the cache rounds as the trainer does
        self.trainer_logprobs = self.kv_dtype == self.dtype
        self.fused_prefill = model.numerics.attention_impl == "cudnn"
        self.tokenizer = tokenizer
        self.config = config
        self.attention = config.attention
        if self.attention == "auto":
            from arc_jax.rollout.pallas_attention import reads_fp8, supported

            gpu = jax.default_backend() == "gpu"
            fits = supported(config.page_size, model.config.head_dim) and (
                self.kv_dtype == self.dtype or not gpu or reads_fp8(jax.local_devices()[0]))
            self.attention = "pallas" if gpu and fits else "xla"
        self._graphdef, lora, self._base = nnx.split(model, LoraParam, ...)
        # Committed to their placement, like the arrays `update_weights` hands in later, so
        # both hit the same compiled programs.
        self._lora = jax.tree.map(lambda x: jax.device_put(x, x.sharding), lora)
        self._merge = config.merge_lora and model.lora is not None
        self._scaling = model.lora.scaling if self._merge else 0.0
        self._shares_base = self._merge and fresh_adapters(self._lora)
        self._final = False  # the adapters were folded in for good (update_weights)
        self._merged = (merge_adapters(self._lora, self._base, self._scaling, self._shares_base)
                        if self._merge else None)
        self._seeds = np.random.default_rng(config.seed)
        self._prefill = jax.jit(_prefill, static_argnums=0, static_argnames="adapters",
                                donate_argnums=(3, 4))
        self._segment = jax.jit(_segment, static_argnums=0,
                                static_argnames=("steps", "sampling", "attention", "adapters"),
                                donate_argnums=(4, 8))
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ interface

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        """n completions for each prompt (token ids), in prompt order."""
        prompts = [self._check_prompt(i, p, sampling) for i, p in enumerate(prompts)]
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"generate: n must be a positive int, got {n!r}")
        if not prompts:
            return []
        seed = sampling.seed if sampling.seed is not None else int(self._seeds.integers(2 ** 31))
        static_sampling = dataclasses.replace(sampling, seed=None)
        plan = self.plan([len(p) for p in prompts], n, sampling.max_new_tokens)
        programs = self._programs()
        results = _Run(self, plan, prompts, n, seed, static_sampling).results()
        # new prefill and segment programs this call compiled (a new page count or bucket)
        self.last_stats["compiled"] = self._programs() - programs
        return results

    def _programs(self) -> int:
        """The programs the prefill and segment functions hold (0 where JAX does not say)."""
        return sum(getattr(f, "_cache_size", lambda: 0)() for f in (self._prefill, self._segment))

    def __enter__(self) -> "JaxSampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the sampler lives in this process."""

    def update_weights(self, lora_state: nnx.State, version: int | None = None,
                       final: bool = False) -> None:
        """Replaces the LoRA weights (`nnx.state(trained_model, LoraParam)`), placed like the
        current ones so the compiled programs are reused.

        final: no update follows (evaluation). The adapters are then folded into the base
        kernels for good, one kernel at a time, instead of into a copy beside them: each
        unmerged kernel is freed before the next is merged, provided nothing else holds it
        (the caller drops its model first), so the sampler keeps one set of weights and the
        memory of the copy goes to the key/value pages. A later update is refused.
        """
        if self._final:
            raise ValueError("update_weights: the adapters were folded into the sampler's "
                             "weights for good (final=True); no update can follow")
        old_leaves, old_tree = jax.tree_util.tree_flatten_with_path(self._lora)
        new_leaves, new_tree = jax.tree_util.tree_flatten_with_path(lora_state)
        if old_tree != new_tree:
            raise ValueError(f"update_weights: LoRA state structure differs from the sampler's "
                             f"({len(new_leaves)} arrays given, {len(old_leaves)} expected)")
        placed = []
        for (path, old), (_, new) in zip(old_leaves, new_leaves):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(f"update_weights: {jax.tree_util.keystr(path)} is "
                                 f"{new.dtype}{list(new.shape)}, expected "
                                 f"{old.dtype}{list(old.shape)}")
            placed.append(jax.device_put(new, old.sharding))
        self._lora = jax.tree_util.tree_unflatten(old_tree, placed)
        self._final = final
        if self._merge and final and not fresh_adapters(self._lora):
            leaves, tree = jax.tree_util.tree_flatten_with_path(self._base)
            paths, arrays = [path for path, _ in leaves], [x for _, x in leaves]
            # `arrays` now holds the sampler's only references to its weights
            del leaves
            self._base = self._merged = None
            merged = _merger(self._lora, self._scaling, fresh=False)
            for i, path in enumerate(paths):
                arrays[i] = merged(path, arrays[i])
            self._base = self._merged = jax.tree_util.tree_unflatten(tree, arrays)
            self._shares_base = False
        elif self._merge:
            self._merged = None  # free the old copy before making the new one
            self._shares_base = fresh_adapters(self._lora)
            self._merged = merge_adapters(self._lora, self._base, self._scaling,
                                          self._shares_base)

    @property
    def deferred_bytes(self) -> int:
        """Device memory the sampler does not hold now but will at the next `update_weights`
        with trained adapters: the merged copy of the adapted kernels, skipped while it decodes
        fresh adapters on the base kernels. A memory check made now must leave it free."""
        if not self._shares_base or self._final:
            return 0
        adapted = {jax.tree_util.keystr(path).replace("['lora_a']", "['kernel']")
                   for path, _ in jax.tree_util.tree_flatten_with_path(self._lora)[0]
                   if "lora_a" in jax.tree_util.keystr(path)}
        return sum(x.nbytes for path, x in jax.tree_util.tree_flatten_with_path(self._base)[0]
                   if jax.tree_util.keystr(path) in adapted)

    # ------------------------------------------------------------------ planning

    def plan(self, prompt_lengths: Sequence[int], n: int, max_new_tokens: int) -> SlotPlan:
        """The slot layout and page count of a call with prompts of these lengths
        (`arc_jax.rollout.memory.choose_slots`)."""
        c = self.config
        return choose_slots(self.model_config, self.dtype, self._budget(),
                            num_prompts=len(prompt_lengths), n=n,
                            prompt_len=c.buckets(max(prompt_lengths)),
                            max_new_tokens=max_new_tokens, max_rows=c.max_rows,
                            rows_per_prompt=c.rows_per_prompt, page_size=c.page_size,
                            fused_prefill=self.fused_prefill, prompt_lengths=prompt_lengths,
                            kv_dtype=self.kv_dtype)

    def _budget(self) -> int:
        if self.config.memory_bytes is not None:
            return self.config.memory_bytes
        return int(free_device_bytes() * self.config.memory_fraction)

    @property
    def _weights(self):
        return self._graphdef, self._lora, self._merged if self._merge else self._base

    def _check_prompt(self, index: int, prompt: Sequence[int], sampling: SamplingParams
                      ) -> list[int]:
        ids = np.asarray(prompt)
        vocab = self.model_config.vocab_size
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"generate: prompt {index} must be a non-empty list of token ids, "
                             f"got {ids.dtype}{list(ids.shape)}")
        bad = np.flatnonzero((ids < 0) | (ids >= vocab))
        if bad.size:
            raise ValueError(f"generate: prompt {index} has token id {int(ids[bad[0]])} at "
                             f"position {int(bad[0])}, outside the vocabulary [0, {vocab})")
        total = ids.size + sampling.max_new_tokens
        if total > self.model_config.max_position_embeddings:
            raise ValueError(f"generate: prompt {index} has {ids.size} tokens; with "
                             f"max_new_tokens={sampling.max_new_tokens} that exceeds the model's "
                             f"{self.model_config.max_position_embeddings} positions")
        return ids.tolist()


class _Run:
    """The host side of one `generate` call: which sample each row decodes, which pages it
    holds, and the tokens it has produced (see the module docstring)."""

    def __init__(self, sampler: JaxSampler, plan: SlotPlan, prompts: list[list[int]], n: int,
                 seed: int, sampling: SamplingParams):
        self.s, self.plan, self.prompts, self.n, self.seed = sampler, plan, prompts, n, seed
        self.sampling = sampling
        model_config = sampler.model_config
        penalised = sampling.repetition_penalty != 1.0
        self.p, self.lanes = plan.prompts, plan.lanes
        self.b = plan.rows
        model = nnx.merge(*sampler._weights)
        # A prompt holds pages for its real length, and its slot's row of the prompt table is
        # as wide as the call's longest bucket, so one segment program serves the whole call.
        # The first P prompts are prefilled at one length, their longest bucket (a call with no
        # more prompts than slots, as in training, compiles one prefill); later ones, longer
        # since prompts go shortest first, at their own bucket.
        self.cache = SlotCache.empty(model, self.p, penalised)
        first = sorted(map(len, prompts))[:self.p]
        self.first_len = sampler.config.buckets(max(first))
        self.pool = PagePool.empty(model, plan.pages, plan.page_size, sampler.kv_dtype)
        self.rows = Rows.empty(self.b, model_config.vocab_size, penalised)
        del model
        self.prompt_table = np.zeros((self.p, plan.pages_per_prompt), np.int32)
        self.slot_pages: list[list[int]] = [[] for _ in range(self.p)]
        self.table = np.zeros((self.b, plan.pages_per_row), np.int32)
        self.free = list(range(plan.pages - 1, 0, -1))  # a stack; page 0 is the trash page
        self.pending = collections.deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
        self.slot_prompt = [-1] * self.p
        self.slot_next = [n] * self.p  # next sample index to start; n = none left
        self.slot_retry: list[list[int]] = [[] for _ in range(self.p)]  # preempted samples
        self.slot_lanes: list[list[int | None]] = [[None] * self.lanes for _ in range(self.p)]
        self.slot_order = [0] * self.p  # when the slot took its prompt (the oldest first)
        self.row_sample: list[tuple[int, int] | None] = [None] * self.b
        self.row_slot = np.zeros(self.b, np.int32)
        self.row_lane = np.zeros(self.b, np.int32)
        self.row_pages: list[list[int]] = [[] for _ in range(self.b)]
        self.row_chunks: list[list[tuple]] = [[] for _ in range(self.b)]
        self.row_pos = np.zeros(self.b, np.int64)
        self.out: list[list[Completion | None]] = [[None] * n for _ in prompts]
        self.stats = collections.Counter()

    # --- scheduling

    def _to_start(self, slot: int) -> bool:
        return bool(self.slot_retry[slot]) or self.slot_next[slot] < self.n

    def _fill_slots(self) -> None:
        """Slots with nothing left of their prompt give its pages back and take the next
        prompts (one prefill each) while pages are free beyond what the running rows need for
        their next segment."""
        begin, prefills = time.perf_counter(), self.stats["prefills"]
        ps = self.plan.page_size
        spare = len(self.free) - self._running_need()
        for slot in range(self.p):
            if self._to_start(slot) or any(b is not None for b in self.slot_lanes[slot]):
                continue
            self.free.extend(reversed(self.slot_pages[slot]))
            spare += len(self.slot_pages[slot])
            self.slot_pages[slot] = []
            self.prompt_table[slot] = 0
            if not self.pending:
                continue
            prompt = self.prompts[self.pending[0]]
            if spare < -(-len(prompt) // ps):
                continue  # after the rows give pages back
            index = self.pending.popleft()
            pages = [self.free.pop() for _ in range(-(-len(prompt) // ps))]
            self.prompt_table[slot, :len(pages)] = pages
            self.slot_pages[slot] = pages
            spare -= len(pages)
            padded = max(self.s.config.buckets(len(prompt)), self.first_len)
            tokens = np.zeros((1, -(-padded // ps) * ps), np.int32)
            tokens[0, :len(prompt)] = prompt
            self.cache, self.pool = self.s._prefill(
                *self.s._weights, self.cache, self.pool, np.int32(slot), tokens,
                np.int32(len(prompt)), self.prompt_table[slot, :tokens.shape[1] // ps],
                adapters=not self.s._merge)
            self.slot_prompt[slot], self.slot_next[slot] = index, 0
            self.stats["prefills"] += 1
            self.slot_order[slot] = self.stats["prefills"]
        if self.stats["prefills"] > prefills:  # waits for them: the seconds are the device's
            jax.block_until_ready(self.cache)
            self.stats["prefill_s"] += time.perf_counter() - begin

    def _pages_for(self, pos: int) -> int:
        """Pages a row at `pos` tokens needs to run one more segment."""
        reach = min(pos + self.s.config.segment_steps, self.sampling.max_new_tokens)
        return -(-reach // self.plan.page_size)

    def _give_pages(self, row: int, count: int) -> None:
        while len(self.row_pages[row]) < count:
            page = self.free.pop()
            self.table[row, len(self.row_pages[row])] = page
            self.row_pages[row].append(page)

    def _release(self, row: int) -> None:
        self.slot_lanes[self.row_slot[row]][self.row_lane[row]] = None
        self.free.extend(reversed(self.row_pages[row]))
        self.row_pages[row] = []
        self.table[row] = 0
        self.row_sample[row] = None
        self.row_chunks[row] = []

    def _need(self, rows) -> int:
        """Pages the rows still need for their next segment."""
        return sum(max(0, self._pages_for(self.row_pos[b]) - len(self.row_pages[b]))
                   for b in rows)

    def _running_need(self) -> int:
        return self._need(b for b in range(self.b) if self.row_sample[b] is not None)

    def _grow_running(self) -> None:
        """Pages for the running rows' next segment; the rows with the least progress give
        theirs back (their samples start again later) while the pool is short."""
        running = sorted((b for b in range(self.b) if self.row_sample[b] is not None),
                         key=lambda b: (self.row_pos[b], -b), reverse=True)
        while running and self._need(running) > len(self.free):
            victim = running.pop()
            prompt, sample = self.row_sample[victim]
            self.slot_retry[self.row_slot[victim]].insert(0, sample)
            self._release(victim)
            self.stats["preempted"] += 1
        for b in running:
            self._give_pages(b, self._pages_for(self.row_pos[b]))

    def _start_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Idle rows take the next samples while pages last, from the slots with preempted
        samples first, then from the oldest prompt: (reset [B], prompt indices [B], sample
        indices [B])."""
        reset = np.zeros(self.b, bool)
        prompt_ids = np.zeros(self.b, np.int32)
        sample_ids = np.zeros(self.b, np.int32)
        first = self._pages_for(0)
        order = sorted(range(self.p), key=lambda p: (not self.slot_retry[p], self.slot_order[p]))
        for b in range(self.b):
            if self.row_sample[b] is not None or len(self.free) < first:
                continue
            slot = next((p for p in order if self._to_start(p) and None in self.slot_lanes[p]),
                        None)
            if slot is None:
                break
            if self.slot_retry[slot]:
                sample = self.slot_retry[slot].pop(0)
            else:
                sample = self.slot_next[slot]
                self.slot_next[slot] += 1
            # With one slot, row b is lane b (decode_step then skips the gathers).
            lane = b if self.p == 1 else self.slot_lanes[slot].index(None)
            self.slot_lanes[slot][lane] = b
            self.row_slot[b], self.row_lane[b] = slot, lane
            self.row_sample[b] = (self.slot_prompt[slot], sample)
            self.row_pos[b] = 0
            self._give_pages(b, first)
            reset[b], prompt_ids[b], sample_ids[b] = True, self.slot_prompt[slot], sample
        return reset, prompt_ids, sample_ids

    def _layout(self) -> Layout:
        """The rows' slots and lanes as the device reads them (idle rows and lanes: 0)."""
        members = np.array([[0 if b is None else b for b in lanes] for lanes in self.slot_lanes],
                           np.int32)
        busy = np.array([sum(b is not None for b in lanes) for lanes in self.slot_lanes])
        self.stats["most_rows_on_one_slot"] = max(self.stats["most_rows_on_one_slot"],
                                                  int(busy.max()))
        return Layout(slot=self.row_slot.copy(), lane=self.row_lane.copy(), members=members,
                      used=busy > 0)

    # --- the loop

    def results(self) -> list[list[Completion]]:
        s, remaining = self.s, len(self.prompts) * self.n
        idle_since = None  # when the last segment's results reached the host
        start = time.perf_counter()
        while remaining:
            self._fill_slots()
            self._grow_running()
            reset, prompt_ids, sample_ids = self._start_rows()
            if not any(self.row_sample):
                raise RuntimeError("JaxSampler: no row could start (too few cache pages)")
            keys = row_keys(np.uint32(self.seed % 2 ** 32), prompt_ids, sample_ids)
            refill = bool(self.pending) or any(self._to_start(p) for p in range(self.p))
            exit_after = np.int32((s.config.refill_rows or max(1, self.b // 8)) if refill
                                  else self.b + 1)
            active = np.array([sample is not None for sample in self.row_sample])
            layout = self._layout()
            dispatched = time.perf_counter()
            if idle_since is not None:  # the device waited for the host this long
                self.stats["host_s"] += dispatched - idle_since
            self.pool, self.rows, segment = s._segment(
                *s._weights, self.cache, self.pool, self.prompt_table, self.table, layout,
                self.rows, active, reset, keys, exit_after, steps=s.config.segment_steps,
                sampling=self.sampling, attention=s.attention, adapters=not s._merge)
            segment, live = distributed.to_host((segment, self.rows.live))
            idle_since = time.perf_counter()
            self.stats["decode_s"] += idle_since - dispatched
            self.stats["segments"] += 1
            self.stats["steps"] += int(segment.steps)
            self.stats["row_steps"] += int(segment.count.sum())
            if refill:  # samples were waiting for rows: the call ran as in a long stream
                self.stats["steady_s"] = idle_since - start
                self.stats["steady_tokens"] = self.stats["row_steps"]
            self.stats["own_kv_read"] += int(segment.own_read)
            # the prompt keys the Pallas kernel reads: each used slot's up to its prompt's length
            self.stats["prompt_kv_read"] += int(segment.steps) * sum(
                len(self.prompts[self.slot_prompt[p]]) for p in np.flatnonzero(layout.used))
            for b in range(self.b):
                if self.row_sample[b] is None:
                    continue
                count = int(segment.count[b])
                self.row_chunks[b].append((segment.tokens[b, :count], segment.logprobs[b, :count],
                                           segment.temperature_logprobs[b, :count]))
                self.row_pos[b] += count
                if not live[b]:
                    prompt, sample = self.row_sample[b]
                    self.out[prompt][sample] = self._completion(self.row_chunks[b])
                    self._release(b)
                    remaining -= 1
        s.last_stats = dict(self.stats, rows=self.b, prompt_slots=self.p, lanes=self.lanes,
                            pages=self.plan.pages - 1,
                            kv_bytes_per_token=self.plan.page_pool // self.plan.pages
                            // self.plan.page_size,
                            **{k: round(self.stats[k], 3)
                               for k in ("prefill_s", "decode_s", "host_s", "steady_s")})
        return self.out

    def _completion(self, chunks) -> Completion:
        tokens, logprobs, temperature_logprobs = (np.concatenate(x) for x in zip(*chunks))
        token_ids = tuple(int(t) for t in tokens)
        stopped = bool(token_ids) and token_ids[-1] in self.sampling.stop_token_ids
        text = ""
        if self.s.tokenizer is not None:
            body = token_ids[:-1] if stopped else token_ids
            text = self.s.tokenizer.decode(list(body), skip_special_tokens=True)
        return Completion(token_ids=token_ids, logprobs=tuple(float(x) for x in logprobs),
                          temperature_logprobs=tuple(float(x) for x in temperature_logprobs),
                          finish_reason="stop" if stopped else "length", text=text)

"""`JaxSampler`: the in-process rollout engine (CPU, GPU, TPU).

Per call: prompts are sorted by length and grouped into batches as large as memory allows;
each batch is padded to bucketed shapes (prompt count to a power of two, prompt length by
`PromptBuckets`), so a run compiles a handful of programs. Each batch is prefilled once
and decoded with `arc_jax.rollout.decode`; results return in the caller's prompt order.

With `merge_lora` (the default) the sampler decodes with merged weights W + s * A B, stored in
the base weights' dtype and recomputed at each `update_weights`, as TRL does when it hands a
LoRA policy to vLLM: one matmul per projection instead of three, and no per-step cast of the
float32 adapters, for one extra copy of the adapted kernels in device memory.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from arc_jax import distributed
from arc_jax.model.llama import Llama
from arc_jax.model.lora import LoraParam, merge_lora
from arc_jax.rollout.decode import decode, prefill, row_keys
from arc_jax.rollout.interface import Completion, SamplingParams
from arc_jax.rollout.memory import MemoryPlan, check_fits, free_device_bytes, plan_memory


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

    max_prompts_per_batch: most prompts decoded together (a power of two); memory may lower it.
    buckets: the padded prompt lengths.
    memory_fraction: share of the free device memory a batch may plan to use.
    memory_bytes: a fixed memory budget instead of asking the device (None = ask).
    seed: seeds the engine's own source of seeds for calls with `SamplingParams.seed=None`.
    merge_lora: decode with the LoRA adapters merged into a copy of the adapted kernels
      (faster; rounds W + s * A B to the kernels' dtype, as vLLM fed by TRL does).
    """

    max_prompts_per_batch: int = 8
    buckets: PromptBuckets = PromptBuckets()
    memory_fraction: float = 0.9
    memory_bytes: int | None = None
    seed: int = 0
    merge_lora: bool = True

    def __post_init__(self):
        p = self.max_prompts_per_batch
        if p < 1 or p & (p - 1):
            raise ValueError(f"SamplerConfig.max_prompts_per_batch must be a power of two, got {p}")


def bucket_length(length: int, minimum: int, bits: int) -> int:
    """Smallest m * 2**e >= length whose m has `bits` significant bits, and >= minimum."""
    if length <= minimum:
        return minimum
    step = 2 ** max(length.bit_length() - bits, 0)
    return -(-length // step) * step


def next_power_of_two(x: int) -> int:
    return 1 << (x - 1).bit_length()


def _prefill(graphdef, lora, base, tokens, lengths, *, adapters):
    return prefill(nnx.merge(graphdef, lora, base), tokens, lengths, adapters=adapters)


def _decode(graphdef, lora, base, prompt, prompt_tokens, first_logits, active, prompt_ids, seed,
            *, n, sampling, adapters):
    model = nnx.merge(graphdef, lora, base)
    keys = row_keys(seed, prompt_ids, n)
    return decode(model, prompt, prompt_tokens, first_logits, active, keys, n=n,
                  sampling=sampling, adapters=adapters)


@functools.partial(jax.jit, static_argnums=3)
def _merged_kernel(kernel, a, b, scaling):
    return merge_lora(kernel, a, b, scaling).astype(kernel.dtype)


def merge_adapters(lora: nnx.State, base: nnx.State, scaling: float) -> nnx.State:
    """A copy of `base` in which each adapted kernel is W + s * A B (in the kernel's dtype and
    placement); the other arrays are shared, not copied, and `base` is left as it was. Run
    the result with adapters=False."""
    key = jax.tree_util.keystr
    adapters = {key(path): x for path, x in jax.tree_util.tree_flatten_with_path(lora)[0]}

    def merged(path, kernel):
        a, b = (adapters.get(key(path).replace("['kernel']", f"['{name}']"))
                for name in ("lora_a", "lora_b"))
        if a is None or not key(path).endswith("['kernel'].value"):
            return kernel
        return jax.device_put(_merged_kernel(kernel, a, b, scaling), kernel.sharding)

    return jax.tree_util.tree_map_with_path(merged, base)


class JaxSampler:
    """Rollout engine running a `Llama` in this process.

    tokenizer: optional, only used to fill `Completion.text`.
    """

    def __init__(self, model: Llama, tokenizer: Any = None, config: SamplerConfig = SamplerConfig()):
        self.model_config = model.config
        self.dtype = model.numerics.compute_dtype
        self.tokenizer = tokenizer
        self.config = config
        self._graphdef, lora, self._base = nnx.split(model, LoraParam, ...)
        # Committed to their placement, like the arrays `update_weights` hands in later, so
        # both hit the same compiled programs.
        self._lora = jax.tree.map(lambda x: jax.device_put(x, x.sharding), lora)
        self._merge = config.merge_lora and model.lora is not None
        self._scaling = model.lora.scaling if self._merge else 0.0
        self._merged = merge_adapters(self._lora, self._base, self._scaling) if self._merge else None
        self._seeds = np.random.default_rng(config.seed)
        self._prefill = jax.jit(_prefill, static_argnums=0, static_argnames="adapters")
        self._decode = jax.jit(_decode, static_argnums=0,
                               static_argnames=("n", "sampling", "adapters"))

    # ------------------------------------------------------------------ interface

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        """n completions for each prompt (token ids), in prompt order."""
        prompts = [self._check_prompt(i, p, sampling) for i, p in enumerate(prompts)]
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"generate: n must be a positive int, got {n!r}")
        seed = sampling.seed if sampling.seed is not None else int(self._seeds.integers(2 ** 31))
        static_sampling = dataclasses.replace(sampling, seed=None)
        results: list[list[Completion] | None] = [None] * len(prompts)
        for batch, prompt_len in self._batches(prompts, n, sampling.max_new_tokens):
            completions = self._run_batch([prompts[i] for i in batch], batch, prompt_len, n,
                                          seed, static_sampling)
            for i, c in zip(batch, completions):
                results[i] = c
        return results

    def __enter__(self) -> "JaxSampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the sampler lives in this process."""

    def update_weights(self, lora_state: nnx.State, version: int | None = None) -> None:
        """Replaces the LoRA weights (`nnx.state(trained_model, LoraParam)`), placed like the
        current ones so the compiled programs are reused."""
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
        if self._merge:
            self._merged = None  # free the old copy before making the new one
            self._merged = merge_adapters(self._lora, self._base, self._scaling)

    # ------------------------------------------------------------------ batching

    def plan(self, prompts: int, prompt_len: int, n: int, max_new_tokens: int) -> MemoryPlan:
        """The memory a batch of these (already bucketed) sizes needs."""
        return plan_memory(self.model_config, self.dtype, prompts, prompt_len, n, max_new_tokens)

    def _budget(self) -> int:
        if self.config.memory_bytes is not None:
            return self.config.memory_bytes
        return int(free_device_bytes() * self.config.memory_fraction)

    def _batches(self, prompts: list[list[int]], n: int, max_new_tokens: int):
        """Yields (prompt indices, padded prompt length), shortest prompts first, each batch
        the largest power of two of prompts that fits the memory budget."""
        budget = self._budget()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        start = 0
        while start < len(order):
            size = self.config.max_prompts_per_batch
            while True:
                batch = order[start:start + size]
                prompt_len = self.config.buckets(max(len(prompts[i]) for i in batch))
                plan = self.plan(next_power_of_two(len(batch)), prompt_len, n, max_new_tokens)
                if plan.total <= budget or size == 1:
                    break
                size //= 2
            check_fits(plan, budget)
            yield batch, prompt_len
            start += len(batch)

    def _run_batch(self, prompts: list[list[int]], prompt_ids: list[int], prompt_len: int, n: int,
                   seed: int, sampling: SamplingParams) -> list[list[Completion]]:
        padded = next_power_of_two(len(prompts))
        tokens = np.zeros((padded, prompt_len), np.int32)
        lengths = np.ones((padded,), np.int32)  # padding prompts: one token, never decoded
        for row, prompt in enumerate(prompts):
            tokens[row, :len(prompt)] = prompt
            lengths[row] = len(prompt)
        active = np.arange(padded) < len(prompts)
        ids = np.zeros((padded,), np.int32)
        ids[:len(prompts)] = prompt_ids
        weights = (self._graphdef, self._lora, self._merged if self._merge else self._base)
        prompt_cache, first_logits = self._prefill(*weights, tokens, lengths,
                                                   adapters=not self._merge)
        rollout = self._decode(*weights, prompt_cache, tokens, first_logits, active, ids,
                               np.uint32(seed), n=n, sampling=sampling, adapters=not self._merge)
        rollout = distributed.to_host(rollout)
        return [[self._completion(rollout, p * n + i) for i in range(n)]
                for p in range(len(prompts))]

    def _completion(self, rollout, row: int) -> Completion:
        length = int(rollout.lengths[row])
        stopped = bool(rollout.stopped[row])
        token_ids = tuple(int(t) for t in rollout.tokens[row, :length])
        text = ""
        if self.tokenizer is not None:
            body = token_ids[:-1] if stopped else token_ids
            text = self.tokenizer.decode(list(body), skip_special_tokens=True)
        return Completion(
            token_ids=token_ids,
            logprobs=tuple(float(x) for x in rollout.logprobs[row, :length]),
            temperature_logprobs=tuple(float(x) for x in rollout.temperature_logprobs[row, :length]),
            finish_reason="stop" if stopped else "length",
            text=text)

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


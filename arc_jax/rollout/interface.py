"""The interface every rollout engine offers to the trainer and the evaluator.

Prompts go in as token ids (rendered and encoded once by `arc_jax.prompts.encode_prompt`, so
the engine never re-tokenises them); each prompt comes back with `n` `Completion`s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

# Llama-3.1's <|eot_id|> (the BARC model ends its answer with it) and <|end_of_text|>, in the
# order of `prompts.stop_token_ids`, which derives them from the tokenizer for real runs.
LLAMA3_STOP_TOKEN_IDS = (128009, 128001)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample (names and meanings follow vLLM).

    temperature: 0 means greedy (argmax); otherwise logits are divided by it.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = off).
    top_k: keep the k most likely tokens; 0 or -1 = off (vLLM uses -1, transformers 0).
    min_p: drop tokens less likely than min_p times the most likely one (0 = off).
    repetition_penalty: CTRL-style penalty on every token already in the prompt or the
      completion (1 = off; the reference runs used 1.0-1.05).
    max_new_tokens: completion length limit; a completion that reaches it without a stop token
      finishes with reason "length".
    stop_token_ids: generation of a sample stops after it emits one of these (it is kept in
      `token_ids`, like vLLM, since the trainer's loss mask includes it).
    seed: makes sampling reproducible; None draws a fresh seed from the engine.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 1024
    stop_token_ids: tuple[int, ...] = LLAMA3_STOP_TOKEN_IDS
    seed: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        checks = (
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k >= -1, "-1, 0 (off) or a positive count"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name} must be {expected}, got "
                                 f"{getattr(self, name)!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"SamplingParams.stop_token_ids must be non-negative ints, got "
                             f"{self.stop_token_ids!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt.

    token_ids: the generated tokens, including the stop token when there is one.
    logprobs: per token, the log-probability under the distribution actually sampled from:
      repetition penalty, temperature, top-k, top-p and min-p applied and renormalised over
      the kept tokens (vLLM's "processed_logprobs"). For greedy decoding (temperature 0),
      the log-softmax of the penalised logits.
    temperature_logprobs: per token, log_softmax(logits / T) of the raw model logits, with no
      penalty and no truncation: what TRL's GRPO trainer computes for the same token (T = 1
      when greedy). It differs from `logprobs` whenever top-p/top-k/min-p/penalty is on.
    finish_reason: "stop" (a stop token was emitted) or "length" (max_new_tokens reached).
    truncated: the completion has no stop token (it was cut at max_new_tokens).
    text: `token_ids` decoded without the stop token; "" when the engine has no tokenizer.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    temperature_logprobs: tuple[float, ...]
    finish_reason: Literal["stop", "length"]
    text: str = ""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


# The engines `config.rollout.engine` can name (`arc_jax.session.make_engine` builds them).
ENGINES = {
    "jax": "the in-process JaxSampler",
    "vllm": "a vLLM server fed the trainer's LoRA weights",
}

# The ranks vLLM's `--max-lora-rank` accepts. (Its Llama takes LoRA on the same seven
# projections as `LoraConfig.target_modules` allows.)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer and the evaluator need from a sampler.

    trainer_logprobs: the log-probs of its completions are the trainer's own (same model code
      and weights), so the trainer need not recompute them before the update.
    """

    trainer_logprobs: bool

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids, one BOS), n completions, in prompt order."""
        ...

    def update_weights(self, lora_state: Any, version: int | None = None,
                       final: bool = False) -> None:
        """Use new LoRA adapter weights from now on (same shapes, so nothing recompiles).
        `version`: the training step they come from (names the copy an external engine keeps).
        `final`: no update follows (evaluation), so an engine may fold the adapters into its
        weights for good and spend the memory elsewhere."""
        ...

    def close(self) -> None:
        """Release what the engine holds outside this process (a server it started)."""
        ...

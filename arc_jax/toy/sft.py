"""Supervised warm start of the toy policy: next-token loss on the program of each task.

An example is a rendered prompt (ending with the prefilled assistant prefix) followed by
the completion the sampler should produce, "\\n```python\\n<program>\\n```<|eot_id|>". Only
completion tokens are scored. Batches group examples of similar length and are padded on
the right to a multiple of `SftConfig.length_multiple`, so a run compiles one step per
padded length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from arc_jax import prompts
from arc_jax.data.types import Task
from arc_jax.model import Llama
from arc_jax.toy.programs import Program
from arc_jax.prompts import EOT


@dataclasses.dataclass(frozen=True)
class SftConfig:
    """steps: optimizer steps; kept short on purpose, so that RL has room to improve.
    length_multiple: batches are padded to a multiple of this many tokens.
    """

    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 5e-3
    warmup_steps: int = 10
    weight_decay: float = 0.01
    length_multiple: int = 128

    def __post_init__(self):
        for name in ("steps", "batch_size", "length_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"SftConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"SftConfig.warmup_steps must be in [0, steps={self.steps}], "
                             f"got {self.warmup_steps}")


@dataclasses.dataclass(frozen=True)
class Example:
    """Token ids of one training sequence; the first `prompt_length` are not scored."""

    token_ids: tuple[int, ...]
    prompt_length: int


def completion_text(program: Program) -> str:
    """What the policy writes after the prefilled assistant prefix (before <|eot_id|>)."""
    return f"\n```python\n{program.source}\n```"


def make_example(tokenizer, task: Task, program: Program, config: prompts.PromptConfig,
                 *, seed: int) -> Example:
    prompt = prompts.encode_prompt(tokenizer, prompts.render_prompt(task, config, seed=seed))
    completion = tokenizer(completion_text(program) + EOT, add_special_tokens=False)["input_ids"]
    return Example(tuple(prompt) + tuple(completion), len(prompt))


def pad_batch(examples: Sequence[Example], multiple: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, T] (right-padded, T a multiple of `multiple`) and loss mask [B, T] (1 on
    completion tokens)."""
    longest = max(len(e.token_ids) for e in examples)
    length = -(-longest // multiple) * multiple
    tokens = np.full((len(examples), length), pad_id, np.int32)
    mask = np.zeros((len(examples), length), np.float32)
    for row, example in enumerate(examples):
        tokens[row, :len(example.token_ids)] = example.token_ids
        mask[row, example.prompt_length:len(example.token_ids)] = 1.0
    return tokens, mask


def length_grouped_batches(lengths: Sequence[int], batch_size: int,
                           rng: np.random.Generator) -> Iterator[list[int]]:
    """Endless batches of example indices: each batch holds examples of similar length (less
    padding); every epoch visits all chunks in a new random order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    while True:
        for chunk in rng.permutation(len(chunks)):
            yield chunks[chunk]


def completion_loss(model: Llama, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the tokens where mask [B, T] is 1.

    Token t is predicted from tokens < t; right padding never influences real tokens.
    """
    logits = model(tokens[:, :-1])  # [B, T-1, V]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = tokens[:, 1:]
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, T-1]
    weights = mask[:, 1:]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def optimizer(config: SftConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=config.steps, end_value=config.learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def train(model: Llama, examples: Sequence[Example], config: SftConfig, pad_id: int,
          *, seed: int) -> list[float]:
    """Trains `model` in place on random batches of `examples`; returns the loss per step."""
    if not examples:
        raise ValueError("sft.train: no training examples")
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optimizer(config)

    @jax.jit
    def step(params, opt_state, tokens, mask):
        loss, grads = jax.value_and_grad(
            lambda p: completion_loss(nnx.merge(graphdef, p), tokens, mask))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    batches = length_grouped_batches([len(e.token_ids) for e in examples], config.batch_size,
                                     np.random.default_rng(seed))
    losses = []
    bar = tqdm.tqdm(range(config.steps), desc="toy policy warm start", unit="step",
                    dynamic_ncols=True)
    for _ in bar:
        batch = [examples[i] for i in next(batches)]
        tokens, mask = pad_batch(batch, config.length_multiple, pad_id)
        params, opt_state, loss = step(params, opt_state, tokens, mask)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    nnx.update(model, params)
    return losses

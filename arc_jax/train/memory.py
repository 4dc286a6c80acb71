"""How much device memory one GRPO update needs beyond the weights, checked before compiling.

The update of the 8B model takes minutes to compile and fails with an XLA out-of-memory error
naming none of the settings that caused it. `plan_update_memory` estimates the transient
memory of one micro-step from the shapes and settings (the weights, LoRA and optimiser state
are already allocated when it is checked), and `check_update_fits` refuses a configuration that
will not fit, saying which knob to turn. The estimate counts the large buffers only:

- stacked layer weights: the update scans over layers and stacks their weights once per step;
- saved layer inputs: with rematerialisation one [tokens, D] carry per layer, without it every
  activation of every layer;
- one layer's working set: its activations and their gradients while it is recomputed;
- attention: cuDNN's mask and broadcast keys, or a block of float32 scores (blockwise), or all
  of the prompt's scores for the prompt stream when no fused kernel is used;
- logits: one chunk of float32 [chunk, V] logits and the copies the log-softmax makes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from arc_jax.errors import UserError
from arc_jax.model.config import LlamaConfig
from arc_jax.rollout.memory import GiB


class UpdateMemoryError(UserError, MemoryError):
    """An update of these shapes would not fit in the free device memory."""


@dataclasses.dataclass(frozen=True)
class UpdateMemoryPlan:
    """Bytes of one micro-step of P' prompts (S slots) with G' completions of T tokens."""

    prompts: int
    prompt_len: int
    completions: int
    completion_len: int
    stacked_layers: int
    saved_activations: int
    layer_workspace: int
    attention: int
    logits: int
    gradients: int

    @property
    def total(self) -> int:
        return (self.stacked_layers + self.saved_activations + self.layer_workspace
                + self.attention + self.logits + self.gradients)

    def describe(self) -> str:
        parts = ", ".join(f"{name.replace('_', ' ')} {getattr(self, name) / GiB:.2f} GiB"
                          for name in ("stacked_layers", "saved_activations", "layer_workspace",
                                       "attention", "logits", "gradients"))
        return (f"{self.total / GiB:.2f} GiB for a micro-batch of {self.prompts} prompt(s) x "
                f"{self.prompt_len} slots with {self.completions} completions x "
                f"{self.completion_len} tokens each ({parts})")


def plan_update_memory(config: LlamaConfig, dtype, *, prompts: int, prompt_len: int,
                       completions: int, completion_len: int, layer_weight_bytes: int,
                       lora_bytes: int, remat: bool, fused_attention: bool,
                       query_chunk: int, logits_chunk: int) -> UpdateMemoryPlan:
    """The transient memory of one micro-step (see the module docstring for what is counted).

    prompts, completions: per micro-batch (P' and P' * G'). layer_weight_bytes: the base and
    LoRA weights of all decoder layers; lora_bytes: the trainable weights (one gradient copy).
    query_chunk, logits_chunk: the chunk sizes of the blockwise attention and of the log-probs
    (`arc_jax.model.llama.QUERY_CHUNK`, `arc_jax.train.update.LOGITS_CHUNK`).
    """
    itemsize = np.dtype(dtype).itemsize
    d, f, n = config.hidden_size, config.intermediate_size, config.num_attention_heads
    kv = config.num_key_value_heads * config.head_dim
    layers = config.num_hidden_layers
    tokens = prompts * prompt_len + completions * completion_len
    # One layer's activations per token: norms and residuals (4 D), q/k/v and attention output
    # (2 N H + 2 kv), the MLP's gate, up and product (3 F); doubled for their gradients.
    per_token_layer = (4 * d + 2 * n * config.head_dim + 2 * kv + 3 * f) * itemsize
    saved = layers * tokens * (d * itemsize if remat else per_token_layer)
    keys = prompt_len + completion_len
    if fused_attention:
        attention = (completions * completion_len * keys * (1 + itemsize)           # mask, bias
                     + 4 * completions * keys * kv * itemsize                       # k, v, grads
                     + prompts * prompt_len * prompt_len * (1 + itemsize))
    else:
        attention = (4 * completions * n * min(query_chunk, completion_len) * keys * 4
                     + 3 * prompts * n * prompt_len * prompt_len * 4)
    logits = 4 * min(logits_chunk, completions * completion_len) * config.vocab_size * 4
    return UpdateMemoryPlan(
        prompts=prompts, prompt_len=prompt_len, completions=completions,
        completion_len=completion_len, stacked_layers=layer_weight_bytes,
        saved_activations=saved, layer_workspace=2 * tokens * per_token_layer,
        attention=attention, logits=logits, gradients=lora_bytes)


def check_update_fits(plan: UpdateMemoryPlan, free: int) -> None:
    """Raises UpdateMemoryError (what is needed, what is free, what to change) if plan > free."""
    if plan.total <= free:
        return
    raise UpdateMemoryError(
        f"the GRPO update needs {plan.describe()}, but only {free / GiB:.2f} GiB is free on the "
        "device. Raise gradient_accumulation_steps (more, smaller micro-batches), lower "
        "max_completion_length, max_seq_length or num_generations, or set "
        "remat_policy='nothing_saveable' if it is off.")

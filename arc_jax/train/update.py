"""The GRPO update step: one jit-compiled, sharded optimiser update of a Llama's LoRA adapters.

Shapes: P prompts, G completions per prompt, S prompt length, T completion length, D hidden
size, N query heads, K key/value heads, H head dim, V vocabulary, m micro-batches.

Usage (the training loop):

    updater = GRPOUpdater(model, GRPOLossConfig(...), OptimizerConfig(...), mesh=mesh,
                          num_micro_batches=2, temperature=1.0)
    old = updater.logprobs(batch)                      # only when num_iterations > 1
    for _ in range(num_iterations):
        metrics = updater.step(batch._replace(old_logprobs=old))   # dict of floats
    checkpoint(updater.state()); ...; updater.load_state(restored)

`step` updates the model's LoRA weights in place (`nnx.state(model, LoraParam)`); the base
weights are never copied or updated. The LoRA arrays and the optimiser state are donated to the
compiled step, so LoRA arrays taken from the model before a step (e.g. by a sampler holding the
same buffers) are deleted by it: take them again from the model after each step.

Shared-prompt forward. The G completions of a group share their prompt, so the prompt runs
through the model once per group, and each completion token attends, under one softmax, to its
prompt's keys and values and to its own earlier tokens (`shared_prefix_attention`). Gradients
flow back through the prompt's keys and values into the prompt computation. Per group this
processes S + G*T tokens instead of the naive G*(S + T): (G-1)/G less prompt work, with the same
loss and gradients. Prompts may be padded on either side (prompt_mask marks real tokens);
completions start right after their prompt's last real token and are right-padded.

Memory and compile time. The layers run as one `lax.scan` over their stacked weights (one
compiled layer instead of L; the stacked copy lives for the step), each layer rematerialised
under the model's `Numerics.remat_policy`; the completions' attention never holds all of its
[T, S+T] scores (cuDNN's fused kernel, or blockwise under XLA); and log-probs are computed a
chunk of tokens at a time. `GRPOUpdater.memory_plan` estimates what a batch shape needs.

Micro-batches (`num_micro_batches` = m). The batch splits into m = a * b micro-batches, a =
gcd(P, m) blocks of prompts times b = m / a blocks of each group's completions (b must divide
G). With b = 1 no prompt is recomputed; with b > 1 each prompt runs once per micro-batch that
holds some of its completions, i.e. b times per step. Gradients are summed over a `lax.scan` of
the micro-batches (one compiled micro-step, constant compile time), and every loss uses the
whole batch's `grpo.batch_normaliser`, so the accumulated loss and gradient equal the
full-batch ones for every loss type (up to float rounding).

Mesh. With a `jax.sharding.Mesh` (axes "data", "fsdp", "tensor"), base and LoRA weights are
placed by the model's logical-axis annotations (`arc_jax.model.sharding`), the optimiser state
like its parameters, and batch arrays along their first (prompt) dimension over (data, fsdp),
replicated where P does not divide. Activations follow the model's constraints.

A step whose loss, gradient norm or updated LoRA weights are not all finite is not applied (the
weights can go bad from finite gradients, e.g. under a NaN or infinite learning rate): the LoRA
weights, optimiser state and step count stay as they were and the metrics say `skipped` = 1.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arc_jax.model.llama import (
    QUERY_CHUNK, ROW_AXES, Llama, attention, positions_from_mask, prefill_mask, scan_blocks,
    shared_prefix_attention,
)
from arc_jax.model.lora import LoraParam
from arc_jax.model.sharding import Sharding, constrain, state_shardings
from arc_jax.train import grpo
from arc_jax.train.grpo import GRPOLossConfig
from arc_jax.train.memory import UpdateMemoryPlan, plan_update_memory
from arc_jax.train.optim import OptimizerConfig, make_optimizer, make_schedule

PROMPT_FIELDS = ("prompt_ids", "prompt_mask")
LOGITS_CHUNK = 512  # completion tokens whose logits exist at once


class GroupBatch(NamedTuple):
    """One generation batch: P prompts with G completions each.

    prompt_ids [P, S] int: prompt tokens, padded on either side (bucket S to few lengths to
      limit recompilation). prompt_mask [P, S]: 1 on real tokens, 0 on padding; every prompt
      needs at least one real token.
    completion_ids [P, G, T] int: the completions, right-padded.
    completion_mask [P, G, T] float32: the loss mask (`grpo.completion_mask`, truncation applied).
    advantages [P, G] float32.
    old_logprobs [P, G, T] or None: log-probs under the policy that generated the batch
      (`GRPOUpdater.logprobs` before the first of num_iterations > 1 updates); None means
      stop_gradient of the current log-probs (num_iterations == 1).
    sampler_logprobs [P, G, T] or None: the sampler's log-probs, given iff the loss config's
      importance_sampling_correction is on.
    """

    prompt_ids: Any
    prompt_mask: Any
    completion_ids: Any
    completion_mask: Any
    advantages: Any
    old_logprobs: Any = None
    sampler_logprobs: Any = None


# ------------------------------------------------------------------------- shared-prompt model


def shared_prompt_hidden_states(model: Llama, prompt_ids: jax.Array, prompt_mask: jax.Array,
                                completion_ids: jax.Array, *, adapters: bool = True
                                ) -> tuple[jax.Array, jax.Array]:
    """Final-norm hidden states with one prompt forward per group.

    prompt_ids, prompt_mask [P, S]; completion_ids [P, G, T] (tokens placed right after their
    prompt's last real token). Returns the state at each prompt's last real token [P, D] and
    the completion tokens' states [P, G, T, D]. The layers run as one `scan_blocks` over two
    streams, the prompts [P, S, D] and the completions [P*G, T, D].
    """
    p, s = prompt_ids.shape
    _, g, t = completion_ids.shape
    valid = prompt_mask.astype(bool)                                           # [P, S]
    prompt_positions = positions_from_mask(valid)                              # [P, S]
    lengths = valid.sum(axis=1, dtype=jnp.int32)                               # [P]
    own_positions = jnp.broadcast_to(lengths[:, None, None] + jnp.arange(t), (p, g, t))
    own_positions = own_positions.reshape(p * g, t)                            # [P*G, T]
    causal = jnp.tril(jnp.ones((t, t), bool))                                  # [T, T]
    impl = model.numerics.attention_impl
    groups = lambda x: x.reshape(p, g, t, *x.shape[2:])                        # [P, G, T, ., H]

    def attend(qkv):
        (qp, kp, vp), (qc, kc, vc) = qkv
        prompt_out = attention(qp, kp, vp, prefill_mask(valid), True, impl)
        own_out = shared_prefix_attention(groups(qc), kp, vp, valid, groups(kc), groups(vc),
                                          causal, implementation=impl)
        return (prompt_out, own_out.reshape(p * g, t, *own_out.shape[3:])), None

    embed = lambda ids: constrain(model.embed_tokens(ids), model.sharding, ROW_AXES)
    streams = (embed(prompt_ids), embed(completion_ids.reshape(p * g, t)))
    prompt_x, own_x = scan_blocks(model.layers, streams, (prompt_positions, own_positions),
                                  attend, adapters=adapters,
                                  remat_policy=model.numerics.remat_policy)
    last = s - 1 - jnp.argmax(valid[:, ::-1], axis=1)                          # [P]
    prompt_last = jnp.take_along_axis(prompt_x, last[:, None, None], axis=1)[:, 0]  # [P, D]
    return model.norm(prompt_last), model.norm(own_x).reshape(p, g, t, own_x.shape[-1])


def token_logprobs_and_entropy(logits: jax.Array, tokens: jax.Array, temperature: float
                               ) -> tuple[jax.Array, jax.Array]:
    """log_softmax(logits / temperature) at tokens, and the entropy of that distribution.

    logits [..., V], tokens [...] -> two float32 arrays [...].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return chosen, entropy


def chunked_logprobs_and_entropy(logits_fn, h: jax.Array, tokens: jax.Array, temperature: float,
                                 chunk: int) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs_and_entropy(logits_fn(h), tokens, temperature)` computed `chunk` tokens
    at a time, each chunk rematerialised in the backward pass, so at most [chunk, V] float32
    logits exist at once instead of [N, V].

    logits_fn: hidden states [c, D] -> logits [c, V]; h [N, D], tokens [N] -> two arrays [N].
    """
    n = h.shape[0]
    chunk = min(chunk, n)
    blocks = -(-n // chunk)
    pad = blocks * chunk - n
    h_blocks = jnp.pad(h, ((0, pad), (0, 0))).reshape(blocks, chunk, h.shape[-1])
    token_blocks = jnp.pad(tokens, (0, pad)).reshape(blocks, chunk)

    @jax.checkpoint
    def one(args):
        h_block, token_block = args
        return token_logprobs_and_entropy(logits_fn(h_block), token_block, temperature)

    logprobs, entropy = jax.lax.map(one, (h_blocks, token_blocks))
    return logprobs.reshape(-1)[:n], entropy.reshape(-1)[:n]


def completion_logprobs(model: Llama, prompt_ids: jax.Array, prompt_mask: jax.Array,
                        completion_ids: jax.Array, *, temperature: float = 1.0,
                        adapters: bool = True, logits_chunk: int = LOGITS_CHUNK
                        ) -> tuple[jax.Array, jax.Array]:
    """Log-probs [P, G, T] of the completion tokens under log_softmax(logits / temperature)
    (TRL's), and the entropies [P, G, T] of those distributions.

    Token t is predicted from the state before it: the prompt's last real token for t = 0,
    completion token t - 1 otherwise. The logits are computed `logits_chunk` tokens at a time
    (`chunked_logprobs_and_entropy`).
    """
    p, g, t = completion_ids.shape
    # All T tokens are fed (the last state is unused) so that kernels see the bucketed T.
    prompt_last, own = shared_prompt_hidden_states(model, prompt_ids, prompt_mask,
                                                   completion_ids, adapters=adapters)
    first = jnp.broadcast_to(prompt_last[:, None, None, :], (p, g, 1, prompt_last.shape[-1]))
    h = jnp.concatenate([first, own[:, :, :-1]], axis=2).reshape(p * g * t, -1)  # [P*G*T, D]
    logprobs, entropy = chunked_logprobs_and_entropy(model.logits, h, completion_ids.reshape(-1),
                                                     temperature, logits_chunk)
    return logprobs.reshape(p, g, t), entropy.reshape(p, g, t)


# ------------------------------------------------------------------------------ micro-batches


class MicroBatching(NamedTuple):
    """m = prompt_splits * generation_splits micro-batches of a [P, G] batch."""

    prompt_splits: int
    generation_splits: int

    @property
    def count(self) -> int:
        return self.prompt_splits * self.generation_splits


def micro_batching(num_prompts: int, num_generations: int, num_micro_batches: int
                   ) -> MicroBatching:
    """Split prompts as finely as gcd(P, m) allows; the rest of m splits each group."""
    if num_micro_batches < 1:
        raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
    prompt_splits = math.gcd(num_prompts, num_micro_batches)
    generation_splits = num_micro_batches // prompt_splits
    if num_generations % generation_splits:
        raise ValueError(
            f"cannot split a batch of {num_prompts} prompts x {num_generations} completions into "
            f"{num_micro_batches} micro-batches: after {prompt_splits} prompt blocks, the "
            f"remaining factor {generation_splits} must divide the {num_generations} completions")
    return MicroBatching(prompt_splits, generation_splits)


def split_micro_batches(batch: GroupBatch, plan: MicroBatching) -> GroupBatch:
    """The batch's fields stacked into micro-batches: [P, ...] -> [m, P/a, ...] and
    [P, G, ...] -> [m, P/a, G/b, ...]. A prompt is repeated in each of its b micro-batches."""
    a, b = plan

    def per_prompt(x):
        x = x.reshape(a, 1, x.shape[0] // a, *x.shape[1:])
        return jnp.broadcast_to(x, (a, b, *x.shape[2:])).reshape(a * b, *x.shape[2:])

    def per_completion(x):
        p, g = x.shape[:2]
        x = x.reshape(a, p // a, b, g // b, *x.shape[2:]).swapaxes(1, 2)
        return x.reshape(a * b, p // a, g // b, *x.shape[4:])

    return GroupBatch(**{name: None if x is None else
                         (per_prompt if name in PROMPT_FIELDS else per_completion)(jnp.asarray(x))
                         for name, x in batch._asdict().items()})


def join_micro_batches(x: jax.Array, plan: MicroBatching) -> jax.Array:
    """Inverse of `split_micro_batches` for a per-completion array [m, P/a, G/b, ...]."""
    a, b = plan
    x = x.reshape(a, b, *x.shape[1:]).swapaxes(1, 2)                 # [a, P/a, b, G/b, ...]
    return x.reshape(a * x.shape[1], b * x.shape[3], *x.shape[4:])


# ---------------------------------------------------------------------------------- the loss


def micro_batch_loss(lora: dict, base: dict, batch: GroupBatch, normaliser: grpo.Normaliser, *,
                     graphdef: nnx.GraphDef, loss_config: GRPOLossConfig, temperature: float
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO loss and metrics of one micro-batch (fields [P', G', ...]) under the whole batch's
    normaliser. Reference log-probs (adapters off) are computed only when beta != 0."""
    model = nnx.merge(graphdef, nnx.State(lora), nnx.State(base))
    tokens = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids)
    logprobs, entropy = completion_logprobs(model, *tokens, temperature=temperature)
    ref = None
    if loss_config.beta != 0:
        ref, _ = completion_logprobs(model, *tokens, temperature=temperature, adapters=False)
        ref = jax.lax.stop_gradient(ref)
    old = logprobs if batch.old_logprobs is None else batch.old_logprobs

    def rows(x):  # [P', G', T] -> [P'*G', T]
        return None if x is None else jnp.reshape(x, (-1, x.shape[-1]))

    mask = rows(batch.completion_mask).astype(jnp.float32)
    entropy = jax.lax.stop_gradient(rows(entropy))
    loss, metrics = grpo.grpo_loss(rows(logprobs), jax.lax.stop_gradient(rows(old)),
                                   batch.advantages.reshape(-1), mask, normaliser, loss_config,
                                   ref_logprobs=rows(ref),
                                   sampler_logprobs=rows(batch.sampler_logprobs),
                                   entropies=entropy if loss_config.top_entropy_quantile < 1 else None)
    metrics["entropy"] = (entropy * mask).sum() / normaliser.num_tokens
    return loss, metrics


def loss_and_grads(lora: dict, base: dict, batch: GroupBatch, *, graphdef: nnx.GraphDef,
                   loss_config: GRPOLossConfig, temperature: float, num_micro_batches: int
                   ) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    """Loss, gradient w.r.t. the LoRA weights and metrics of a whole batch, accumulated over
    micro-batches with `lax.scan`."""
    p, g, t = batch.completion_ids.shape
    plan = micro_batching(p, g, num_micro_batches)
    normaliser = grpo.batch_normaliser(jnp.reshape(batch.completion_mask, (p * g, t)), plan.count)
    loss_fn = functools.partial(micro_batch_loss, graphdef=graphdef, loss_config=loss_config,
                                temperature=temperature)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulate(grads, micro):
        (loss, metrics), micro_grads = grad_fn(lora, base, micro, normaliser)
        return jax.tree.map(jnp.add, grads, micro_grads), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, lora)
    grads, (losses, stacked) = jax.lax.scan(accumulate, zeros, split_micro_batches(batch, plan))
    metrics = functools.reduce(grpo.merge_metrics, [jax.tree.map(lambda x: x[i], stacked)
                                                    for i in range(plan.count)])
    return losses.sum(), grads, metrics


def all_finite(tree) -> jax.Array:
    """Whether every element of `tree` is finite, as one boolean scalar (one fused reduction
    per leaf)."""
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def train_step(lora: dict, opt_state, step: jax.Array, base: dict, batch: GroupBatch, *,
               graphdef: nnx.GraphDef, loss_config: GRPOLossConfig,
               optimizer: optax.GradientTransformation, schedule, temperature: float,
               num_micro_batches: int):
    """One optimiser update -> (lora, opt_state, step, metrics); a no-op if the loss, gradient
    norm or updated LoRA weights are not finite.

    Metrics: the loss metrics of `grpo.grpo_loss`, `entropy`, `loss`, `grad_norm` (before
    clipping), `learning_rate` (the one this update uses) and `skipped` (1.0 if not applied).
    """
    loss, grads, metrics = loss_and_grads(lora, base, batch, graphdef=graphdef,
                                          loss_config=loss_config, temperature=temperature,
                                          num_micro_batches=num_micro_batches)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, lora)
    new_lora = optax.apply_updates(lora, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(new_lora)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    metrics |= {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(step),
                "skipped": 1.0 - finite.astype(jnp.float32)}
    return (keep(new_lora, lora), keep(new_opt_state, opt_state),
            step + finite.astype(step.dtype), metrics)


def batch_logprobs(lora: dict, base: dict, batch: GroupBatch, *, graphdef: nnx.GraphDef,
                   temperature: float, adapters: bool, num_micro_batches: int) -> jax.Array:
    """`completion_logprobs` [P, G, T] of a whole batch, one micro-batch at a time."""
    p, g, _ = batch.completion_ids.shape
    plan = micro_batching(p, g, num_micro_batches)
    tokens = GroupBatch(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                        batch.completion_mask, batch.advantages)

    def one(micro):
        model = nnx.merge(graphdef, nnx.State(lora), nnx.State(base))
        return completion_logprobs(model, micro.prompt_ids, micro.prompt_mask,
                                   micro.completion_ids, temperature=temperature,
                                   adapters=adapters)[0]

    return join_micro_batches(jax.lax.map(one, split_micro_batches(tokens, plan)), plan)


# ---------------------------------------------------------------------------------- the updater


def check_batch(batch: GroupBatch, vocab_size: int) -> None:
    """Raise a ValueError naming the field of `batch` that does not fit."""
    if not isinstance(batch, GroupBatch):
        raise ValueError(f"batch must be a GroupBatch, got {type(batch).__name__}")
    ids = np.asarray(batch.completion_ids)
    if ids.ndim != 3 or min(ids.shape) < 1:
        raise ValueError(f"GroupBatch.completion_ids must have shape [P, G, T] with P, G, T >= 1, "
                         f"got {list(ids.shape)}")
    p, g, t = ids.shape
    prompt = np.asarray(batch.prompt_ids)
    if prompt.ndim != 2 or prompt.shape[0] != p or prompt.shape[1] < 1:
        raise ValueError(f"GroupBatch.prompt_ids must have shape [P={p}, S] with S >= 1, got "
                         f"{list(prompt.shape)}")
    for name in ("prompt_mask", "completion_mask", "advantages"):
        if getattr(batch, name) is None:
            raise ValueError(f"GroupBatch.{name} is required")
    expected = {"prompt_mask": prompt.shape, "completion_mask": (p, g, t), "advantages": (p, g),
                "old_logprobs": (p, g, t), "sampler_logprobs": (p, g, t)}
    for name, shape in expected.items():
        x = getattr(batch, name)
        if x is not None and tuple(np.shape(x)) != tuple(shape):
            raise ValueError(f"GroupBatch.{name} must have shape {list(shape)}, got "
                             f"{list(np.shape(x))}")
    for name, x in (("prompt_ids", prompt), ("completion_ids", ids)):
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"GroupBatch.{name} must hold integer token ids, got {x.dtype}")
        if x.size and (x.min() < 0 or x.max() >= vocab_size):
            raise ValueError(f"GroupBatch.{name} has token ids outside [0, {vocab_size}): "
                             f"min {x.min()}, max {x.max()}")
    empty = np.flatnonzero(np.asarray(batch.prompt_mask).sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"GroupBatch.prompt_mask: prompt {int(empty[0])} has no real token")


def _updater_sharding(model: Llama, mesh: Mesh | None) -> Sharding | None:
    """The model's sharding, or one on `mesh` with the default rules; they must agree."""
    if mesh is None:
        return model.sharding
    if model.sharding is None:
        return Sharding(mesh)
    if model.sharding.mesh != mesh:
        raise ValueError("GRPOUpdater: mesh differs from the mesh the model was built with "
                         f"({dict(mesh.shape)} vs {dict(model.sharding.mesh.shape)})")
    return model.sharding


def abstract_state(model: Llama, optimizer_config: OptimizerConfig) -> dict:
    """The shapes of `GRPOUpdater.state()` for this model, without building an updater: the
    LoRA arrays on the model's shardings, the optimiser state and step as host arrays. Restoring
    a training checkpoint into it loads the adapters without an Adam state on the device."""
    _, lora, _ = nnx.split(model, LoraParam, ...)
    lora = nnx.to_pure_dict(lora)
    on_host = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    return {
        "lora": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                             lora),
        "opt_state": jax.tree.map(on_host, jax.eval_shape(make_optimizer(optimizer_config).init,
                                                          lora)),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }


class GRPOUpdater:
    """Trains a `Llama`'s LoRA adapters with GRPO, one jit-compiled update per `step`.

    model: a Llama with LoRA adapters (built with `lora=LoraConfig(...)`).
    mesh: a Mesh with axes ("data", "fsdp", "tensor"); defaults to the model's (if any).
    num_micro_batches: micro-batches per update (see the module docstring for the split).
    temperature: the sampling temperature; log-probs are log_softmax(logits / temperature).
    """

    def __init__(self, model: Llama, loss_config: GRPOLossConfig,
                 optimizer_config: OptimizerConfig, *, mesh: Mesh | None = None,
                 num_micro_batches: int = 1, temperature: float = 1.0):
        if num_micro_batches < 1:
            raise ValueError(f"GRPOUpdater: num_micro_batches must be >= 1, got "
                             f"{num_micro_batches}")
        if not temperature > 0:
            raise ValueError(f"GRPOUpdater: temperature must be > 0, got {temperature}")
        graphdef, lora, base = nnx.split(model, LoraParam, ...)
        if not jax.tree.leaves(lora):
            raise ValueError("GRPOUpdater: the model has no LoRA adapters to train; build it "
                             "with lora=LoraConfig(...)")
        self.model = model
        self.loss_config = loss_config
        self.optimizer_config = optimizer_config
        self.num_micro_batches = num_micro_batches
        self.temperature = temperature
        self.schedule = make_schedule(optimizer_config)
        self.optimizer = make_optimizer(optimizer_config)
        self._graphdef = graphdef
        self._sharding = _updater_sharding(model, mesh)

        sharding = self._sharding
        if sharding is None:
            shardings = dict.fromkeys(("lora", "base", "opt_state", "scalar"))
        else:
            replicated = NamedSharding(sharding.mesh, PartitionSpec())
            lora_shardings = nnx.to_pure_dict(state_shardings(lora, sharding))
            abstract_opt_state = jax.eval_shape(self.optimizer.init, nnx.to_pure_dict(lora))
            shardings = {
                "lora": lora_shardings,
                "base": nnx.to_pure_dict(state_shardings(base, sharding)),
                "opt_state": optax.tree_map_params(self.optimizer, lambda _, s: s,
                                                   abstract_opt_state, lora_shardings,
                                                   transform_non_params=lambda _: replicated),
                "scalar": replicated,
            }
        self._shardings = shardings
        self._lora = self._place(nnx.to_pure_dict(lora), shardings["lora"])
        self._base = self._place(nnx.to_pure_dict(base), shardings["base"])
        nnx.update(model, nnx.State(self._lora), nnx.State(self._base))
        self._opt_state = jax.jit(self.optimizer.init,
                                  out_shardings=shardings["opt_state"])(self._lora)
        self._step = self._place(jnp.zeros((), jnp.int32), shardings["scalar"])

        static = dict(graphdef=graphdef, temperature=temperature,
                      num_micro_batches=num_micro_batches)
        state_in = (shardings["lora"], shardings["opt_state"], shardings["scalar"])
        explicit = sharding is not None
        self._train_step = jax.jit(
            functools.partial(train_step, loss_config=loss_config, optimizer=self.optimizer,
                              schedule=self.schedule, **static),
            donate_argnums=(0, 1, 2),
            in_shardings=(*state_in, shardings["base"], None) if explicit else None,
            out_shardings=(*state_in, shardings["scalar"]) if explicit else None)
        self._logprobs = jax.jit(functools.partial(batch_logprobs, **static),
                                 static_argnames="adapters")

    @staticmethod
    def _place(tree, shardings):
        return tree if shardings is None else jax.device_put(tree, shardings)

    def _place_batch(self, batch: GroupBatch) -> GroupBatch:
        """Batch arrays on the mesh, split along their first (prompt) dimension."""
        if self._sharding is None:
            return batch
        return GroupBatch(*(None if x is None else jax.device_put(
            x, self._sharding.named(("batch",) + (None,) * (np.ndim(x) - 1), np.shape(x)))
            for x in batch))

    def step(self, batch: GroupBatch) -> dict[str, float]:
        """One optimiser update of the LoRA weights on `batch`; returns its metrics."""
        check_batch(batch, self.model.config.vocab_size)
        if self.loss_config.importance_sampling_correction != (batch.sampler_logprobs is not None):
            raise ValueError("GroupBatch.sampler_logprobs must be given exactly when the loss "
                             "config's importance_sampling_correction is on (it is "
                             f"{self.loss_config.importance_sampling_correction})")
        self._lora, self._opt_state, self._step, metrics = self._train_step(
            self._lora, self._opt_state, self._step, self._base, self._place_batch(batch))
        nnx.update(self.model, nnx.State(self._lora))
        return {name: float(value) for name, value in jax.device_get(metrics).items()}

    def logprobs(self, batch: GroupBatch, *, adapters: bool = True) -> jax.Array:
        """Log-probs [P, G, T] of the batch's completions under log_softmax(logits / temperature):
        the old log-probs for num_iterations > 1, or the reference's with adapters=False."""
        check_batch(batch, self.model.config.vocab_size)
        return self._logprobs(self._lora, self._base, self._place_batch(batch),
                              adapters=adapters)

    def memory_plan(self, num_prompts: int, prompt_len: int, num_generations: int,
                    completion_len: int) -> UpdateMemoryPlan:
        """The transient memory of one micro-step of a batch of these (bucketed) shapes."""
        a, b = micro_batching(num_prompts, num_generations, self.num_micro_batches)
        layer_bytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree["layers"]))
        numerics = self.model.numerics
        return plan_update_memory(
            self.model.config, numerics.compute_dtype, prompts=num_prompts // a,
            prompt_len=prompt_len, completions=num_prompts // a * num_generations // b,
            completion_len=completion_len,
            layer_weight_bytes=layer_bytes(self._base) + layer_bytes(self._lora),
            lora_bytes=sum(x.nbytes for x in jax.tree.leaves(self._lora)),
            remat=numerics.remat_policy is not None,
            fused_attention=numerics.attention_impl == "cudnn", query_chunk=QUERY_CHUNK,
            logits_chunk=LOGITS_CHUNK)

    @property
    def num_updates(self) -> int:
        """Updates applied so far (skipped steps do not count)."""
        return int(self._step)

    def state(self) -> dict:
        """{"lora", "opt_state", "step"}: everything a checkpoint needs to resume training."""
        return {"lora": self._lora, "opt_state": self._opt_state, "step": self._step}

    def load_state(self, state: dict) -> None:
        """Restores a `state()` pytree (same structure, shapes and dtypes) and updates the model."""
        current = self.state()
        if jax.tree.structure(state) != jax.tree.structure(current):
            raise ValueError("load_state: the state's structure differs from this updater's: "
                             f"got {jax.tree.structure(state)}, expected "
                             f"{jax.tree.structure(current)}")
        flat_new = jax.tree_util.tree_flatten_with_path(state)[0]
        for (path, new), old in zip(flat_new, jax.tree.leaves(current)):
            if np.shape(new) != old.shape or np.result_type(new) != old.dtype:
                raise ValueError(f"load_state: {jax.tree_util.keystr(path)} is "
                                 f"{np.result_type(new)}{list(np.shape(new))}, expected "
                                 f"{old.dtype}{list(old.shape)}")
        # Copies, since the next step donates (deletes) these arrays.
        state = jax.tree.map(jnp.array, state)
        self._lora = self._place(state["lora"], self._shardings["lora"])
        self._opt_state = self._place(state["opt_state"], self._shardings["opt_state"])
        self._step = self._place(state["step"], self._shardings["scalar"])
        nnx.update(self.model, nnx.State(self._lora))

"""The GRPO update step on a tiny random Llama (float32): shared-prompt forward against the
naive per-sequence forward, exact gradient accumulation, AdamW and schedules, the updater's
step, state and 4-device mesh."""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from arc_jax.model import Llama, LlamaConfig, LoraConfig, LoraParam, Numerics
from arc_jax.model.lora import Linear
from arc_jax.train import grpo
from arc_jax.train.grpo import GRPOLossConfig
from arc_jax.train.optim import OptimizerConfig, make_optimizer, make_schedule
from arc_jax.train.update import (
    GroupBatch, GRPOUpdater, chunked_logprobs_and_entropy, completion_logprobs, loss_and_grads,
    micro_batching, token_logprobs_and_entropy,
)

CONFIG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                     rope_theta=10000.0)
EXACT = Numerics(param_dtype=jnp.float32, precision="highest")
EOS, PAD = 5, 0
# Test-only programs compile faster with fewer LLVM passes; the results do not change.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def make_model(seed=0, sharding=None, layers=2) -> Llama:
    """A tiny Llama whose LoRA B matrices are random, so adapters change the output."""
    config = dataclasses.replace(CONFIG, num_hidden_layers=layers)
    model = Llama(config, numerics=EXACT, lora=LoraConfig(rank=4, alpha=8.0), sharding=sharding,
                  rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Linear) and node.lora_b is not None:
            key, sub = jax.random.split(key)
            node.lora_b.set_value(0.2 * jax.random.normal(sub, node.lora_b.shape))
    return model


def split(model):
    graphdef, lora, base = nnx.split(model, LoraParam, ...)
    return graphdef, nnx.to_pure_dict(lora), nnx.to_pure_dict(base)


def make_batch(p=2, g=4, s=10, t=6, seed=0, pad=True, old=True, sampler=False) -> GroupBatch:
    """Prompts alternately left- and right-padded (if pad); completions of varied lengths,
    some without EOS; old/sampler log-probs near the tiny model's (about -log 96)."""
    rng = np.random.default_rng(seed)
    prompt_ids = rng.integers(6, CONFIG.vocab_size, (p, s)).astype(np.int32)
    prompt_mask = np.ones((p, s), np.int32)
    if pad:
        for i in range(p):
            n = 1 + i % 3
            prompt_mask[i, :n] = 0 if i % 2 == 0 else 1
            prompt_mask[i, s - n:] = 1 if i % 2 == 0 else 0
    prompt_ids = np.where(prompt_mask > 0, prompt_ids, PAD).astype(np.int32)
    completion_ids = rng.integers(6, CONFIG.vocab_size, (p, g, t)).astype(np.int32)
    for i, row in enumerate(completion_ids.reshape(p * g, t)):
        end = i % (t + 1)  # EOS at `end`; end == t: no EOS (truncated)
        if end < t:
            row[end] = EOS
            row[end + 1:] = PAD
    mask, _ = grpo.completion_mask(completion_ids.reshape(p * g, t), [EOS], PAD)
    lp = lambda: (-math.log(CONFIG.vocab_size) + rng.normal(0, 0.3, (p, g, t))).astype(np.float32)
    return GroupBatch(prompt_ids, prompt_mask, completion_ids,
                      np.asarray(mask).reshape(p, g, t),
                      rng.normal(size=(p, g)).astype(np.float32),
                      old_logprobs=lp() if old else None,
                      sampler_logprobs=lp() if sampler else None)


def naive_logprobs(model, batch, temperature, adapters=True):
    """The reference without sharing: for each prompt, its G sequences [real prompt tokens ;
    completion] (the prompt copied into every row, no padding) through the plain forward;
    token t is predicted at position len(prompt) + t - 1."""
    p, g, t = batch.completion_ids.shape
    logprobs, entropies = [], []
    for i in range(p):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i] > 0]
        tokens = np.concatenate([np.tile(prompt, (g, 1)), batch.completion_ids[i]], axis=1)
        h, _ = model.hidden_states(jnp.asarray(tokens), adapters=adapters)     # [G, L, D]
        logits = model.logits(h[:, len(prompt) - 1:-1]) / temperature          # [G, T, V]
        logp = jax.nn.log_softmax(logits, axis=-1)
        logprobs.append(jnp.take_along_axis(logp, batch.completion_ids[i][..., None], -1)[..., 0])
        entropies.append(-(jnp.exp(logp) * logp).sum(-1))
    return jnp.stack(logprobs), jnp.stack(entropies)


def naive_loss(lora, base, graphdef, batch, config, temperature):
    """grpo.grpo_loss of the whole batch on naive log-probs; aux: (logprobs, entropy)."""
    model = nnx.merge(graphdef, nnx.State(lora), nnx.State(base))
    logprobs, entropy = naive_logprobs(model, batch, temperature)
    ref = None
    if config.beta:
        ref = jax.lax.stop_gradient(naive_logprobs(model, batch, temperature, adapters=False)[0])
    rows = lambda x: None if x is None else jnp.reshape(x, (-1, x.shape[-1]))
    mask = rows(batch.completion_mask)
    loss, _ = grpo.grpo_loss(rows(logprobs), rows(batch.old_logprobs), batch.advantages.reshape(-1),
                             mask, grpo.batch_normaliser(mask), config, ref_logprobs=rows(ref))
    return loss, (logprobs, entropy)


def close(actual, expected, rtol=1e-4, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=atol)


def trees_close(actual, expected, rtol=1e-4, atol=1e-6):
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    flat_e = jax.tree.leaves(expected)
    assert len(flat_a) == len(flat_e)
    for (path, a), e in zip(flat_a, flat_e):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def global_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree))))


# ------------------------------------------------------------------------------ optimiser


def test_schedules_follow_the_transformers_formulas():
    # total 10, warmup ceil(0.15 * 10) = 2 steps: lr * step / 2 during warmup.
    constant = make_schedule(OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.15, total_steps=10))
    close([constant(s) for s in (0, 1, 2, 7, 10)], [0.0, 5e-4, 1e-3, 1e-3, 1e-3])
    cosine = make_schedule(OptimizerConfig(learning_rate=1e-3, lr_scheduler_type="cosine",
                                           warmup_ratio=0.2, total_steps=10))
    # After warmup: 0.5 * (1 + cos(pi * (step - 2) / 8)).
    close([cosine(s) for s in (0, 1, 2, 4, 6, 10)],
          [0.0, 5e-4, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), 5e-4, 0.0], atol=1e-9)
    flat = make_schedule(OptimizerConfig(learning_rate=2e-5))
    close(flat(0), 2e-5)


def test_adamw_with_clipping_matches_the_update_rule_by_hand():
    """Two AdamW steps on p = [1, -2]: g1 = [3, 4] (norm 5, clipped to 1), g2 = [0.3, 0.4]."""
    lr, wd, b1, b2, eps = 0.1, 0.01, 0.9, 0.999, 1e-8
    optimizer = make_optimizer(OptimizerConfig(learning_rate=lr, weight_decay=wd, adam_epsilon=eps,
                                               max_grad_norm=1.0))
    p = np.array([1.0, -2.0])
    grads = [np.array([0.6, 0.8]), np.array([0.3, 0.4])]  # after clipping
    m = v = np.zeros(2)
    expected = p.copy()
    for k, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** k), v / (1 - b2 ** k)
        expected = expected - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * expected)
    params = jnp.asarray(p, jnp.float32)
    state = optimizer.init(params)
    for g in (jnp.array([3.0, 4.0]), jnp.array([0.3, 0.4])):
        updates, state = optimizer.update(g, state, params)
        params = optax.apply_updates(params, updates)
    close(params, expected, rtol=1e-6)
    unclipped = make_optimizer(OptimizerConfig(learning_rate=lr, weight_decay=wd,
                                               max_grad_norm=None))
    params2 = jnp.asarray(p, jnp.float32)
    state = unclipped.init(params2)
    for g in (jnp.array([3.0, 4.0]), jnp.array([0.3, 0.4])):
        updates, state = unclipped.update(g, state, params2)
        params2 = optax.apply_updates(params2, updates)
    assert not np.allclose(params2, expected, rtol=1e-4)


@pytest.mark.parametrize("field, value", [
    ("lr_scheduler_type", "linear"), ("learning_rate", -1.0), ("warmup_ratio", 1.5),
    ("total_steps", 0), ("max_grad_norm", -1.0), ("adam_beta2", 1.0)])
def test_optimizer_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"OptimizerConfig.{field}"):
        OptimizerConfig(**{field: value})


# ------------------------------------------------------------------------- shared prompt


def test_shared_prompt_gives_the_naive_logprobs_loss_and_gradients():
    """Mixed left/right prompt padding, temperature 0.7, KL on, old log-probs given. (The
    log-probs themselves are compared in `test_logprobs_are_the_naive_temperature_scaled_ones`.)"""
    graphdef, lora, base = split(make_model())
    batch = make_batch()
    config = GRPOLossConfig(loss_type="grpo", beta=0.04)
    temperature = 0.7

    shared = jax.jit(functools.partial(loss_and_grads, graphdef=graphdef, loss_config=config,
                                       temperature=temperature, num_micro_batches=1),
                     compiler_options=FAST_COMPILE)
    naive = functools.partial(naive_loss, graphdef=graphdef, batch=batch, config=config,
                              temperature=temperature)  # the batch stays concrete (numpy)
    naive = jax.jit(jax.value_and_grad(naive, has_aux=True), compiler_options=FAST_COMPILE)
    loss, grads, metrics = shared(lora, base, batch)
    (want_loss, (_, want_entropy)), want_grads = naive(lora, base)
    mask = batch.completion_mask
    close(metrics["entropy"], (np.asarray(want_entropy) * mask).sum() / mask.sum(), atol=1e-5)
    close(loss, want_loss, atol=1e-6)
    assert abs(float(loss)) > 1e-3
    trees_close(grads, want_grads, rtol=1e-3, atol=1e-6)
    # Non-trivial: both LoRA factors get gradient, also through the prompt's keys and values.
    layer0 = want_grads["layers"][0]["self_attn"]
    assert global_norm(layer0["k_proj"]) > 1e-4 and global_norm(layer0["v_proj"]) > 1e-4


def test_shared_prompt_does_one_gth_of_the_prompt_work():
    """FLOPs of forward + backward as the prompt grows from 16 to 32 tokens: the shared path's
    increase is about 1/G of the naive path's (G = 4), since it runs each prompt once.
    One layer: XLA's cost analysis counts the body of the shared path's layer scan once."""
    graphdef, lora, base = split(make_model(layers=1))
    g = 4

    def flops(fn, batch):
        def objective(lora):
            model = nnx.merge(graphdef, nnx.State(lora), nnx.State(base))
            return fn(model, batch)[0].sum()
        return jax.jit(jax.grad(objective)).lower(lora).cost_analysis()["flops"]

    shared = lambda model, b: completion_logprobs(model, b.prompt_ids, b.prompt_mask,
                                                  b.completion_ids)
    naive = lambda model, b: naive_logprobs(model, b, 1.0)
    short, long = (make_batch(g=g, s=s, t=4, pad=False, old=False) for s in (16, 32))
    shared_extra = flops(shared, long) - flops(shared, short)
    naive_extra = flops(naive, long) - flops(naive, short)
    ratio = shared_extra / naive_extra
    assert 1 / g - 0.02 < ratio < 1 / g + 0.08, ratio
    assert flops(shared, long) < 0.5 * flops(naive, long)


def test_beta_zero_computes_no_reference_logprobs():
    """With beta > 0 the step adds a forward pass without adapters; with beta == 0 it does not."""
    graphdef, lora, base = split(make_model())
    batch = make_batch(old=False)

    def flops(config):
        fn = functools.partial(loss_and_grads, graphdef=graphdef, loss_config=config,
                               temperature=1.0, num_micro_batches=1)
        return jax.jit(fn).lower(lora, base, batch).cost_analysis()["flops"]

    def forward(adapters):
        fn = lambda lora: completion_logprobs(nnx.merge(graphdef, nnx.State(lora),
                                                        nnx.State(base)),
                                              batch.prompt_ids, batch.prompt_mask,
                                              batch.completion_ids, adapters=adapters)
        return jax.jit(fn).lower(lora).cost_analysis()["flops"]

    extra = flops(GRPOLossConfig(beta=0.04)) - flops(GRPOLossConfig(beta=0.0))
    close(extra, forward(adapters=False), rtol=0.05)


# ---------------------------------------------------------------------------- accumulation

# Each loss type with a different importance-sampling mode, so min/max metrics merge too.
ACCUMULATION_CASES = [("grpo", "sequence_mask"), ("bnpo", "token_mask"),
                      ("dr_grpo", "sequence_truncate"), ("dapo", "token_truncate")]


def test_micro_batching_splits_prompts_first_then_groups():
    assert micro_batching(4, 8, 2) == (2, 1)
    assert micro_batching(2, 4, 4) == (2, 2)
    assert micro_batching(3, 4, 4) == (1, 4)
    with pytest.raises(ValueError, match="remaining factor 3 must divide the 4 completions"):
        micro_batching(2, 4, 6)


@pytest.mark.parametrize("loss_type, is_mode", ACCUMULATION_CASES)
def test_accumulated_loss_gradients_and_metrics_do_not_depend_on_the_split(loss_type, is_mode):
    """1 micro-batch vs 4 (2 prompt blocks x 2 completion blocks) of unequal token counts.
    One layer suffices here and compiles faster."""
    graphdef, lora, base = split(make_model(layers=1))
    batch = make_batch(sampler=True)
    config = GRPOLossConfig(loss_type=loss_type, beta=0.04, max_completion_length=6,
                            importance_sampling_correction=True, importance_sampling_mode=is_mode,
                            importance_sampling_min=0.5)
    tokens = batch.completion_mask.reshape(2, 2, 2, -1).sum(axis=(1, 3))  # [prompt, half]
    assert len(set(tokens.ravel().tolist())) > 1, "micro-batches must hold unequal token counts"

    def run(m):
        fn = functools.partial(loss_and_grads, graphdef=graphdef, loss_config=config,
                               temperature=1.0, num_micro_batches=m)
        return jax.jit(fn, compiler_options=FAST_COMPILE)(lora, base, batch)

    loss, grads, metrics = run(1)
    loss4, grads4, metrics4 = run(4)
    assert abs(float(loss)) > 1e-3 and global_norm(grads) > 1e-3
    close(loss4, loss, atol=1e-6)
    trees_close(grads4, grads, rtol=1e-4, atol=1e-7)
    assert metrics4.keys() == metrics.keys()
    assert {"kl", "entropy", "sampling/importance_sampling_ratio/min"} <= metrics.keys()
    for name in metrics:
        close(metrics4[name], metrics[name], atol=1e-6)


# ---------------------------------------------------------------------------- the updater

PEAK_LR = 0.05
OPTIMIZER = OptimizerConfig(learning_rate=PEAK_LR, lr_scheduler_type="cosine", warmup_ratio=0.25,
                            total_steps=4, weight_decay=0.01, max_grad_norm=1.0)


def host(tree):
    return jax.tree.map(np.array, jax.device_get(tree))


@pytest.fixture(scope="module")
def run():
    """One updater taken through: lr-0 step, real step, NaN step, state save/step/restore/step."""
    model = make_model()
    base_before = host(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    updater = GRPOUpdater(model, GRPOLossConfig(beta=0.04), OPTIMIZER, num_micro_batches=2,
                          temperature=0.9)
    batch = make_batch()
    r = {"model": model, "updater": updater, "batch": batch, "base_before": base_before}
    r["logprobs"] = host(updater.logprobs(batch))
    r["ref_logprobs"] = host(updater.logprobs(batch, adapters=False))
    r["lora_0"] = host(updater.state()["lora"])
    held = model.layers[0].self_attn.q_proj.lora_a[...]
    r["metrics_0"] = updater.step(batch)
    r["held_deleted"] = held.is_deleted()
    r["lora_1"] = host(nnx.to_pure_dict(nnx.state(model, LoraParam)))
    r["metrics_1"] = updater.step(batch)
    r["lora_2"] = host(nnx.to_pure_dict(nnx.state(model, LoraParam)))
    r["state_2"] = host(updater.state())
    r["metrics_nan"] = updater.step(batch._replace(advantages=np.full((2, 4), np.nan, np.float32)))
    r["state_after_nan"] = host(updater.state())
    r["metrics_3"] = updater.step(batch)
    r["lora_3"] = host(updater.state()["lora"])
    updater.load_state(r["state_2"])
    r["lora_loaded"] = host(nnx.to_pure_dict(nnx.state(model, LoraParam)))
    r["metrics_3_again"] = updater.step(batch)
    r["lora_3_again"] = host(updater.state()["lora"])
    r["base_after"] = host(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return r


def test_step_follows_the_schedule_and_updates_only_lora(run):
    close([run[k]["learning_rate"] for k in ("metrics_0", "metrics_1", "metrics_3")],
          [0.0, PEAK_LR, PEAK_LR * 0.75], rtol=1e-6)
    trees_close(run["lora_1"], run["lora_0"], rtol=0, atol=0)  # learning rate 0
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(run["lora_2"]), jax.tree.leaves(run["lora_1"]))]
    assert all(changed)
    trees_close(run["base_after"], run["base_before"], rtol=0, atol=0)
    assert run["updater"].num_updates == 3  # 4 applied, then back to 2 by load_state, + 1
    assert run["held_deleted"], "the step donates the LoRA arrays it was given"


def test_step_metrics_are_trls(run):
    m = run["metrics_0"]
    assert {"loss", "grad_norm", "learning_rate", "kl", "entropy", "clip_ratio/low_mean",
            "clip_ratio/high_mean", "clip_ratio/region_mean", "skipped"} <= m.keys()
    assert m["skipped"] == 0.0 and m["grad_norm"] > 0
    # kl: the token mean of k3 between the adapters-off and adapters-on log-probs.
    lp, ref, mask = run["logprobs"], run["ref_logprobs"], run["batch"].completion_mask
    k3 = np.exp(ref - lp) - (ref - lp) - 1
    close(m["kl"], (k3 * mask).sum() / mask.sum(), rtol=1e-4)
    assert m["kl"] > 1e-4


def test_logprobs_are_the_naive_temperature_scaled_ones(run):
    graphdef, lora, base = split(make_model())  # the updater's initial weights
    batch = run["batch"]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def naive(lora, base):
        model = nnx.merge(graphdef, nnx.State(lora), nnx.State(base))
        return [naive_logprobs(model, batch, 0.9, adapters)[0] for adapters in (True, False)]

    want, want_ref = naive(lora, base)
    close(run["logprobs"], want, atol=1e-5)
    close(run["ref_logprobs"], want_ref, atol=1e-5)
    assert np.abs(run["logprobs"] - run["ref_logprobs"]).max() > 1e-3


def test_non_finite_step_is_not_applied(run):
    assert run["metrics_nan"]["skipped"] == 1.0
    assert not math.isfinite(run["metrics_nan"]["loss"])
    trees_close(run["state_after_nan"], run["state_2"], rtol=0, atol=0)
    assert run["metrics_3"]["skipped"] == 0.0


def test_step_whose_updated_weights_are_not_finite_is_not_applied():
    """Finite loss and gradients, non-finite weights: with adam_epsilon 0, a batch of zero
    advantages has zero gradients, and Adam's first update is 0 / 0 = NaN."""
    optimizer = OptimizerConfig(learning_rate=0.05, adam_epsilon=0.0)
    updater = GRPOUpdater(make_model(), GRPOLossConfig(), optimizer)
    batch = make_batch()
    before = host(updater.state())
    flat = updater.step(batch._replace(advantages=np.zeros((2, 4), np.float32)))
    assert math.isfinite(flat["loss"]) and flat["grad_norm"] == 0.0
    assert flat["skipped"] == 1.0
    trees_close(host(updater.state()), before, rtol=0, atol=0)
    assert updater.num_updates == 0
    assert updater.step(batch)["skipped"] == 0.0
    assert updater.num_updates == 1
    after = host(updater.state()["lora"])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    assert not np.array_equal(jax.tree.leaves(after)[0], jax.tree.leaves(before["lora"])[0])


def test_state_round_trip_resumes_exactly(run):
    trees_close(run["lora_loaded"], run["state_2"]["lora"], rtol=0, atol=0)
    assert run["metrics_3_again"] == run["metrics_3"]
    trees_close(run["lora_3_again"], run["lora_3"], rtol=0, atol=0)


def test_load_state_rejects_a_mismatching_state(run):
    state = run["state_2"]
    bad = {**state, "lora": jax.tree.map(lambda x: x[..., :1], state["lora"])}
    with pytest.raises(ValueError, match=r"load_state: \['lora'\]\['layers'\]\[0\].* expected"):
        run["updater"].load_state(bad)
    with pytest.raises(ValueError, match="structure differs"):
        run["updater"].load_state({"lora": state["lora"]})


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize("change, message", [
    (dict(prompt_mask=zeros(2, 10, dtype=np.int32)), "prompt_mask: prompt 0 has no real token"),
    (dict(completion_ids=np.full((2, 4, 6), 96, np.int32)),
     r"completion_ids has token ids outside \[0, 96\)"),
    (dict(prompt_ids=zeros(3, 10, dtype=np.int32)), r"prompt_ids must have shape \[P=2, S\]"),
    (dict(advantages=zeros(2, 3)), r"advantages must have shape \[2, 4\]"),
    (dict(old_logprobs=zeros(2, 4, 5)), r"old_logprobs must have shape \[2, 4, 6\]"),
    (dict(completion_ids=zeros(2, 4, 6)), "completion_ids must hold integer"),
    (dict(sampler_logprobs=zeros(2, 4, 6)), "sampler_logprobs must be given exactly"),
])
def test_bad_batches_are_rejected_naming_the_field(run, change, message):
    with pytest.raises(ValueError, match=message):
        run["updater"].step(run["batch"]._replace(**change))


def test_updater_rejects_a_model_without_adapters_and_bad_settings():
    plain = Llama(CONFIG, numerics=EXACT, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        GRPOUpdater(plain, GRPOLossConfig(), OptimizerConfig())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GRPOUpdater(make_model(), GRPOLossConfig(), OptimizerConfig(), temperature=0.0)


# -------------------------------------------------------------------------------- the mesh


@pytest.mark.slow
def test_eight_device_meshes_give_the_one_device_losses_and_weights():
    """3 updates on (data, fsdp, tensor) meshes (8, 1, 1), (2, 4, 1) and (1, 4, 2) of 8 CPU
    devices and on 1 device, in a subprocess because the device count is fixed when JAX
    starts: the same losses and the same updated LoRA weights."""
    script = textwrap.dedent("""
        import json, sys
        import jax, numpy as np
        from jax.sharding import Mesh
        sys.path.insert(0, {tests!r})
        from test_update import make_model, make_batch, OPTIMIZER
        from arc_jax.model import Sharding
        from arc_jax.train.grpo import GRPOLossConfig
        from arc_jax.train.update import GRPOUpdater

        devices = np.array(jax.devices())
        assert devices.size == 8, devices
        batch = make_batch(p=8, g=2, s=12, t=5)
        out = {{}}
        for shape in ((1, 1, 1), (8, 1, 1), (2, 4, 1), (1, 4, 2)):
            grid = devices[:int(np.prod(shape))].reshape(shape)
            mesh = Mesh(grid, ("data", "fsdp", "tensor"))
            model = make_model(sharding=Sharding(mesh), layers=1)
            updater = GRPOUpdater(model, GRPOLossConfig(beta=0.04), OPTIMIZER,
                                  num_micro_batches=2)
            name = "x".join(map(str, shape))
            out[name] = [updater.step(batch) for _ in range(3)]
            mlp = model.layers[0].mlp
            out[name + "_lora"] = np.asarray(mlp.up_proj.lora_b[...]).tolist()
            out[name + "_specs"] = [str(mlp.up_proj.lora_a[...].sharding.spec),
                                    str(mlp.up_proj.kernel[...].sharding.spec)]
        print(json.dumps(out))
    """).format(tests=os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # FSDP shards the model dimension, tensor parallelism the MLP dimension.
    assert "fsdp" in out["2x4x1_specs"][0] and "tensor" in out["1x4x2_specs"][1]
    for mesh in ("8x1x1", "2x4x1", "1x4x2"):
        for one, other in zip(out["1x1x1"], out[mesh]):
            for name in ("loss", "grad_norm", "kl", "entropy"):
                close(other[name], one[name], rtol=1e-4, atol=1e-6)
        close(np.array(out[mesh + "_lora"]), np.array(out["1x1x1_lora"]), rtol=1e-4, atol=1e-5)
    assert out["1x1x1"][2]["loss"] != out["1x1x1"][0]["loss"]


# ---------------------------------------------------------------------------- chunked log-probs


@pytest.mark.parametrize("chunk", [1, 7, 30, 512])
def test_chunked_logprobs_equal_the_full_computation(chunk):
    """Values and gradients (w.r.t. hidden states and head) of the chunked log-probs and
    entropies equal those of the whole [N, V] logits at once (N = 30, V = 96)."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(30, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 96)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 96, 30), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(2, 30)), jnp.float32)

    def objective(fn):
        def f(h, w):
            logprobs, entropy = fn(lambda x: jnp.dot(x, w, precision="highest"), h)
            return weights[0] @ logprobs + weights[1] @ entropy, (logprobs, entropy)
        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(h, w)

    full = objective(lambda logits_fn, h: token_logprobs_and_entropy(logits_fn(h), tokens, 0.7))
    chunked = objective(lambda logits_fn, h: chunked_logprobs_and_entropy(logits_fn, h, tokens,
                                                                          0.7, chunk))
    (value, (lp, ent)), grads = chunked
    (value_ref, (lp_ref, ent_ref)), grads_ref = full
    close(lp, lp_ref)
    close(ent, ent_ref)
    close(value, value_ref)
    trees_close(grads, grads_ref)


# ---------------------------------------------------------------------------- compiles and memory


@pytest.mark.parametrize("bits, expected", [(1, 3), (0, 1)])
def test_update_compiles_once_per_prompt_bucket(bits, expected):
    """Twelve steps whose prompts have twelve lengths from 1 to 60 tokens compile the update
    once per bucket: with PromptBuckets(16, bits=1, maximum=60) the buckets are 16, 32 and 64;
    with bits=0 there is only 64."""
    from arc_jax.rollout import PromptBuckets
    from arc_jax.train.compiles import CompileCounter

    buckets = PromptBuckets(minimum=16, bits=bits, maximum=60)
    updater = GRPOUpdater(make_model(), GRPOLossConfig(), OPTIMIZER)
    lengths = [1, 60, 5, 17, 33, 16, 40, 2, 31, 59, 24, 48]
    with CompileCounter() as counter:
        for length in lengths:
            s = buckets(length)
            mask = np.zeros((1, s), np.int32)
            mask[0, s - length:] = 1
            batch = make_batch(p=1, g=2, s=s, t=4, seed=length, old=False)
            updater.step(batch._replace(prompt_mask=mask,
                                        prompt_ids=np.where(mask > 0, batch.prompt_ids, PAD)))
        compiled, _ = counter.take()
    assert sorted({buckets(n) for n in lengths}) == ([16, 32, 64] if bits else [64])
    assert sum(c.name == "jit(train_step)" for c in compiled) == expected


def test_update_pads_completions_to_the_longest_and_compiles_once_per_bucket():
    """Steps whose longest completions have twelve lengths from 1 to 200 tokens: the batch is
    padded to 64, 128 or 256 (64 x 2^k, max_completion_length 200), not to 200 every time,
    and the update compiles once for each of the three."""
    import types

    from arc_jax import episode
    from arc_jax.config import default_config
    from arc_jax.rollout import Completion, PromptBuckets
    from arc_jax.train import loop
    from arc_jax.train.compiles import CompileCounter

    config = default_config()
    config.max_completion_length, config.completion_bucket_bits = 200, 1
    buckets = loop.completion_buckets(config)
    updater = GRPOUpdater(make_model(), GRPOLossConfig(), OPTIMIZER)
    rng = np.random.default_rng(0)
    record = lambda reward: types.SimpleNamespace(reward=reward)
    lengths = [1, 200, 5, 64, 65, 16, 128, 129, 31, 199, 100, 2]
    padded = []
    with CompileCounter() as counter:
        for longest in lengths:
            completions = [Completion(tuple(rng.integers(6, 96, n).tolist()), (0.0,) * n,
                                      (0.0,) * n, "length") for n in (1, longest)]
            group = episode.Group(None, [1, 7, 8], completions, [record(1.0), record(0.0)])
            batch, _ = loop.group_batch([group], pad_id=PAD, eos_ids=(EOS,),
                                        loss=GRPOLossConfig(), buckets=PromptBuckets(minimum=4),
                                        completion_buckets=buckets)
            padded.append(batch.completion_ids.shape[2])
            updater.step(batch._replace(sampler_logprobs=None))
        compiled, _ = counter.take()
    assert padded == [64, 256, 64, 64, 128, 64, 128, 256, 64, 256, 128, 64]
    assert sum(c.name == "jit(train_step)" for c in compiled) == 3


def test_update_memory_plan_refuses_what_does_not_fit_naming_the_knobs():
    from arc_jax.train.memory import UpdateMemoryError, check_update_fits

    updater = GRPOUpdater(make_model(), GRPOLossConfig(), OPTIMIZER, num_micro_batches=2)
    plan = updater.memory_plan(num_prompts=2, prompt_len=64, num_generations=4,
                               completion_len=32)
    assert (plan.prompts, plan.completions) == (1, 4)  # two micro-batches split the prompts
    check_update_fits(plan, plan.total)
    with pytest.raises(UpdateMemoryError, match="gradient_accumulation_steps.*max_completion_length"):
        check_update_fits(plan, plan.total - 1)


def test_update_memory_plan_of_the_reference_8b_run():
    """At the reference shape (8B, one 8,704-slot prompt, 2 micro-batches of 8 x 1,024 tokens)
    the plan fits next to the 16 GiB of weights in 80 GB with remat and cuDNN attention (the
    lent H200 measured 38.7 GiB peak for the whole step), and does not without remat (the
    un-rematerialised update ran out of memory there)."""
    from arc_jax.train.memory import plan_update_memory

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128)
    layer_bytes = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) * 2
    lora_bytes = 84_000_000 * 4
    weights = 16 * 2**30 + 4 * lora_bytes  # base, LoRA, two Adam moments, the update's copy

    def total(remat):
        return weights + plan_update_memory(
            config, jnp.bfloat16, prompts=1, prompt_len=8704, completions=8, completion_len=1024,
            layer_weight_bytes=layer_bytes + lora_bytes, lora_bytes=lora_bytes, remat=remat,
            fused_attention=True, query_chunk=128, logits_chunk=512).total

    assert 38.7 * 2**30 < total(remat=True) < 80e9
    assert total(remat=False) > 80e9


@pytest.mark.parametrize("numerics", [EXACT, Numerics()], ids=["float32", "bfloat16"])
def test_equal_rewards_leave_fresh_adapters_at_zero(numerics):
    # Every advantage 0 and the policy equal to the reference (LoRA B = 0): neither the policy
    # term nor the KL has a gradient, so AdamW (weight decay included) leaves B at 0 and the
    # sampler keeps sharing the base weights. Some completions end with EOS (not masked).
    model = Llama(CONFIG, numerics=numerics, lora=LoraConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(0))
    updater = GRPOUpdater(model, GRPOLossConfig(beta=0.001),
                          OptimizerConfig(learning_rate=1e-3, total_steps=4, weight_decay=0.1))
    batch = make_batch(old=False)
    batch = batch._replace(advantages=np.zeros_like(batch.advantages))
    assert np.asarray(batch.completion_mask).sum() > 0
    policy, reference = updater.logprobs(batch), updater.logprobs(batch, adapters=False)
    assert np.array_equal(np.asarray(policy), np.asarray(reference))
    metrics = updater.step(batch)
    assert metrics["grad_norm"] == 0.0
    b = [x for path, x in jax.tree_util.tree_leaves_with_path(updater.state()["lora"])
         if "lora_b" in jax.tree_util.keystr(path)]
    assert b and all(not np.any(np.asarray(x)) for x in b)

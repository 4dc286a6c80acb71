"""`arc_jax.train.grpo` against TRL 1.16's own `GRPOTrainer._compute_loss` on the same tensors.

TRL's method runs unchanged. What it reads from the trainer is given by a stand-in object: the
loss settings, and a single-process accelerator whose gather/reduce return their input (the
distributed layer, which cannot run here without a cluster; with one process it is the
identity). The policy's log-probs are handed in as a leaf tensor, so `loss.backward()` gives
the gradient that our `jax.grad` must equal.

With one micro-batch everything must agree. With several, TRL normalises `bnpo` by each
micro-batch's own token count; ours by default uses the whole batch's (a deliberate
difference: the exact token mean), and `bnpo_scope="micro_batch"` is TRL's. The other types
agree for equal-sized micro-batches.
"""

import collections
import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer

from arc_jax.train import grpo
from arc_jax.train.grpo import GRPOLossConfig

B, T = 6, 5  # two prompts with G = 3 completions each


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    logprobs = -rng.uniform(0.05, 3.0, (B, T))
    lengths = np.array([5, 3, 1, 5, 4, 0])  # the last completion is masked out entirely
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    return dict(logprobs=logprobs,
                old=logprobs + rng.normal(0.0, 0.3, (B, T)),
                ref=logprobs + rng.normal(0.0, 0.5, (B, T)),
                sampler=logprobs + rng.normal(0.0, 0.2, (B, T)),
                advantages=np.array([1.2, -0.4, -0.8, 0.5, 0.0, -0.5]),
                entropies=rng.uniform(0.0, 4.0, (B, T)),
                mask=mask)


def trl_sampler_ratio(old, sampler, mask, config: GRPOLossConfig):
    """TRL's vLLM importance-sampling ratio (written from its definition, in torch)."""
    diff = torch.nan_to_num((old - sampler) * mask, nan=0.0)
    if config.importance_sampling_mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    low, high = config.importance_sampling_min, config.importance_sampling_cap
    if config.importance_sampling_mode.endswith("truncate"):
        return torch.clamp(ratio, min=low, max=high)
    low = -math.inf if low is None else low
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def trl_loss(config: GRPOLossConfig, t: dict, micro_batches: int = 1, batch_tokens=None):
    """(loss, d loss / d logprobs, metrics) from TRL's `_compute_loss` on one micro-batch of
    `micro_batches` (gradient accumulation steps) of a batch with `batch_tokens` tokens."""
    as_torch = {k: torch.tensor(v, dtype=torch.float64) for k, v in t.items()}
    logprobs = as_torch["logprobs"].clone().requires_grad_(True)
    mask = as_torch["mask"]
    corrected = config.importance_sampling_correction
    args = types.SimpleNamespace(
        delta=config.delta, use_bias_correction_kl=config.use_bias_correction_kl,
        sapo_temperature_pos=config.sapo_temperature_pos,
        sapo_temperature_neg=config.sapo_temperature_neg,
        vespo_k_pos=config.vespo_k_pos, vespo_lambda_pos=config.vespo_lambda_pos,
        vespo_k_neg=config.vespo_k_neg, vespo_lambda_neg=config.vespo_lambda_neg,
        steps_per_generation=micro_batches)
    one_process = types.SimpleNamespace(
        num_processes=1, sync_gradients=True, gather=lambda x: x,
        gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x,
        pad_across_processes=lambda x, dim, pad_index: x)
    trainer = types.SimpleNamespace(
        args=args, accelerator=one_process, model=types.SimpleNamespace(training=True),
        loss_type=config.loss_type, beta=config.beta, epsilon_low=config.epsilon,
        epsilon_high=config.clip_range[1] - 1.0,
        importance_sampling_level=config.importance_sampling_level,
        top_entropy_quantile=config.top_entropy_quantile,
        off_policy_mask_threshold=config.off_policy_mask_threshold,
        use_vllm=corrected, vllm_importance_sampling_correction=corrected,
        current_gradient_accumulation_steps=micro_batches,
        max_completion_length=config.max_completion_length,
        aux_loss_enabled=False, _entropy_bonus_enabled=False,
        _metrics={"train": collections.defaultdict(list)},
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, as_torch["entropies"],
                                                             None))
    trainer.get_high_entropy_mask = functools.partial(GRPOTrainer.get_high_entropy_mask, trainer)
    inputs = {
        "prompt_ids": torch.zeros((len(mask), 1), dtype=torch.long),
        "prompt_mask": torch.ones((len(mask), 1), dtype=torch.long),
        "completion_ids": torch.zeros(mask.shape, dtype=torch.long), "completion_mask": mask,
        "advantages": as_torch["advantages"], "old_per_token_logps": as_torch["old"],
        "ref_per_token_logps": as_torch["ref"],
        "num_items_in_batch": mask.sum() if batch_tokens is None else torch.tensor(batch_tokens),
    }
    if corrected:
        inputs["sampling_per_token_logps"] = as_torch["sampler"]
        inputs["importance_sampling_ratio"] = trl_sampler_ratio(as_torch["old"], as_torch["sampler"],
                                                                mask, config)
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    metrics = {k: v[0] for k, v in trainer._metrics["train"].items()}
    return loss.item(), logprobs.grad.numpy(), metrics


def our_loss(config: GRPOLossConfig, t: dict, normaliser=None):
    f32 = {k: jnp.asarray(v, jnp.float32) for k, v in t.items()}
    mask = f32["mask"]
    normaliser = grpo.batch_normaliser(mask) if normaliser is None else normaliser

    def loss_fn(logprobs):
        return grpo.grpo_loss(
            logprobs, f32["old"], f32["advantages"], mask, normaliser, config,
            ref_logprobs=f32["ref"] if config.beta else None,
            sampler_logprobs=f32["sampler"] if config.importance_sampling_correction else None,
            entropies=f32["entropies"] if config.top_entropy_quantile < 1 else None)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(f32["logprobs"])
    return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


def assert_same(config: GRPOLossConfig, seed=0):
    t = tensors(seed)
    trl_value, trl_grad, trl_metrics = trl_loss(config, t)
    value, grad, metrics = our_loss(config, t)
    assert value == pytest.approx(trl_value, rel=1e-5, abs=1e-6), config
    np.testing.assert_allclose(grad, trl_grad, rtol=1e-4, atol=1e-6, err_msg=str(config))
    shared = sorted(set(metrics) & set(trl_metrics))
    for name in shared:
        assert metrics[name] == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-6), name
    return shared


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta, bias_correction", [(0.0, False), (0.04, True), (0.04, False)])
def test_loss_types_and_options_equal_trls(loss_type, level, beta, bias_correction):
    # cispo's epsilon_high is its ratio cap (ScaleRL: 5); for the clipped objectives, DAPO's.
    epsilon_high = 1.2 if loss_type == "cispo" else 0.28
    config = GRPOLossConfig(loss_type=loss_type, importance_sampling_level=level, beta=beta,
                            use_bias_correction_kl=bias_correction, epsilon_high=epsilon_high,
                            max_completion_length=T + 3)
    shared = assert_same(config)
    if loss_type in grpo.CLIPPED_LOSS_TYPES:
        assert "clip_ratio/region_mean" in shared
    if beta:
        assert "kl" in shared


@pytest.mark.parametrize("mode", grpo.IMPORTANCE_SAMPLING_MODES)
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "vespo"])
def test_sampler_correction_equals_trls(mode, loss_type):
    config = GRPOLossConfig(loss_type=loss_type, importance_sampling_correction=True,
                            importance_sampling_mode=mode, importance_sampling_cap=1.3,
                            importance_sampling_min=0.8)
    assert_same(config)


@pytest.mark.parametrize("loss_type", ["dapo", "cispo"])
@pytest.mark.parametrize("corrected", [False, True])
def test_off_policy_mask_equals_trls(loss_type, corrected):
    config = GRPOLossConfig(loss_type=loss_type, off_policy_mask_threshold=0.05,
                            importance_sampling_correction=corrected, epsilon_high=0.28)
    assert_same(config)


@pytest.mark.parametrize("quantile", [0.0, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("loss_type, beta", [("dapo", 0.0), ("grpo", 0.04), ("cispo", 0.0)])
def test_top_entropy_quantile_equals_trls(quantile, loss_type, beta):
    config = GRPOLossConfig(loss_type=loss_type, beta=beta, top_entropy_quantile=quantile,
                            epsilon_high=1.2 if loss_type == "cispo" else 0.28)
    assert_same(config)
    assert_same(dataclasses.replace(config, importance_sampling_correction=True), seed=2)


def test_delta_and_sapo_temperatures_equal_trls():
    assert_same(GRPOLossConfig(delta=1.1, epsilon_high=0.28), seed=1)
    assert_same(GRPOLossConfig(loss_type="sapo", sapo_temperature_pos=0.7,
                               sapo_temperature_neg=1.6), seed=2)


def accumulated(config: GRPOLossConfig, parts: int, ours: bool):
    """Loss and gradient summed over `parts` equal micro-batches of the batch, by TRL or by us."""
    t = tensors(3)
    rows = np.array_split(np.arange(B), parts)
    normaliser = grpo.batch_normaliser(jnp.asarray(t["mask"]), parts)
    total, grads = 0.0, []
    for r in rows:
        part = {k: v[r] for k, v in t.items()}
        if ours:
            value, grad, _ = our_loss(config, part, normaliser)
        else:
            value, grad, _ = trl_loss(config, part, parts, batch_tokens=t["mask"].sum())
        total += value
        grads.append(grad)
    return total, np.concatenate(grads)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_three_micro_batches_equal_trls_accumulation(loss_type, level):
    scope = "micro_batch" if loss_type == "bnpo" else "batch"
    config = GRPOLossConfig(loss_type=loss_type, importance_sampling_level=level, beta=0.04,
                            use_bias_correction_kl=True, epsilon_high=0.28, bnpo_scope=scope,
                            max_completion_length=T + 3)
    trl_value, trl_grad = accumulated(config, 3, ours=False)
    value, grad = accumulated(config, 3, ours=True)
    assert value == pytest.approx(trl_value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, trl_grad, rtol=1e-4, atol=1e-6)


def test_bnpo_over_the_whole_batch_is_the_deliberate_difference():
    exact = GRPOLossConfig(loss_type="bnpo")  # micro-batches of 8, 6 and 4 tokens
    trl_value, _ = accumulated(exact, 3, ours=False)
    value, _ = accumulated(exact, 3, ours=True)
    assert value != pytest.approx(trl_value, rel=1e-3)
    # ... and equals dapo, the exact batch token mean.
    assert value == pytest.approx(accumulated(GRPOLossConfig(loss_type="dapo"), 3, ours=True)[0])

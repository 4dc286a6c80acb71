"""GRPO math against hand-computed values and plain-Python formulas written from TRL's spec."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arc_jax.train import grpo
from arc_jax.train.grpo import GRPOLossConfig

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------- config


def test_config_defaults_are_trls():
    config = GRPOLossConfig()
    assert (config.loss_type, config.beta, config.epsilon, config.epsilon_high, config.delta,
            config.scale_rewards, config.mask_truncated_completions,
            config.max_completion_length) == ("dapo", 0.0, 0.2, None, None, "group", False, 256)
    assert (config.importance_sampling_mode, config.importance_sampling_cap,
            config.importance_sampling_min) == ("token_truncate", 2.0, None)
    close(config.clip_range, (0.8, 1.2))
    close(GRPOLossConfig(epsilon_high=0.28).clip_range, (0.8, 1.28))


@pytest.mark.parametrize("field, value", [
    ("loss_type", "ppo"), ("scale_rewards", True), ("importance_sampling_mode", "token"),
    ("bnpo_scope", "global"), ("beta", -0.1), ("epsilon", 1.5), ("epsilon_high", -0.1),
    ("delta", 0.5), ("max_completion_length", 0), ("importance_sampling_cap", 0.0),
    ("importance_sampling_min", 3.0)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"GRPOLossConfig.{field}"):
        GRPOLossConfig(**{field: value})


# -------------------------------------------------------------------------------- advantages

# rewards [1, 0 | 2, 2] in groups of 2: group 1 has mean 0.5 and Bessel std sqrt(0.5);
# group 2 has identical rewards.
REWARDS = [1.0, 0.0, 2.0, 2.0]
A1 = 0.5 / (math.sqrt(0.5) + 1e-4)
# batch mean 1.25; squared deviations 0.0625 + 1.5625 + 0.5625 + 0.5625 = 2.75, / 3
BATCH_STD = math.sqrt(2.75 / 3)


def test_group_scaling_by_hand():
    advantages, stats = grpo.group_advantages(jnp.array(REWARDS), 2, "group")
    close(advantages, [A1, -A1, 0.0, 0.0])
    close(stats["reward"], 1.25)
    close(stats["reward_std"], BATCH_STD)  # TRL 1.16: the std of all rewards
    close(stats["frac_reward_zero_std"], 0.5)


def test_group_of_three_by_hand():
    # mean 1, Bessel std sqrt((1 + 0 + 1) / 2) = 1
    advantages, _ = grpo.group_advantages(jnp.array([0.0, 1.0, 2.0]), 3)
    close(advantages, [-1 / 1.0001, 0.0, 1 / 1.0001])


def test_batch_scaling_by_hand():
    advantages, stats = grpo.group_advantages(jnp.array(REWARDS), 2, "batch")
    a = 0.5 / (BATCH_STD + 1e-4)
    close(advantages, [a, -a, 0.0, 0.0])
    close(stats["reward_std"], BATCH_STD)
    close(stats["frac_reward_zero_std"], 0.0)  # TRL 1.16: the batch std is not zero


def test_no_scaling_only_centres():
    advantages, stats = grpo.group_advantages(jnp.array(REWARDS), 2, "none")
    close(advantages, [0.5, -0.5, 0.0, 0.0])
    close(stats["reward_std"], BATCH_STD)
    close(stats["frac_reward_zero_std"], 0.5)


def test_identical_rewards_give_exactly_zero():
    advantages, stats = grpo.group_advantages(jnp.full((6,), 0.1), 3, "group")
    assert np.all(np.asarray(advantages) == 0.0)
    assert float(stats["frac_reward_zero_std"]) == 1.0


def test_missing_rewards_are_left_out():
    # group 1: valid [1, 0] -> mean 0.5, std sqrt(0.5); group 2: no valid reward at all
    nan = float("nan")
    advantages, stats = grpo.group_advantages(jnp.array([1.0, nan, 0.0, nan, nan, nan]), 3)
    close(advantages, [A1, 0.0, -A1, 0.0, 0.0, 0.0])
    close(stats["reward"], 0.5)
    close(stats["reward_std"], math.sqrt(0.5))
    # Group 2 has no std at all (TRL 1.16's nanstd is NaN): it is not a zero-std group.
    close(stats["frac_reward_zero_std"], 0.0)


def test_one_generation_per_prompt_has_no_signal():
    advantages, stats = grpo.group_advantages(jnp.array([1.0, 0.0]), 1)
    close(advantages, [0.0, 0.0])
    close(stats["frac_reward_zero_std"], 1.0)


def test_group_advantages_jits():
    fn = jax.jit(grpo.group_advantages, static_argnums=(1, 2))
    close(fn(jnp.array(REWARDS), 2, "group")[0], [A1, -A1, 0.0, 0.0])


@pytest.mark.parametrize("rewards, g, scale, message", [
    ([1.0, 2.0, 3.0], 2, "group", "multiple of num_generations=2"),
    ([[1.0, 2.0]], 2, "group", r"shape \[B\]"),
    ([1.0, 2.0], 2, "std", "scale_rewards")])
def test_group_advantages_rejects_bad_input(rewards, g, scale, message):
    with pytest.raises(ValueError, match=message):
        grpo.group_advantages(jnp.array(rewards), g, scale)


# ------------------------------------------------------------------------------------- masks

EOS, EOT, PAD = 9, 8, 0
IDS = jnp.array([[5, 6, EOS, PAD, PAD],   # ends with EOS
                 [5, EOT, 7, EOS, PAD],   # the first of two EOS ids ends it
                 [5, 6, 7, PAD, PAD],     # stopped without EOS, then padded
                 [5, PAD, 7, 7, 7],       # ran to the length limit; a pad inside is a token
                 [PAD, PAD, PAD, PAD, PAD]])


def test_completion_mask_ends_at_first_eos():
    mask, truncated = grpo.completion_mask(IDS, (EOS, EOT), PAD)
    close(mask, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1],
                 [0, 0, 0, 0, 0]])
    assert mask.dtype == jnp.float32
    assert np.asarray(truncated).tolist() == [False, False, True, True, True]


def test_completion_mask_zeroes_truncated_rows():
    mask, _ = grpo.completion_mask(IDS, (EOS, EOT), PAD, mask_truncated=True)
    close(mask, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]] + [[0] * 5] * 3)


def test_completion_mask_takes_given_truncation():
    given = jnp.array([False, False, False, True, False])
    mask, truncated = grpo.completion_mask(IDS, (EOS, EOT), PAD, mask_truncated=True,
                                           truncated=given)
    close(mask, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0] * 5, [0] * 5])
    assert np.asarray(truncated).tolist() == np.asarray(given).tolist()


@pytest.mark.parametrize("ids, eos, truncated, message", [
    (jnp.ones((2, 3)), (EOS,), None, "integer token ids"),
    (jnp.ones((2, 3), jnp.int32), (), None, "eos_ids"),
    (jnp.ones((2, 3), jnp.int32), (EOS,), jnp.array([True]), r"truncated must have shape \[2\]")])
def test_completion_mask_rejects_bad_input(ids, eos, truncated, message):
    with pytest.raises(ValueError, match=message):
        grpo.completion_mask(ids, eos, PAD, truncated=truncated)


# -------------------------------------------------------------------- loss, by hand (ratio 1)

# Four completions of three tokens, lengths 3, 1, 2, 0 (the last one masked).
MASK = jnp.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], jnp.float32)
ADV = jnp.array([1.0, -1.0, 0.5, 0.0])


def on_policy_loss(config, logprobs=None):
    logprobs = jnp.full((4, 3), -1.0) if logprobs is None else logprobs
    normaliser = grpo.batch_normaliser(MASK)
    return grpo.grpo_loss(logprobs, jax.lax.stop_gradient(logprobs), ADV, MASK, normaliser,
                          config)


@pytest.mark.parametrize("config, expected", [
    # per-token loss is -A: token sums -3, +1, -1, 0 over 6 tokens
    (GRPOLossConfig(loss_type="dapo"), -3 / 6),
    (GRPOLossConfig(loss_type="bnpo"), -3 / 6),
    (GRPOLossConfig(loss_type="bnpo", bnpo_scope="micro_batch"), -3 / 6),
    # sequence means -1, +1, -0.5, 0 averaged over 4 sequences
    (GRPOLossConfig(loss_type="grpo"), -0.5 / 4),
    (GRPOLossConfig(loss_type="dr_grpo", max_completion_length=3), -3 / 12),
    (GRPOLossConfig(loss_type="dr_grpo", max_completion_length=4), -3 / 16)])
def test_on_policy_loss_by_hand(config, expected):
    loss, metrics = on_policy_loss(config)
    close(loss, expected)
    close(metrics["clip_ratio/region_mean"], 0.0)


def test_on_policy_gradient_is_reinforce():
    """With old = stop_gradient(new) the gradient is -A m / N (dapo: N = 6 tokens)."""
    grad = jax.grad(lambda lp: on_policy_loss(GRPOLossConfig(), lp)[0])(jnp.full((4, 3), -1.0))
    close(grad, np.array([[-1, -1, -1], [1, 0, 0], [-0.5, -0.5, 0], [0, 0, 0]]) / 6)


# ------------------------------------------------------------------- clipping, KL, IS by hand


def single_token_losses(log_ratios, advantages, config, mask=None, **kwargs):
    """Per-token loss of one-token completions with logprobs - old_logprobs = log_ratios."""
    n = len(log_ratios)
    logprobs = jnp.array(log_ratios, jnp.float32)[:, None]
    mask = jnp.ones((n, 1)) if mask is None else mask
    return grpo.per_token_loss(logprobs, jnp.zeros((n, 1)), jnp.array(advantages), mask, config,
                               **kwargs)


def test_clipping_by_hand():
    e5, e_5, e1 = math.exp(0.5), math.exp(-0.5), math.exp(0.1)
    log_ratios = [0.5, 0.5, -0.5, -0.5, 0.1, 0.1]
    advantages = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    loss, terms = single_token_losses(log_ratios, advantages, GRPOLossConfig())
    # -min(w A, clip(w, 0.8, 1.2) A)
    close(loss[:, 0], [-1.2, e5, -e_5, 0.8, -e1, e1])
    assert np.asarray(terms["high_clipped"])[:, 0].tolist() == [True] + [False] * 5
    assert np.asarray(terms["low_clipped"])[:, 0].tolist() == [False] * 3 + [True] + [False] * 2

    loss, _ = single_token_losses(log_ratios, advantages, GRPOLossConfig(epsilon_high=0.28))
    close(loss[:2, 0], [-1.28, e5])
    loss, _ = single_token_losses(log_ratios, advantages, GRPOLossConfig(delta=1.5))
    close(loss[:2, 0], [-1.2, 1.5])  # the unclipped ratio is capped at delta


def test_clip_metrics_by_hand():
    # tokens: high-clipped, unclipped (A < 0, w > 1), low-clipped, masked low-clipped
    mask = jnp.array([[1.0], [1.0], [1.0], [0.0]])
    normaliser = grpo.batch_normaliser(mask)
    _, metrics = grpo.grpo_loss(jnp.array([[0.5], [0.5], [-0.5], [-0.5]]), jnp.zeros((4, 1)),
                                jnp.array([1.0, -1.0, -1.0, -1.0]), mask, normaliser,
                                GRPOLossConfig())
    close(metrics["clip_ratio/high_mean"], 1 / 3)
    close(metrics["clip_ratio/low_mean"], 1 / 3)
    close(metrics["clip_ratio/region_mean"], 2 / 3)
    assert "kl" not in metrics


def test_kl_term_by_hand():
    # logprobs 0, ref - logprobs = 0.5 and -1: k3 = e^d - d - 1
    k3 = [math.exp(0.5) - 1.5, math.exp(-1.0)]
    config = GRPOLossConfig(beta=0.04)
    loss, terms = single_token_losses([0.0, 0.0], [0.0, 0.0], config,
                                      ref_logprobs=jnp.array([[0.5], [-1.0]]))
    close(terms["kl"][:, 0], k3)
    close(loss[:, 0], [0.04 * k for k in k3])
    mask = jnp.ones((2, 1))
    total, metrics = grpo.grpo_loss(jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.zeros(2), mask,
                                    grpo.batch_normaliser(mask), config,
                                    ref_logprobs=jnp.array([[0.5], [-1.0]]))
    close(metrics["kl"], sum(k3) / 2)
    close(total, 0.04 * sum(k3) / 2)


IS_MASK = jnp.array([[1.0, 1.0, 0.0]])
IS_OLD_MINUS_SAMPLER = jnp.array([[0.5, 1.0, -0.2]])


@pytest.mark.parametrize("mode, cap, low, expected", [
    ("token_truncate", 2.0, None, [[math.exp(0.5), 2.0, 1.0]]),  # masked token: exp(0) = 1
    ("token_mask", 2.0, None, [[math.exp(0.5), 0.0, 1.0]]),
    ("token_mask", 2.0, 1.7, [[0.0, 0.0, 0.0]]),
    ("sequence_truncate", 2.0, None, [[2.0]]),
    ("sequence_truncate", 5.0, None, [[math.exp(1.5)]]),
    ("sequence_mask", 2.0, None, [[0.0]]),
    ("sequence_mask", 5.0, None, [[math.exp(1.5)]])])
def test_importance_sampling_ratio_by_hand(mode, cap, low, expected):
    config = GRPOLossConfig(importance_sampling_correction=True, importance_sampling_mode=mode,
                            importance_sampling_cap=cap, importance_sampling_min=low)
    ratio = grpo.importance_sampling_ratio(IS_OLD_MINUS_SAMPLER, jnp.zeros((1, 3)), IS_MASK,
                                           config)
    close(ratio, expected)


def test_importance_sampling_weights_loss_and_metrics():
    # on-policy, A = 1: per-token loss -rho; rho = [e^0.5, 2.0] on the two real tokens
    config = GRPOLossConfig(importance_sampling_correction=True)
    logprobs = jnp.zeros((1, 3))
    loss, metrics = grpo.grpo_loss(logprobs, logprobs, jnp.ones(1), IS_MASK,
                                   grpo.batch_normaliser(IS_MASK), config,
                                   sampler_logprobs=-IS_OLD_MINUS_SAMPLER)
    close(loss, -(math.exp(0.5) + 2.0) / 2)
    prefix = "sampling/importance_sampling_ratio/"
    close([metrics[prefix + k] for k in ("min", "mean", "max")],
          [math.exp(0.5), (math.exp(0.5) + 2.0) / 2, 2.0])
    close(metrics["sampling/sampling_logp_difference/mean"], 0.75)
    close(metrics["sampling/sampling_logp_difference/max"], 1.0)


# ------------------------------------------------------------- loss vs plain-Python formulas


def python_loss(logprobs, old, ref, advantages, mask, loss_type, beta, eps_low, eps_high,
                max_len):
    """TRL's loss for one batch, from the formulas of its docs, in plain Python."""
    token_losses = []
    for lp_row, old_row, ref_row, a, m_row in zip(logprobs, old, ref, advantages, mask):
        row = []
        for lp, o, r, m in zip(lp_row, old_row, ref_row, m_row):
            w = math.exp(lp - o)
            clipped = min(max(w, 1 - eps_low), 1 + eps_high)
            loss = -min(w * a, clipped * a) + beta * (math.exp(r - lp) - (r - lp) - 1)
            row.append(loss * m)
        token_losses.append(row)
    n_seq = len(mask)
    n_tok = sum(sum(m_row) for m_row in mask)
    if loss_type == "grpo":
        return sum(sum(row) / max(sum(m_row), 1) for row, m_row in zip(token_losses, mask)) / n_seq
    if loss_type == "dr_grpo":
        return sum(map(sum, token_losses)) / (n_seq * max_len)
    return sum(map(sum, token_losses)) / max(n_tok, 1)


# 2 groups x 2 completions x 3 tokens; completion lengths 3, 2, 1, 0.
TINY_LOGPROBS = [[-0.3, -1.2, -0.7], [-2.0, -0.1, -0.5], [-0.9, -0.4, -1.5], [-1.1, -0.6, -0.2]]
TINY_OLD = [[-0.6, -1.0, -0.7], [-1.5, -0.4, -0.5], [-0.2, -0.4, -1.4], [-1.0, -0.6, -0.3]]
TINY_REF = [[-0.5, -1.3, -0.6], [-1.9, -0.3, -0.4], [-0.8, -0.6, -1.5], [-1.0, -0.5, -0.2]]
TINY_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]]
TINY_ADV = [0.9, -0.9, -0.6, 0.6]  # signs chosen so both clip sides act


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta, epsilon_high", [(0.0, None), (0.04, 0.28)])
def test_loss_matches_plain_python(loss_type, beta, epsilon_high):
    config = GRPOLossConfig(loss_type=loss_type, beta=beta, epsilon_high=epsilon_high,
                            max_completion_length=4)
    mask = jnp.array(TINY_MASK, jnp.float32)
    loss, _ = grpo.grpo_loss(jnp.array(TINY_LOGPROBS), jnp.array(TINY_OLD), jnp.array(TINY_ADV),
                             mask, grpo.batch_normaliser(mask), config,
                             ref_logprobs=jnp.array(TINY_REF) if beta else None)
    expected = python_loss(TINY_LOGPROBS, TINY_OLD, TINY_REF, TINY_ADV, TINY_MASK, loss_type,
                           beta, 0.2, epsilon_high or 0.2, 4)
    close(loss, expected)


def test_loss_jits_with_static_config():
    config = GRPOLossConfig(loss_type="grpo", beta=0.04)
    mask = jnp.array(TINY_MASK, jnp.float32)
    args = (jnp.array(TINY_LOGPROBS), jnp.array(TINY_OLD), jnp.array([1.0, -1.0, 0.5, 0.0]), mask,
            grpo.batch_normaliser(mask))
    eager, _ = grpo.grpo_loss(*args, config, ref_logprobs=jnp.array(TINY_REF))
    jitted, _ = jax.jit(grpo.grpo_loss, static_argnames="config")(
        *args, config=config, ref_logprobs=jnp.array(TINY_REF))
    close(jitted, eager)


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("config, kwargs, message", [
    (GRPOLossConfig(beta=0.1), {}, "beta=0.1 needs ref_logprobs"),
    (GRPOLossConfig(), {"ref_logprobs": jnp.zeros((4, 3))}, "beta == 0"),
    (GRPOLossConfig(importance_sampling_correction=True), {}, "needs sampler_logprobs"),
    (GRPOLossConfig(), {"sampler_logprobs": jnp.zeros((4, 3))}, "correction is off"),
    (GRPOLossConfig(beta=0.1), {"ref_logprobs": jnp.zeros((4, 2))}, "ref_logprobs must have"),
    (GRPOLossConfig(loss_type="dr_grpo", max_completion_length=2), {}, "max_completion_length=2"),
    (GRPOLossConfig(), {"advantages": jnp.zeros((4, 1))}, r"advantages must have shape \[4\]"),
    (GRPOLossConfig(), {"mask": jnp.zeros((4,))}, "mask must have the shape")])
def test_loss_rejects_bad_input(config, kwargs, message):
    args = {"logprobs": jnp.zeros((4, 3)), "old_logprobs": jnp.zeros((4, 3)),
            "advantages": ADV, "mask": MASK, "normaliser": grpo.batch_normaliser(MASK)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        grpo.grpo_loss(config=config, **args)


# ------------------------------------------------------------------- gradient accumulation

B, T, D, V = 8, 5, 3, 7


def toy_batch():
    """A toy policy logits = x @ W over a batch of 4 groups x 2 completions of up to 5 tokens."""
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (B, T, D))
    weights = jax.random.normal(keys[1], (D, V))
    tokens = jax.random.randint(keys[2], (B, T), 0, V)
    lengths = jnp.array([5, 1, 3, 4, 2, 5, 0, 3])
    mask = (jnp.arange(T)[None] < lengths[:, None]).astype(jnp.float32)
    rewards = jnp.array([1.0, 0.0, 0.2, 0.7, 0.5, 0.5, 0.0, 1.0])
    logprobs = policy_logprobs(weights, x, tokens)
    noise = 0.4 * jax.random.normal(keys[3], (3, B, T))
    return dict(x=x, tokens=tokens, mask=mask, advantages=grpo.group_advantages(rewards, 2)[0],
                old=logprobs + noise[0], ref=logprobs + noise[1], sampler=logprobs + noise[2]), \
        weights


def policy_logprobs(weights, x, tokens):
    logits = x @ weights                                                    # [B, T, V]
    return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]


def micro_batch_loss(weights, batch, rows, normaliser, config):
    pick = {k: v[rows] for k, v in batch.items()}
    logprobs = policy_logprobs(weights, pick["x"], pick["tokens"])
    return grpo.grpo_loss(logprobs, pick["old"], pick["advantages"], pick["mask"], normaliser,
                          config, ref_logprobs=pick["ref"] if config.beta else None,
                          sampler_logprobs=pick["sampler"] if config.importance_sampling_correction
                          else None)


def accumulated(weights, batch, splits, config):
    """Loss, gradient and metrics summed over `splits` micro-batches of rows."""
    normaliser = grpo.batch_normaliser(batch["mask"], len(splits))
    grad_fn = jax.jit(jax.value_and_grad(micro_batch_loss, has_aux=True), static_argnums=4)
    total_loss, total_grad, total_metrics = 0.0, 0.0, None
    for rows in splits:
        (loss, metrics), grad = grad_fn(weights, batch, rows, normaliser, config)
        total_loss, total_grad = total_loss + loss, total_grad + grad
        total_metrics = metrics if total_metrics is None else grpo.merge_metrics(total_metrics,
                                                                                 metrics)
    return total_loss, total_grad, total_metrics


SPLITS = {1: [np.arange(8)], 2: [np.arange(4), np.arange(4, 8)],
          4: [np.arange(i, i + 2) for i in range(0, 8, 2)],
          "uneven": [np.array([0, 1, 2]), np.array([3]), np.array([4, 5, 6, 7])]}


@pytest.mark.parametrize("config", [GRPOLossConfig(loss_type=t, max_completion_length=T)
                                    for t in LOSS_TYPES] + [
    GRPOLossConfig(beta=0.04, importance_sampling_correction=True),
    GRPOLossConfig(loss_type="grpo", beta=0.04, importance_sampling_correction=True,
                   importance_sampling_mode="sequence_mask", importance_sampling_cap=3.0)],
    ids=lambda c: f"{c.loss_type}-beta{c.beta}-is{c.importance_sampling_correction}")
def test_micro_batches_sum_to_the_full_batch(config):
    batch, weights = toy_batch()
    loss, grad, metrics = accumulated(weights, batch, SPLITS[1], config)
    assert float(jnp.abs(grad).max()) > 1e-3
    assert float(metrics["clip_ratio/region_mean"]) > 0  # clipping is active in this batch
    for key in (2, 4, "uneven"):
        split_loss, split_grad, split_metrics = accumulated(weights, batch, SPLITS[key], config)
        close(split_loss, loss)
        close(split_grad, grad)
        for name in metrics:
            close(split_metrics[name], metrics[name])


def test_bnpo_micro_batch_scope_is_trls_mean_of_micro_batch_means():
    batch, weights = toy_batch()
    trl = GRPOLossConfig(loss_type="bnpo", bnpo_scope="micro_batch")
    loss, _, _ = accumulated(weights, batch, SPLITS[2], trl)
    # TRL: each micro-batch's token mean divided by g = 2
    per_token, _ = grpo.per_token_loss(policy_logprobs(weights, batch["x"], batch["tokens"]),
                                       batch["old"], batch["advantages"], batch["mask"], trl)
    expected = 0.0
    for rows in SPLITS[2]:
        masked = np.asarray(per_token * batch["mask"])[rows]
        expected += masked.sum() / np.asarray(batch["mask"])[rows].sum() / 2
    close(loss, expected)
    # the two halves hold 13 and 10 tokens, so this differs from the batch token mean
    batch_mean, _, _ = accumulated(weights, batch, SPLITS[2], GRPOLossConfig(loss_type="bnpo"))
    assert abs(float(loss) - float(batch_mean)) > 1e-4


# ------------------------------------------------------------ metric merging, repetition


def test_merge_metrics():
    merged = grpo.merge_metrics({"a/min": 1.0, "a/max": 2.0, "a/mean": 3.0},
                                {"a/min": 0.0, "a/max": 5.0, "a/mean": 4.0})
    close([merged["a/min"], merged["a/max"], merged["a/mean"]], [0.0, 5.0, 7.0])
    with pytest.raises(ValueError, match="different names"):
        grpo.merge_metrics({"kl": 1.0}, {"loss": 1.0})


@pytest.mark.parametrize("ids, n, expected", [
    ([1, 2, 3, 4, 1, 2, 3, 4], 4, 1 / 5),   # 1234 2341 3412 4123 1234
    ([7] * 10, 4, 6 / 7),
    ([1, 2, 3, 4, 5, 6, 7, 8], 4, 0.0),
    ([1, 2, 3], 4, 0.0),
    ([1, 1, 2], 1, 1 / 3)])
def test_repeated_ngram_fraction(ids, n, expected):
    close(grpo.repeated_ngram_fraction(ids, n), expected)


def test_repeated_ngram_fractions_use_the_mask():
    ids = np.array([[3, 3, 3, 3, 3, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
    mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    close(grpo.repeated_ngram_fractions(ids, mask, 4), [0.5, 0.0])
    with pytest.raises(ValueError, match="n must be >= 1"):
        grpo.repeated_ngram_fraction([1, 2], 0)
    with pytest.raises(ValueError, match=r"mask \[7\]"):
        grpo.repeated_ngram_fractions(ids, mask[0], 4)


# ------------------------------------------------------------------------ TRL 1.16's options


def test_sequence_level_ratio_is_the_mean_log_ratio_of_the_sequence():
    logprobs = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    old = jnp.array([[-1.5, -2.0, -2.0], [-1.0, -2.0, -9.0]])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    log_w = grpo.log_importance_weights(logprobs, old, mask, "sequence")
    close(log_w, [[(0.5 + 0.0 - 1.0) / 3], [(0.0 + 1.0) / 2]])  # the masked 8 is left out
    close(grpo.log_importance_weights(logprobs, old, mask, "token"), logprobs - old)


def test_cispo_sapo_vespo_by_hand():
    # One token each: logprob -1, ratio w = e^0.5 (old -1.5) for cispo, w = 1 for sapo/vespo.
    logprobs, mask = jnp.array([[-1.0], [-1.0]]), jnp.ones((2, 1))
    cispo = GRPOLossConfig(loss_type="cispo", epsilon_high=1.2)
    loss, terms = grpo.per_token_loss(logprobs, logprobs + 0.5 * jnp.array([[-1.0], [1.0]]),
                                      jnp.array([1.0, -1.0]), mask, cispo)
    # -sg(min(w, 1.2)) A logp: w = e^0.5 > 1.2 capped; w = e^-0.5 kept.
    close(loss[:, 0], [-1.2 * 1.0 * -1.0, -math.exp(-0.5) * -1.0 * -1.0])
    assert terms["cispo_clipped"][:, 0].tolist() == [True, False]
    sapo = GRPOLossConfig(loss_type="sapo", sapo_temperature_pos=1.0, sapo_temperature_neg=2.0)
    loss, _ = grpo.per_token_loss(logprobs, logprobs, jnp.array([1.0, -1.0]), mask, sapo)
    close(loss[:, 0], [-(0.5 * 4 / 1.0) * 1.0, -(0.5 * 4 / 2.0) * -1.0])  # sigmoid(0) = 1/2
    vespo = GRPOLossConfig(loss_type="vespo")
    loss, terms = grpo.per_token_loss(logprobs, logprobs, jnp.array([1.0, -1.0]), mask, vespo)
    close(terms["vespo_phi"][:, 0], [1.0, 1.0])  # phi(1) = e^(lambda - lambda) = 1
    close(loss[:, 0], [-1.0 * -1.0, 1.0 * -1.0])


def test_vespo_weight_by_hand():
    # Sequence log-ratio 0.5 + 0.2 = 0.7 (the masked token is left out); A >= 0: k 2, lambda 3.
    log_ratio = jnp.array([[0.5, 0.2, 5.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    phi = grpo.vespo_weights(log_ratio, jnp.array([[1.0]]), mask, GRPOLossConfig(loss_type="vespo"))
    close(phi, [[math.exp(3.0 + 2.0 * 0.7 - 3.0 * math.exp(0.7))]])


def test_kl_bias_correction_multiplies_k3_by_the_ratio():
    config = GRPOLossConfig(beta=0.04, use_bias_correction_kl=True)
    _, terms = single_token_losses([0.5], [0.0], config, ref_logprobs=jnp.array([[0.0]]))
    # ref - logprobs = -0.5: k3 = e^-0.5 + 0.5 - 1, times w = e^0.5
    close(terms["kl"][:, 0], [(math.exp(-0.5) - 0.5) * math.exp(0.5)])


def test_off_policy_mask_by_hand():
    logprobs = jnp.array([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    sampling = jnp.array([[-0.5, -0.7], [-0.5, -0.7], [-1.0, -0.9]])  # mean gaps 0.4, 0.4, 0.05
    keep = grpo.off_policy_mask(logprobs, sampling, jnp.array([[1.0], [-1.0], [-1.0]]),
                                jnp.ones((3, 2)), threshold=0.1)
    close(keep, [[1.0], [0.0], [1.0]])  # A >= 0 is always kept


def test_luspo_averages_sequence_sums():
    # Per-token loss -A (ratio 1): rows of 2 and 1 tokens with A = 1 and 3 -> sums -2 and -3.
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = grpo.grpo_loss(jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.array([1.0, 3.0]), mask,
                             grpo.batch_normaliser(mask), GRPOLossConfig(loss_type="luspo"))
    close(loss, (-2.0 - 3.0) / 2)


def test_reward_std_is_undefined_with_fewer_than_two_rewards():
    nan = float("nan")
    _, stats = grpo.group_advantages(jnp.array([1.0, nan]), 2)
    assert math.isnan(float(stats["reward_std"]))
    assert float(stats["frac_reward_zero_std"]) == 0.0


def test_trl_1_16_defaults_and_every_loss_field_reach_the_loss_config():
    from arc_jax import session
    from arc_jax.config import default_config, trl_1_16_defaults
    from configs import barc_8b_grpo

    old = session.loss_config(default_config())
    new = session.loss_config(trl_1_16_defaults(default_config()))
    assert (old.use_bias_correction_kl, old.importance_sampling_correction,
            old.importance_sampling_mode, old.importance_sampling_cap) == (
                False, False, "token_truncate", 2.0)
    assert (new.use_bias_correction_kl, new.importance_sampling_correction,
            new.importance_sampling_mode, new.importance_sampling_cap,
            new.max_completion_length) == (True, True, "sequence_mask", 3.0, 512)
    reference = session.loss_config(barc_8b_grpo.get_config())
    assert (reference.loss_type, reference.bnpo_scope) == ("bnpo", "micro_batch")


def test_high_entropy_mask_keeps_tokens_at_or_above_the_quantile():
    entropies = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 9.0, 9.0, 9.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])  # 9s are padding
    # completion entropies 1..5: the 0.8 quantile is 4.2 (position 3.2), the 0.5 quantile 3
    np.testing.assert_array_equal(grpo.high_entropy_mask(entropies, mask, 0.8),
                                  [[False, False, False, False], [True, False, False, False]])
    np.testing.assert_array_equal(grpo.high_entropy_mask(entropies, mask, 0.5),
                                  [[False, False, True, True], [True, False, False, False]])
    np.testing.assert_array_equal(grpo.high_entropy_mask(entropies, mask, 0.0), mask > 0)
    assert not grpo.high_entropy_mask(entropies, jnp.zeros_like(mask), 0.5).any()


def test_top_entropy_quantile_removes_the_policy_loss_of_low_entropy_tokens():
    # one sequence, A = 1, ratio 1: each token's clipped loss is -1; rho = 0.5 keeps the two
    # tokens of highest entropy (quantile 0.5 of 1, 2, 3, 4 is 2.5), so the dapo loss is -2 / 4
    logprobs = jnp.zeros((1, 4))
    config = GRPOLossConfig(loss_type="dapo", top_entropy_quantile=0.5)
    mask = jnp.ones((1, 4))
    loss, metrics = grpo.grpo_loss(logprobs, logprobs, jnp.ones(1), mask,
                                   grpo.batch_normaliser(mask), config,
                                   entropies=jnp.array([[3.0, 1.0, 4.0, 2.0]]))
    assert float(loss) == pytest.approx(-0.5)
    assert float(metrics["entropy_mask/kept_fraction"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs the entropies"):
        grpo.grpo_loss(logprobs, logprobs, jnp.ones(1), mask, grpo.batch_normaliser(mask), config)
    with pytest.raises(ValueError, match="top_entropy_quantile must be in"):
        GRPOLossConfig(top_entropy_quantile=1.5)


def test_soft_overlong_penalty_by_hand_and_as_trls():
    # max 10 tokens, cache 4: free up to 6, then -1/4 per token, -1 at 10 and beyond
    lengths = np.array([1, 6, 7, 9, 10, 11])
    expected = [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    np.testing.assert_allclose(grpo.soft_overlong_penalty(lengths, 10, 4), expected)
    np.testing.assert_array_equal(grpo.soft_overlong_penalty(lengths, 10, 0), np.zeros(6))
    from trl.rewards import get_soft_overlong_punishment

    trl = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    np.testing.assert_allclose(trl(completion_ids=[[0] * n for n in lengths]), expected)
    with pytest.raises(ValueError, match="soft_punish_cache must be in"):
        GRPOLossConfig(max_completion_length=10, soft_punish_cache=11)

"""Pieces of the GRPO loop that need no model: batch assembly, metrics, the step plan."""

import json
import types

import numpy as np
import pytest

from arc_jax import episode, session
from arc_jax.config import ConfigError, default_config, validate
from arc_jax.rollout import Completion, PromptBuckets
from arc_jax.train import grpo
from arc_jax.train import loop

PAD, EOT = 0, 9


class _Record:
    def __init__(self, reward, parsed=True, valid=True, solved=False, shown_only=False):
        self.reward, self.parsed, self.valid, self.solved = reward, parsed, valid, solved
        self.shown_only = shown_only


def _completion(tokens, finished=True):
    return Completion(tuple(tokens), (-0.5,) * len(tokens), (-0.25,) * len(tokens),
                      "stop" if finished else "length")


def _groups():
    return [
        episode.Group(None, [1, 2, 3], [_completion([5, EOT]), _completion([6, 7, 8], finished=False)],
                   [_Record(10.0, solved=True), _Record(0.0, valid=False)]),
        episode.Group(None, [1, 2], [_completion([4, 4, EOT]), _completion([EOT])],
                   [_Record(2.0, shown_only=True), _Record(2.0)]),
    ]


def test_group_batch_pads_masks_and_centres_rewards():
    loss = grpo.GRPOLossConfig(scale_rewards="none", mask_truncated_completions=True)
    batch, stats = loop.group_batch(_groups(), pad_id=PAD, eos_ids=(EOT,), loss=loss,
                                    buckets=PromptBuckets(minimum=4),
                                    completion_buckets=PromptBuckets(minimum=4, bits=0, maximum=4))
    np.testing.assert_array_equal(batch.prompt_ids, [[PAD, 1, 2, 3], [PAD, PAD, 1, 2]])
    np.testing.assert_array_equal(batch.prompt_mask, [[0, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(batch.completion_ids[0], [[5, EOT, PAD, PAD], [6, 7, 8, PAD]])
    # Up to and including the first EOT; the truncated completion is masked out entirely.
    np.testing.assert_array_equal(batch.completion_mask[0], [[1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.completion_mask[1], [[1, 1, 1, 0], [1, 0, 0, 0]])
    # Rewards (10, 0) and (2, 2), centred by group means 5 and 2.
    np.testing.assert_allclose(batch.advantages, [[5.0, -5.0], [0.0, 0.0]])
    assert stats["frac_reward_zero_std"] == 0.5
    assert batch.old_logprobs is None
    # The sampler's log-probs, right-padded with 0 (for importance sampling and the agreement
    # metrics).
    np.testing.assert_array_equal(batch.sampler_logprobs[1, 0], [-0.25, -0.25, -0.25, 0.0])


def test_soft_overlong_penalty_shapes_the_rewards_before_the_advantages():
    # max 3 tokens, the last 2 penalised: lengths (2, 3) and (3, 1) get (-0.5, -1) and (-1, 0),
    # so rewards (10, 0), (2, 2) become (9.5, -1), (1, 2): centred by 4.25 and 1.5.
    loss = grpo.GRPOLossConfig(scale_rewards="none", max_completion_length=3, soft_punish_cache=2)
    batch, stats = loop.group_batch(_groups(), pad_id=PAD, eos_ids=(EOT,), loss=loss,
                                    buckets=PromptBuckets(minimum=4),
                                    completion_buckets=PromptBuckets(minimum=4, bits=0, maximum=4))
    np.testing.assert_allclose(batch.advantages, [[5.25, -5.25], [-0.5, 0.5]])
    assert stats["reward/overlong_penalty"] == pytest.approx(-2.5 / 4)
    assert stats["frac_reward_zero_std"] == 0.0


def test_rollout_metrics_by_hand():
    metrics = loop.rollout_metrics(_groups())
    assert metrics["reward/mean"] == pytest.approx(14.0 / 4)
    assert metrics["reward/min"] == 0.0 and metrics["reward/max"] == 10.0
    assert metrics["solved_ratio"] == pytest.approx(0.25)
    assert metrics["shown_only_ratio"] == pytest.approx(0.25)
    assert metrics["valid_outputs_ratio"] == pytest.approx(0.75)
    assert metrics["truncated_ratio"] == pytest.approx(0.25)
    assert metrics["completions/mean_length"] == pytest.approx((2 + 3 + 3 + 1) / 4)
    assert metrics["completions/max_length"] == 3


def test_step_plan_follows_trl_batch_arithmetic():
    config = default_config()
    config.num_generations, config.generation_batch_size = 8, 32
    config.num_train_epochs = 2.0
    plan = loop.step_plan(config, num_tasks=10)
    assert (plan.prompts_per_step, plan.total_steps) == (4, 5)  # ceil(2 * 10 / 4)
    assert plan.max_prompt_length == 9700 - 1024
    config.max_steps = 7
    assert loop.step_plan(config, 10).total_steps == 7
    config.generation_batch_size = 12
    with pytest.raises(ValueError, match="generation_batch_size=12 must be a multiple of "
                                         "config.num_generations=8"):
        loop.step_plan(config, 10)


def test_mesh_shape_is_checked():
    config = default_config()
    assert session.make_mesh(config).shape == {"data": 1, "fsdp": 1, "tensor": 1}
    config.mesh.data = 2
    with pytest.raises(ValueError, match=r"1 devices do not split into axes of 2"):
        session.make_mesh(config)
    config.mesh.fsdp = 1
    with pytest.raises(ValueError, match=r"needs 2 devices, found 1"):
        session.make_mesh(config)


def test_numerics_from_config():
    config = default_config()
    numerics = session.numerics(config)  # CPU: "auto" is XLA's attention
    assert (numerics.attention_impl, numerics.remat_policy) == ("xla", "nothing_saveable")
    config.remat_policy = ""
    assert session.numerics(config).remat_policy is None
    config.remat_policy = "save_everything_please"
    with pytest.raises(ValueError, match="config.remat_policy='save_everything_please'"):
        session.numerics(config)
    config.remat_policy = ""
    config.attention_impl = "flash"  # refused with the other settings, before any work
    with pytest.raises(ConfigError, match="config.attention_impl='flash'"):
        validate(config)


def test_one_bucket_pads_every_admitted_prompt_to_the_longest():
    buckets = PromptBuckets(bits=0, maximum=8676)
    assert {buckets(n) for n in (1, 700, 4097, 8676)} == {8704}
    assert buckets(9000) == 16384  # longer than admitted (evaluation): powers of two
    capped = PromptBuckets(bits=2, maximum=8676)
    assert [capped(n) for n in (10, 700, 4097, 6145, 8676)] == [64, 768, 6144, 8192, 8704]
    with pytest.raises(ValueError, match="bits=0"):
        PromptBuckets(bits=0)


def test_a_mesh_that_does_not_divide_the_heads_or_the_prompts_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336}))
    mesh = lambda data, tensor: types.SimpleNamespace(shape={"data": data, "tensor": tensor})  # noqa: E731
    session.check_mesh(mesh(2, 8), str(tmp_path), prompts_per_step=4)
    with pytest.raises(ConfigError, match=r"mesh.tensor=16 does not divide the model's "
                                          r"num_key_value_heads=8"):
        session.check_mesh(mesh(1, 16), str(tmp_path), prompts_per_step=4)
    with pytest.raises(ConfigError, match=r"mesh.data=8 does not divide the 4 prompts of a step"):
        session.check_mesh(mesh(8, 1), str(tmp_path), prompts_per_step=4)


def _scripted(batches):
    """sample(count, batch) returning the scripted groups of each batch (reward lists), and
    the calls it got."""
    calls = []

    def sample(count, batch):
        calls.append((count, batch))
        return [episode.Group(None, [1], [], [_Record(r) for r in rewards])
                for rewards in batches[batch][:count]]
    return sample, calls


def test_dynamic_sampling_draws_again_for_groups_without_signal():
    sample, calls = _scripted([[[1, 1], [0, 5], [2, 2]], [[3, 3], [0, 1]], [[4, 0]]])
    groups, counts = loop.fill_with_signal(sample, 3, max_batches=4, drop_equal=True)
    # batch 0 keeps [0, 5]; batch 1 (2 more wanted) keeps [0, 1]; batch 2 (1 more) keeps [4, 0]
    assert [[r.reward for r in g.records] for g in groups] == [[0, 5], [0, 1], [4, 0]]
    assert calls == [(3, 0), (2, 1), (1, 2)]
    assert counts == {"batches": 3, "groups_sampled": 6, "groups_dropped": 3,
                      "groups_without_signal": 0}


def test_dynamic_sampling_fills_with_dropped_groups_at_its_bound():
    sample, calls = _scripted([[[1, 1], [0, 5]], [[3, 3]]])
    groups, counts = loop.fill_with_signal(sample, 2, max_batches=2, drop_equal=True)
    assert [[r.reward for r in g.records] for g in groups] == [[0, 5], [1, 1]]
    assert calls == [(2, 0), (1, 1)] and counts["groups_without_signal"] == 1


def test_without_dynamic_sampling_one_batch_is_used_as_drawn():
    sample, calls = _scripted([[[1, 1], [0, 5]]])
    groups, counts = loop.fill_with_signal(sample, 2, max_batches=1, drop_equal=False)
    assert [[r.reward for r in g.records] for g in groups] == [[1, 1], [0, 5]]
    assert calls == [(2, 0)] and counts["groups_dropped"] == 0

"""Collapse guard: hand-written metric sequences and the verdicts the module docstring promises."""

import json
import logging

import pytest

from arc_jax.train.collapse import CollapseConfig, CollapseGuard, Verdict


def m(truncated, repetition):
    return {"truncated_ratio": truncated, "repetition/4gram": repetition, "reward/mean": 0.1}


def run(guard, sequence):
    return [guard.update(step, metrics) for step, metrics in sequence]


def test_rollback_after_patience_bad_steps_then_stop_when_no_rollback_left(caplog):
    guard = CollapseGuard(CollapseConfig(patience=3, action="rollback", rollback_lr_factor=0.5,
                                         max_rollbacks=1))
    sequence = [
        (10, m(0.1, 0.9)),   # only repetition high: healthy
        (20, m(0.6, 0.6)),   # bad 1
        (30, m(0.7, 0.7)),   # bad 2
        (40, m(0.1, 0.1)),   # healthy: streak resets
        (50, m(0.5, 0.5)),   # at the thresholds counts as bad
        (60, m(0.9, 0.8)),
        (70, m(1.0, 0.6)),   # third bad in a row: collapse, roll back before step 40's state
    ]
    expected = [
        Verdict(),
        Verdict(streak=1),
        Verdict(streak=2),
        Verdict(),
        Verdict(streak=1),
        Verdict(streak=2),
        Verdict(collapsed=True, rollback=True, streak=0, rollback_to=39, lr_scale=0.5),
    ]
    with caplog.at_level(logging.WARNING):
        assert run(guard, sequence) == expected
    assert "TRAINING COLLAPSE at step 70" in caplog.text
    assert "truncated_ratio=1.000" in caplog.text and "repetition/4gram=0.600" in caplog.text
    assert guard.lr_scale == 0.5

    # Training resumed from a checkpoint <= 39 with the lower rate; it collapses again.
    again = [(40, m(0.9, 0.9)), (50, m(0.9, 0.9)), (60, m(0.9, 0.9))]
    assert run(guard, again) == [
        Verdict(streak=1, lr_scale=0.5),
        Verdict(streak=2, lr_scale=0.5),
        Verdict(collapsed=True, stop=True, streak=3, lr_scale=0.5),
    ]
    assert "no rollback left" in caplog.text


def test_second_rollback_without_a_healthy_step_returns_to_the_same_state():
    guard = CollapseGuard(CollapseConfig(patience=2, action="rollback", rollback_lr_factor=0.5,
                                         max_rollbacks=2))
    sequence = [(5, m(0.0, 0.0)), (10, m(0.9, 0.9)), (15, m(0.9, 0.9)),
                (10, m(0.9, 0.9)), (15, m(0.9, 0.9))]
    assert run(guard, sequence) == [
        Verdict(),
        Verdict(streak=1),
        Verdict(collapsed=True, rollback=True, rollback_to=4, lr_scale=0.5),
        Verdict(streak=1, lr_scale=0.5),
        Verdict(collapsed=True, rollback=True, rollback_to=4, lr_scale=0.25),
    ]


def test_collapse_with_no_healthy_step_stops():
    guard = CollapseGuard(CollapseConfig(patience=2, action="rollback"))
    assert run(guard, [(1, m(1.0, 1.0)), (2, m(1.0, 1.0))]) == [
        Verdict(streak=1), Verdict(collapsed=True, stop=True, streak=2)]


def test_warn_action_reports_every_collapsed_step_and_never_rolls_back():
    guard = CollapseGuard(CollapseConfig(patience=2, action="warn"))
    sequence = [(1, m(0.8, 0.8)), (2, m(0.8, 0.8)), (3, m(0.8, 0.8)), (4, m(0.2, 0.9))]
    assert run(guard, sequence) == [
        Verdict(streak=1),
        Verdict(collapsed=True, streak=2),
        Verdict(collapsed=True, streak=3),
        Verdict(),
    ]


def test_zero_threshold_watches_only_the_other_metric():
    guard = CollapseGuard(CollapseConfig(truncated_ratio_threshold=0.3, repetition_threshold=0.0,
                                         patience=1))
    assert run(guard, [(1, m(0.2, 0.0)), (2, m(0.3, 0.0))]) == [
        Verdict(), Verdict(collapsed=True, streak=1)]


def test_disabled_guard_needs_no_metrics():
    guard = CollapseGuard(CollapseConfig(enabled=False))
    assert guard.update(1, {}) == Verdict()


def test_state_dict_round_trip_gives_the_same_verdicts():
    config = CollapseConfig(patience=3, action="rollback", max_rollbacks=2)
    sequence = [(1, m(0.0, 0.0)), (2, m(0.9, 0.9)), (3, m(0.9, 0.9)), (4, m(0.9, 0.9)),
                (2, m(0.9, 0.9)), (3, m(0.9, 0.9)), (4, m(0.0, 0.0)), (5, m(0.9, 0.9)),
                (6, m(0.9, 0.9)), (7, m(0.9, 0.9))]
    whole = run(CollapseGuard(config), sequence)
    for split in range(len(sequence)):
        first = CollapseGuard(config)
        head = run(first, sequence[:split])
        resumed = CollapseGuard(config)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert head + run(resumed, sequence[split:]) == whole, split
    assert [v.rollback_to for v in whole if v.rollback] == [0, 3]


def test_bad_metrics_are_named():
    guard = CollapseGuard(CollapseConfig())
    with pytest.raises(KeyError, match=r"'repetition/4gram' missing at step 7"):
        guard.update(7, {"truncated_ratio": 0.1})
    with pytest.raises(ValueError, match=r"'truncated_ratio' at step 8 is nan"):
        guard.update(8, m(float("nan"), 0.1))


@pytest.mark.parametrize("field,value", [
    ("truncated_ratio_threshold", 1.5), ("repetition_threshold", -0.1), ("patience", 0),
    ("action", "panic"), ("rollback_lr_factor", 0.0), ("max_rollbacks", -1)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"CollapseConfig.{field}"):
        CollapseConfig(**{field: value})


def test_load_state_dict_rejects_foreign_state():
    with pytest.raises(ValueError, match="collapse guard state must have keys"):
        CollapseGuard(CollapseConfig()).load_state_dict({"streak": 1})


@pytest.mark.slow
def test_the_trainer_rolls_a_collapse_back_and_finishes_at_half_the_learning_rate(tmp_path):
    # The whole training loop on a tiny Llama (real tokenizer, pool, update, checkpoints), with a
    # scripted engine that writes programs, except in its 5th and 6th calls (steps 5 and 6),
    # where every completion is one repeated line cut at the token limit.
    import pathlib

    import scripted_engine
    from conftest import save_tiny_llama3_policy

    from arc_jax.config import default_config
    from arc_jax.train import loop
    from arc_jax.train.checkpoint import Checkpointer

    config = default_config()
    config.model_path = save_tiny_llama3_policy(tmp_path / "policy")
    config.workdir = str(tmp_path / "run")
    config.dtype = "float32"
    config.max_tasks = 2
    config.max_seq_length, config.max_completion_length = 4096, 48
    config.prompt.style, config.prompt.prefill_assistant = "arc25", True
    config.lora.rank = 4
    config.num_generations, config.generation_batch_size = 2, 2
    config.max_steps, config.save_steps = 9, 2
    config.learning_rate = 1e-3
    config.tensorboard = config.compilation_cache = False
    config.execution.num_workers = 2
    config.collapse.action, config.collapse.patience = "rollback", 2

    engines = []

    def make_engine(config, model, tokenizer, buckets, model_path):
        engines.append(scripted_engine.ScriptedEngine(tokenizer, collapse_calls=(5, 6)))
        return engines[0]

    loop.run(config, make_engine=make_engine)

    rows = [json.loads(line) for line in (pathlib.Path(config.workdir) / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, 10))  # steps 3-6 were dropped and redone
    assert engines[0].calls == 9 + 4  # steps 3, 4, 5, 6 ran twice
    assert max(r["truncated_ratio"] for r in rows) < 0.5  # the collapsed steps are gone
    # Steps 5 and 6 collapsed; the newest healthy state is 4 - 1 = 3, so checkpoint 2 came back
    # and the run carried on from step 3 at half the learning rate.
    assert [r["learning_rate"] for r in rows[:2]] == pytest.approx([1e-3, 1e-3])
    assert all(r["learning_rate"] == pytest.approx(5e-4) for r in rows[2:])
    checkpoints = pathlib.Path(config.workdir) / "checkpoints"
    with Checkpointer(checkpoints, max_to_keep=None) as checkpointer:
        assert checkpointer.all_steps()[-1] == 9
    meta = json.loads((checkpoints / "9" / "meta" / "metadata").read_text())
    assert meta["lr_scale"] == 0.5 and meta["guard"]["rollbacks"] == 1

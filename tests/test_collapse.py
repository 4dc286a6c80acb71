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

"""Reward schemes on hand-made outcomes, and scoring completions through the real pool.

Reward values are computed by hand in the comments; the scoring tests run real programs
in the sandboxed execution pool on hand-made tasks.
"""

import numpy as np
import pytest

from arc_jax.data import Augmentation, Pair, Task
from arc_jax.execution import ExecutionConfig, ExecutionPool, ExecutionResult
from arc_jax.rewards import (
    PARSE_ERROR,
    SCHEMES,
    CompletionRecord,
    PartitionGrade,
    no_code_record,
    record_from_result,
    reward,
    reward_from_record,
    score_completions,
)


def grid(rows):
    return np.array(rows, dtype=np.int64)


def grades(train, test):
    return PartitionGrade(tuple(train)), None if test is None else PartitionGrade(tuple(test))


# --- reward schemes ----------------------------------------------------------------------


def test_the_four_schemes_are_registered():
    assert sorted(SCHEMES) == ["arc-unseen", "arc-v0", "arc-v1", "arc-v2-no-pixel-score"]


@pytest.mark.parametrize(
    "scheme, no_code, fails, partial, partial_hidden_test, solved",
    [
        # partial: train pixel scores (1, 0.5), test (1): cg = 2/3, px = 2.5/3
        #   1 + 8 * 2/3 + 2.5/3 = 43/6;  1 + 9 * 2/3 = 7.
        # partial_hidden_test: train only: cg = 1/2, px = 3/4
        #   1 + 4 + 0.75 = 5.75;  1 + 4.5 = 5.5.
        ("arc-v0", -1.0, 0.0, 43 / 6, 5.75, 10.0),
        ("arc-v1", 0.0, 0.0, 43 / 6, 5.75, 10.0),
        ("arc-v2-no-pixel-score", 0.0, 0.0, 7.0, 5.5, 10.0),
        # arc-unseen grades the test grid alone (right: 1 + 8 + 1); hidden test: 1.
        ("arc-unseen", 0.0, 0.0, 10.0, 1.0, 10.0),
    ],
)
def test_reward_values(scheme, no_code, fails, partial, partial_hidden_test, solved):
    def value(parsed, valid, train, test):
        return reward(scheme, parsed=parsed, valid=valid, train=PartitionGrade(train),
                      test=None if test is None else PartitionGrade(test))

    assert value(False, False, (0.0, 0.0), (0.0,)) == no_code
    assert value(True, False, (0.0, 0.0), (0.0,)) == fails
    assert value(True, True, (1.0, 0.5), (1.0,)) == pytest.approx(partial)
    assert value(True, True, (1.0, 0.5), None) == pytest.approx(partial_hidden_test)
    assert value(True, True, (1.0, 1.0), (1.0,)) == solved
    # A valid program with nothing right still gets the 1 for running.
    assert value(True, True, (0.0, 0.0), (0.0,)) == 1.0


def test_reward_from_record_rescoring_with_another_scheme():
    train, test = grades((1.0, 0.25), (0.0,))
    record = CompletionRecord(
        code="x = 1", error_type=None, error_message="", train_outputs=(), test_outputs=(),
        train=train, test=test, fingerprint="f", reward=0.0,
    )
    # cg = 1/3, px = 1.25/3: arc-v1 = 1 + 8/3 + 1.25/3 = 49/12; arc-v2 = 1 + 3 = 4.
    assert reward_from_record(record, "arc-v1") == pytest.approx(49 / 12)
    assert reward_from_record(record, "arc-v2-no-pixel-score") == pytest.approx(4.0)


def test_unknown_scheme_names_the_known_ones():
    train, test = grades((1.0,), (1.0,))
    with pytest.raises(ValueError, match=r"unknown reward scheme 'arc-v9'; expected one of \['arc-unseen', 'arc-v0', 'arc-v1'"):
        reward("arc-v9", parsed=True, valid=True, train=train, test=test)


# --- grading execution results -----------------------------------------------------------

# Two train pairs and one test pair; the rule is "flip left-right".
FLIP_TASK = Task(
    id="fliptask",
    train=(
        Pair(grid([[1, 2, 0]]), grid([[0, 2, 1]])),
        Pair(grid([[3, 0], [0, 4]]), grid([[0, 3], [4, 0]])),
    ),
    test=(Pair(grid([[5, 6], [7, 8]]), grid([[6, 5], [8, 7]])),),
)
HIDDEN_TASK = Task(id="hidden", train=FLIP_TASK.train, test=(Pair(grid([[5, 6]]), None),))


def result(outputs, error_type=None):
    return ExecutionResult(outputs=tuple(outputs), error_type=error_type,
                           error_message="" if error_type is None else "it failed",
                           stdout="", duration_s=0.01)


def test_record_from_a_partly_right_result():
    # Train 1 exact; train 2 is [[3, 0], [0, 4]] vs expected [[0, 3], [4, 0]]: 0 of 4 cells;
    # test exact. cg = 2/3, px = 2/3: arc-v1 = 1 + 16/3 + 2/3 = 7.
    outputs = [grid([[0, 2, 1]]), grid([[3, 0], [0, 4]]), grid([[6, 5], [8, 7]])]
    record = record_from_result("code", result(outputs), FLIP_TASK, scheme="arc-v1")
    assert record.valid and record.parsed
    assert record.train.pixel_scores == (1.0, 0.0)
    assert record.test.pixel_scores == (1.0,)
    assert record.reward == pytest.approx(7.0)
    assert len(record.train_outputs) == 2 and len(record.test_outputs) == 1
    assert record.fingerprint is not None


def test_a_failed_result_scores_zero_even_with_some_right_outputs():
    outputs = [grid([[0, 2, 1]]), None, grid([[6, 5], [8, 7]])]
    record = record_from_result("code", result(outputs, "Exception"), FLIP_TASK, scheme="arc-v1")
    assert not record.valid
    assert record.train.pixel_scores == (0.0, 0.0) and record.test.pixel_scores == (0.0,)
    assert record.reward == 0.0 and record.fingerprint is None
    np.testing.assert_array_equal(record.train_outputs[0], grid([[0, 2, 1]]))  # kept for inspection


def test_no_code_record():
    record = no_code_record(FLIP_TASK, "arc-v0")
    assert not record.parsed and record.error_type == PARSE_ERROR
    assert record.reward == -1.0
    assert record.train_outputs == (None, None)


def test_hidden_test_outputs_grade_train_only():
    outputs = [grid([[0, 2, 1]]), grid([[0, 3], [4, 0]]), grid([[6, 5]])]
    record = record_from_result("code", result(outputs), HIDDEN_TASK, scheme="arc-v1")
    assert record.test is None
    assert record.reward == 10.0  # every graded (train) grid is right


def test_augmented_outputs_are_reverted_before_grading():
    # Outputs as a correct program gives them on the augmented inputs: apply the
    # augmentation to the expected outputs. Reverted, they match the original task.
    augmentation = Augmentation(hflip=True, n_rot90=1, colour_map=(0, 2, 3, 4, 5, 6, 7, 8, 9, 1))
    outputs = [augmentation.apply_grid(p.output) for p in FLIP_TASK.train + FLIP_TASK.test]
    record = record_from_result("code", result(outputs), FLIP_TASK, augmentation, scheme="arc-v1")
    assert record.reward == 10.0
    np.testing.assert_array_equal(record.test_outputs[0], grid([[6, 5], [8, 7]]))
    # Not reverted, the same outputs are wrong for the original task.
    assert record_from_result("code", result(outputs), FLIP_TASK, scheme="arc-v1").reward < 10.0


def test_partly_hidden_test_outputs_are_an_error():
    task = Task(id="mixed", train=FLIP_TASK.train, test=(FLIP_TASK.test[0], Pair(grid([[5, 6]]), None)))
    outputs = [grid([[0, 2, 1]]), grid([[0, 3], [4, 0]]), grid([[6, 5], [8, 7]]), grid([[6, 5]])]
    with pytest.raises(ValueError, match=r"task mixed: test outputs \[1\] are missing but others are given"):
        record_from_result("code", result(outputs), task)


def test_wrong_number_of_outputs_is_an_error():
    with pytest.raises(ValueError, match="task fliptask: execution returned 2 outputs for 3 inputs"):
        record_from_result("code", result([grid([[1]]), grid([[1]])]), FLIP_TASK)


# --- scoring through the real execution pool ---------------------------------------------

FLIP = "```python\nimport numpy as np\n\ndef transform(input_grid):\n    return np.fliplr(input_grid)\n```"
IDENTITY = "```python\ndef transform(input_grid):\n    return input_grid\n```"
CRASHES = "```python\ndef transform(input_grid):\n    raise RuntimeError('nope')\n```"
TRUNCATED = "```python\ndef transform(input_grid):\n    return inp"


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(ExecutionConfig(num_workers=2, timeout_s=5.0)) as pool:
        yield pool


def test_score_completions_on_a_group(pool):
    records = score_completions(pool, [FLIP, IDENTITY, CRASHES, TRUNCATED], FLIP_TASK, scheme="arc-v0")
    flip, identity, crashes, truncated = records
    assert flip.valid and flip.reward == 10.0
    # Identity: train 1 [[1,2,0]] vs [[0,2,1]] 1/3; train 2 0/4; test 0/4.
    # cg = 0, px = (1/3) / 3 = 1/9: reward 1 + 1/9.
    assert identity.valid and identity.reward == pytest.approx(1 + 1 / 9)
    assert crashes.parsed and crashes.error_type == "Exception" and crashes.reward == 0.0
    assert not truncated.parsed and truncated.reward == -1.0
    assert flip.fingerprint != identity.fingerprint


# Copies the prompt: the shown train output for a shown train input, the input otherwise.
LOOKUP = """```python
import numpy as np

SHOWN = [([[1, 2, 0]], [[0, 2, 1]]), ([[3, 0], [0, 4]], [[0, 3], [4, 0]])]

def transform(input_grid):
    for shown_input, shown_output in SHOWN:
        if np.array_equal(input_grid, shown_input):
            return np.array(shown_output)
    return input_grid
```"""


def test_copying_the_prompt_earns_no_more_than_the_identity_under_arc_unseen(pool):
    lookup, identity, flip = score_completions(pool, [LOOKUP, IDENTITY, FLIP], FLIP_TASK,
                                               scheme="arc-unseen")
    # Test grid [[5, 6], [7, 8]] vs [[6, 5], [8, 7]]: both the lookup and the identity get
    # 0 of 4 pixels, so 1 + 8 * 0 + 0; the flip gets every unseen grid: 1 + 8 + 1.
    assert lookup.reward == identity.reward == 1.0
    assert flip.reward == 10.0
    assert lookup.shown_only and not identity.shown_only and not flip.shown_only
    # Under the reference scheme the lookup earns 1 + 8 * 2/3 + (1 + 1 + 0) / 3 = 7.33.
    [reference] = score_completions(pool, [LOOKUP], FLIP_TASK, scheme="arc-v1")
    assert reference.reward == pytest.approx(1 + 16 / 3 + 2 / 3)


def test_arc_unseen_gives_a_valid_prediction_1_when_the_test_outputs_are_hidden(pool):
    [flip] = score_completions(pool, [FLIP], HIDDEN_TASK, scheme="arc-unseen")
    assert flip.valid and flip.reward == 1.0 and not flip.shown_only


def test_score_completions_with_augmentation_runs_augmented_inputs(pool):
    # A left-right flip commutes with recolouring and with a left-right flip, so the flip
    # program solves the augmented task and its reverted outputs match the original task.
    augmentation = Augmentation(hflip=True, n_rot90=0, colour_map=(0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
    [flip] = score_completions(pool, [FLIP], FLIP_TASK, augmentation)
    assert flip.reward == 10.0
    np.testing.assert_array_equal(flip.test_outputs[0], grid([[6, 5], [8, 7]]))
    # A program that hard-codes the original test answer is right only without augmentation.
    constant = "```python\nimport numpy as np\ndef transform(g):\n    return np.array([[6, 5], [8, 7]])\n```"
    [plain] = score_completions(pool, [constant], FLIP_TASK)
    [augmented] = score_completions(pool, [constant], FLIP_TASK, augmentation)
    assert plain.test.is_correct and not augmented.test.is_correct


def test_score_completions_rejects_an_unknown_scheme_before_running(pool):
    with pytest.raises(ValueError, match="unknown reward scheme 'v1'"):
        score_completions(pool, [FLIP], FLIP_TASK, scheme="v1")

"""Pixel score, partition grades, fingerprints, per-task metrics, pass@k and the table.

Expected values are worked out by hand in the comments next to them.
"""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from arc_jax.rewards import (
    CompletionRecord,
    PartitionGrade,
    error_counts,
    fingerprint,
    format_table,
    grade_partition,
    mean_metrics,
    metric_columns,
    pass_at_k,
    pixel_score,
    task_metrics,
)


def grid(rows):
    return np.array(rows, dtype=np.int64)


# --- pixel score -------------------------------------------------------------------------


def test_pixel_score_same_shape_is_fraction_of_equal_cells():
    # 2 of 4 cells equal.
    assert pixel_score(grid([[1, 2], [3, 4]]), grid([[1, 0], [3, 0]])) == 0.5
    assert pixel_score(grid([[1, 2], [3, 4]]), grid([[1, 2], [3, 4]])) == 1.0


def test_pixel_score_smaller_prediction_inside_expected():
    # [[2, 3], [5, 6]] fits at column offset 1: 4 matches; bounding box 2x3 = 6 cells.
    assert pixel_score(grid([[1, 2, 3], [4, 5, 6]]), grid([[2, 3], [5, 6]])) == pytest.approx(4 / 6)
    # A single cell equal to the bottom-right one: 1 match over a 2x2 box.
    assert pixel_score(grid([[1, 2], [3, 4]]), grid([[4]])) == 0.25


def test_pixel_score_best_offset_overhangs_the_prediction():
    # The prediction's last column (1, 3) lines up with the expected first column (1, 3)
    # only when the expected grid sticks out to the right of the prediction; no offset
    # matches more than these 2 cells. Bounding box 3x3 = 9 cells.
    expected = grid([[1, 2], [3, 4]])
    predicted = grid([[9, 9, 1], [9, 9, 3], [9, 9, 9]])
    assert pixel_score(expected, predicted) == pytest.approx(2 / 9)
    assert pixel_score(predicted, expected) == pytest.approx(2 / 9)


def test_pixel_score_no_common_colour_and_missing_prediction():
    assert pixel_score(grid([[1]]), grid([[2, 2]])) == 0.0
    assert pixel_score(grid([[1]]), None) == 0.0


def test_pixel_score_rejects_non_grids():
    with pytest.raises(ValueError, match=r"predicted grid must be a non-empty 2-D array, got shape \(3,\)"):
        pixel_score(grid([[1]]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected grid must be a non-empty 2-D array, got shape \(0, 0\)"):
        pixel_score(np.zeros((0, 0), dtype=np.int64), grid([[1]]))


def _brute_force_pixel_score(expected, predicted):
    """Straight from the definition: try every offset, count matches in the overlap."""
    (h1, w1), (h2, w2) = expected.shape, predicted.shape
    if (h1, w1) == (h2, w2):
        return float(np.mean(expected == predicted))
    best = 0
    for dy in range(-h2 + 1, h1):
        for dx in range(-w2 + 1, w1):
            matches = 0
            for i in range(h2):
                for j in range(w2):
                    y, x = i + dy, j + dx
                    if 0 <= y < h1 and 0 <= x < w1 and expected[y, x] == predicted[i, j]:
                        matches += 1
            best = max(best, matches)
    return best / (max(h1, h2) * max(w1, w2))


def test_pixel_score_agrees_with_the_definition_on_random_grids():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shapes = rng.integers(1, 6, size=4)
        expected = rng.integers(0, 3, size=shapes[:2])
        predicted = rng.integers(0, 3, size=shapes[2:])
        assert pixel_score(expected, predicted) == pytest.approx(_brute_force_pixel_score(expected, predicted))
    for shapes in ([12, 9, 10, 13], [14, 14, 13, 14]):  # a few large ones, mostly one colour
        expected = (rng.random(shapes[:2]) < 0.1).astype(np.int64)
        predicted = (rng.random(shapes[2:]) < 0.1).astype(np.int64)
        assert pixel_score(expected, predicted) == pytest.approx(_brute_force_pixel_score(expected, predicted))


# --- partition grades and fingerprints ---------------------------------------------------


def test_grade_partition_counts_exact_grids():
    expected = [grid([[1, 2]]), grid([[3]]), grid([[5, 5]])]
    grade = grade_partition(expected, [grid([[1, 2]]), None, grid([[5, 0]])])
    assert grade.pixel_scores == (1.0, 0.0, 0.5)
    assert grade.num_correct == 1
    assert grade.correct_grids == pytest.approx(1 / 3)
    assert grade.pixel_score == pytest.approx(1.5 / 3)
    assert not grade.is_correct
    assert grade_partition(expected, expected).is_correct


def test_grade_partition_rejects_a_wrong_number_of_grids():
    with pytest.raises(ValueError, match="1 predicted grids for 2 expected grids"):
        grade_partition([grid([[1]]), grid([[2]])], [grid([[1]])])


def test_fingerprint_depends_on_values_shapes_and_order_not_dtype():
    a, b = grid([[1, 2]]), grid([[3]])
    assert fingerprint([a, b]) == fingerprint([a.astype(np.uint8), b.astype(np.int32)])
    assert fingerprint([a, b]) != fingerprint([b, a])
    assert fingerprint([grid([[1, 2]])]) != fingerprint([grid([[1], [2]])])
    assert fingerprint([a]) != fingerprint([a, b])
    assert len(fingerprint([a])) == 64  # SHA-256 hex


# --- pass@k ------------------------------------------------------------------------------


def _brute_force_pass_at_k(n, c, k):
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples: every 3-subset has a correct one


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 5000, 7, 300
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="1 <= k <= n, got n=3, k=4"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="0 <= c <= n, got n=3, c=5"):
        pass_at_k(3, 5, 1)


# --- per-task metrics --------------------------------------------------------------------


def record(train, test, *, code="def transform(g): ...", error=None, fp=None, reward=0.0):
    """A record with the given per-grid pixel scores (test=None: hidden test outputs)."""
    return CompletionRecord(
        code=code,
        error_type=error,
        error_message="" if error is None else "boom",
        train_outputs=(),
        test_outputs=(),
        train=PartitionGrade(tuple(train)),
        test=None if test is None else PartitionGrade(tuple(test)),
        fingerprint=fp,
        reward=reward,
    )


def five_predictions():
    """A task with 2 train grids and 1 test grid; r1 and r3 give identical outputs."""
    return [
        record([1.0, 1.0], [1.0], fp="a", reward=10.0),
        record([1.0, 0.5], [0.0], fp="b", reward=5.0),
        record([1.0, 1.0], [1.0], fp="a", reward=10.0),
        record([0.0, 0.0], [0.0], error="Timeout"),
        record([0.0, 0.0], [0.0], code=None, error="ParsingCodeFailed"),
    ]


def test_task_metrics_by_hand():
    metrics = task_metrics(five_predictions(), ks=(1, 2, 5, 6))
    assert list(metrics) == list(metric_columns((1, 2, 5, 6)))
    expected = {
        "n_preds": 5.0,
        "valid_code": 0.8,  # 4 of 5 have code
        "valid_outputs": 0.6,  # 3 of 5 ran cleanly
        "unique_outputs": 0.4,  # fingerprints {a, b}
        "train_pixel_score": 0.55,  # (1 + 0.75 + 1 + 0 + 0) / 5
        "train_correct_grids": 0.5,  # (1 + 0.5 + 1 + 0 + 0) / 5
        "train_pass_rate": 0.4,
        "train_is_correct": 1.0,
        "test_pixel_score": 0.4,
        "test_correct_grids": 0.4,
        "test_pass_rate": 0.4,
        "test_is_correct": 1.0,
        "is_correct": 1.0,
        "pass@1": 0.4,
        "pass@2": 0.7,  # 2 of 5 pass: 1 - C(3,2)/C(5,2)
        "pass@5": 1.0,
        "pass@6": None,  # more draws than predictions
        "reward": 5.0,  # (10 + 5 + 10 + 0 + 0) / 5
    }
    assert metrics == pytest.approx(expected)


def test_is_correct_needs_both_partitions_solved_by_some_prediction():
    # Train solved by one prediction only, test by the other one: optimistic 1.
    metrics = task_metrics([record([1.0], [0.0], fp="a"), record([0.5], [1.0], fp="b")])
    assert (metrics["train_is_correct"], metrics["test_is_correct"], metrics["is_correct"]) == (1.0, 1.0, 1.0)
    metrics = task_metrics([record([0.5], [1.0], fp="a")])
    assert (metrics["train_is_correct"], metrics["test_is_correct"], metrics["is_correct"]) == (0.0, 1.0, 0.0)


def test_hidden_test_outputs_skip_test_metrics():
    metrics = task_metrics([record([1.0], None, fp="a"), record([0.0], None, fp="a")])
    assert metrics["train_pass_rate"] == 0.5
    assert metrics["unique_outputs"] == 0.5
    for column in ("test_pixel_score", "test_correct_grids", "test_pass_rate", "test_is_correct",
                   "is_correct", "pass@1", "pass@2"):
        assert metrics[column] is None


def test_task_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one prediction"):
        task_metrics([])
    with pytest.raises(ValueError, match="some predictions of the task have test grades and some do not"):
        task_metrics([record([1.0], None), record([1.0], [1.0])])


def test_error_counts_most_frequent_first():
    records = five_predictions() + [record([0.0], [0.0], error="Exception"), record([0.0], [0.0], error="Timeout")]
    assert list(error_counts(records).items()) == [("Timeout", 2), ("Exception", 1), ("ParsingCodeFailed", 1)]


def test_mean_metrics_averages_over_tasks():
    per_task = {
        "t1": task_metrics(five_predictions()),
        "t2": task_metrics([record([0.5], [1.0], fp="a")]),
    }
    mean = mean_metrics(per_task)
    assert mean["n_preds"] == 3.0  # (5 + 1) / 2
    assert mean["valid_outputs"] == pytest.approx(0.8)  # (0.6 + 1) / 2
    assert mean["train_pixel_score"] == pytest.approx(0.525)  # (0.55 + 0.5) / 2
    assert mean["is_correct"] == 0.5  # (1 + 0) / 2
    assert mean["pass@2"] is None  # t2 has a single prediction
    assert mean["pass@1"] == pytest.approx(0.7)  # (0.4 + 1) / 2

    hidden = {"t1": per_task["t1"], "t3": task_metrics([record([1.0], None)])}
    assert mean_metrics(hidden)["test_pass_rate"] is None


def test_format_table_prints_percentages_and_a_mean_row():
    per_task = {"task_one": task_metrics(five_predictions())}
    per_task["task_two"] = task_metrics([record([0.5], [1.0], fp="a", reward=9.25)])
    table = format_table(per_task, mean_metrics(per_task))
    header, *rows = [line.split() for line in table.splitlines()]
    assert header == ["task"] + list(metric_columns())
    assert [row[0] for row in rows] == ["task_one", "task_two", "MEAN"]
    column = {name: i for i, name in enumerate(header)}
    assert rows[0][column["valid_code"]] == "80.0%"
    assert rows[0][column["pass@2"]] == "70.0%"
    assert rows[1][column["pass@2"]] == "-"
    assert rows[1][column["n_preds"]] == "1"
    assert rows[1][column["reward"]] == "9.250"
    assert rows[2][column["n_preds"]] == "3"  # (5 + 1) / 2
    assert rows[2][column["train_pixel_score"]] == "52.5%"
    assert rows[2][column["is_correct"]] == "50.0%"

    only_mean = format_table(per_task, mean_metrics(per_task), show_tasks=False).splitlines()
    assert len(only_mean) == 2 and only_mean[1].startswith("MEAN")

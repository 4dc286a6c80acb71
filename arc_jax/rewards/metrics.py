"""ARC evaluation metrics over many predictions per task, pass@k, and their table.

Per task, over its `n_preds` predictions (records); a prediction that is not valid counts
as 0 in every grade:

| column                  | meaning                                                          |
|-------------------------|------------------------------------------------------------------|
| `valid_code`            | fraction with a parsed code block (whether or not it ran)        |
| `valid_outputs`         | fraction that ran with every output a valid grid                 |
| `unique_outputs`        | distinct output fingerprints of valid predictions / n_preds       |
| `{p}_pixel_score`       | mean over predictions of the mean pixel score of partition p      |
| `{p}_correct_grids`     | mean over predictions of the fraction of exactly correct grids    |
| `{p}_pass_rate`         | fraction of predictions with every grid of p correct              |
| `{p}_is_correct`        | 1 if any prediction has every grid of p correct                   |
| `is_correct`            | train_is_correct * test_is_correct (may come from two predictions) |
| `pass@k`                | unbiased pass@k, a prediction passing when all its test grids do  |
| `reward`                | mean reward                                                       |

Test columns and pass@k are None for tasks whose test outputs are hidden, and pass@k is
None when k > n_preds. The mean over tasks of a column is None if any task's value is.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from arc_jax.rewards.grading import PartitionGrade
from arc_jax.rewards.record import CompletionRecord

Metrics = dict[str, float | None]

_PARTITION_COLUMNS = ("pixel_score", "correct_grids", "pass_rate", "is_correct")
# Columns shown as counts or raw numbers rather than percentages.
_NOT_PERCENT = {"n_preds": "{:.4g}", "reward": "{:.3f}"}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k draws is correct) from n samples, c correct.

    1 - C(n - c, k) / C(n, k), computed as 1 - prod_{i = n-c+1}^{n} (1 - k / i) so that no
    large binomial coefficient is formed.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def metric_columns(ks: Sequence[int] = (1, 2)) -> tuple[str, ...]:
    """Column names of `task_metrics(records, ks)`, in table order."""
    train = tuple(f"train_{c}" for c in _PARTITION_COLUMNS)
    test = tuple(f"test_{c}" for c in _PARTITION_COLUMNS)
    return (
        ("n_preds", "valid_code", "valid_outputs", "unique_outputs")
        + train + test + ("is_correct",) + tuple(f"pass@{k}" for k in ks) + ("reward",)
    )


def task_metrics(records: Sequence[CompletionRecord], ks: Sequence[int] = (1, 2)) -> Metrics:
    """The metrics of one task from all its predictions; keys are `metric_columns(ks)`."""
    if not records:
        raise ValueError("task_metrics needs at least one prediction")
    hidden = {r.test is None for r in records}
    if len(hidden) != 1:
        raise ValueError("some predictions of the task have test grades and some do not")
    test_hidden = hidden.pop()
    n = len(records)
    fingerprints = {r.fingerprint for r in records if r.fingerprint is not None}
    metrics: Metrics = {
        "n_preds": float(n),
        "valid_code": _mean([r.parsed for r in records]),
        "valid_outputs": _mean([r.valid for r in records]),
        "unique_outputs": len(fingerprints) / n,
    }
    metrics.update(_partition_metrics("train", [r.train for r in records]))
    if test_hidden:
        metrics.update({f"test_{c}": None for c in _PARTITION_COLUMNS})
        metrics["is_correct"] = None
        metrics.update({f"pass@{k}": None for k in ks})
    else:
        metrics.update(_partition_metrics("test", [r.test for r in records]))
        metrics["is_correct"] = metrics["train_is_correct"] * metrics["test_is_correct"]
        num_passing = sum(r.test.is_correct for r in records)
        metrics.update({f"pass@{k}": pass_at_k(n, num_passing, k) if k <= n else None for k in ks})
    metrics["reward"] = _mean([r.reward for r in records])
    return metrics


def _partition_metrics(prefix: str, grades: Sequence[PartitionGrade]) -> Metrics:
    passing = [g.is_correct for g in grades]
    return {
        f"{prefix}_pixel_score": _mean([g.pixel_score for g in grades]),
        f"{prefix}_correct_grids": _mean([g.correct_grids for g in grades]),
        f"{prefix}_pass_rate": _mean(passing),
        f"{prefix}_is_correct": float(any(passing)),
    }


def _mean(values: Sequence[float | bool]) -> float:
    return float(sum(values)) / len(values)


def mean_metrics(per_task: Mapping[str, Metrics]) -> Metrics:
    """Column-wise mean over tasks; None for a column that any task lacks (None)."""
    if not per_task:
        raise ValueError("mean_metrics needs at least one task")
    columns = list(next(iter(per_task.values())))
    mean: Metrics = {}
    for column in columns:
        values = [metrics[column] for metrics in per_task.values()]
        mean[column] = None if any(v is None for v in values) else _mean(values)
    return mean


def error_counts(records: Iterable[CompletionRecord]) -> dict[str, int]:
    """How many predictions failed with each error type, most frequent first."""
    counts = collections.Counter(r.error_type for r in records if r.error_type is not None)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


# The columns that fit a 100-character terminal (the full table goes to a file).
COMPACT_COLUMNS = ("n_preds", "valid_code", "train_pass_rate", "test_pass_rate", "is_correct",
                   "pass@1", "pass@2", "reward")


def format_table(per_task: Mapping[str, Metrics], mean: Metrics, show_tasks: bool = True,
                 columns: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per task (if `show_tasks`) and a MEAN row, with the given
    columns (default: every metric).

    Rates are printed as percentages with one decimal, n_preds with up to 4 digits and the reward
    with three decimals; "-" marks a missing value.
    """
    rows = list(per_task.items()) if show_tasks else []
    return _table(rows + [("MEAN", mean)], "task", columns)


def compare_table(means: Mapping[str, Metrics], columns: Sequence[str] | None = None) -> str:
    """The MEAN rows of several evaluations (e.g. baseline and RL checkpoint), one per row."""
    return _table(list(means.items()), "policy", columns)


def _table(rows: Sequence[tuple[str, Metrics]], first: str,
           columns: Sequence[str] | None = None) -> str:
    columns = [c for c in (columns or rows[-1][1]) if c in rows[-1][1]]
    cells = [[name] + [_format_cell(col, metrics[col]) for col in columns] for name, metrics in rows]
    header = [first] + columns
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(row, widths)))
        for row in [header] + cells
    ]
    return "\n".join(lines)


def _format_cell(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    if column in _NOT_PERCENT:
        return _NOT_PERCENT[column].format(value)
    return f"{100 * value:.1f}%"

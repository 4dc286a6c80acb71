"""Rewards and metrics: grade program outputs, reward completions, summarise predictions."""

from arc_jax.rewards.grading import PartitionGrade, fingerprint, grade_partition, pixel_score
from arc_jax.rewards.metrics import COMPACT_COLUMNS, Metrics, compare_table, error_counts, format_table, mean_metrics, metric_columns, pass_at_k, task_metrics
from arc_jax.rewards.record import PARSE_ERROR, CompletionRecord
from arc_jax.rewards.schemes import DEFAULT_SCHEME, SCHEMES, RewardScheme, get_scheme, reward, reward_from_record
from arc_jax.rewards.scoring import (
    PendingCompletion,
    no_code_record,
    record_from_result,
    score_completions,
    submit_completion,
)

__all__ = [
    "DEFAULT_SCHEME",
    "PARSE_ERROR",
    "SCHEMES",
    "CompletionRecord",
    "Metrics",
    "PartitionGrade",
    "PendingCompletion",
    "RewardScheme",
    "COMPACT_COLUMNS",
    "compare_table",
    "error_counts",
    "fingerprint",
    "format_table",
    "get_scheme",
    "grade_partition",
    "mean_metrics",
    "metric_columns",
    "no_code_record",
    "pass_at_k",
    "pixel_score",
    "record_from_result",
    "reward",
    "reward_from_record",
    "score_completions",
    "submit_completion",
    "task_metrics",
]

"""Sandboxed execution of generated programs on ARC grids."""

from arc_jax.execution.config import ErrorType, ExecutionConfig, ExecutionResult
from arc_jax.execution.pool import ExecutionPool, WorkerStartError
from arc_jax.execution.validation import InvalidOutputError, validate_output

__all__ = [
    "ErrorType",
    "ExecutionConfig",
    "ExecutionPool",
    "ExecutionResult",
    "InvalidOutputError",
    "WorkerStartError",
    "validate_output",
]

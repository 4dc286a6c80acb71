"""Sandboxed execution of generated programs on ARC grids."""

from arc_jax.execution.config import ErrorType, ExecutionConfig, ExecutionResult
from arc_jax.execution.pool import ExecutionMemoryError, ExecutionPool, WorkerStartError, check_machine_memory
from arc_jax.execution.validation import InvalidOutputError, validate_output

__all__ = [
    "ErrorType",
    "ExecutionConfig",
    "ExecutionMemoryError",
    "ExecutionPool",
    "ExecutionResult",
    "InvalidOutputError",
    "WorkerStartError",
    "check_machine_memory",
    "validate_output",
]

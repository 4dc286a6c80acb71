"""Settings and results of program execution."""

from __future__ import annotations

import dataclasses

import numpy as np


class ErrorType:
    """Names of the ways a program can fail (the values of ExecutionResult.error_type)."""

    SYNTAX = "SyntaxError"  # the code does not compile
    NO_ENTRY_POINT = "MissingEntryPoint"  # neither the entry point nor `main` is a function
    EXCEPTION = "Exception"  # an exception escaped; the message starts with its class name
    TIMEOUT = "Timeout"  # wall-clock (or CPU) limit reached; the process was killed
    MEMORY = "MemoryError"  # the address-space limit was reached
    CRASH = "Crash"  # the process was killed by a signal (e.g. a segfault) or vanished
    EXIT = "Exit"  # sys.exit, os._exit or exit()
    INVALID_OUTPUT = "InvalidOutput"  # the returned value is not a valid grid (see validate_output)

    ALL = (SYNTAX, NO_ENTRY_POINT, EXCEPTION, TIMEOUT, MEMORY, CRASH, EXIT, INVALID_OUTPUT)


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    num_workers: int = 0  # 0 = os.cpu_count()
    timeout_s: float = 1.0  # wall clock per program, all its inputs together; the child is killed
    memory_limit_mb: int = 4096  # RLIMIT_AS of the program's process
    entry_point: str = "transform"  # with "main" as fallback when absent
    common_path: str | None = None  # None = arc_jax's DSL (arc_jax/dsl/common.py); else a common.py file
    max_grid_side: int = 30  # output validation: both sides in 1..max_grid_side, ints 0-9
    max_output_chars: int = 10_000  # captured stdout/stderr (and error messages) truncated to this

    def __post_init__(self):
        checks = {
            "num_workers": self.num_workers >= 0,
            "timeout_s": self.timeout_s > 0,
            "memory_limit_mb": self.memory_limit_mb > 0,
            "entry_point": self.entry_point.isidentifier(),
            "max_grid_side": 1 <= self.max_grid_side <= 65535,
            "max_output_chars": self.max_output_chars >= 0,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"ExecutionConfig.{field} = {getattr(self, field)!r} is out of range")


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    outputs: tuple[np.ndarray | None, ...]  # one per input, in order; None where that input failed
    error_type: str | None  # None iff the program ran and every output is a valid grid
    error_message: str  # "" when error_type is None
    stdout: str  # stdout and stderr together, truncated; "" when the process was killed
    duration_s: float  # from the fork of the program's process to its end

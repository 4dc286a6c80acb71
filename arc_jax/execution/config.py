"""Settings and results of program execution."""

from __future__ import annotations

import dataclasses

import numpy as np


class ErrorType:
    """Names of the ways a program can fail (the values of ExecutionResult.error_type)."""

    SYNTAX = "SyntaxError"  # the code does not compile
    NO_ENTRY_POINT = "MissingEntryPoint"  # neither the entry point nor `main` is a function
    EXCEPTION = "Exception"  # an exception escaped; the message starts with its class name
    TIMEOUT = "Timeout"  # CPU-time (or the wall-clock backstop) limit reached; the process was killed
    MEMORY = "MemoryError"  # the address-space limit was reached
    CRASH = "Crash"  # the process was killed by a signal (e.g. a segfault) or vanished
    EXIT = "Exit"  # sys.exit, os._exit or exit()
    INVALID_OUTPUT = "InvalidOutput"  # the returned value is not a valid grid (see validate_output)

    ALL = (SYNTAX, NO_ENTRY_POINT, EXCEPTION, TIMEOUT, MEMORY, CRASH, EXIT, INVALID_OUTPUT)


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    num_workers: int = 0  # 0 = os.cpu_count()
    timeout_s: float = 1.0  # CPU time per program (all threads, all inputs together); then it is killed
    wall_timeout_s: float | None = None  # wall clock per program (it sleeps or blocks); None = 5 x timeout_s
    memory_limit_mb: int = 4096  # RLIMIT_AS of the program's process
    entry_point: str = "transform"  # with "main" as fallback when absent
    common_path: str | None = None  # None = arc_jax's DSL (arc_jax/dsl/common.py); else a common.py file
    max_grid_side: int = 30  # output validation: both sides in 1..max_grid_side, ints 0-9
    max_output_chars: int = 10_000  # captured stdout/stderr (and error messages) truncated to this

    def __post_init__(self):
        if self.wall_timeout_s is None:
            object.__setattr__(self, "wall_timeout_s", 5.0 * self.timeout_s)
        checks = {  # field -> (in range, what is expected)
            "num_workers": (0 <= self.num_workers <= 4096, "an integer from 0 (one per CPU) to 4096"),
            "timeout_s": (0 < self.timeout_s <= 3600, "a number of seconds in (0, 3600]"),
            "wall_timeout_s": (self.timeout_s <= self.wall_timeout_s <= 36000,
                               "a number of seconds from timeout_s to 36000"),
            "memory_limit_mb": (64 <= self.memory_limit_mb <= 2**22, "an integer from 64 to 4194304"),
            "entry_point": (self.entry_point.isidentifier(), "a Python name"),
            "max_grid_side": (1 <= self.max_grid_side <= 65535, "an integer from 1 to 65535"),
            "max_output_chars": (self.max_output_chars >= 0, "an integer >= 0"),
        }
        for field, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"ExecutionConfig.{field}={getattr(self, field)!r}: expected {expected}")


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    outputs: tuple[np.ndarray | None, ...]  # one per input, in order; None where that input failed
    error_type: str | None  # None iff the program ran and every output is a valid grid
    error_message: str  # "" when error_type is None
    stdout: str  # stdout and stderr together, truncated; "" when the process was killed
    duration_s: float  # from the fork of the program's process to its end


"""Counting XLA compilations, so that a run can say when (and what) it compiles.

A training step should compile nothing once the first step has compiled the sampler and the
update: a compilation later means a new shape reached a jit-compiled function, which costs
minutes for the 8B model. `CompileCounter` listens to JAX's own monitoring events; each
`take()` returns the compilations since the last one. Loading a program from JAX's persistent
compilation cache counts too (it is fast), and is also counted as a cache hit.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass(frozen=True)
class Compilation:
    name: str  # the program, e.g. "jit_train_step"
    seconds: float


class CompileCounter:
    """Collects compilations while open; use as a context manager."""

    def __init__(self):
        self._compiled: list[Compilation] = []
        self._cache_hits = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event: str, seconds: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self._compiled.append(Compilation(str(kwargs.get("fun_name", "?")), seconds))

    def _on_event(self, event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            self._cache_hits += 1

    def take(self) -> tuple[list[Compilation], int]:
        """The compilations and persistent-cache hits since the last call."""
        compiled, hits = self._compiled, self._cache_hits
        self._compiled, self._cache_hits = [], 0
        return compiled, hits

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)

    def __enter__(self) -> CompileCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def use_persistent_cache(directory: pathlib.Path) -> None:
    """Keeps compiled programs under `directory`, so a resumed run loads them instead of
    compiling again (programs that took over a second to compile)."""
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

"""Scoring completions on a task: extract code, run it in the execution pool, grade, reward.

Two ways to compare, chosen by `augmentation`:
- RL (`augmentation=None`): the task given is the one the prompt showed (possibly
  already augmented); the program runs on its inputs and is graded against its outputs.
  Nothing is reverted.
- Evaluation (`augmentation` given, `task` the original task): the prompt showed
  `augmentation.apply_task(task)`, so the program runs on the augmented inputs and its
  outputs are reverted before they are graded against the original task.

Inputs run in the order train then test; all test inputs run, even when the prompt
showed one. Test grades are skipped (None) when the task's test outputs are hidden.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Sequence

import numpy as np

from arc_jax.data.augment import Augmentation
from arc_jax.data.types import Task
from arc_jax.execution import ExecutionPool, ExecutionResult
from arc_jax.prompts import extract_code
from arc_jax.rewards import grading
from arc_jax.rewards import schemes
from arc_jax.rewards.record import PARSE_ERROR, CompletionRecord


@dataclasses.dataclass(frozen=True)
class PendingCompletion:
    """A completion whose code was submitted to the pool (or had no code to submit)."""

    code: str | None
    task: Task
    augmentation: Augmentation | None
    future: concurrent.futures.Future | None  # None when there is no code

    def record(self, scheme: str = schemes.DEFAULT_SCHEME) -> CompletionRecord:
        """Waits for the execution and returns the graded record (the pool enforces the timeout)."""
        if self.future is None:
            return no_code_record(self.task, scheme)
        return record_from_result(self.code, self.future.result(), self.task, self.augmentation, scheme)


def submit_completion(pool: ExecutionPool, completion: str, task: Task,
                      augmentation: Augmentation | None = None) -> PendingCompletion:
    """Extracts the code of `completion` and submits it on the task's inputs; does not wait."""
    code = extract_code(completion)
    if code is None:
        return PendingCompletion(code=None, task=task, augmentation=augmentation, future=None)
    inputs = [pair.input for pair in task.train + task.test]
    if augmentation is not None:
        inputs = [augmentation.apply_grid(grid) for grid in inputs]
    return PendingCompletion(code, task, augmentation, pool.submit(code, inputs))


def score_completions(
    pool: ExecutionPool,
    completions: Sequence[str],
    task: Task,
    augmentation: Augmentation | None = None,
    scheme: str = schemes.DEFAULT_SCHEME,
) -> list[CompletionRecord]:
    """Scores a group of completions of one prompt: submits them all, then gathers, in order."""
    schemes.get_scheme(scheme)  # fail before submitting anything
    pending = [submit_completion(pool, completion, task, augmentation) for completion in completions]
    return [p.record(scheme) for p in pending]


def no_code_record(task: Task, scheme: str = schemes.DEFAULT_SCHEME) -> CompletionRecord:
    """The record of a completion without a complete ```python block."""
    return _graded_record(
        code=None,
        error_type=PARSE_ERROR,
        error_message="no complete ```python code block in the completion",
        outputs=(None,) * (len(task.train) + len(task.test)),
        task=task,
        scheme=scheme,
        duration_s=0.0,
    )


def record_from_result(code: str, result: ExecutionResult, task: Task,
                       augmentation: Augmentation | None = None,
                       scheme: str = schemes.DEFAULT_SCHEME) -> CompletionRecord:
    """Grades the execution result of `code` on `task`.

    With an augmentation, the result's outputs are on augmented inputs and are reverted
    first. Outputs must be one per input, train then test.
    """
    num_inputs = len(task.train) + len(task.test)
    if len(result.outputs) != num_inputs:
        raise ValueError(
            f"task {task.id}: execution returned {len(result.outputs)} outputs for {num_inputs} inputs"
        )
    outputs = tuple(result.outputs)
    if augmentation is not None:
        outputs = tuple(None if grid is None else augmentation.revert_grid(grid) for grid in outputs)
    return _graded_record(code, result.error_type, result.error_message, outputs, task, scheme, result.duration_s)


def _graded_record(code: str | None, error_type: str | None, error_message: str,
                   outputs: tuple[np.ndarray | None, ...], task: Task, scheme: str,
                   duration_s: float) -> CompletionRecord:
    valid = error_type is None
    graded = outputs if valid else (None,) * len(outputs)  # a failed prediction scores 0
    num_train = len(task.train)
    train = grading.grade_partition([p.output for p in task.train], graded[:num_train])
    test = None
    if _test_outputs_known(task):
        test = grading.grade_partition([p.output for p in task.test], graded[num_train:])
    return CompletionRecord(
        code=code,
        error_type=error_type,
        error_message=error_message,
        train_outputs=outputs[:num_train],
        test_outputs=outputs[num_train:],
        train=train,
        test=test,
        fingerprint=grading.fingerprint(outputs) if valid else None,
        reward=schemes.reward(scheme, parsed=code is not None, valid=valid, train=train, test=test),
        duration_s=duration_s,
    )


def _test_outputs_known(task: Task) -> bool:
    """True if every test output is given, False if none is; a mix is an error."""
    known = [pair.output is not None for pair in task.test]
    if any(known) and not all(known):
        missing = [i for i, k in enumerate(known) if not k]
        raise ValueError(f"task {task.id}: test outputs {missing} are missing but others are given")
    return bool(known) and all(known)

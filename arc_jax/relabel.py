"""Hindsight relabelling: a program that runs on a task's inputs is a correct program for the
task whose outputs are its own outputs.

Search mode (`arc_jax.search`) turns every sampled program that ran, right or wrong, into such a
(task, program) pair, keeps a bounded, deduplicated set per task and fine-tunes on it. Nothing
here reads a test output: a relabelled task is made of the real inputs and the program's
outputs only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from arc_jax.data import Augmentation, Pair, Task, grid_to_json
from arc_jax.rewards import CompletionRecord


@dataclasses.dataclass(frozen=True)
class Relabelled:
    """One program with the task it solves by construction.

    task: the relabelled task in the frame the program saw (the draw's augmentation applied):
      its inputs are the prompt's inputs, its outputs the program's own, train then test.
    round, index: where the program was sampled (round, position among the round's
      predictions of its task), the tie-break of `keep`.
    train_correct: train pairs of the real task the program got right (the preference).
    fingerprint: of its outputs in the task's own frame (duplicates share it).
    """

    task: Task
    completion: str
    code: str
    round: int
    index: int
    train_correct: int
    fingerprint: str

    def to_json(self) -> dict:
        """A JSONL line: task id, relabelled train/test pairs, the program, its provenance."""
        pairs = lambda ps: [{"input": grid_to_json(p.input), "output": grid_to_json(p.output)}
                            for p in ps]
        return {"task_id": self.task.id, "round": self.round, "index": self.index,
                "train_correct": self.train_correct, "train": pairs(self.task.train),
                "test": pairs(self.task.test), "code": self.code, "completion": self.completion}


def relabel(task: Task, record: CompletionRecord, augmentation: Augmentation, completion: str,
            round_index: int, index: int) -> Relabelled | None:
    """The relabelled pair of one scored prediction, or None when the program did not produce a
    valid grid for every input.

    `task` is the task as loaded (its test outputs may be hidden; they are not read), `record`
    the prediction scored with `augmentation` (outputs reverted to the task's frame).
    """
    if not record.valid:
        return None
    inputs = [p.input for p in task.train + task.test]
    outputs = list(record.train_outputs) + list(record.test_outputs)
    shown = [Pair(augmentation.apply_grid(i), augmentation.apply_grid(np.asarray(o)))
             for i, o in zip(inputs, outputs)]
    relabelled = Task(task.id, tuple(shown[:len(task.train)]), tuple(shown[len(task.train):]))
    return Relabelled(relabelled, completion, record.code, round_index, index,
                      record.train.num_correct, record.fingerprint)


def keep(candidates: Iterable[Relabelled], limit: int) -> list[Relabelled]:
    """At most `limit` programs with distinct outputs: more train pairs right first, then the
    earliest sampled (round, index); of programs with equal outputs the first so ranked."""
    ranked = sorted(candidates, key=lambda r: (-r.train_correct, r.round, r.index))
    kept, seen = [], set()
    for item in ranked:
        if item.fingerprint not in seen:
            seen.add(item.fingerprint)
            kept.append(item)
    return kept[:limit]

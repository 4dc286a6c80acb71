"""The stream of (task, augmentation) draws that feeds GRPO steps.

Epochs over the task ids, each in a fresh seeded order. Every draw is a pure function of
(seed, draw index): the task comes from the epoch's permutation and the augmentation from
`seeds.training_augmentation(seed, draw)`. The only state is the draw index, so a checkpoint stores one
integer and a resumed run sees exactly the draws an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


from arc_jax import seeds
from arc_jax.data import Augmentation, Task


@dataclasses.dataclass(frozen=True)
class Draw:
    index: int  # position in the stream, from 0
    epoch: int
    task: Task  # augmented when augmentation is on
    augmentation: Augmentation


class TaskStream:
    """Endless epoch-shuffled draws from `tasks`; `position` is the next draw's index."""

    def __init__(self, tasks: Mapping[str, Task], *, seed: int, augment: bool = True,
                 change_background_probability: float = 0.1, position: int = 0):
        if not tasks:
            raise ValueError("TaskStream: no tasks to draw from")
        self._tasks = dict(tasks)
        self._ids: Sequence[str] = sorted(tasks)
        self._seed = seed
        self._augment = augment
        self._change_background_probability = change_background_probability
        self.position = position

    def __len__(self) -> int:
        return len(self._ids)

    def draw(self, index: int) -> Draw:
        epoch, offset = divmod(index, len(self._ids))
        order = seeds.task_order(self._seed, epoch).permutation(len(self._ids))
        task = self._tasks[self._ids[order[offset]]]
        augmentation = Augmentation.identity()
        if self._augment:
            rng = seeds.training_augmentation(self._seed, index)
            augmentation = Augmentation.sample(rng, self._change_background_probability)
        return Draw(index, epoch, augmentation.apply_task(task), augmentation)

    def next(self) -> Draw:
        draw = self.draw(self.position)
        self.position += 1
        return draw

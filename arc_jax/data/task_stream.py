"""The stream of (task, augmentation) draws that feeds GRPO steps.

By default, epochs over the task ids, each in a fresh seeded order: every draw is a pure
function of (seed, draw index), the task from the epoch's permutation and the augmentation
from `seeds.training_augmentation(seed, draw)`, so the state is the draw index alone. With a
`TaskSelection`, tasks are drawn by learning signal, and the state adds each task's decayed
pass counts. Either way a checkpoint stores the state (`state_dict`) and a resumed run sees
exactly the draws an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from arc_jax import seeds
from arc_jax.data import Augmentation, Task


@dataclasses.dataclass(frozen=True)
class Draw:
    index: int  # position in the stream, from 0
    epoch: int
    task: Task  # augmented when augmentation is on
    augmentation: Augmentation


@dataclasses.dataclass(frozen=True)
class TaskSelection:
    """Drawing tasks by learning signal instead of in shuffled epochs.

    Each task's pass rate is estimated from the run's own rollouts, p = (s + 1) / (n + 2),
    where s and n are the solved and sampled completions of its past groups, each group's
    weight multiplied by `decay` at the next group of the task (the policy changes). A task
    is drawn with weight max(floor, 4 p (1 - p)): 1 at p = 1/2 (a task never drawn counts
    as that), low for tasks always or never solved, never below `floor`, so none is
    forgotten.
    """

    floor: float = 0.1
    decay: float = 0.5

    def __post_init__(self):
        if not 0 < self.floor <= 1:
            raise ValueError(f"TaskSelection.floor must be in (0, 1], got {self.floor}")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"TaskSelection.decay must be in [0, 1], got {self.decay}")

    def weight(self, solved: float, sampled: float) -> float:
        p = (solved + 1.0) / (sampled + 2.0)
        return max(self.floor, 4.0 * p * (1.0 - p))


class TaskStream:
    """Endless draws from `tasks`; `position` is the next draw's index.

    Without `selection`, epoch-shuffled: every task once per epoch, each draw a pure function
    of (seed, index). With it, each draw picks a task by `TaskSelection` weights from the pass
    rates `observe` has recorded (`state_dict`, kept in checkpoints), so the draws are a
    function of the seed and the run's history.
    """

    def __init__(self, tasks: Mapping[str, Task], *, seed: int, augment: bool = True,
                 change_background_probability: float = 0.1, position: int = 0,
                 selection: TaskSelection | None = None):
        if not tasks:
            raise ValueError("TaskStream: no tasks to draw from")
        self._tasks = dict(tasks)
        self._ids: Sequence[str] = sorted(tasks)
        self._seed = seed
        self._augment = augment
        self._change_background_probability = change_background_probability
        self._selection = selection
        self._counts: dict[str, list[float]] = {}  # task id -> [solved, sampled], decayed
        self.position = position

    def observe(self, task_id: str, solved: int, sampled: int) -> None:
        """Records a group of `sampled` completions of the task, `solved` of them solving it."""
        if self._selection is None:
            return
        old_solved, old_sampled = self._counts.get(task_id, (0.0, 0.0))
        decay = self._selection.decay
        self._counts[task_id] = [decay * old_solved + solved, decay * old_sampled + sampled]

    def weights(self) -> list[float]:
        """The current draw weight of each task, in sorted id order (selection on)."""
        return [self._selection.weight(*self._counts.get(i, (0.0, 0.0))) for i in self._ids]

    def state_dict(self) -> dict:
        return {"position": self.position, "counts": dict(self._counts)}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self._counts = {k: [float(a), float(b)] for k, (a, b) in state.get("counts", {}).items()}

    def __len__(self) -> int:
        return len(self._ids)

    def draw(self, index: int) -> Draw:
        epoch, offset = divmod(index, len(self._ids))
        if self._selection is None:
            order = seeds.task_order(self._seed, epoch).permutation(len(self._ids))
            task = self._tasks[self._ids[order[offset]]]
        else:
            weights = np.asarray(self.weights())
            choice = seeds.task_choice(self._seed, index).choice(len(self._ids),
                                                                   p=weights / weights.sum())
            task = self._tasks[self._ids[choice]]
        augmentation = Augmentation.identity()
        if self._augment:
            rng = seeds.training_augmentation(self._seed, index)
            augmentation = Augmentation.sample(rng, self._change_background_probability)
        return Draw(index, epoch, augmentation.apply_task(task), augmentation)

    def next(self) -> Draw:
        draw = self.draw(self.position)
        self.position += 1
        return draw

"""ARC task data: types, loading and validation, augmentation, the stream of training draws."""

from arc_jax.data.augment import Augmentation
from arc_jax.data.loaders import (
    BUNDLED_DATASETS,
    MAX_GRID_SIZE,
    grid_from_json,
    grid_to_json,
    load_tasks,
    printable,
    read_json_file,
    save_tasks,
    task_from_json,
    task_to_json,
)
from arc_jax.data.types import Pair, Task, TaskFormatError

__all__ = [
    "Augmentation",
    "BUNDLED_DATASETS",
    "MAX_GRID_SIZE",
    "Pair",
    "Task",
    "TaskFormatError",
    "grid_from_json",
    "grid_to_json",
    "load_tasks",
    "printable",
    "read_json_file",
    "save_tasks",
    "task_from_json",
    "task_to_json",
]

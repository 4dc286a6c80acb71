"""Every seed of a run, as named pure functions of the run's seed and a position.

One place, so that each random choice is visibly a function of (seed, step or draw) and no two
streams share a seed by accident. Changing a rule here changes what a run with a given seed
draws (its prompts, augmentations or samples), so each one is written once and kept.

Kinds: an int (for `SamplingParams.seed` and the prompt renderer, which seed their own
generators) or a NumPy generator seeded with an entropy list. Inside a sampling call, each
sample's key is `arc_jax.rollout.decode.row_key(seed, prompt index, sample index)`.
"""

from __future__ import annotations

import numpy as np

_SPREAD = 1_000_003  # a prime: seed * _SPREAD + i keeps neighbouring seeds' streams apart


def task_order(seed: int, epoch: int) -> np.random.Generator:
    """The permutation of the training tasks in one epoch of the task stream."""
    return np.random.default_rng([seed, epoch])


def task_choice(seed: int, draw: int) -> np.random.Generator:
    """The weighted task choice of training draw `draw` under task selection."""
    return np.random.default_rng([seed, 2_000_003, draw])


def training_augmentation(seed: int, draw: int) -> np.random.Generator:
    """The augmentation of training draw `draw`."""
    return np.random.default_rng([seed, _SPREAD, draw])


def eval_augmentation(seed: int, round_index: int, task_index: int) -> np.random.Generator:
    """The augmentation of a task (by its index in sorted ids) in evaluation round r >= 1."""
    return np.random.default_rng([seed, 7919, round_index, task_index])


def prompt(seed: int, draw: int) -> int:
    """Which train examples a draw's prompt shows, and in which order (training, the
    before/after evaluation and `eval` alike; `draw` is the draw's index)."""
    return seed * _SPREAD + draw


def step_sampling(seed: int, step: int, batch: int = 0) -> int:
    """The sampling seed of training step `step`'s rollout (of its batch-th generation batch
    under dynamic sampling; the first batch keeps the rule without it)."""
    return seed * _SPREAD + step + batch * 7_919_000_003


def eval_sampling(seed: int, round_index: int) -> int:
    """The sampling seed of evaluation round r (round 0 also for training's before/after
    table, the same for both, so the two differ by the policy only)."""
    return seed + 104_729 * round_index


def search_batch(seed: int, round_index: int, step: int) -> np.random.Generator:
    """Which relabelled pairs make update `step` of search mode's learning after round r."""
    return np.random.default_rng([seed, 15_485_863, round_index, step])


def request_seed(seed: int, prompt_index: int) -> int:
    """The seed of prompt i's request within one call to an external engine (vLLM): 31 bits."""
    return (seed * _SPREAD + prompt_index) % 2 ** 31

"""One episode of sampling and scoring, shared by training and evaluation: prompts of
drawn tasks -> n completions each from the rollout engine -> programs run in the execution
pool -> graded records and rewards."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import ml_collections
import tqdm

from arc_jax import data
from arc_jax import distributed
from arc_jax import prompts
from arc_jax import rewards
from arc_jax import seeds
from arc_jax.execution import ExecutionPool
from arc_jax.rollout import Completion, RolloutEngine, SamplingParams
from arc_jax.data.task_stream import Draw, TaskSelection, TaskStream


@dataclasses.dataclass(frozen=True)
class Group:
    """One prompt of a step with its G completions and their scored records."""

    draw: Draw
    prompt_ids: list[int]
    completions: list[Completion]
    records: list[rewards.CompletionRecord]


def task_stream(config: ml_collections.ConfigDict, tasks) -> TaskStream:
    """The stream of (augmented) tasks a training run draws from, in its order."""
    selection = None
    if config.task_selection.enabled:
        selection = TaskSelection(floor=config.task_selection.floor,
                                  decay=config.task_selection.decay)
    return TaskStream(tasks, seed=config.seed, augment=config.augment.enabled,
                      change_background_probability=config.augment.change_background_probability,
                      selection=selection)


def prompt_config(config: ml_collections.ConfigDict) -> prompts.PromptConfig:
    return prompts.PromptConfig(style=config.prompt.style,
                                prefill_assistant=config.prompt.prefill_assistant)


class PromptMaker:
    """Renders and encodes the prompt of a draw; skips (and counts) over-long ones.

    With no tokenizer (a dry run without one) it can only `render`; lengths are then counted
    in characters and nothing is skipped.
    """

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, max_prompt_length: int):
        self._prompt_config = prompt_config(config)
        self._tokenizer = tokenizer
        self._seed = config.seed
        self.max_prompt_length = max_prompt_length

    def seed(self, draw: Draw) -> int:
        """The prompt seed of a draw (which examples are shown, in which order)."""
        return seeds.prompt(self._seed, draw.index)

    def render(self, task: data.Task, seed: int) -> str:
        return prompts.render_prompt(task, self._prompt_config, tokenizer=self._tokenizer,
                                     seed=seed)

    def __call__(self, task: data.Task, seed: int) -> list[int]:
        return prompts.encode_prompt(self._tokenizer, self.render(task, seed))

    def fits(self, num_tokens: int) -> bool:
        return self._tokenizer is None or num_tokens <= self.max_prompt_length

    def next_prompts(self, stream: TaskStream, count: int) -> tuple[list[Draw], list[list[int]], int]:
        """`count` draws whose prompts fit, and how many draws were skipped on the way."""
        draws, ids, skipped = [], [], 0
        while len(draws) < count:
            draw = stream.next()
            prompt = self(draw.task, seed=self.seed(draw))
            if not self.fits(len(prompt)):
                skipped += 1
                if skipped > len(stream):
                    raise ValueError(f"every prompt is longer than max_prompt_length="
                                     f"{self.max_prompt_length} tokens; raise max_seq_length")
                continue
            draws.append(draw)
            ids.append(prompt)
        return draws, ids, skipped


def has_signal(group: Group) -> bool:
    """Not every completion of the group has the same reward: its advantages are not all 0."""
    rewards = [r.reward for r in group.records]
    return max(rewards) > min(rewards)


def agree_rewards(groups: Sequence[Group]) -> list[Group]:
    """The groups with process 0's rewards in every record (each host scores the programs in
    its own pool; a timeout on one host only must not make the hosts' updates differ)."""
    rewards = distributed.agree([[r.reward for r in g.records] for g in groups])
    return [dataclasses.replace(g, records=[dataclasses.replace(r, reward=float(v))
                                            for r, v in zip(g.records, row)])
            for g, row in zip(groups, rewards)]


def sample_and_score(engine: RolloutEngine, pool: ExecutionPool, draws: Sequence[Draw],
                     prompt_ids: Sequence[list[int]], n: int, sampling: SamplingParams,
                     scheme: str, chunk: int, progress: bool = False
                     ) -> tuple[list[Group], float, float]:
    """Samples n completions per prompt and scores them; returns groups and the two timings.
    `progress` shows a bar over the chunks.

    The prompts go to the engine `chunk` at a time, and each chunk's programs are submitted to
    the pool before the next chunk is sampled, so execution overlaps sampling.
    """
    pending, sampled, rollout_s = [], [], 0.0
    starts = range(0, len(draws), chunk)
    for start in tqdm.tqdm(starts, desc="sampling", unit="chunk", leave=False,
                           dynamic_ncols=True, disable=not progress):
        begin = time.perf_counter()
        groups = engine.generate(prompt_ids[start:start + chunk], n, sampling)
        rollout_s += time.perf_counter() - begin
        for draw, completions in zip(draws[start:start + chunk], groups):
            sampled.append(completions)
            pending.append([rewards.submit_completion(pool, c.text, draw.task) for c in completions])
    begin = time.perf_counter()
    result = [Group(draw, list(ids), completions, [p.record(scheme) for p in group])
              for draw, ids, completions, group in zip(draws, prompt_ids, sampled, pending)]
    return result, rollout_s, time.perf_counter() - begin

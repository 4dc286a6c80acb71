"""The GRPO training loop: `python -m arc_jax.launch --config=...` with `config.mode = "train"`.

One step, as data (see the README's architecture section):

    TaskStream draws (augmented tasks) -> prompts (token ids) -> RolloutEngine.generate(n=G)
    -> execution pool + reward scheme -> group advantages -> GRPOUpdater.step (jit, mesh)
    -> new LoRA weights to the sampler -> metrics.jsonl / TensorBoard, checkpoints

Scoring overlaps sampling: the programs of one chunk of prompts run in the execution pool's
processes while the sampler works on the next chunk.

Every random choice is a pure function of (config.seed, step or draw index), and the only other
state (LoRA weights, optimiser state, stream position, collapse guard) is checkpointed, so a
killed run resumed from its checkpoint repeats exactly what an uninterrupted run would do.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pathlib
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from arc_jax import data
from arc_jax import distributed
from arc_jax import prompts
from arc_jax import seeds
from arc_jax import session
from arc_jax import episode
from arc_jax import eval as evaluation
from arc_jax.episode import Group, PromptMaker, sample_and_score
from arc_jax.execution import ExecutionPool
from arc_jax.model import LoraParam
from arc_jax.rollout import PromptBuckets, RolloutEngine
from arc_jax.rollout.memory import free_device_bytes
from arc_jax.train import grpo
from arc_jax.train import report
from arc_jax.train.checkpoint import Checkpointer
from arc_jax.train.collapse import CollapseGuard
from arc_jax.train.compiles import CompileCounter, use_persistent_cache
from arc_jax.train.memory import check_update_fits
from arc_jax.train.metrics_log import MetricsLogger, ProgressBar
from arc_jax.data.task_stream import TaskStream
from arc_jax.train.update import GroupBatch, GRPOUpdater


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many prompts and updates a run makes (printed at start, and by `--config.dry_run`)."""

    num_tasks: int
    prompts_per_step: int
    num_generations: int
    total_steps: int
    micro_batches: int
    max_prompt_length: int

    def describe(self) -> str:
        return (f"{self.total_steps} steps x {self.prompts_per_step} prompts x "
                f"{self.num_generations} completions ({self.micro_batches} micro-batches per "
                f"update) over {self.num_tasks} tasks; prompts over {self.max_prompt_length} "
                "tokens are skipped")


def step_plan(config: ml_collections.ConfigDict, num_tasks: int) -> StepPlan:
    """TRL's batch arithmetic: generation_batch_size completions per step, in groups of G."""
    size, group = config.generation_batch_size, config.num_generations
    if size % group:
        raise ValueError(f"config.generation_batch_size={size} must be a multiple of "
                         f"config.num_generations={group}")
    prompts_per_step = size // group
    if config.max_steps > 0:
        total = config.max_steps
    else:
        total = math.ceil(config.num_train_epochs * num_tasks / prompts_per_step)
    max_prompt = config.max_seq_length - config.max_completion_length
    if max_prompt <= 0:
        raise ValueError(f"config.max_seq_length={config.max_seq_length} leaves no room for "
                         f"prompts after max_completion_length={config.max_completion_length}")
    return StepPlan(num_tasks, prompts_per_step, group, total,
                    config.gradient_accumulation_steps, max_prompt)


# ----------------------------------------------------------------------------- one step


def completion_buckets(config: ml_collections.ConfigDict) -> PromptBuckets:
    """The update's padded completion lengths: 64 x 2^k up to max_completion_length with
    `completion_bucket_bits` significant bits (0: always max_completion_length)."""
    return PromptBuckets(minimum=min(64, config.max_completion_length),
                         bits=config.completion_bucket_bits, maximum=config.max_completion_length)


def group_batch(groups: Sequence[Group], *, pad_id: int, eos_ids: Sequence[int],
                loss: grpo.GRPOLossConfig, buckets: PromptBuckets,
                completion_buckets: PromptBuckets) -> tuple[GroupBatch, dict]:
    """The padded arrays of a step: prompts left-padded to their bucket (the sampler's rule, so
    that the update compiles as rarely as the sampler), completions right-padded to the bucket
    of the step's longest completion (the update's cost follows the real lengths, and each
    bucket compiles once). The batch carries the sampler's log-probs; a step drops them when
    the loss does not use them."""
    num_prompts, group = len(groups), len(groups[0].completions)
    rewards_ = np.array([[r.reward for r in g.records] for g in groups], np.float32)  # [P, G]
    lengths = np.array([[len(c.token_ids) for c in g.completions] for g in groups])
    penalty = grpo.soft_overlong_penalty(lengths, loss.max_completion_length,
                                         loss.soft_punish_cache).astype(np.float32)
    advantages, reward_stats = grpo.group_advantages((rewards_ + penalty).reshape(-1), group,
                                                     loss.scale_rewards)
    if loss.soft_punish_cache:
        reward_stats = dict(reward_stats, **{"reward/overlong_penalty": penalty.mean()})
    prompt_len = buckets(max(len(g.prompt_ids) for g in groups))
    completion_length = completion_buckets(max(len(c.token_ids) for g in groups
                                               for c in g.completions))
    prompt_ids = np.full((num_prompts, prompt_len), pad_id, np.int32)
    prompt_mask = np.zeros((num_prompts, prompt_len), np.float32)
    completion_ids = np.full((num_prompts, group, completion_length), pad_id, np.int32)
    sampler_logprobs = np.zeros((num_prompts, group, completion_length), np.float32)
    truncated = np.zeros((num_prompts, group), bool)
    for p, g in enumerate(groups):
        prompt_ids[p, prompt_len - len(g.prompt_ids):] = g.prompt_ids
        prompt_mask[p, prompt_len - len(g.prompt_ids):] = 1
        for i, c in enumerate(g.completions):
            completion_ids[p, i, :len(c.token_ids)] = c.token_ids
            sampler_logprobs[p, i, :len(c.token_ids)] = c.temperature_logprobs
            truncated[p, i] = c.truncated
    mask, _ = grpo.completion_mask(
        completion_ids.reshape(num_prompts * group, -1), tuple(eos_ids), pad_id,
        mask_truncated=loss.mask_truncated_completions, truncated=truncated.reshape(-1))
    batch = GroupBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=np.asarray(mask).reshape(num_prompts, group, -1),
        advantages=np.asarray(advantages).reshape(num_prompts, group),
        old_logprobs=None,
        sampler_logprobs=sampler_logprobs)
    return batch, {k: float(v) for k, v in reward_stats.items()}


def fill_with_signal(sample, wanted: int, max_batches: int, drop_equal: bool
                     ) -> tuple[list[Group], dict[str, int]]:
    """`wanted` groups from sample(count, batch) -> groups (count fresh draws, the batch-th call
    of the step). With drop_equal (DAPO's dynamic sampling), groups whose rewards are all equal
    (zero advantages: nothing to learn) are set aside and more are drawn, at most max_batches
    calls; if still short, the set-aside groups fill the batch, so its shape never changes.
    Counts: batches, groups_sampled, groups_dropped (set aside), groups_without_signal (used)."""
    kept, dropped, batches = [], [], 0
    while len(kept) < wanted and batches < max_batches:
        for group in sample(wanted - len(kept), batches):
            (kept if not drop_equal or episode.has_signal(group) else dropped).append(group)
        batches += 1
    fill = dropped[:wanted - len(kept)]
    return kept + fill, {"batches": batches, "groups_sampled": len(kept) + len(dropped),
                         "groups_dropped": len(dropped), "groups_without_signal": len(fill)}


def rollout_metrics(groups: Sequence[Group], ngram: int = 4) -> dict[str, float]:
    """Reward, validity, length and repetition statistics of a step's completions."""
    records = [r for g in groups for r in g.records]
    completions = [c for g in groups for c in g.completions]
    values = np.array([r.reward for r in records])
    lengths = np.array([len(c.token_ids) for c in completions])
    repetition = [grpo.repeated_ngram_fraction(list(c.token_ids), ngram) for c in completions]
    return {
        "reward/mean": float(values.mean()), "reward/std": float(values.std()),
        "reward/min": float(values.min()), "reward/max": float(values.max()),
        "solved_ratio": float(np.mean([r.solved for r in records])),
        # right on every shown train pair, wrong on an unseen test grid: copying the prompt
        "shown_only_ratio": float(np.mean([r.shown_only for r in records])),
        "valid_code_ratio": float(np.mean([r.parsed for r in records])),
        "valid_outputs_ratio": float(np.mean([r.valid for r in records])),
        "completions/mean_length": float(lengths.mean()),
        "completions/max_length": float(lengths.max()),
        "truncated_ratio": float(np.mean([c.truncated for c in completions])),
        f"repetition/{ngram}gram": float(np.mean(repetition)),
    }


def device_memory_metrics() -> dict[str, float]:
    """Peak and current memory of this process's first device (GiB), where it reports it."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return {}
    return {"memory/peak_gib": stats["peak_bytes_in_use"] / 2**30,
            "memory/in_use_gib": stats.get("bytes_in_use", 0) / 2**30}


# ----------------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, make_engine=session.make_engine) -> dict:
    """Trains; returns the final summary (also written to workdir/summary.json).

    With `config.dry_run`, prints the step plan and a prompt preview and stops before loading
    the model. `make_engine` builds the rollout engine (tests give a scripted one).
    """
    if config.dry_run:
        return _dry_run(config)
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.compilation_cache:
        use_persistent_cache(workdir / "jax_cache")
    mesh = session.make_mesh(config)
    model_path = session.resolve_model_path(config, workdir)
    tokenizer = session.tokenizer(model_path)
    tasks = session.select_tasks(config, tokenizer)
    plan = step_plan(config, len(tasks))
    print(f"step plan: {plan.describe()}")
    session.check_mesh(mesh, model_path, plan.prompts_per_step)
    model = session.load_policy(config, model_path, mesh)
    execution = session.execution_config(config)
    buckets = PromptBuckets(bits=config.prompt_bucket_bits, maximum=plan.max_prompt_length)
    with ExecutionPool(execution) as pool, CompileCounter() as compiles, \
            make_engine(config, model, tokenizer, buckets, model_path) as engine, \
            Checkpointer(workdir / "checkpoints", max_to_keep=config.max_to_keep) as checkpointer, \
            MetricsLogger(distributed.output_dir(workdir), tensorboard=config.tensorboard,
                          wandb_project=(config.wandb_project or None) if distributed.is_main()
                          else None,
                          config=config.to_dict()) as logger:
        trainer = _Trainer(config, plan, model, tokenizer, tasks, engine, buckets, pool,
                           checkpointer, logger, mesh, compiles)
        return trainer.run()


def _dry_run(config: ml_collections.ConfigDict) -> dict:
    """The step plan over the dataset (before any task filter that needs the policy), and a
    preview of the prompts (`arc_jax.dry_run`)."""
    from arc_jax import dry_run

    plan = step_plan(config, len(data.load_tasks(config.dataset)))
    summary = dry_run.run(config)
    print(f"step plan: {plan.describe()}")
    return {"plan": dataclasses.asdict(plan), "preview": summary}


@dataclasses.dataclass
class RunState:
    """Everything a checkpoint keeps besides the arrays (its meta): the task stream's position
    and task-selection counts, the collapse guard's memory, the skip counters, and the
    learning-rate scale that rollbacks lowered."""

    stream: TaskStream
    guard: CollapseGuard
    skipped_prompts: int = 0
    skipped_updates: int = 0
    lr_scale: float = 1.0

    def to_meta(self) -> dict:
        return {"stream": self.stream.state_dict(), "guard": self.guard.state_dict(),
                "skipped_prompts": self.skipped_prompts, "skipped_updates": self.skipped_updates,
                "lr_scale": self.lr_scale}

    def load_meta(self, meta: dict) -> None:
        # checkpoints before task selection kept the stream's position alone
        self.stream.load_state_dict(meta.get("stream", {"position": meta.get("stream_position", 0)}))
        self.guard.load_state_dict(meta["guard"])
        self.skipped_prompts, self.skipped_updates = meta["skipped_prompts"], meta["skipped_updates"]
        self.lr_scale = meta["lr_scale"]


class _Trainer:
    """The state of one run and its steps; `run()` trains, evaluates and reports."""

    def __init__(self, config, plan: StepPlan, model, tokenizer, tasks, engine: RolloutEngine,
                 buckets: PromptBuckets, pool, checkpointer, logger, mesh,
                 compiles: CompileCounter):
        self.config, self.plan, self.model, self.tokenizer = config, plan, model, tokenizer
        self.tasks, self.pool, self.checkpointer, self.logger = tasks, pool, checkpointer, logger
        self.mesh, self.compiles = mesh, compiles
        self.outdir = distributed.output_dir(pathlib.Path(config.workdir))
        self.loss = session.loss_config(config)
        self.buckets, self.sampler = buckets, engine
        self.completion_buckets = completion_buckets(config)
        self.make_prompt = PromptMaker(config, tokenizer, plan.max_prompt_length)
        self.state = RunState(episode.task_stream(config, tasks),
                              CollapseGuard(session.collapse_config(config)))
        self.eos_ids = prompts.stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.updater = self._make_updater()
        self._check_update_memory()
        self.warm = False  # set after the first step of this process: compiles after it are news

    def _make_updater(self) -> GRPOUpdater:
        return GRPOUpdater(self.model, self.loss,
                           session.optimizer_config(self.config, self.plan.total_steps,
                                                   self.state.lr_scale),
                           mesh=self.mesh, num_micro_batches=self.plan.micro_batches,
                           temperature=self.config.temperature)

    def _check_update_memory(self) -> None:
        """Refuses, before anything compiles, an update whose largest batch will not fit (with
        the memory the sampler will take after the first update already taken)."""
        plan = self.updater.memory_plan(self.plan.prompts_per_step, self.buckets.largest,
                                        self.plan.num_generations,
                                        self.config.max_completion_length)
        check_update_fits(plan, free_device_bytes() - getattr(self.sampler, "deferred_bytes", 0))

    # --- checkpoints

    def _restore(self, step: int | None) -> int:
        """Loads the checkpoint of `step` (latest if None); returns its step, 0 when there is none."""
        if self.checkpointer.latest_step() is None:
            return 0
        arrays, meta = self.checkpointer.restore(step, abstract_arrays=self.updater.state())
        self._set_lr_scale(meta["lr_scale"])
        self.state.load_meta(meta)
        self.updater.load_state(arrays)
        self.sampler.update_weights(nnx.state(self.model, LoraParam), version=meta["step"])
        return meta["step"]

    def _set_lr_scale(self, scale: float) -> None:
        """A new learning rate needs a new compiled update; the optimiser state carries over."""
        if scale != self.state.lr_scale:
            arrays = self.updater.state()
            self.state.lr_scale = scale
            self.updater = self._make_updater()
            self.updater.load_state(arrays)

    # --- one step

    def rollout(self, step: int) -> tuple[list[Group], dict[str, float]]:
        """The step's groups (`fill_with_signal`), and their timings and counts."""
        config = self.config
        timings = {"time/rollout_s": 0.0, "time/reward_s": 0.0}

        def sample(count: int, batch: int) -> list[Group]:
            draws, prompt_ids, skipped = self.make_prompt.next_prompts(self.state.stream, count)
            self.state.skipped_prompts += skipped
            sampling = session.sampling_params(
                config, self.eos_ids, seed=seeds.step_sampling(config.seed, step, batch))
            groups, rollout_s, reward_s = sample_and_score(
                self.sampler, self.pool, draws, prompt_ids, self.plan.num_generations, sampling,
                config.reward_name, config.sampler.max_prompts_per_batch)
            timings["time/rollout_s"] += rollout_s
            timings["time/reward_s"] += reward_s
            if config.task_selection.enabled:  # the pass rates it draws by, the same on every host
                solved = distributed.agree([sum(r.solved for r in g.records) for g in groups])
                for group, count in zip(groups, solved):
                    self.state.stream.observe(group.draw.task.id, count, len(group.records))
            return episode.agree_rewards(groups)

        max_batches = config.dynamic_sampling_max_batches if config.dynamic_sampling else 1
        groups, counts = fill_with_signal(sample, self.plan.prompts_per_step, max_batches,
                                          config.dynamic_sampling)
        if config.dynamic_sampling:
            timings |= {f"dynamic_sampling/{k}": float(v) for k, v in counts.items()}
            timings["dynamic_sampling/rollouts"] = float(counts["groups_sampled"]
                                                         * self.plan.num_generations)
        return groups, timings

    def step(self, step: int) -> dict[str, float]:
        config = self.config
        step_begin = time.perf_counter()
        groups, rollout_stats = self.rollout(step)
        rollout_s = rollout_stats["time/rollout_s"]
        begin = time.perf_counter()
        batch, reward_stats = group_batch(groups, pad_id=self.pad_id, eos_ids=self.eos_ids,
                                          loss=self.loss, buckets=self.buckets,
                                          completion_buckets=self.completion_buckets)
        sampler_logprobs = batch.sampler_logprobs
        if not self.loss.importance_sampling_correction:
            batch = batch._replace(sampler_logprobs=None)
        agreement = {}
        if config.num_iterations > 1 or not self.sampler.trainer_logprobs:
            # The trainer's log-probs before the update: old log-probs of the loss, and the
            # yardstick of how far an external sampler is from the trainer.
            batch = batch._replace(old_logprobs=self.updater.logprobs(batch))
            agreement = grpo.sampler_agreement(distributed.to_host(batch.old_logprobs),
                                               sampler_logprobs, batch.completion_mask)
        for _ in range(config.num_iterations):
            update = self.updater.step(batch)
            self.state.skipped_updates += int(update.get("skipped", 0))
        update_s = time.perf_counter() - begin
        sync = {}
        if step % config.rollout.sync_every == 0:
            begin = time.perf_counter()
            self.sampler.update_weights(nnx.state(self.model, LoraParam), version=step)
            sync = {"time/sync_s": time.perf_counter() - begin}
        tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        return {**rollout_metrics(groups), **reward_stats, **update,
                "skipped_prompts": float(self.state.skipped_prompts),
                "skipped_updates": float(self.state.skipped_updates),
                **agreement, **sync, **rollout_stats, "time/update_s": update_s,
                "time/step_s": time.perf_counter() - step_begin,
                "tokens_per_s": tokens / max(rollout_s, 1e-9),
                "prompt_tokens": float(sum(len(g.prompt_ids) for g in groups)),
                "prompt_padded_len": float(np.shape(batch.prompt_ids)[1]),
                "completion_padded_len": float(np.shape(batch.completion_ids)[2]),
                **self._compile_metrics(step), **device_memory_metrics()}

    def _compile_metrics(self, step: int) -> dict[str, float]:
        """`compiles` (programs compiled, or loaded from the persistent cache, since the last
        step) and their seconds; after this process's first step each one is also printed: a
        new prompt bucket, or the first checkpoint's finiteness check (which then counts in
        the step after the save)."""
        compiled, hits = self.compiles.take()
        for c in compiled:
            if self.warm:
                print(f"step {step}: compiled {c.name} in {c.seconds:.1f} s after the first "
                      "step")
            elif c.seconds >= 1.0:
                print(f"step {step}: compiled {c.name} in {c.seconds:.1f} s")
        self.warm = True
        return {"compiles": float(len(compiled)), "compile_cache_hits": float(hits),
                "time/compile_s": float(sum(c.seconds for c in compiled))}

    def evaluate(self, name: str) -> dict:
        """Solve rates of the current policy on the training tasks (as they are, unaugmented),
        sampled and scored as `arc_jax.eval` does; cached in workdir/eval_<name>.json."""
        path = self.outdir / f"eval_{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        n = self.config.eval.num_samples
        print(f"evaluating the policy {name} RL: {len(self.tasks)} tasks x {n} samples", flush=True)
        lines, _ = evaluation.sample_round(self.config, self.sampler, self.make_prompt,
                                           self.eos_ids, self.tasks, 0, n, augment=False)
        records = evaluation.score_lines(self.config, self.pool, lines, self.tasks)
        result = evaluation.solve_rates(lines, records)
        path.write_text(json.dumps(result, indent=1))
        return result

    # --- the run

    def run(self) -> dict:
        config = self.config
        start = self._restore(None)
        self.logger.truncate_after(start)
        if start:
            print(f"resumed from the checkpoint of step {start}")
        before = self.evaluate("before") if config.eval.num_samples else None
        progress = self._progress(start)
        step = start
        while step < self.plan.total_steps:
            step += 1
            metrics = distributed.agree(self.step(step))  # process 0's, on every process
            if step % config.logging_steps == 0 or step == self.plan.total_steps:
                self.logger.log(step, metrics)
                verdict = self.state.guard.update(step, metrics)
                if verdict.stop:
                    logging.warning("collapse guard stopped the run at step %d", step)
                    break
                if verdict.rollback:
                    step = self._roll_back(verdict)
                    progress = self._progress(step)
                    continue
            progress.update(step, metrics)
            if step % config.save_steps == 0 or step == self.plan.total_steps:
                self.checkpointer.save(step, self.updater.state(), self.state.to_meta())
        progress.close()
        self.checkpointer.wait()
        after = self.evaluate("after") if config.eval.num_samples else None
        summary = report.write_summary(self.outdir, before, after)
        return summary

    def _progress(self, step: int) -> ProgressBar:
        """The progress bar, shown by process 0 only."""
        return ProgressBar(self.plan.total_steps, initial_step=step,
                           file=None if distributed.is_main() else io.StringIO())

    def _roll_back(self, verdict) -> int:
        target = self.checkpointer.latest_step(at_most=verdict.rollback_to)
        if target is None:
            raise RuntimeError("collapse guard asked for a rollback but no checkpoint is old enough")
        guard_state = self.state.guard.state_dict()  # it remembers the collapse, not the checkpoint
        step = self._restore(target)
        self.state.guard.load_state_dict(guard_state)
        self._set_lr_scale(verdict.lr_scale)
        self.checkpointer.delete_after(step)
        self.logger.truncate_after(step)
        logging.warning("collapse guard: rolled back to step %d, learning rate x%.3g", step,
                        self.state.lr_scale)
        return step

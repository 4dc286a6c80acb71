"""`config.mode = "search"`: search-and-learn at test time, without a test answer.

    python -m arc_jax.launch --config=configs/search_demo.py

In `config.search.rounds` rounds, n_predictions / rounds programs per task are sampled through
the evaluation's path (`eval.sample_round`: round 0 shows the task as it is, later rounds a
fresh augmentation unless `search.augment` is off) and run on every train and test input; they are graded on the train pairs
only. Every program that ran is relabelled in hindsight (`arc_jax.relabel`: the real inputs
with its own outputs make a task it solves), a bounded set with distinct outputs is kept per
task (most train pairs right first), and between two rounds the LoRA adapter is fine-tuned on
the kept pairs with a supervised loss on the completion tokens. The fine-tuning is the GRPO
update itself (jitted, sharded, memory-checked) with every advantage 1, no KL term and one
iteration: its gradient is exactly that of the completion tokens' mean negative log-likelihood.
The final two attempts per test input come from every round's programs by arc25's rule.

No test output reaches the loop: the tasks lose them as they are loaded. When the dataset has
them, a last, separate step scores the predictions (test pass rate per round, pass@k per
round, the submission's score). With `config.search.baseline`, the same rounds are sampled
first without learning ("plain": the same prompts, augmentations and seeds), side by side;
search's round 0, before any learning, is plain's (the same samples), not sampled again.

Files in `config.search.output_dir`, per policy ("plain", "search"): predictions.jsonl.gz (a
gzip member per round, as in `eval`), relabelled.jsonl (the kept set: task, relabelled pairs,
program), rounds.json, submission.json, pass_at_k.json/.png (with test outputs); adapters/
(Orbax: adapter and optimiser after each learning phase); summary.json; tasks_challenges.json
(and tasks_solutions.json when known), as `eval` writes them. A killed run resumes
after its last complete round and learning phase and ends with the same files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from arc_jax import data, episode, eval as evaluation, prompts, relabel, rewards, seeds
from arc_jax import session, submission
from arc_jax.config import ConfigError
from arc_jax.execution import ExecutionPool
from arc_jax.model import LoraParam
from arc_jax.rollout import PromptBuckets
from arc_jax.rollout.memory import free_device_bytes
from arc_jax.train.checkpoint import Checkpointer
from arc_jax.train.loop import completion_buckets
from arc_jax.train.memory import check_update_fits
from arc_jax.train.optim import OptimizerConfig
from arc_jax.train.update import GroupBatch, GRPOUpdater


def policies(config: ml_collections.ConfigDict) -> list[str]:
    return (["plain"] if config.search.baseline else []) + ["search"]


def plan(config: ml_collections.ConfigDict, num_tasks: int) -> str:
    s = config.search
    return (f"search plan: {num_tasks} tasks x {s.n_predictions} predictions ({s.rounds} rounds "
            f"of {s.n_predictions // s.rounds}, rounds after the first "
            f"{'augmented' if s.augment else 'as the task is'}), "
            f"{s.learn_steps} updates of {s.learn_batch} relabelled pairs between rounds; "
            f"policies: {', '.join(policies(config))}")


def hide_test_outputs(tasks: Mapping[str, data.Task]) -> dict[str, data.Task]:
    """The tasks as the loop sees them: every test output removed."""
    return {t: dataclasses.replace(task, test=tuple(data.Pair(p.input, None) for p in task.test))
            for t, task in tasks.items()}


def run(config: ml_collections.ConfigDict) -> dict:
    s = config.search
    if config.dry_run:
        print(plan(config, len(data.load_tasks(config.dataset))))
        return {}
    if jax.process_count() > 1:
        raise ConfigError("search runs in one process (all devices of one host); this run has "
                          f"{jax.process_count()}")
    out = pathlib.Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path, tokenizer, tasks = session.policy_and_tasks(config)
    hidden = hide_test_outputs(tasks)
    print(plan(config, len(hidden)))
    max_prompt = config.max_seq_length - config.max_completion_length
    evaluation.check_prompt_lengths(config, episode.PromptMaker(config, tokenizer, max_prompt),
                                    hidden, s.rounds, s.augment)
    model = session.load_policy(config, model_path, session.make_mesh(config))
    buckets = PromptBuckets(bits=config.prompt_bucket_bits, maximum=max_prompt)
    with ExecutionPool(session.execution_config(config)) as pool, \
            session.make_engine(config, model, tokenizer, buckets, model_path) as engine:
        results = search(config, model, tokenizer, hidden, engine, pool, out)
    return report(config, results, tasks, out)


@dataclasses.dataclass
class RoundResult:
    """One round of one policy: its predictions (file lines), their records (graded on the
    train pairs only) and its answer-free figures."""

    lines: list[dict]
    records: list[rewards.CompletionRecord]
    row: dict


def search(config: ml_collections.ConfigDict, model, tokenizer, tasks: Mapping[str, data.Task],
           engine, pool: ExecutionPool, out: pathlib.Path) -> dict[str, list[RoundResult]]:
    """Every policy's rounds on `tasks` (whose test outputs must be hidden); nothing here can
    see a test answer."""
    if any(p.output is not None for task in tasks.values() for p in task.test):
        raise ValueError("search: the tasks must come without test outputs (hide_test_outputs)")
    max_prompt = config.max_seq_length - config.max_completion_length
    maker = episode.PromptMaker(config, tokenizer, max_prompt)
    buckets = PromptBuckets(bits=config.prompt_bucket_bits, maximum=max_prompt)
    results = {}
    for name in policies(config):
        learner, round_zero = None, None
        if name == "search":
            learner = Learner(config, model, tokenizer, maker, buckets, tasks, out / "adapters")
        if name == "search" and "plain" in results:
            # Before any learning, search samples what plain sampled (the same weights, prompts
            # and seeds): its round 0 is plain's, not sampled twice.
            round_zero = [{k: line[k] for k in evaluation.SAMPLED_FIELDS}
                          for line in results["plain"][0].lines]
        try:
            results[name] = run_rounds(config, name, engine, pool, maker, tokenizer, tasks, out,
                                       learner, round_zero)
        finally:
            if learner is not None:
                learner.close()
    return results


def run_rounds(config, name: str, engine, pool: ExecutionPool, maker: episode.PromptMaker,
               tokenizer, tasks: Mapping[str, data.Task], out: pathlib.Path,
               learner: Learner | None, round_zero: list[dict] | None = None
               ) -> list[RoundResult]:
    """The rounds of one policy, resuming after the rounds already in its predictions file
    and the learning phases already in `learner`'s checkpoints; `round_zero`, when given, is
    round 0's lines, taken instead of sampled."""
    s = config.search
    path = out / f"{name}.predictions.jsonl.gz"
    done = evaluation.read_rounds(path)
    rows_path = out / f"{name}.rounds.json"
    learned = learner.restore(engine) if learner is not None else 0
    kept: dict[str, list[relabel.Relabelled]] = {t: [] for t in sorted(tasks)}
    results: list[RoundResult] = []
    bar = tqdm.tqdm(total=s.rounds, initial=len(done), unit="round", dynamic_ncols=True,
                    desc=f"{name} ({len(done)} rounds resumed)" if done else name)
    for r in range(s.rounds):
        if r in done:
            lines = done[r]
        elif r == 0 and round_zero is not None:
            lines = round_zero
            bar.write(f"{name} round 0: the plain policy's (the same weights and seeds)")
        else:
            lines, figures = evaluation.sample_round(config, engine, maker,
                                                     prompts.stop_token_ids(tokenizer), tasks, r,
                                                     s.n_predictions // s.rounds, s.augment)
            bar.write(f"{name} round {r}: {figures['output_tokens']:,} output tokens sampled in "
                      f"{figures['sample_s']:.1f} s")
        begin = time.perf_counter()
        records = evaluation.score_lines(config, pool, lines, tasks)
        bar.write(f"{name} round {r}: {len(lines)} programs run and graded in "
                  f"{time.perf_counter() - begin:.1f} s")
        if r not in done:
            evaluation.append_round(path, lines)
        kept = keep_relabelled(kept, lines, records, tasks, r, s.max_relabelled_per_task)
        row = round_row(r, records, kept)
        if learner is not None and r < s.rounds - 1:
            if r >= learned:
                begin = time.perf_counter()
                # (the seconds stay out of the files: not a result)
                shape, seconds = learner.learn(r, kept, engine)
                bar.write(f"{name} round {r}: learned in {time.perf_counter() - begin:.1f} s "
                          "(compilation included)" + (
                              f"; updates of {shape}: the first {seconds[0]:.1f} s, "
                              f"then {np.mean(seconds[1:]):.2f} s each" if len(seconds) > 1
                              else ""))
            row |= learner.history[r]
        results.append(RoundResult(lines, records, row))
        write_atomically(rows_path, json.dumps([x.row for x in results], indent=1))
        write_atomically(out / f"{name}.relabelled.jsonl", "".join(
            json.dumps(item.to_json()) + "\n" for t in sorted(kept) for item in kept[t]))
        bar.write(f"{name} round {r}: " + ", ".join(f"{k} {v}" for k, v in row.items()
                                                    if k != "round"))
        if r not in done:
            bar.update(1)
    bar.close()
    return results


def keep_relabelled(kept: Mapping[str, list[relabel.Relabelled]], lines: Sequence[dict],
                    records: Sequence[rewards.CompletionRecord], tasks: Mapping[str, data.Task],
                    r: int, limit: int) -> dict[str, list[relabel.Relabelled]]:
    """The kept set after round r: the previous one and the round's programs, `relabel.keep`
    per task (the previous set is the top of all earlier rounds, so this equals keeping from
    every round at once)."""
    candidates = {t: list(items) for t, items in kept.items()}
    index: dict[str, int] = {}
    for line, record in zip(lines, records):
        task_id = line["task_id"]
        index[task_id] = index.get(task_id, -1) + 1
        item = relabel.relabel(tasks[task_id], record,
                               data.Augmentation.from_json(line["augmentation"]),
                               line["completion"], r, index[task_id])
        if item is not None:
            candidates[task_id].append(item)
    return {t: relabel.keep(items, limit) for t, items in candidates.items()}


def round_row(r: int, records: Sequence[rewards.CompletionRecord],
              kept: Mapping[str, Sequence[relabel.Relabelled]]) -> dict:
    """The answer-free figures of a round: programs, programs that ran, programs right on every
    train pair, distinct outputs among those that ran, relabelled pairs kept (all rounds), and
    tasks with a kept program right on every train pair."""
    ran = [x for x in records if x.valid]
    return {"round": r, "programs": len(records), "ran": len(ran),
            "train_right": sum(x.train.is_correct for x in ran),
            "distinct_outputs": len({x.fingerprint for x in ran}),
            "kept": sum(len(items) for items in kept.values()),
            "tasks_train_right": sum(any(i.train_correct == len(i.task.train) for i in items)
                                     for items in kept.values())}


def write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- learning


class Learner:
    """Fine-tunes the LoRA adapter on relabelled pairs between rounds; one checkpoint (adapter
    and optimiser) per learning phase, so a killed run resumes after the last one."""

    def __init__(self, config: ml_collections.ConfigDict, model, tokenizer,
                 maker: episode.PromptMaker, buckets: PromptBuckets,
                 tasks: Mapping[str, data.Task], folder: pathlib.Path):
        s = config.search
        self.config, self.model, self.tokenizer, self.maker = config, model, tokenizer, maker
        self.buckets, self.completion_buckets = buckets, completion_buckets(config)
        self.task_index = {t: i for i, t in enumerate(sorted(tasks))}
        self.eos_id = prompts.stop_token_ids(tokenizer)[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        loss = dataclasses.replace(
            session.loss_config(config), loss_type="dapo", beta=0.0, top_entropy_quantile=1.0,
            importance_sampling_correction=False, mask_truncated_completions=False,
            soft_punish_cache=0, off_policy_mask_threshold=None, delta=None)
        optimizer = OptimizerConfig(
            learning_rate=s.learning_rate, lr_scheduler_type="constant_with_warmup",
            warmup_ratio=0.0, total_steps=max(1, s.learn_steps * (s.rounds - 1)),
            weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm)
        self.updater = GRPOUpdater(model, loss, optimizer,
                                   num_micro_batches=config.gradient_accumulation_steps)
        check_update_fits(self.updater.memory_plan(s.learn_batch, buckets.largest, 1,
                                                   config.max_completion_length),
                          free_device_bytes())
        self.checkpointer = Checkpointer(folder, max_to_keep=2)
        self.history: list[dict] = []  # the figures of each learning phase, checkpointed

    def restore(self, engine) -> int:
        """Loads the newest learning phase (into the engine too); returns how many rounds have
        been learned from (0 when there is none)."""
        if self.checkpointer.latest_step() is None:
            return 0
        arrays, meta = self.checkpointer.restore(None, abstract_arrays=self.updater.state())
        self.updater.load_state(arrays)
        self.history = meta["history"]
        engine.update_weights(nnx.state(self.model, LoraParam), version=meta["step"])
        return meta["step"]

    def encode(self, item: relabel.Relabelled) -> tuple[list[int], list[int]] | None:
        """(prompt ids, completion ids + the stop token) of a relabelled pair; None when the
        prompt is too long. The prompt shows the examples as the program's own prompt did."""
        seed = seeds.prompt(self.config.seed, self.task_index[item.task.id])
        prompt = self.maker(item.task, seed=seed)
        if not self.maker.fits(len(prompt)):
            return None
        limit = self.config.max_completion_length
        completion = self.tokenizer.encode(item.completion, add_special_tokens=False)[:limit - 1]
        return prompt, completion + [self.eos_id]

    def learn(self, r: int, kept: Mapping[str, Sequence[relabel.Relabelled]], engine
              ) -> tuple[str, list[float]]:
        """learn_steps updates on batches drawn from the kept pairs (seeds.search_batch; with
        replacement, in proportion to 1 + the program's train pairs right), then
        a checkpoint and the new adapter to the engine. Figures: pairs, and the completion
        tokens' mean negative log-likelihood on the first batch before and after, appended
        to `history`. Returns the padded batch shape and the seconds of each update (the
        first compiles), for the log."""
        s = self.config.search
        items = [item for t in sorted(kept) for item in kept[t]]
        encoded = [self.encode(item) for item in items]
        pairs = [p for p in encoded if p is not None]
        # a pair is drawn in proportion to 1 + its program's train pairs right
        weights = np.array([1 + item.train_correct for item, p in zip(items, encoded)
                            if p is not None], np.float64)
        figures, shape, seconds = {"learn_pairs": len(pairs)}, "", []
        if pairs and s.learn_steps:
            # one padded shape for the phase (one compile), from its longest prompt and completion
            prompt_len = self.buckets(max(len(p) for p, _ in pairs))
            completion_len = self.completion_buckets(max(len(c) for _, c in pairs))
            shape = f"{s.learn_batch} x ({prompt_len} + {completion_len}) tokens"
            first = None
            for step in range(s.learn_steps):
                rng = seeds.search_batch(self.config.seed, r, step)
                chosen = rng.choice(len(pairs), size=s.learn_batch, p=weights / weights.sum())
                batch = sft_batch([pairs[i] for i in chosen], self.pad_id, prompt_len,
                                  completion_len)
                if first is None:
                    first = batch
                    figures["learn_nll_before"] = round(self.nll(first), 4)
                begin = time.perf_counter()
                self.updater.step(batch)  # (returns its metrics: waits for the update)
                seconds.append(time.perf_counter() - begin)
            figures["learn_nll_after"] = round(self.nll(first), 4)
        assert len(self.history) == r, "learning phases run in order"
        self.history.append(figures)
        self.checkpointer.save(r + 1, self.updater.state(), {"history": self.history})
        self.checkpointer.wait()
        engine.update_weights(nnx.state(self.model, LoraParam), version=r + 1)
        return shape, seconds

    def nll(self, batch: GroupBatch) -> float:
        logprobs = np.asarray(jax.device_get(self.updater.logprobs(batch)))
        mask = np.asarray(batch.completion_mask)
        return float(-(logprobs * mask).sum() / mask.sum())

    def close(self) -> None:
        self.checkpointer.close()


def sft_batch(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, prompt_len: int,
              completion_len: int) -> GroupBatch:
    """P (prompt, completion) pairs as a GroupBatch of P groups of one completion: prompts
    left-padded to prompt_len, completions right-padded to completion_len, loss on every
    completion token, every advantage 1."""
    num = len(pairs)
    prompt_ids = np.full((num, prompt_len), pad_id, np.int32)  # [P, S]
    prompt_mask = np.zeros((num, prompt_len), np.float32)
    completion_ids = np.full((num, 1, completion_len), pad_id, np.int32)  # [P, 1, T]
    completion_mask = np.zeros((num, 1, completion_len), np.float32)
    for i, (prompt, completion) in enumerate(pairs):
        prompt_ids[i, prompt_len - len(prompt):] = prompt
        prompt_mask[i, prompt_len - len(prompt):] = 1
        completion_ids[i, 0, :len(completion)] = completion
        completion_mask[i, 0, :len(completion)] = 1
    return GroupBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                      completion_ids=completion_ids, completion_mask=completion_mask,
                      advantages=np.ones((num, 1), np.float32))


# ----------------------------------------------------------------------------- the final step


def report(config: ml_collections.ConfigDict, results: Mapping[str, list[RoundResult]],
           tasks: Mapping[str, data.Task], out: pathlib.Path) -> dict:
    """Submissions from every round's programs (no answer needed), then, if `tasks` have their
    test outputs, the scores: test pass rate and pass@k per round, the submission's score.
    Prints the policies side by side; writes the files and summary.json."""
    hidden = hide_test_outputs(tasks)
    solutions = None
    if all(p.output is not None for task in tasks.values() for p in task.test):
        solutions = {t: [p.output for p in task.test] for t, task in tasks.items()}
    summary = {}
    for name, rounds in results.items():
        candidates = {t: [] for t in hidden}
        for result in rounds:
            for line, record in zip(result.lines, result.records):
                candidates[line["task_id"]].append(submission.candidate_from_record(record))
        entries = submission.make_submission(hidden, candidates)
        problems = submission.validate(entries, hidden)
        if problems:
            raise ValueError(f"{name}: the submission is not valid: {problems[:3]}")
        (out / f"{name}.submission.json").write_text(json.dumps(entries))
        summary[name] = {"rounds": [r.row for r in rounds]}
        if solutions is not None:
            summary[name] |= score(rounds, solutions)
            summary[name]["submission"] = {k: v for k, v in submission.score(entries, tasks).items()
                                           if k != "tasks"}
            curves = summary[name]["pass_at_k"]
            (out / f"{name}.pass_at_k.json").write_text(json.dumps(curves, indent=1))
            evaluation.plot_pass_at_k({f"round {r}": c for r, c in curves.items()},
                                      f"{name}: test pass@k per round", out / f"{name}.pass_at_k.png")
    print(side_by_side(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    dataset = evaluation.write_dataset(tasks, out)
    print(f"wrote to {out}: " + ", ".join(
        f"{name}.predictions.jsonl.gz, {name}.relabelled.jsonl, {name}.rounds.json, "
        f"{name}.submission.json" + (f", {name}.pass_at_k.json/.png" if solutions else "")
        for name in results) + f", adapters/, summary.json, {dataset.name} (give it as "
        "--dataset to python -m arc_jax.submission validate|score)")
    return summary


def score(rounds: Sequence[RoundResult], solutions: Mapping[str, Sequence[np.ndarray]]) -> dict:
    """Per round, against the solutions: the test pass rate (mean over tasks of the share of
    the round's predictions right on every test input), pass@k (k = 1..the round's predictions
    per task) and the tasks with a right prediction so far."""
    test_pass, curves, solved, seen = [], {}, [], set()
    for r, result in enumerate(rounds):
        right: dict[str, list[bool]] = {t: [] for t in solutions}
        for line, record in zip(result.lines, result.records):
            expected = solutions[line["task_id"]]
            outputs = record.test_outputs if record.valid else (None,) * len(expected)
            right[line["task_id"]].append(rewards.grade_partition(expected, outputs).is_correct)
        test_pass.append(float(np.mean([np.mean(v) for v in right.values()])))
        n = max(len(v) for v in right.values())
        curves[r] = {k: float(np.mean([rewards.pass_at_k(len(v), sum(v), k) for v in right.values()]))
                     for k in range(1, n + 1)}
        seen |= {t for t, v in right.items() if any(v)}
        solved.append(len(seen))
    return {"test_pass_rate": test_pass, "pass_at_k": curves, "tasks_solved_so_far": solved}


def side_by_side(summary: Mapping[str, dict]) -> str:
    """Per round and policy: programs right on every train pair, and with test outputs the test
    pass rate and tasks solved so far; then each submission's score."""
    names = list(summary)
    header = ["round"] + [f"{n}: {c}" for n in names for c in ("train-right", "test pass", "solved")]
    lines = [" | ".join(header)]
    for r in range(len(summary[names[0]]["rounds"])):
        cells = [str(r)]
        for n in names:
            s = summary[n]
            cells.append(str(s["rounds"][r]["train_right"]))
            cells.append(f"{100 * s['test_pass_rate'][r]:.1f}%" if "test_pass_rate" in s else "-")
            cells.append(str(s["tasks_solved_so_far"][r]) if "tasks_solved_so_far" in s else "-")
        lines.append(" | ".join(cells))
    for n in names:
        if "submission" in summary[n]:
            sub = summary[n]["submission"]
            lines.append(f"{n}: submission score {sub['score']:.3f} ({sub['num_solved']} of "
                         f"{sub['num_tasks']} tasks solved with 2 attempts)")
    return "\n".join(lines)

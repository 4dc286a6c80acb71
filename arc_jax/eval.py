"""`config.mode = "eval"`: a policy's predictions on held-out tasks, the reference's metrics
table, pass@k, a Kaggle submission and pictures.

    python -m arc_jax.launch --config=configs/eval_demo.py

For each policy (the base model when `config.eval.baseline`, then the adapter of
`config.checkpoint`: a training workdir, its checkpoints folder, or a PEFT adapter folder),
`config.eval.rounds` rounds each sample n_predictions / rounds completions per task; round 0
shows the task as it is, later rounds a fresh augmentation (test-time augmentation), whose
outputs are mapped back before grading. Each finished round is appended to
`<output_dir>/<policy>.predictions.jsonl.gz` as one gzip member, so an interrupted evaluation
resumes after its last complete round and ends with the same file as an uninterrupted one.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import time
import zlib
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from arc_jax import data, episode, prompts, rewards, seeds, session, submission
from arc_jax.config import ConfigError
from arc_jax.execution import ExecutionPool
from arc_jax.model import LoraParam
from arc_jax.model.checkpoint import load_peft_adapter
from arc_jax.rollout import PromptBuckets
from arc_jax.data.task_stream import Draw


def policies(config: ml_collections.ConfigDict) -> list[str]:
    """The names of the policies evaluated, in order: "baseline", then the checkpoint's."""
    return (["baseline"] if config.eval.baseline else []) + (
        [policy_name(config)] if config.checkpoint else [])


def plan(config: ml_collections.ConfigDict, num_tasks: int) -> str:
    e = config.eval
    per_round = e.n_predictions // e.rounds
    names = policies(config)
    return (f"eval plan: {len(names)} policies ({', '.join(names)}) x {num_tasks} tasks x "
            f"{e.n_predictions} predictions ({e.rounds} rounds of {per_round}, rounds after the "
            f"first augmented) = {len(names) * num_tasks * e.n_predictions} programs")


def policy_name(config: ml_collections.ConfigDict) -> str:
    return pathlib.Path(config.checkpoint).name or "checkpoint"


def run(config: ml_collections.ConfigDict) -> dict:
    e = config.eval
    if not (e.baseline or config.checkpoint):
        raise ConfigError("nothing to evaluate: set config.checkpoint or config.eval.baseline=True")
    if config.dry_run:
        print(plan(config, len(data.load_tasks(config.dataset))))
        return {}
    if jax.process_count() > 1:
        raise ConfigError("evaluation runs in one process (all devices of one host); this run "
                          f"has {jax.process_count()}")
    if config.checkpoint and not pathlib.Path(config.checkpoint).exists():
        raise FileNotFoundError(f"config.checkpoint={config.checkpoint!r} does not exist")
    out = pathlib.Path(e.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path, tokenizer, tasks = session.policy_and_tasks(config)
    print(plan(config, len(tasks)))
    max_prompt = config.max_seq_length - config.max_completion_length
    maker = episode.PromptMaker(config, tokenizer, max_prompt)
    check_prompt_lengths(config, maker, tasks, e.rounds)
    model = session.load_policy(config, model_path, session.make_mesh(config))
    buckets = PromptBuckets(bits=config.prompt_bucket_bits, maximum=max_prompt)
    results, timings = {}, {}
    with ExecutionPool(session.execution_config(config)) as pool, \
            session.make_engine(config, model, tokenizer, buckets, model_path) as engine:
        for name in policies(config):
            if name != "baseline":  # the last policy: no update follows its adapter
                load_adapter(config, model)
                adapters, model = nnx.state(model, LoraParam), None
                # With the model dropped, the in-process sampler holds the only references to
                # the base weights, and folding the adapters into them frees the unmerged
                # kernels instead of keeping a merged copy beside them (13 GiB at 8B).
                engine.update_weights(adapters, final=True)
            timings[name] = []
            records = evaluate(config, engine, pool, maker, prompts.stop_token_ids(tokenizer), tasks,
                               out / f"{name}.predictions.jsonl.gz", timings[name])
            results[name] = report(config, name, records, tasks, out)
    if len(results) > 1:
        print(rewards.compare_table({name: r["mean"] for name, r in results.items()},
                                    columns=rewards.COMPACT_COLUMNS))
    pictures(config, tasks, results, out)
    (out / "summary.json").write_text(json.dumps(
        {name: {**{k: v for k, v in r.items() if k != "submission"}, "rounds": timings[name]}
         for name, r in results.items()}, indent=1))
    dataset = write_dataset(tasks, out)
    print(f"wrote to {out}: " + ", ".join(
        f"{name}.predictions.jsonl.gz, {name}.submission.json, {name}.metrics.txt (every "
        f"column, every task), {name}.pass_at_k.json/.png"
        for name in results) + f", summary.json, {dataset.name} (the tasks evaluated: give it as "
        "--dataset to python -m arc_jax.submission validate|score)")
    return results


def write_dataset(tasks: Mapping[str, data.Task], out: pathlib.Path) -> pathlib.Path:
    """The evaluated tasks as a Kaggle-style `tasks_challenges.json` (and, when every test
    output is known, `tasks_solutions.json` beside it), so that the submission can be
    validated and scored against exactly the tasks it answers."""
    challenges = out / "tasks_challenges.json"
    data.save_tasks(tasks, challenges, with_test_outputs=False)
    solutions = out / "tasks_solutions.json"
    if all(p.output is not None for task in tasks.values() for p in task.test):
        solutions.write_text(json.dumps({task_id: [p.output.tolist() for p in task.test]
                                         for task_id, task in tasks.items()}))
    else:
        solutions.unlink(missing_ok=True)
    return challenges


def load_adapter(config: ml_collections.ConfigDict, model) -> None:
    """The LoRA weights of config.checkpoint into the model: a PEFT adapter folder, or the
    newest (or `config.eval.step`) Orbax checkpoint of a training workdir (its optimiser state
    is read to the host and dropped)."""
    from arc_jax.train.checkpoint import Checkpointer
    from arc_jax.train.update import abstract_state

    source = pathlib.Path(config.checkpoint)
    if (source / "adapter_config.json").is_file():
        return load_peft_adapter(model, source)
    folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    if not folder.is_dir():
        raise FileNotFoundError(f"config.checkpoint={config.checkpoint!r}: not a training workdir, "
                                "checkpoints folder or PEFT adapter folder")
    target = abstract_state(model, session.optimizer_config(config, 1))
    with Checkpointer(folder, max_to_keep=None) as checkpointer:
        arrays, meta = checkpointer.restore(config.eval.step or None, abstract_arrays=target)
    nnx.update(model, nnx.State(arrays["lora"]))
    print(f"loaded the adapter of step {meta['step']} from {folder}")


def round_draws(config: ml_collections.ConfigDict, tasks: Mapping[str, data.Task], r: int,
                augment: bool = True) -> list[Draw]:
    """The draws of round r: every task, as it is in round 0, freshly augmented after (unless
    not `augment`)."""
    draws = []
    for i, task_id in enumerate(sorted(tasks)):
        augmentation = data.Augmentation.identity()
        if r and augment:
            rng = seeds.eval_augmentation(config.seed, r, i)
            augmentation = data.Augmentation.sample(rng, config.augment.change_background_probability)
        draws.append(Draw(i, r, augmentation.apply_task(tasks[task_id]), augmentation))
    return draws


def check_prompt_lengths(config, maker: episode.PromptMaker, tasks: Mapping[str, data.Task],
                         rounds: int, augment: bool = True) -> None:
    """Every prompt of every round fits max_seq_length - max_completion_length (the length an
    engine is started for); else one line naming the first that does not, before the model
    loads, rather than an engine's error hours into the run."""
    for r in range(rounds):
        for d in round_draws(config, tasks, r, augment):
            length = len(maker(d.task, seed=maker.seed(d)))
            if not maker.fits(length):
                raise ConfigError(
                    f"task {d.task.id}, round {r}: its prompt has {length} tokens, more than "
                    f"max_seq_length - max_completion_length = {maker.max_prompt_length}; raise "
                    f"config.max_seq_length to at least {length + config.max_completion_length} "
                    "or leave the task out of config.dataset")


def sample_round(config, engine, maker: episode.PromptMaker, stop_ids: tuple[int, ...],
                 tasks: Mapping[str, data.Task], r: int, n: int, augment: bool = True
                 ) -> tuple[list[dict], dict]:
    """Round r's n completions per task (`round_draws`, seed `seeds.eval_sampling`): the lines
    of the predictions file (task_id, round, augmentation, completion) and the round's figures
    (seconds of sampling, programs, tokens, the engine's own statistics)."""
    draws = round_draws(config, tasks, r, augment)
    prompt_ids = [maker(d.task, seed=maker.seed(d)) for d in draws]
    sampling = session.sampling_params(config, stop_ids, seed=seeds.eval_sampling(config.seed, r))
    begin = time.perf_counter()
    groups = engine.generate(prompt_ids, n, sampling)
    sample_s = time.perf_counter() - begin
    lines = [{"task_id": d.task.id, "round": r, "augmentation": d.augmentation.to_json(),
              "completion": c.text} for d, completions in zip(draws, groups) for c in completions]
    lengths = [len(c.token_ids) for completions in groups for c in completions]
    figures = {"round": r, "programs": len(lines), "sample_s": round(sample_s, 3),
               "output_tokens": sum(lengths), "prompt_tokens": sum(map(len, prompt_ids)),
               "truncated": sum(c.truncated for cs in groups for c in cs),
               "lengths": lengths, **getattr(engine, "last_stats", {})}
    return lines, figures


def score_lines(config, pool: ExecutionPool, lines: Sequence[dict],
                tasks: Mapping[str, data.Task]) -> list[rewards.CompletionRecord]:
    """The graded record of each line (its program run on the task's inputs as its round's
    augmentation showed them, outputs reverted); adds the prediction's fields to the line."""
    scored = [rewards.submit_completion(pool, line["completion"], tasks[line["task_id"]],
                                        data.Augmentation.from_json(line["augmentation"]))
              for line in lines]
    records = [pending.record(config.reward_name) for pending in scored]
    for line, record in zip(lines, records):
        line.update(prediction_fields(record))
    return records


def solve_rates(lines: Sequence[dict], records: Sequence[rewards.CompletionRecord]) -> dict:
    """The solve statistics of scored lines (training's before/after table): the mean over tasks
    of the fraction of samples solved, the fraction of tasks any sample solved, the fraction of
    programs that parse, and each task's fraction solved."""
    by_task: dict[str, list[rewards.CompletionRecord]] = {}
    for line, record in zip(lines, records, strict=True):
        by_task.setdefault(line["task_id"], []).append(record)
    per_task = {task_id: float(np.mean([r.solved for r in rs])) for task_id, rs in by_task.items()}
    return {
        "samples_per_task": len(records) // max(len(by_task), 1),
        "sample_solve_rate": float(np.mean(list(per_task.values()))),
        "tasks_solved": float(np.mean([rate > 0 for rate in per_task.values()])),
        "valid_code_ratio": float(np.mean([r.parsed for r in records])),
        "per_task": per_task,
    }


def evaluate(config, engine, pool: ExecutionPool, maker: episode.PromptMaker, stop_ids: tuple[int, ...],
             tasks: Mapping[str, data.Task], path: pathlib.Path, timings: list | None = None
             ) -> dict[str, list[rewards.CompletionRecord]]:
    """All rounds of one policy (resuming after the rounds already in `path`); records by task.
    Each round sampled here appends its figures to `timings` (seconds of sampling and of
    scoring, programs, output tokens, the engine's own statistics) and prints them."""
    e = config.eval
    done = read_rounds(path)
    records: dict[str, list[rewards.CompletionRecord]] = {task_id: [] for task_id in sorted(tasks)}
    bar = tqdm.tqdm(total=e.rounds, initial=len(done), unit="round", dynamic_ncols=True,
                    desc=f"{path.name.split('.')[0]} ({len(done)} rounds resumed)" if done else path.name.split(".")[0])
    for r in range(e.rounds):
        if r in done:
            lines, figures = done[r], None
        else:
            lines, figures = sample_round(config, engine, maker, stop_ids, tasks, r,
                                          e.n_predictions // e.rounds)
        begin = time.perf_counter()
        for line, record in zip(lines, score_lines(config, pool, lines, tasks)):
            records[line["task_id"]].append(record)
        if figures is not None:
            append_round(path, lines)
            figures["score_s"] = round(time.perf_counter() - begin, 3)
            if timings is not None:
                timings.append(figures)
            split = (f" (prefills {figures['prefill_s']:.1f} s, decoding {figures['decode_s']:.1f}"
                     f" s, host visits {figures['host_s']:.1f} s)" if "decode_s" in figures else "")
            bar.write(f"round {r}: {len(lines)} programs, {figures['output_tokens']:,} output "
                      f"tokens sampled in {figures['sample_s']:.1f} s{split} "
                      f"({figures['output_tokens'] / max(figures['sample_s'], 1e-9):,.0f} "
                      f"tokens/s), scored in {figures['score_s']:.1f} s")
            bar.update(1)
    bar.close()
    return records


def prediction_fields(record: rewards.CompletionRecord) -> dict:
    grid = lambda g: None if g is None else np.asarray(g).tolist()
    return {"code": record.code, "error": record.error_type,
            "test_outputs": [grid(g) for g in record.test_outputs],
            "train_correct": None if not record.valid else int(sum(s == 1.0 for s in record.train.pixel_scores)),
            "reward": record.reward}


SAMPLED_FIELDS = ("task_id", "round", "augmentation", "completion")  # a line before scoring


def append_round(path: pathlib.Path, lines: Sequence[dict]) -> None:
    """One gzip member per round (mtime 0, so the bytes depend on the content only)."""
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    with open(path, "ab") as f:
        f.write(gzip.compress(text.encode(), mtime=0))
        f.flush()
        os.fsync(f.fileno())


def read_rounds(path: pathlib.Path) -> dict[int, list[dict]]:
    """The complete rounds of a predictions file; a torn last member is cut off the file."""
    if not path.exists():
        return {}
    raw, rounds, end = path.read_bytes(), {}, 0
    while end < len(raw):
        member = zlib.decompressobj(wbits=31)
        try:
            text = member.decompress(raw[end:])
        except zlib.error:
            break
        if not member.eof:
            break
        lines = [json.loads(line) for line in text.decode().splitlines()]
        rounds[lines[0]["round"]] = [{k: line[k] for k in SAMPLED_FIELDS}
                                     for line in lines]
        end = len(raw) - len(member.unused_data)
    if end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(end)
    return rounds


def report(config, name: str, records: Mapping[str, Sequence[rewards.CompletionRecord]],
           tasks: Mapping[str, data.Task], out: pathlib.Path) -> dict:
    """Prints the metrics table; writes pass@k (JSON, PNG), submission.json and pictures."""
    ks = range(1, config.eval.n_predictions + 1)
    per_task = {t: rewards.task_metrics(r, (1, 2)) for t, r in records.items()}
    mean = rewards.mean_metrics(per_task)
    print(f"--- {name} ---\n{rewards.format_table(per_task, mean, show_tasks=config.eval.show_tasks, columns=rewards.COMPACT_COLUMNS)}")
    (out / f"{name}.metrics.txt").write_text(rewards.format_table(per_task, mean) + "\n")
    curve = {k: float(np.mean([rewards.pass_at_k(len(r), sum(x.test is not None and x.test.is_correct for x in r), k)
                               for r in records.values()])) for k in ks}
    (out / f"{name}.pass_at_k.json").write_text(json.dumps(curve, indent=1))
    plot_pass_at_k({name: curve}, f"{name}: test pass@k", out / f"{name}.pass_at_k.png")
    candidates = {t: [submission.candidate_from_record(x) for x in r] for t, r in records.items()}
    entries = submission.make_submission(tasks, candidates)
    problems = submission.validate(entries, tasks)
    if problems:
        raise ValueError(f"{name}: the submission is not valid: {problems[:3]}")
    (out / f"{name}.submission.json").write_text(json.dumps(entries))
    return {"mean": mean, "per_task": per_task, "pass_at_k": curve, "submission": entries}


def plot_pass_at_k(curves: Mapping[str, Mapping[int, float]], title: str, path: pathlib.Path) -> None:
    """One line per named curve of pass@k (k -> rate in [0, 1]), in percent."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    for label, curve in curves.items():
        axes.plot(list(curve), [100 * v for v in curve.values()], marker="o", label=label)
    if len(curves) > 1:
        axes.legend()
    axes.set(xlabel="k (predictions per task)", ylabel="pass@k (%)", title=title)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def pictures(config, tasks, results: Mapping[str, dict], out: pathlib.Path) -> None:
    """PNGs (pairs, test input, expected output, the two attempts) of config.eval.num_pictures
    tasks per policy: those where the first two policies' pass rates differ most, else the
    first tasks."""
    from arc_jax import visualize

    n = config.eval.num_pictures
    rate = lambda m: m["test_pass_rate"] if m["test_pass_rate"] is not None else m["train_pass_rate"]
    chosen = sorted(tasks)[:n]
    if len(results) > 1:
        first, second = list(results.values())[:2]
        chosen = visualize.most_different({t: rate(m) for t, m in first["per_task"].items()},
                                          {t: rate(m) for t, m in second["per_task"].items()}, n)
    for name, result in results.items():
        for task_id in chosen:
            attempts = [[np.asarray(e["attempt_1"]), np.asarray(e["attempt_2"])]
                        for e in result["submission"][task_id]]
            visualize.save_task_png(tasks[task_id], out / f"{name}.{task_id}.png", attempts)

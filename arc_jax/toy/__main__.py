"""Builds (or reuses) the toy policy and measures it on the demo tasks.

    python -m arc_jax.toy --directory=workdir/toy_policy --samples=8

Prints the build time, the warm-start loss, and over `samples` completions per demo task
(temperature 1): the share with a ```python block, the share that runs, and the share that
solves the task (every train and test output exact).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
import types

import jax.numpy as jnp
from absl import app, flags
from transformers import AutoTokenizer

from arc_jax import prompts
from arc_jax.data import load_tasks
from arc_jax.execution import ExecutionConfig, ExecutionPool
from arc_jax.model import from_pretrained
from arc_jax.rewards import score_completions
from arc_jax.rollout import JaxSampler, SamplerConfig, SamplingParams
from arc_jax.toy import ToyPolicyConfig, build_toy_policy, demo_tasks, read_build_info
from arc_jax.prompts import stop_token_ids


def define_flags() -> types.SimpleNamespace:
    """The command line's flags, as one object handed to `main`."""
    return types.SimpleNamespace(
        directory=flags.DEFINE_string("directory", "workdir/toy_policy",
                                      "Folder of the toy policy (built there if missing)."),
        samples=flags.DEFINE_integer("samples", 8, "Completions per demo task.", lower_bound=1),
        seed=flags.DEFINE_integer("seed", 0, "Seed of the build and of the sampling."))


def main(f: types.SimpleNamespace, argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = ToyPolicyConfig()

    start = time.perf_counter()
    path = build_toy_policy(f.directory.value, config, seed=f.seed.value)
    info = read_build_info(path)
    losses = info["sft_losses"]
    print(f"toy policy at {path}: built in {info['build_seconds']:.0f} s "
          f"(this call {time.perf_counter() - start:.0f} s), {info['num_examples']} examples, "
          f"loss {losses[0]:.2f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f} "
          f"(mean of the last 10 steps)")

    tokenizer = AutoTokenizer.from_pretrained(path)
    tasks = demo_tasks(load_tasks("arc-agi-1/training"), tokenizer, config)
    ids = sorted(tasks)
    prompt_config = dataclasses.replace(config.prompt_config, test_index=0)
    prompt_ids = [prompts.encode_prompt(tokenizer, prompts.render_prompt(tasks[i], prompt_config))
                  for i in ids]
    sampler = JaxSampler(from_pretrained(path, dtype=jnp.float32), tokenizer, SamplerConfig())
    sampling = SamplingParams(temperature=1.0,
                              max_new_tokens=config.max_seq_len - config.max_prompt_tokens,
                              stop_token_ids=stop_token_ids(tokenizer), seed=f.seed.value)
    completions = sampler.generate(prompt_ids, f.samples.value, sampling)

    counts = collections.Counter()
    with ExecutionPool(ExecutionConfig()) as pool:
        for task_id, group in zip(ids, completions):
            for record in score_completions(pool, [c.text for c in group], tasks[task_id]):
                counts["parsed"] += record.parsed
                counts["valid"] += record.valid
                counts["solved"] += record.solved
    total = len(ids) * f.samples.value
    print(f"{len(ids)} demo tasks x {f.samples.value} samples: "
          + ", ".join(f"{key} {counts[key] / total:.1%}" for key in ("parsed", "valid", "solved")))


if __name__ == "__main__":
    app.run(functools.partial(main, define_flags()))

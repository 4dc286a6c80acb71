"""`config.mode = "dry_run"`: load the dataset, augment and render prompts, report lengths.

It runs every step of a GRPO step's data path that needs no model (tasks -> augmentation
-> prompts -> token counts -> over-budget skips) with the run's own task stream and prompt
seeds, so the prompts it shows are the first ones the run will draw.
"""

from __future__ import annotations

import numpy as np
import ml_collections

from arc_jax import data
from arc_jax import episode
from arc_jax import prompts


def run(config: ml_collections.ConfigDict) -> dict:
    """Prints a summary and the first prompts the run will draw; returns the summary."""
    tasks = data.load_tasks(config.dataset)
    if config.max_tasks > 0:
        tasks = dict(sorted(tasks.items())[: config.max_tasks])
    tokenizer = _load_tokenizer(config)
    unit = "tokens" if tokenizer is not None else "characters"
    budget = config.max_seq_length - config.max_completion_length
    stream = episode.task_stream(config, tasks)
    maker = episode.PromptMaker(config, tokenizer, budget)

    lengths, skipped, drawn = [], [], []
    for _ in range(config.preview.num_tasks):
        draw = stream.next()
        text = maker.render(draw.task, maker.seed(draw))
        length = prompts.prompt_num_tokens(tokenizer, text) if tokenizer is not None else len(text)
        if not maker.fits(length):
            skipped.append(draw.task.id)
            continue
        drawn.append(draw.task.id)
        lengths.append(length)
        if len(drawn) <= config.preview.show_prompts:
            print(f"--- prompt {len(drawn)} of the run: task {draw.task.id} ({length} {unit}) ---"
                  f"\n{text}\n")

    summary = {
        "dataset": config.dataset,
        "num_tasks_in_dataset": len(tasks),
        "num_prompts": len(drawn) + len(skipped),
        "drawn_task_ids": drawn,
        "num_skipped_over_budget": len(skipped),
        "length_unit": unit,
        "length_min": min(lengths, default=0),
        "length_mean": float(np.mean(lengths)) if lengths else 0.0,
        "length_max": max(lengths, default=0),
    }
    print(f"dry run: {len(tasks)} tasks in {config.dataset}; rendered the run's first "
          f"{summary['num_prompts']} {config.prompt.style} prompts")
    if config.task_filter:
        print(f"task_filter={config.task_filter!r} needs the policy and is not applied here")
    print(f"prompt length ({unit}): min {summary['length_min']}, "
          f"mean {summary['length_mean']:.0f}, max {summary['length_max']}")
    if tokenizer is None:
        print("no tokenizer (config.preview.tokenizer_path, or a model_path folder): lengths "
              "are in characters and the prompt token budget is not applied")
    else:
        print(f"skipped over the prompt budget (max_seq_length - max_completion_length = "
              f"{budget} tokens): {len(skipped)} {skipped}")
    return summary


def _load_tokenizer(config: ml_collections.ConfigDict):
    """The preview's tokenizer, else the policy's when model_path is a folder, else None."""
    path = config.preview.tokenizer_path
    if not path and config.model_path and config.model_path != "toy":
        path = config.model_path
    if not path:
        return None
    import transformers  # heavy; only when a tokenizer is asked for

    return transformers.AutoTokenizer.from_pretrained(path)

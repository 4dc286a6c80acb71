"""`config.mode = "dry_run"`: load the dataset, augment and render prompts, report lengths.

It runs every step of a GRPO step's data path that needs no model (tasks -> augmentation
-> prompts -> token counts -> over-budget skips), so a config can be checked before a run.
"""

from __future__ import annotations

import numpy as np
import ml_collections

from arc_jax import data
from arc_jax import prompts


def run(config: ml_collections.ConfigDict) -> dict:
    """Prints a summary and the first prompts; returns the summary as a dict."""
    tasks = data.load_tasks(config.dataset)
    rng = np.random.default_rng(config.seed)
    task_ids = sorted(tasks)
    chosen = [task_ids[i] for i in rng.permutation(len(task_ids))[: config.preview.num_tasks]]

    tokenizer = _load_tokenizer(config)
    unit = "tokens" if tokenizer is not None else "characters"
    budget = config.max_seq_length - config.max_completion_length
    prompt_config = prompts.PromptConfig(style=config.prompt.style,
                                         prefill_assistant=config.prompt.prefill_assistant)

    lengths, skipped = [], []
    for step, task_id in enumerate(chosen):
        task = tasks[task_id]
        if config.augment.enabled:
            augmentation = data.Augmentation.sample(
                rng, change_background_probability=config.augment.change_background_probability
            )
            task = augmentation.apply_task(task)
        text = prompts.render_prompt(task, prompt_config, tokenizer=tokenizer, seed=config.seed + step)
        length = prompts.prompt_num_tokens(tokenizer, text) if tokenizer is not None else len(text)
        if tokenizer is not None and length > budget:
            skipped.append(task_id)
            continue
        lengths.append(length)
        if step < config.preview.show_prompts:
            print(f"--- prompt for task {task_id} ({length} {unit}) ---\n{text}\n")

    summary = {
        "dataset": config.dataset,
        "num_tasks_in_dataset": len(tasks),
        "num_prompts": len(chosen),
        "num_skipped_over_budget": len(skipped),
        "length_unit": unit,
        "length_min": min(lengths, default=0),
        "length_mean": float(np.mean(lengths)) if lengths else 0.0,
        "length_max": max(lengths, default=0),
    }
    print(f"dry run: {len(tasks)} tasks in {config.dataset}; rendered {len(chosen)} "
          f"{config.prompt.style} prompts")
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

"""The embedded default: `python -m arc_jax.launch --config=configs/demo.py`.

Runs on a 2-core CPU with no network. `--config=configs/demo.py:smoke` shrinks it to a
few tasks for tests.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "dry_run"
    config.seed = 0
    config.workdir = "workdir/demo"

    config.dataset = "arc-agi-1/training"
    config.tokenizer_path = ""  # a Hugging Face tokenizer folder; "" counts characters instead of tokens
    config.max_prompt_length = 8000  # prompts over this many tokens are skipped (needs a tokenizer)

    config.prompt = ml_collections.ConfigDict()
    config.prompt.style = "barc"  # "barc" (the training format) or "arc25"

    config.augment = ml_collections.ConfigDict()
    config.augment.enabled = True
    config.augment.change_background_probability = 0.1

    config.dry_run = ml_collections.ConfigDict()
    config.dry_run.num_tasks = 16
    config.dry_run.show_prompts = 1

    if arg == "smoke":
        config.dry_run.num_tasks = 4
    elif arg:
        raise ValueError(f"configs/demo.py takes no argument or 'smoke', got {arg!r}")
    return config

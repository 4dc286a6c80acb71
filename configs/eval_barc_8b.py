"""Evaluate the BARC induction model on ARC-AGI-1 evaluation as the reference does:

    python -m arc_jax.launch --config=configs/eval_barc_8b.py \
        --config.model_path=/path/to/Llama-3.1-ARC-Potpourri-Induction-8B \
        --config.checkpoint=workdir/barc_8b_grpo      # or a PEFT adapter folder; "" = baseline

480 predictions per task in 8 rounds of 60 (rounds after the first augmented), the base model
first, then the adapter; `--config.dry_run=True` prints the plan without a model.
"""

from configs import barc_8b_grpo


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/eval_barc_8b.py takes no argument, got {arg!r}")
    config = barc_8b_grpo.get_config()
    config.mode = "eval"
    config.dataset = "arc-agi-1/evaluation"
    config.checkpoint = ""
    config.eval.baseline = True
    config.eval.n_predictions = 480
    config.eval.rounds = 8
    config.eval.output_dir = "workdir/eval_barc_8b"
    config.eval.num_pictures = 8
    config.eval.show_tasks = False
    config.sampler.max_prompts_per_batch = 8
    return config

"""GRPO on the BARC induction model (Llama-3.1-8B), as in the reference single-GPU run.

    python -m arc_jax.launch --config=configs/barc_8b_grpo.py \
        --config.model_path=/path/to/Llama-3.1-ARC-Potpourri-Induction-8B \
        [--config.dataset=arc-agi-1/training] [--config.learning_rate=2e-6]

The reference run (arc25, iteration 24: RL on the 400 ARC-AGI-1 training tasks, evaluated at
checkpoint 8400) used LoRA r=32 / alpha 64 / rsLoRA on all seven projections, lr 1e-6
(later runs 2e-6 to 4e-6), 16 generations for one prompt per step, 9700-token sequences with
1024-token completions, temperature 1.0 and top_p 0.95, masked truncated completions and
beta 0.001, through unsloth, which turned TRL's loss into `bnpo`. Later runs scaled rewards
by the batch std, which is what this config does. Its `bnpo` is TRL's, the mean of the
micro-batch token means (`bnpo_scope="micro_batch"`), which reproduces the reference run's
loss and gradient; the default batch-wide token mean differs from it by 1.6-15% in loss. `--config.dry_run=True` prints the step plan
without loading the model.
"""

from arc_jax.config import default_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/barc_8b_grpo.py takes no argument, got {arg!r}")
    config = default_config()
    config.workdir = "workdir/barc_8b_grpo"
    config.model_path = ""  # required: the Hugging Face folder of the BARC induction model
    config.dtype = "bfloat16"
    config.dataset = "arc-agi-1/training"

    config.prompt.style = "arc25"  # the format of the reference runs
    config.prompt.prefill_assistant = True
    config.augment.enabled = True
    config.max_seq_length = 9700
    config.max_completion_length = 1024
    # Prompts padded to a power of two (512 ... 8704): about 5 buckets, each compiled once
    # (kept in workdir/jax_cache), instead of padding every prompt to 8704 (median 1015).
    config.prompt_bucket_bits = 1

    config.lora.rank = 32
    config.lora.alpha = 64.0
    config.lora.use_rslora = True

    config.num_generations = 16
    config.generation_batch_size = 16  # one prompt per step
    config.gradient_accumulation_steps = 2
    config.max_steps = 8400
    config.loss_type = "bnpo"
    config.bnpo_scope = "micro_batch"  # TRL's (and so the reference run's) mean of the two
                                       # micro-batches' token means, not the batch token mean
    config.beta = 0.001
    config.scale_rewards = "batch"
    config.mask_truncated_completions = True

    config.learning_rate = 1e-6
    config.lr_scheduler_type = "constant_with_warmup"
    config.warmup_ratio = 0.01
    config.weight_decay = 0.01
    config.max_grad_norm = 0.1

    config.temperature = 1.0
    config.top_p = 0.95
    config.repetition_penalty = 1.0
    config.sampler.max_prompts_per_batch = 1

    config.reward_name = "arc-v1"
    config.execution.timeout_s = 1.0
    config.execution.memory_limit_mb = 4096

    config.logging_steps = 1
    config.save_steps = 200
    config.max_to_keep = 5
    config.collapse.action = "warn"
    return config

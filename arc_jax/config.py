"""Every field the launch modes read, with defaults; config files start here and override.

Names follow TRL's `GRPOConfig` where the concept is the same (learning_rate, num_generations,
generation_batch_size, gradient_accumulation_steps, max_completion_length, beta, loss_type,
scale_rewards, mask_truncated_completions, epsilon, epsilon_high, num_iterations, temperature,
top_p, top_k, min_p, repetition_penalty, max_grad_norm, warmup_ratio, lr_scheduler_type,
logging_steps, save_steps, seed), and so do their defaults, except where noted.
"""

import dataclasses
import math
import numbers
import os

import ml_collections

from arc_jax.data.loaders import BUNDLED_DATASETS
from arc_jax.errors import UserError
from arc_jax.execution import ExecutionMemoryError, check_machine_memory
from arc_jax.rewards.schemes import SCHEMES
from arc_jax.rollout.interface import ENGINES, VLLM_LORA_RANKS


def field_help() -> str:
    """Every field of `default_config` with its default and the comment beside it (the
    fields' documentation), one per line, for `launch --help`."""
    import inspect
    import re

    defaults = default_config()
    lines = []
    for line in inspect.getsource(default_config).splitlines():
        stripped = line.strip()
        match = re.match(r"config\.([\w.]+) = .*?(?:#\s*(.*))?$", stripped)
        if not match or isinstance(_lookup(defaults, match.group(1)), ml_collections.ConfigDict):
            continue
        name, comment = match.group(1), match.group(2) or ""
        value = _lookup(defaults, name)
        lines.append(f"  --config.{name}={value!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train"  # "train", "dry_run" (data + prompts only), "eval" or "search"
    config.seed = 0
    config.workdir = "workdir/run"
    config.dry_run = False  # train mode: print the step plan and a prompt preview, then stop

    # Policy and data.
    config.model_path = ""  # a Hugging Face Llama folder, or "toy" for the demo's toy policy
    config.dtype = "bfloat16"  # of the frozen base weights: "bfloat16" or "float32"
    config.dataset = "arc-agi-1/training"  # see arc_jax.data.load_tasks
    config.task_filter = ""  # "" (all tasks) or "toy_solvable" (the demo's tasks)
    config.max_tasks = 0  # > 0: keep only the first max_tasks task ids

    config.prompt = ml_collections.ConfigDict()
    config.prompt.style = "barc"  # "barc" (the training format) or "arc25"
    config.prompt.prefill_assistant = False  # end the prompt with the assistant prefix

    # Draw tasks by learning signal (pass rates near 1/2 most often, a floor for the rest)
    # instead of in shuffled epochs (`arc_jax.data.task_stream.TaskSelection`).
    config.task_selection = ml_collections.ConfigDict()
    config.task_selection.enabled = False
    config.task_selection.floor = 0.1
    config.task_selection.decay = 0.5
    config.augment = ml_collections.ConfigDict()
    config.augment.enabled = True
    config.augment.change_background_probability = 0.1

    config.max_seq_length = 9700  # prompt + completion; longer prompts are skipped and counted
    config.max_completion_length = 1024
    # Padded prompt lengths (sampler and update): m * 2**e with m of this many significant bits
    # (2: 4, 6, 8, 12, ... x 2**e), never above the longest admitted prompt; 0: that one length
    # (compile once, at the cost of padding every prompt).
    config.prompt_bucket_bits = 2
    # The update pads completions to the step's longest, rounded to 64 x 2**e with this many
    # significant bits (1: 64, 128, 256, ...; each length compiles once); 0: always to
    # max_completion_length.
    config.completion_bucket_bits = 1

    # LoRA (every target module, as in the reference runs).
    config.lora = ml_collections.ConfigDict()
    config.lora.rank = 32
    config.lora.alpha = 64.0
    config.lora.use_rslora = True
    config.lora.target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                  "up_proj", "down_proj")

    # GRPO batch: generation_batch_size completions per step, in groups of num_generations.
    config.num_generations = 8
    config.generation_batch_size = 8
    config.gradient_accumulation_steps = 1  # micro-batches per update (exact for every loss)
    config.num_train_epochs = 1.0
    config.max_steps = 0  # > 0 overrides num_train_epochs
    config.num_iterations = 1

    # Loss (TRL v0.23's defaults, the reference runs' version; `trl_1_16_defaults` for 1.16's).
    # Meanings: arc_jax.train.grpo.GRPOLossConfig.
    config.loss_type = "dapo"  # grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo
    config.beta = 0.0
    config.epsilon = 0.2
    config.epsilon_high = ml_collections.config_dict.placeholder(float)
    config.delta = ml_collections.config_dict.placeholder(float)
    config.scale_rewards = "group"
    config.mask_truncated_completions = False
    config.importance_sampling_level = "token"  # or "sequence" (GSPO)
    config.use_bias_correction_kl = False
    config.sapo_temperature_pos = 1.0
    config.sapo_temperature_neg = 1.05
    config.vespo_k_pos = 2.0
    config.vespo_lambda_pos = 3.0
    config.vespo_k_neg = 3.0
    config.vespo_lambda_neg = 2.0
    config.off_policy_mask_threshold = ml_collections.config_dict.placeholder(float)
    config.top_entropy_quantile = 1.0  # < 1: policy loss on the high-entropy tokens only (TRL)
    config.bnpo_scope = "batch"  # or "micro_batch": TRL's mean of micro-batch token means
    config.soft_punish_cache = 0  # > 0: DAPO's soft overlong punishment over the last N tokens
    # DAPO's dynamic sampling: drop groups whose rewards are all equal and draw other tasks,
    # at most this many generation batches per step (verl's filter_groups.max_num_gen_batches)
    config.dynamic_sampling = False
    config.dynamic_sampling_max_batches = 4
    config.importance_sampling_correction = False  # TRL's vllm_importance_sampling_correction
    config.importance_sampling_mode = "token_truncate"
    config.importance_sampling_cap = 2.0  # TRL 1.16: vllm_importance_sampling_clip_max
    config.importance_sampling_min = ml_collections.config_dict.placeholder(float)

    # Optimiser (AdamW).
    config.learning_rate = 1e-6
    config.lr_scheduler_type = "constant_with_warmup"
    config.warmup_ratio = 0.0
    config.weight_decay = 0.0
    config.max_grad_norm = 1.0

    # Sampling.
    config.temperature = 1.0
    config.top_p = 1.0
    config.top_k = 0
    config.min_p = 0.0
    config.repetition_penalty = 1.0
    config.rollout = ml_collections.ConfigDict()
    config.rollout.engine = "jax"  # "jax" (the in-process JaxSampler) or "vllm" (a vLLM server)
    config.rollout.sync_every = 1  # steps between weight syncs to the engine (1 = on-policy)
    # The vLLM sidecar (`arc_jax.rollout.vllm.VLLMConfig`; TRL's vllm_* names without prefix).
    config.rollout.vllm = ml_collections.ConfigDict()
    config.rollout.vllm.server_base_url = ""  # "" = start a server here; else connect to it
    config.rollout.vllm.python = ""  # the Python with vLLM installed ("" = this one)
    config.rollout.vllm.devices = ""  # CUDA_VISIBLE_DEVICES of a started server ("" = ours)
    config.rollout.vllm.server_host = "127.0.0.1"
    config.rollout.vllm.server_port = 0  # 0 = a free port
    config.rollout.vllm.server_timeout = 900.0  # seconds to wait for a started server
    config.rollout.vllm.gpu_memory_utilization = 0.3  # on the CPU build: share of the RAM
    config.rollout.vllm.tensor_parallel_size = 1
    config.rollout.vllm.data_parallel_size = 1
    config.rollout.vllm.max_lora_rank = 0  # 0 = the smallest vLLM rank that holds lora.rank
    config.rollout.vllm.extra_args = ""  # more server arguments, e.g. "--enforce-eager"
    config.rollout.vllm.request_timeout = 1800.0
    config.rollout.vllm.max_concurrent_requests = 64
    config.rollout.vllm.max_restarts = 3  # restarts of a started server that died, per run
    config.sampler = ml_collections.ConfigDict()
    config.sampler.max_prompts_per_batch = 8  # prompts per engine call in training (their
    # programs run while the next call samples)
    config.sampler.max_rows = 256  # most sequences the JAX sampler decodes at once
    config.sampler.rows_per_prompt = 16  # rows per prompt (R); a slot serves up to 2R at once
    config.sampler.page_size = 32  # tokens per page of the key/value cache (prompts and rows)
    config.sampler.segment_steps = 64  # most decoding steps between two visits of the host
    config.sampler.refill_rows = 0  # a segment also ends once this many rows finished (0: rows // 8)
    config.sampler.attention = "auto"  # decoding attention: "pallas" (GPU), "xla", or "auto"
    config.sampler.memory_fraction = 0.8  # share of the free device memory the sampler plans on
    config.sampler.merge_lora = True  # decode with W + s*A*B merged (as TRL feeds vLLM)
    config.sampler.kv_cache_dtype = "auto"  # the cached keys and values, in both engines:
    # "auto" (the model's dtype) or "fp8" (vLLM's --kv-cache-dtype fp8: twice the tokens per
    # byte, on GPUs with fp8 such as H100 and H200)

    # Rewards and program execution.
    config.reward_name = "arc-v1"  # "arc-v1", "arc-v2-no-pixel-score", "arc-v0" or "arc-unseen"
    config.execution = ml_collections.ConfigDict()
    config.execution.timeout_s = 1.0  # CPU seconds per program, all inputs (the reference: 1 s per task)
    config.execution.wall_timeout_s = 0.0  # wall-clock backstop (sleeping programs); 0: 5 x timeout_s
    config.execution.memory_limit_mb = 4096
    config.execution.num_workers = 0  # 0: one per CPU core
    config.execution.common_path = ""  # "": the project's DSL; else an upstream common.py

    # Numerics and compilation.
    config.remat_policy = "nothing_saveable"  # a jax.checkpoint_policies name; "" = no remat
    config.attention_impl = "auto"  # "auto" (cuDNN on a GPU in bfloat16), "xla" or "cudnn"
    config.compilation_cache = True  # keep compiled programs in workdir/jax_cache

    # Mesh over all devices; one axis may be -1 (the rest).
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.mesh.tensor = 1

    # Logging, checkpoints, collapse guard.
    config.logging_steps = 1
    config.save_steps = 100
    config.max_to_keep = 3
    config.tensorboard = True
    config.wandb_project = ""

    config.collapse = ml_collections.ConfigDict()
    config.collapse.enabled = True
    config.collapse.truncated_ratio_threshold = 0.5
    config.collapse.repetition_threshold = 0.5
    config.collapse.patience = 3
    config.collapse.action = "warn"  # or "rollback"
    config.collapse.rollback_lr_factor = 0.5
    config.collapse.max_rollbacks = 2

    # Solve rates before and after training, on the training tasks (0 samples: skip).
    config.eval = ml_collections.ConfigDict()
    config.eval.num_samples = 0

    # Evaluation (mode "eval"): the policies and predictions of `arc_jax.eval`.
    config.checkpoint = ""  # a training workdir, its checkpoints folder or a PEFT adapter folder
    config.eval.baseline = True  # also evaluate the base model (no adapter), first
    config.eval.step = 0  # checkpoint step to load; 0 = the newest that restores
    config.eval.n_predictions = 8  # per task, over all rounds
    config.eval.rounds = 2  # round 0 as it is, the others with a fresh augmentation each
    config.eval.output_dir = "workdir/eval"
    config.eval.num_pictures = 2  # PNGs of the first tasks, per policy
    config.eval.show_tasks = True  # per-task rows in the printed table

    # Search-and-learn at test time (mode "search", `arc_jax.search`): sample, relabel in
    # hindsight, fine-tune the adapter between rounds; no test output is used.
    config.search = ml_collections.ConfigDict()
    config.search.rounds = 4  # round 0 as the task is, the others with a fresh augmentation
    config.search.n_predictions = 32  # per task, over all rounds
    config.search.augment = True  # rounds after the first show a fresh augmentation (as eval)
    config.search.baseline = True  # first the same rounds without learning ("plain")
    config.search.max_relabelled_per_task = 8  # programs with distinct outputs kept per task
    config.search.learn_steps = 20  # LoRA updates between two rounds
    config.search.learn_batch = 16  # relabelled pairs per update
    config.search.learning_rate = 1e-4
    config.search.output_dir = "workdir/search"

    # dry_run: how many prompts to render and show.
    config.preview = ml_collections.ConfigDict()
    config.preview.num_tasks = 16
    config.preview.show_prompts = 1
    config.preview.tokenizer_path = ""  # "": the policy's tokenizer when model_path is a folder
    return config


def trl_1_16_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the fields whose TRL 1.16 default differs from v0.23's (which `default_config`
    follows) to 1.16's, in place, and returns the config: in a config file,
    `config = trl_1_16_defaults(default_config())`.

    TRL 1.16 applies the importance-sampling correction only when sampling with vLLM; here it
    applies with either engine (with the JAX sampler the ratio differs from 1 only by the
    merged bf16 weights' rounding)."""
    config.max_completion_length = 512
    config.use_bias_correction_kl = True
    config.importance_sampling_correction = True
    config.importance_sampling_mode = "sequence_mask"
    config.importance_sampling_cap = 3.0
    return config


# ----------------------------------------------------------------------------- validation


class ConfigError(UserError, ValueError):
    """A config field holds a value that no mode can use (names the field and the range)."""


def _integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _power_of_two(v) -> bool:
    return _integer(v) and v >= 1 and not v & (v - 1)


# (field, check of (value, config), what is expected). Choices whose lists live with the code
# that uses them (loss types, reward schemes, ...) are checked there, before any work.
_RULES = (
    ("seed", lambda v, c: _integer(v) and 0 <= v < 2**63, "an integer from 0 to 2**63 - 1"),
    ("dtype", lambda v, c: v in ("bfloat16", "float32"), "'bfloat16' or 'float32'"),
    ("max_tasks", lambda v, c: _integer(v) and v >= 0, "an integer >= 0 (0: every task)"),
    ("dataset", lambda v, c: isinstance(v, str) and (v in BUNDLED_DATASETS or os.path.exists(v)),
     f"a bundled dataset ({', '.join(BUNDLED_DATASETS)}) or an existing file or folder"),
    ("task_filter", lambda v, c: v in ("", "toy_solvable"), "'' (every task) or 'toy_solvable'"),
    ("augment.change_background_probability", lambda v, c: _number(v) and 0 <= v <= 1,
     "a number in [0, 1]"),
    ("lora.rank", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("lora.alpha", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("mesh.data", lambda v, c: _integer(v) and (v == -1 or v >= 1), "-1 (the rest) or an integer >= 1"),
    ("mesh.fsdp", lambda v, c: _integer(v) and (v == -1 or v >= 1), "-1 (the rest) or an integer >= 1"),
    ("mesh.tensor", lambda v, c: _integer(v) and (v == -1 or v >= 1), "-1 (the rest) or an integer >= 1"),
    ("attention_impl", lambda v, c: v in ("auto", "xla", "cudnn"), "'auto', 'xla' or 'cudnn'"),
    ("preview.num_tasks", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("preview.show_prompts", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("max_seq_length", lambda v, c: _integer(v) and v >= 2, "an integer >= 2"),
    ("max_completion_length", lambda v, c: _integer(v) and 1 <= v < c.max_seq_length,
     "an integer >= 1 and below max_seq_length (room for the prompt)"),
    ("prompt_bucket_bits", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("num_generations", lambda v, c: _integer(v) and v >= 2,
     "an integer >= 2 (group-relative advantages need two completions per prompt)"),
    ("generation_batch_size", lambda v, c: _integer(v) and v >= 1 and _integer(c.num_generations)
     and c.num_generations >= 1 and v % c.num_generations == 0,
     "a positive multiple of num_generations"),
    ("gradient_accumulation_steps", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("num_train_epochs", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("max_steps", lambda v, c: _integer(v) and v >= 0, "an integer >= 0 (0: num_train_epochs)"),
    ("num_iterations", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("beta", lambda v, c: _number(v) and v >= 0, "a finite number >= 0"),
    ("epsilon", lambda v, c: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("epsilon_high", lambda v, c: v is None or (_number(v) and v >= 0),
     "unset, or a finite number >= 0"),
    ("learning_rate", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("warmup_ratio", lambda v, c: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("weight_decay", lambda v, c: _number(v) and v >= 0, "a finite number >= 0"),
    ("max_grad_norm", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("temperature", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("top_p", lambda v, c: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("top_k", lambda v, c: _integer(v) and v >= 0, "an integer >= 0 (0: off)"),
    ("min_p", lambda v, c: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("repetition_penalty", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("completion_bucket_bits", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("sampler.max_prompts_per_batch", lambda v, c: _power_of_two(v), "a power of two >= 1"),
    ("sampler.max_rows", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("sampler.rows_per_prompt", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("sampler.page_size", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("sampler.segment_steps", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("sampler.refill_rows", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("sampler.attention", lambda v, c: v in ("auto", "xla", "pallas"),
     "'auto', 'xla' or 'pallas'"),
    ("sampler.memory_fraction", lambda v, c: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("sampler.kv_cache_dtype", lambda v, c: v in ("auto", "fp8"), "'auto' or 'fp8'"),
    ("rollout.engine", lambda v, c: v in ENGINES, f"one of {list(ENGINES)}"),
    ("reward_name", lambda v, c: v in SCHEMES, f"one of {sorted(SCHEMES)}"),
    ("dynamic_sampling", lambda v, c: isinstance(v, bool), "True or False"),
    ("task_selection.enabled", lambda v, c: isinstance(v, bool), "True or False"),
    ("task_selection.floor", lambda v, c: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("task_selection.decay", lambda v, c: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("dynamic_sampling_max_batches", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("rollout.sync_every", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("rollout.vllm.server_port", lambda v, c: _integer(v) and 0 <= v < 65536,
     "0 (a free port) or a TCP port"),
    ("rollout.vllm.server_timeout", lambda v, c: _number(v) and v > 0, "a number of seconds > 0"),
    ("rollout.vllm.gpu_memory_utilization", lambda v, c: _number(v) and 0 < v <= 1,
     "a number in (0, 1]"),
    ("rollout.vllm.tensor_parallel_size", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("rollout.vllm.data_parallel_size", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("rollout.vllm.max_lora_rank", lambda v, c: v == 0 or v in VLLM_LORA_RANKS,
     f"0 or one of vLLM's ranks {list(VLLM_LORA_RANKS)}"),
    ("rollout.vllm.request_timeout", lambda v, c: _number(v) and v > 0, "a number of seconds > 0"),
    ("rollout.vllm.max_concurrent_requests", lambda v, c: _integer(v) and v >= 1,
     "an integer >= 1"),
    ("rollout.vllm.max_restarts", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("eval.rounds", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("eval.n_predictions", lambda v, c: _integer(v) and v >= 1 and _integer(c.eval.rounds)
     and c.eval.rounds >= 1 and v % c.eval.rounds == 0, "a positive multiple of eval.rounds"),
    ("eval.step", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("eval.num_pictures", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("execution.timeout_s", lambda v, c: _number(v) and 0 < v <= 3600, "a number of seconds in (0, 3600]"),
    ("execution.wall_timeout_s", lambda v, c: _number(v) and (v == 0 or (
        _number(c.execution.timeout_s) and c.execution.timeout_s <= v <= 36000)),
     "0 (5 x timeout_s) or a number of seconds from execution.timeout_s to 36000"),
    ("execution.memory_limit_mb", lambda v, c: _integer(v) and 64 <= v <= 2**22,
     "an integer from 64 to 4194304"),
    ("execution.num_workers", lambda v, c: _integer(v) and 0 <= v <= 4096,
     "an integer from 0 (one per core) to 4096"),
    ("logging_steps", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("save_steps", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("max_to_keep", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("eval.num_samples", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("search.rounds", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("search.n_predictions", lambda v, c: _integer(v) and v >= 1 and _integer(c.search.rounds)
     and c.search.rounds >= 1 and v % c.search.rounds == 0, "a positive multiple of search.rounds"),
    ("search.baseline", lambda v, c: isinstance(v, bool), "True or False"),
    ("search.augment", lambda v, c: isinstance(v, bool), "True or False"),
    ("search.max_relabelled_per_task", lambda v, c: _integer(v) and v >= 1, "an integer >= 1"),
    ("search.learn_steps", lambda v, c: _integer(v) and v >= 0, "an integer >= 0"),
    ("search.learn_batch", lambda v, c: _integer(v) and v >= 1 and _integer(
        c.gradient_accumulation_steps) and c.gradient_accumulation_steps >= 1
     and v % c.gradient_accumulation_steps == 0,
     "a positive multiple of gradient_accumulation_steps (the micro-batches of an update)"),
    ("search.learning_rate", lambda v, c: _number(v) and v > 0, "a finite number > 0"),
    ("search.output_dir", lambda v, c: isinstance(v, str) and v != "", "a folder path"),
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first field of `config` (as in `default_config`) whose
    value is out of range; run before any data or model is loaded."""
    for field, check, expected in _RULES:
        value = config
        try:
            for part in field.split("."):
                value = value[part]
        except KeyError:
            continue  # a config built without this field does not use it
        if not check(value, config):
            raise ConfigError(f"config.{field}={value!r}: expected {expected}")
    _validate_loss(config)
    _validate_settings(config)
    if "execution" in config:
        try:
            check_machine_memory(config.execution.num_workers, config.execution.memory_limit_mb)
        except ExecutionMemoryError as e:
            raise ConfigError(f"config.{e}") from None


def _validate_loss(config: ml_collections.ConfigDict) -> None:
    """The loss fields, by the checks of `GRPOLossConfig` (which knows the choices)."""
    from arc_jax.train.grpo import GRPOLossConfig

    names = [f.name for f in dataclasses.fields(GRPOLossConfig) if f.name in config]
    try:
        GRPOLossConfig(**{name: config[name] for name in names})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).replace("GRPOLossConfig.", "config.")) from None


# The settings dataclasses that check themselves, and the config path of their fields.
_SETTINGS_PREFIXES = {"OptimizerConfig.": "config.", "PromptConfig.": "config.prompt.",
                      "LoraConfig.": "config.lora.",
                      "CollapseConfig.": "config.collapse.", "SamplingParams.": "config."}


def _validate_settings(config: ml_collections.ConfigDict) -> None:
    """The optimiser, prompt, collapse-guard, LoRA and sampling settings, built as the run builds
    them (`arc_jax.session`), so each dataclass's own checks run before any work; and the
    remat policy's name."""
    from arc_jax import episode, session

    builders = [("remat_policy", lambda: session.check_remat_policy(config.remat_policy)),
                ("learning_rate", lambda: session.optimizer_config(config, total_steps=1)),
                ("prompt", lambda: episode.prompt_config(config)),
                ("collapse", lambda: session.collapse_config(config)),
                ("lora", lambda: session.lora_config(config)),
                ("temperature", lambda: session.sampling_params(config, (0,), seed=0))]
    try:
        for field, build in builders:
            if field in config:
                build()
    except (ValueError, UserError) as e:
        message = str(e)
        for name, prefix in _SETTINGS_PREFIXES.items():
            message = message.replace(name, prefix)
        raise ConfigError(message) from None

"""What every mode builds from a config: mesh, tokenizer, policy, tasks, rollout engine,
sampling settings and execution pool.

Training (`arc_jax.train.loop`), evaluation (`arc_jax.eval`) and the dry run all start here,
so that the tasks, prompts and engine of each mode come from one definition.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from arc_jax import data
from arc_jax.config import ConfigError
from arc_jax.execution import ExecutionConfig
from arc_jax.model import Llama, LoraConfig, Numerics, from_pretrained
from arc_jax.train import grpo
from arc_jax.train.collapse import CollapseConfig
from arc_jax.train.optim import OptimizerConfig
from arc_jax.rollout import (ENGINES, JaxSampler, PromptBuckets, RolloutEngine, SamplerConfig,
                             SamplingParams, VLLMConfig, VLLMEngine)

def loss_config(config: ml_collections.ConfigDict) -> grpo.GRPOLossConfig:
    fields = [f.name for f in dataclasses.fields(grpo.GRPOLossConfig)]
    return grpo.GRPOLossConfig(**{name: config[name] for name in fields})


def optimizer_config(config: ml_collections.ConfigDict, total_steps: int,
                     lr_scale: float = 1.0) -> OptimizerConfig:
    return OptimizerConfig(
        learning_rate=config.learning_rate * lr_scale,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_ratio=config.warmup_ratio,
        total_steps=total_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
    )


def collapse_config(config: ml_collections.ConfigDict) -> CollapseConfig:
    return CollapseConfig(**config.collapse.to_dict())


def sampling_params(config: ml_collections.ConfigDict, stop_ids: tuple[int, ...],
                    seed: int) -> SamplingParams:
    return SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        min_p=config.min_p,
        repetition_penalty=config.repetition_penalty,
        max_new_tokens=config.max_completion_length,
        stop_token_ids=stop_ids,
        seed=seed,
    )


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 (the rest)."""

    shape = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    devices = jax.device_count()
    if shape.count(-1) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if devices % known:
            raise ConfigError(f"config.mesh {tuple(shape)} (data, fsdp, tensor): {devices} "
                             f"devices do not split into axes of {known} and the rest")
        shape[shape.index(-1)] = devices // known
    if math.prod(shape) != devices:
        raise ConfigError(f"config.mesh {tuple(shape)} (data, fsdp, tensor) needs "
                         f"{math.prod(shape)} devices, found {devices}")
    # A plain Mesh: its axes are "auto", so XLA places what the model's annotations leave open.
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(shape), ("data", "fsdp", "tensor"))


def check_mesh(mesh: jax.sharding.Mesh, model_path: str, prompts_per_step: int) -> None:
    """Refuses, before the model loads, a mesh whose `tensor` axis does not divide the heads
    and MLP of the model at `model_path`, or whose `data` axis does not divide the prompts of
    a step (each data shard samples and updates whole prompts)."""
    tensor, data_size = mesh.shape["tensor"], mesh.shape["data"]
    with open(pathlib.Path(model_path) / "config.json") as f:
        model = json.load(f)
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        size = model.get(name, model.get("num_attention_heads"))
        if size % tensor:
            raise ConfigError(f"config.mesh.tensor={tensor} does not divide the model's {name}="
                              f"{size} ({model_path}/config.json); choose a divisor")
    if prompts_per_step % data_size:
        raise ConfigError(f"config.mesh.data={data_size} does not divide the {prompts_per_step} "
                          "prompts of a step (generation_batch_size / num_generations); raise "
                          "generation_batch_size or move devices to mesh.fsdp")


def resolve_model_path(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> str:
    """config.model_path, or the cached toy policy (built on first use) for "toy"."""
    if config.model_path != "toy":
        path = pathlib.Path(config.model_path)
        if not config.model_path or not (path / "config.json").is_file():
            raise FileNotFoundError(f"config.model_path={config.model_path!r}: no config.json "
                                    "there; expected a Hugging Face checkpoint folder")
        return str(path)
    from arc_jax import toy  # only the demo needs it

    return toy.build_toy_policy(workdir / "toy_policy", toy_policy_config(config), seed=config.seed)


def toy_policy_config(config: ml_collections.ConfigDict):
    """The demo's `ToyPolicyConfig`: its defaults with the knobs that `config.toy` exposes."""
    from arc_jax import toy

    base = toy.ToyPolicyConfig()
    return dataclasses.replace(
        base, num_synthetic_tasks=config.toy.num_synthetic_tasks,
        max_prompt_tokens=config.max_seq_length - config.max_completion_length,
        sft=dataclasses.replace(base.sft, steps=config.toy.sft_steps))


def policy_and_tasks(config: ml_collections.ConfigDict) -> tuple[str, object, dict[str, data.Task]]:
    """The start of the eval and search modes: the persistent compilation cache (when on), then
    the policy's folder (building the toy policy if asked), its tokenizer and the tasks."""
    workdir = pathlib.Path(config.workdir)
    if config.compilation_cache:
        from arc_jax.train.compiles import use_persistent_cache

        use_persistent_cache(workdir / "jax_cache")
    model_path = resolve_model_path(config, workdir)
    tokenizer_ = tokenizer(model_path)
    return model_path, tokenizer_, select_tasks(config, tokenizer_)


def select_tasks(config: ml_collections.ConfigDict, tokenizer) -> dict[str, data.Task]:
    tasks = data.load_tasks(config.dataset)
    if config.task_filter == "toy_solvable":
        from arc_jax import toy

        print(f"selecting the tasks the toy program family solves among {len(tasks)}",
              flush=True)
        tasks = toy.demo_tasks(tasks, tokenizer, toy_policy_config(config))
    if config.max_tasks > 0:
        tasks = dict(sorted(tasks.items())[: config.max_tasks])
    if not tasks:
        raise ValueError(f"no tasks left from {config.dataset} after task_filter="
                         f"{config.task_filter!r}")
    return tasks


def numerics(config: ml_collections.ConfigDict) -> Numerics:
    """Remat and attention kernel of the policy: `attention_impl="auto"` takes cuDNN's fused
    attention on a GPU in bfloat16 (it needs 16-bit inputs), else XLA's (blockwise in the
    update)."""
    impl = config.attention_impl
    if impl == "auto":
        gpu = jax.default_backend() == "gpu" and config.dtype == "bfloat16"
        impl = "cudnn" if gpu else "xla"
    check_remat_policy(config.remat_policy)
    return Numerics(attention_impl=impl, remat_policy=config.remat_policy or None)


def check_remat_policy(name: str) -> None:
    if name and not hasattr(jax.checkpoint_policies, name):
        raise ValueError(f"config.remat_policy={name!r}: expected a jax.checkpoint_policies name "
                         "(e.g. 'nothing_saveable'; '' turns rematerialisation off)")


def dtype(name: str):
    """The jnp dtype named by config.dtype."""
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def tokenizer(model_path: str):
    import transformers  # heavy; only when a mode needs the policy's tokenizer

    return transformers.AutoTokenizer.from_pretrained(model_path)


def lora_config(config: ml_collections.ConfigDict) -> LoraConfig:
    return LoraConfig(rank=config.lora.rank, alpha=config.lora.alpha,
                      use_rslora=config.lora.use_rslora,
                      target_modules=tuple(config.lora.target_modules))


def load_policy(config: ml_collections.ConfigDict, model_path: str,
                mesh: jax.sharding.Mesh) -> Llama:
    """The base model with (fresh) LoRA adapters, placed on the mesh."""
    return from_pretrained(model_path, dtype=dtype(config.dtype), lora=lora_config(config),
                           mesh=mesh, numerics=numerics(config), seed=config.seed)


def execution_config(config: ml_collections.ConfigDict) -> ExecutionConfig:
    return ExecutionConfig(num_workers=config.execution.num_workers,
                           timeout_s=config.execution.timeout_s,
                           wall_timeout_s=config.execution.get("wall_timeout_s") or None,
                           memory_limit_mb=config.execution.memory_limit_mb,
                           common_path=config.execution.common_path or None)


def vllm_config(config: ml_collections.ConfigDict) -> VLLMConfig:
    v = config.rollout.vllm
    return VLLMConfig(
        server_base_url=v.server_base_url, python=v.python, devices=v.devices,
        server_host=v.server_host,
        server_port=v.server_port, server_timeout=v.server_timeout, dtype=config.dtype,
        max_model_len=config.max_seq_length, max_lora_rank=v.max_lora_rank,
        gpu_memory_utilization=v.gpu_memory_utilization,
        tensor_parallel_size=v.tensor_parallel_size, data_parallel_size=v.data_parallel_size,
        kv_cache_dtype=config.sampler.kv_cache_dtype,
        extra_args=v.extra_args, request_timeout=v.request_timeout,
        max_concurrent_requests=v.max_concurrent_requests, max_restarts=v.max_restarts)


def make_engine(config: ml_collections.ConfigDict, model: Llama, tokenizer,
                buckets: PromptBuckets, model_path: str) -> RolloutEngine:
    """The rollout engine `config.rollout.engine` names (one of `rollout.ENGINES`), sampling
    from `model` (whose base weights are those of `model_path`); a context manager (closing
    stops a vLLM server)."""
    builders = {"jax": _jax_engine, "vllm": _vllm_engine}
    assert builders.keys() == ENGINES.keys(), "an engine without a builder, or the reverse"
    if config.rollout.engine not in builders:
        raise ConfigError(f"config.rollout.engine={config.rollout.engine!r}: expected one of "
                          f"{list(ENGINES)}")
    return builders[config.rollout.engine](config, model, tokenizer, buckets, model_path)


def _vllm_engine(config, model, tokenizer, buckets, model_path) -> RolloutEngine:
    if jax.process_count() > 1:
        raise ConfigError("config.rollout.engine='vllm' runs in one process: every process "
                          "of this multi-process run would start its own server")
    return VLLMEngine(model, tokenizer, model_path, vllm_config(config), config.workdir)


def _jax_engine(config, model, tokenizer, buckets, model_path) -> RolloutEngine:
    s = config.sampler
    return JaxSampler(model, tokenizer, SamplerConfig(
        max_rows=s.max_rows, rows_per_prompt=s.rows_per_prompt, page_size=s.page_size,
        segment_steps=s.segment_steps, refill_rows=s.refill_rows, attention=s.attention,
        buckets=buckets, memory_fraction=s.memory_fraction, seed=config.seed,
        merge_lora=s.merge_lora, kv_cache_dtype=s.kv_cache_dtype))

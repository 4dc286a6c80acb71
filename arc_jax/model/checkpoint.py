"""Hugging Face checkpoints in and out: streaming load, merged save, PEFT LoRA adapters.

A model variable at path ('layers', 3, 'self_attn', 'q_proj', 'kernel') is the Hugging Face tensor
`model.layers.3.self_attn.q_proj.weight`, transposed (we store [in, out], torch stores [out, in]).
Its LoRA matrices ('lora_a', 'lora_b') are PEFT's
`base_model.model.model.layers.3.self_attn.q_proj.lora_{A,B}.weight`, also transposed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from arc_jax.errors import UserError
from arc_jax.model.config import ConfigError, LlamaConfig, LoraConfig, Numerics
from arc_jax.model.llama import Llama
from arc_jax.model.lora import LoraParam, init_lora_a, merge_lora
from arc_jax.model.safetensors_io import SafetensorsReader, write_safetensors
from arc_jax.model.sharding import DEFAULT_RULES, Sharding, variable_sharding

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIX = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight"}


class CheckpointError(UserError, ValueError):
    """A checkpoint or adapter directory does not match the model (names the file and tensor)."""


# ----------------------------------------------------------------------------- names


def hf_name(path: tuple) -> tuple[str, bool]:
    """(Hugging Face / PEFT tensor name, whether our array is its transpose) of a variable path."""
    *modules, leaf = (str(p) for p in path)
    module = ".".join(modules)
    base = module if modules[0] == "lm_head" else f"model.{module}"
    if leaf == "kernel":
        return f"{base}.weight", True
    if leaf == "weight":
        return f"{base}.weight", False
    if leaf in _LORA_SUFFIX:
        return f"{_PEFT_PREFIX}{base}.{_LORA_SUFFIX[leaf]}", True
    raise KeyError(f"no Hugging Face name for variable {'.'.join(map(str, path))}")


def _hf_shape(shape, transposed: bool) -> tuple[int, ...]:
    return tuple(reversed(shape)) if transposed else tuple(shape)


def _flat(state: nnx.State) -> dict[tuple, nnx.Variable]:
    return dict(nnx.to_flat_state(state))


# ----------------------------------------------------------------------------- loading


def checkpoint_files(directory: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint directory, single-file or sharded with an index."""
    directory = os.fspath(directory)
    index = os.path.join(directory, WEIGHTS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: missing or empty 'weight_map'")
        files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
    elif os.path.isfile(os.path.join(directory, WEIGHTS)):
        files = [os.path.join(directory, WEIGHTS)]
    else:
        raise CheckpointError(f"{directory}: neither {WEIGHTS} nor {WEIGHTS_INDEX} found")
    for file in files:
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: shard listed in {WEIGHTS_INDEX} not found")
    return files


def _skippable(name: str, config: LlamaConfig) -> bool:
    """Tensors that carry no information for us: RoPE buffers, and lm_head when it is tied."""
    return name.endswith("rotary_emb.inv_freq") or (
        config.tie_word_embeddings and name == "lm_head.weight")


def _place(host: np.ndarray, variable: nnx.Variable, sharding: Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(host)
    return jax.device_put(host, variable_sharding(variable, sharding))


def from_pretrained(path: str | os.PathLike, *, dtype: Any = jnp.bfloat16,
                    lora: LoraConfig | None = None, mesh: Mesh | None = None,
                    numerics: Numerics | None = None, rules=DEFAULT_RULES, seed: int = 0) -> Llama:
    """Loads a Hugging Face Llama checkpoint directory into a `Llama`.

    Tensors are read one at a time, shard after shard, converted to `dtype` on the host,
    transposed to our layout and placed straight onto the mesh (or the default device).
    `numerics` sets the other numerics (its param_dtype is replaced by `dtype`); LoRA adapters,
    if any, are freshly initialised from `seed` (B = 0, so the model starts equal to the base).
    """
    path = os.fspath(path)
    config = LlamaConfig.from_json(os.path.join(path, "config.json"))
    numerics = dataclasses.replace(numerics or Numerics(), param_dtype=dtype)
    sharding = Sharding(mesh, tuple(rules)) if mesh is not None else None

    def build():
        return Llama(config, numerics=numerics, lora=lora, sharding=sharding,
                     rngs=nnx.Rngs(seed))

    graphdef, params, lora_state = nnx.split(nnx.eval_shape(build), nnx.Param, LoraParam)
    targets = {hf_name(p)[0]: (p, v) for p, v in _flat(params).items()}
    loaded: set[str] = set()
    for file in checkpoint_files(path):
        with SafetensorsReader(file) as reader:
            for name in reader.entries:
                if name not in targets:
                    if _skippable(name, config):
                        continue
                    raise CheckpointError(f"{file}: unexpected tensor {name!r} for a Llama with "
                                          f"{config.num_hidden_layers} layers")
                if name in loaded:
                    raise CheckpointError(f"{file}: tensor {name!r} appears twice")
                var_path, variable = targets[name]
                transposed = hf_name(var_path)[1]
                expected = _hf_shape(variable.shape, transposed)
                if reader.shape(name) != expected:
                    raise CheckpointError(f"{file}: tensor {name!r} has shape "
                                          f"{list(reader.shape(name))}, expected {list(expected)}")
                host = reader.read(name)
                host = np.ascontiguousarray((host.T if transposed else host).astype(dtype))
                variable.set_value(_place(host, variable, sharding))
                loaded.add(name)
                del host
    missing = sorted(set(targets) - loaded)
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {len(missing)} tensor(s), e.g. "
                              f"{missing[:5]}")

    adapters = _flat(lora_state)
    keys = jax.random.split(jax.random.key(seed), max(len(adapters), 1))
    for key, (var_path, variable) in zip(keys, adapters.items()):
        if var_path[-1] == "lora_a":
            value = init_lora_a(key, variable.shape, variable.dtype)
        else:
            value = jnp.zeros(variable.shape, variable.dtype)
        variable.set_value(_place(np.asarray(value), variable, sharding))
    return nnx.merge(graphdef, params, lora_state)


# ----------------------------------------------------------------------------- saving


def _dtype_name(dtype) -> str:
    return {np.dtype(jnp.float32): "float32", np.dtype(jnp.bfloat16): "bfloat16",
            np.dtype(jnp.float16): "float16"}[np.dtype(dtype)]


def save_merged(model: Llama, directory: str | os.PathLike, *, dtype: Any = None,
                max_shard_bytes: int = 5 * 2**30, tokenizer_from: str | os.PathLike | None = None):
    """Writes a Hugging Face checkpoint (config.json + safetensors) with LoRA merged in.

    Tensors are gathered to the host one at a time. `dtype` defaults to the model's param dtype;
    tokenizer files are copied from `tokenizer_from` when given.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    dtype = np.dtype(dtype or model.numerics.param_dtype)
    params = _flat(nnx.state(model, nnx.Param))
    adapters = _flat(nnx.state(model, LoraParam))

    def host_array(var_path) -> np.ndarray:
        value = params[var_path].get_value()
        lora_a = adapters.get((*var_path[:-1], "lora_a"))
        if lora_a is not None:
            lora_b = adapters[(*var_path[:-1], "lora_b")]
            value = merge_lora(value, lora_a.get_value(), lora_b.get_value(), model.lora.scaling)
        host = np.asarray(jax.device_get(value)).astype(dtype)
        return np.ascontiguousarray(host.T) if hf_name(var_path)[1] else host

    specs = []  # (name, hf shape, dtype, our path)
    for var_path, variable in params.items():
        name, transposed = hf_name(var_path)
        specs.append((name, _hf_shape(variable.shape, transposed), dtype, var_path))

    shards: list[list] = [[]]
    shard_bytes = 0
    for spec in specs:
        size = int(np.prod(spec[1])) * dtype.itemsize
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(spec)
        shard_bytes += size

    weight_map = {}
    for i, shard in enumerate(shards):
        file = WEIGHTS if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(directory, file), [s[:3] for s in shard],
                          (host_array(s[3]) for s in shard))
        weight_map.update({s[0]: file for s in shard})
    if len(shards) > 1:
        total = sum(int(np.prod(s[1])) * dtype.itemsize for s in specs)
        _write_json(os.path.join(directory, WEIGHTS_INDEX),
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(os.path.join(directory, "config.json"),
                model.config.to_hf_dict(_dtype_name(dtype)))
    if tokenizer_from is not None:
        for file in TOKENIZER_FILES:
            source = os.path.join(os.fspath(tokenizer_from), file)
            if os.path.isfile(source):
                shutil.copy(source, os.path.join(directory, file))


def _write_json(path: str, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# ----------------------------------------------------------------------------- PEFT adapters


def _require_lora(model: Llama) -> LoraConfig:
    if model.lora is None:
        raise ValueError("the model has no LoRA adapters (it was built with lora=None)")
    return model.lora


def save_peft_adapter(model: Llama, directory: str | os.PathLike, *, dtype: Any = None,
                      base_model_name_or_path: str | None = None):
    """Writes the LoRA adapters as a PEFT directory (adapter_config.json +
    adapter_model.safetensors) that `peft` and vLLM load. `dtype` defaults to the LoRA dtype."""
    lora = _require_lora(model)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    adapters = _flat(nnx.state(model, LoraParam))
    dtype = np.dtype(dtype or model.numerics.lora_dtype)
    specs = [(hf_name(p)[0], _hf_shape(v.shape, True), dtype) for p, v in adapters.items()]
    arrays = (np.ascontiguousarray(np.asarray(jax.device_get(v.get_value())).astype(dtype).T)
              for v in adapters.values())
    write_safetensors(os.path.join(directory, ADAPTER_WEIGHTS), specs, arrays)
    _write_json(os.path.join(directory, ADAPTER_CONFIG), {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "use_rslora": lora.use_rslora,
        "target_modules": list(lora.target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    })


def _check_adapter_config(d: dict, lora: LoraConfig, source: str):
    if d.get("peft_type") != "LORA":
        raise ConfigError(f"{source}: peft_type is {d.get('peft_type')!r}, expected 'LORA'")
    for key, unsupported in (("use_dora", True), ("bias", "lora_only"), ("bias", "all")):
        if d.get(key) == unsupported:
            raise ConfigError(f"{source}: {key}={unsupported!r} is not supported")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if d.get(key):
            raise ConfigError(f"{source}: {key}={d[key]!r} is not supported")
    targets = d.get("target_modules")
    if not isinstance(targets, list):
        raise ConfigError(f"{source}: target_modules must be a list of module names, got "
                          f"{targets!r}")
    for key, ours, theirs in (
            ("r", lora.rank, d.get("r")),
            ("lora_alpha", float(lora.alpha), float(d.get("lora_alpha", 8))),
            ("use_rslora", lora.use_rslora, bool(d.get("use_rslora", False))),
            ("target_modules", sorted(lora.target_modules), sorted(targets))):
        if ours != theirs:
            raise ConfigError(f"{source}: {key} is {theirs!r} but the model's LoRA has {ours!r}")


def load_peft_adapter(model: Llama, directory: str | os.PathLike):
    """Loads a PEFT LoRA directory into the model's adapters in place.

    The adapter's r, lora_alpha, use_rslora and target_modules must equal the model's LoRA config.
    """
    lora = _require_lora(model)
    directory = os.fspath(directory)
    config_path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{directory}: {ADAPTER_CONFIG} not found")
    with open(config_path) as f:
        _check_adapter_config(json.load(f), lora, config_path)

    targets = {hf_name(p)[0]: v for p, v in _flat(nnx.state(model, LoraParam)).items()}
    file = os.path.join(directory, ADAPTER_WEIGHTS)
    with SafetensorsReader(file) as reader:
        unexpected = sorted(set(reader.entries) - set(targets))
        missing = sorted(set(targets) - set(reader.entries))
        if unexpected or missing:
            raise CheckpointError(f"{file}: unexpected tensors {unexpected[:5]}, missing tensors "
                                  f"{missing[:5]}")
        for name, variable in targets.items():
            expected = _hf_shape(variable.shape, True)
            if reader.shape(name) != expected:
                raise CheckpointError(f"{file}: tensor {name!r} has shape "
                                      f"{list(reader.shape(name))}, expected {list(expected)}")
            host = np.ascontiguousarray(reader.read(name).T.astype(variable.dtype))
            variable.set_value(jax.device_put(host, variable.get_value().sharding))

"""The toy policy of the CPU demo: a tiny Llama that writes BARC-style programs.

`build_toy_policy` makes a Hugging Face-style folder (config.json, model.safetensors,
tokenizer files) that loads exactly like the real BARC checkpoint, through
`arc_jax.model.from_pretrained` and `transformers.AutoTokenizer`. Building it takes:
synthetic tasks for whole-grid transformations -> a small BPE tokenizer trained on their
prompts and programs -> a short supervised warm start of a randomly initialised tiny Llama.
The warm start is kept short on purpose: the policy writes valid programs of the family
but often picks the wrong one, which leaves RL something to learn.

`demo_tasks` picks the real ARC tasks that a program of the family solves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping

import jax.numpy as jnp
from flax import nnx

from arc_jax import prompts
from arc_jax.prompts import END_OF_TEXT, EOT, stop_token_ids
from arc_jax.data.types import Task
from arc_jax.model import Llama, LlamaConfig, Numerics, save_merged
from arc_jax.toy.sft import SftConfig, completion_text, make_example
from arc_jax.toy.sft import train as train_sft
from arc_jax.toy.programs import Program, find_solvable_tasks
from arc_jax.toy.synthetic import SyntheticConfig, synthetic_tasks
from arc_jax.toy.tokenizer import train_tokenizer

MARKER_FILE = "toy_policy.json"
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ToyPolicyConfig:
    """Everything that determines a toy policy (a cached policy is reused only if equal).

    hidden_size ... intermediate_size: the tiny Llama (head dim = hidden_size / num_heads).
    vocab_size: tokens of the trained tokenizer, and rows of the embedding.
    max_seq_len: the model's positions (prompt + completion).
    max_prompt_tokens: `demo_tasks` keeps tasks whose prompts fit in this many tokens.
    prompt_style: the `PromptConfig` style of the SFT prompts, always with the assistant
      prefix prefilled; RL and evaluation must render prompts the same way (`prompt_config`).
    num_synthetic_tasks: tasks for the tokenizer corpus and the warm start.
    """

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    vocab_size: int = 768
    max_seq_len: int = 1024
    max_prompt_tokens: int = 512
    prompt_style: str = "arc25"
    num_synthetic_tasks: int = 2000
    synthetic: SyntheticConfig = SyntheticConfig()
    sft: SftConfig = SftConfig()

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ToyPolicyConfig: hidden_size {self.hidden_size} must be a "
                             f"multiple of num_heads {self.num_heads}")
        if not 0 < self.max_prompt_tokens < self.max_seq_len:
            raise ValueError(f"ToyPolicyConfig: expected 0 < max_prompt_tokens < max_seq_len, "
                             f"got {self.max_prompt_tokens} and {self.max_seq_len}")
        if self.num_synthetic_tasks < 1:
            raise ValueError(f"ToyPolicyConfig.num_synthetic_tasks must be >= 1, got "
                             f"{self.num_synthetic_tasks}")
        if self.prompt_style not in prompts.STYLES:
            raise ValueError(f"ToyPolicyConfig.prompt_style: expected one of {prompts.STYLES}, "
                             f"got {self.prompt_style!r}")

    @property
    def prompt_config(self) -> prompts.PromptConfig:
        return prompts.PromptConfig(style=self.prompt_style, prefill_assistant=True)


def llama_config(config: ToyPolicyConfig, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        rope_theta=10000.0,
        max_position_embeddings=config.max_seq_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_token_ids(tokenizer),
    )


def _settings(config: ToyPolicyConfig, seed: int) -> dict:
    return {"version": _FORMAT_VERSION, "seed": seed, "config": dataclasses.asdict(config)}


def read_build_info(directory: str | os.PathLike) -> dict | None:
    """The contents of a finished policy's toy_policy.json, or None if there is none."""
    path = os.path.join(os.fspath(directory), MARKER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError:
            return None
    return info if isinstance(info, dict) and info.get("done") is True else None


def build_toy_policy(directory: str | os.PathLike, config: ToyPolicyConfig = ToyPolicyConfig(),
                     *, seed: int = 0) -> str:
    """Builds the toy policy into `directory` and returns its path.

    A finished policy with the same settings and seed already there is reused as is.
    toy_policy.json (settings, SFT losses, build time, done marker) is written last and
    atomically, so an interrupted build is never mistaken for a finished one.
    """
    directory = os.fspath(directory)
    settings = _settings(config, seed)
    info = read_build_info(directory)
    if info is not None and info.get("settings") == json.loads(json.dumps(settings)):
        return directory
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(directory, MARKER_FILE)
    if os.path.exists(marker):
        os.remove(marker)

    start = time.perf_counter()
    print(f"building the toy policy in {directory} (once; later runs reuse it): "
          f"{config.num_synthetic_tasks} synthetic tasks, a tokenizer, {config.sft.steps} "
          "warm-start steps", flush=True)
    tasks = synthetic_tasks(config.num_synthetic_tasks, seed, config.synthetic)
    prompt_texts = [prompts.render_prompt(task, config.prompt_config, seed=i)
                    for i, (task, _) in enumerate(tasks)]
    tokenizer = train_tokenizer(
        (text + completion_text(program) + EOT
         for text, (_, program) in zip(prompt_texts, tasks)),
        config.vocab_size, model_max_length=config.max_seq_len)
    examples = [make_example(tokenizer, task, program, config.prompt_config, seed=i)
                for i, (task, program) in enumerate(tasks)]
    longest = max(range(len(examples)), key=lambda i: len(examples[i].token_ids))
    if len(examples[longest].token_ids) > config.max_seq_len:
        raise ValueError(
            f"build_toy_policy: synthetic task {longest} takes {len(examples[longest].token_ids)} "
            f"tokens, more than max_seq_len={config.max_seq_len}; lower the SyntheticConfig "
            "grid sizes or raise max_seq_len")

    print(f"toy policy: {len(examples)} examples, tokenizer of {len(tokenizer)} tokens "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    model = Llama(llama_config(config, tokenizer), numerics=Numerics(param_dtype=jnp.float32),
                  rngs=nnx.Rngs(seed))
    losses = train_sft(model, examples, config.sft, tokenizer.pad_token_id, seed=seed)

    save_merged(model, directory, dtype=jnp.float32)
    tokenizer.save_pretrained(directory)
    _write_json(os.path.join(directory, "generation_config.json"), {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": list(stop_token_ids(tokenizer)),
        "pad_token_id": tokenizer.pad_token_id,
    })
    print(f"toy policy built in {time.perf_counter() - start:.0f} s: {directory}", flush=True)
    _write_json(marker, {
        "settings": settings,
        "stop_tokens": [EOT, END_OF_TEXT],
        "num_examples": len(examples),
        "sft_losses": losses,
        "build_seconds": time.perf_counter() - start,
        "done": True,
    })
    return directory


def _write_json(path: str, obj) -> None:
    """Writes through a temporary file and a rename, so readers never see half a file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(temporary, path)


def demo_tasks(tasks: Mapping[str, Task], tokenizer,
               config: ToyPolicyConfig = ToyPolicyConfig()) -> dict[str, Task]:
    """The tasks a program of the family solves whose prompts (for every test input) fit in
    `config.max_prompt_tokens` tokens of `tokenizer`, in id order."""
    solvable = find_solvable_tasks(tasks)
    kept = {}
    for task_id in sorted(solvable):
        task = tasks[task_id]
        lengths = [
            prompts.prompt_num_tokens(tokenizer, prompts.render_prompt(
                task, dataclasses.replace(config.prompt_config, test_index=i)))
            for i in range(len(task.test))
        ]
        if max(lengths) <= config.max_prompt_tokens:
            kept[task_id] = task
    return kept


__all__ = [
    "MARKER_FILE", "Program", "SftConfig", "SyntheticConfig", "ToyPolicyConfig", "build_toy_policy",
    "demo_tasks", "find_solvable_tasks", "llama_config", "read_build_info",
]

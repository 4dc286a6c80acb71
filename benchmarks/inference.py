"""Sampling throughput of the evaluation command at 8B, worst case and realistic lengths.

    python benchmarks/inference.py --out /tmp/inference            # everything below
    python benchmarks/inference.py --tasks 16 --predictions 64 --skip-worst

Writes a random-weight Llama-3.1-8B checkpoint (every completion runs to 1,024 tokens: the
worst case) and a copy whose stop token is drawn with --stop-probability per token (realistic
lengths: `fixtures.make_realistic_checkpoint`), checks the Pallas paged-attention kernel
against the XLA one on the 8B shapes, then runs the user's command on each,

    python -m arc_jax.launch --config=configs/eval_barc_8b.py --config.model_path=DIR
        --config.max_tasks=N --config.eval.n_predictions=2n --config.eval.rounds=2

and prints, from the run's summary.json, per round: programs, output tokens, seconds of
sampling and scoring, output tokens/s and programs/s (sampling + scoring, model loading and
start-up excluded; round 0 also compiles), the output tokens/s until the last sample started
(`steady_tokens_per_s`: no drain at the end, as in the config's far longer rounds), the
length histogram, and the share of the HBM
floor (the bytes the decode steps actually read: weights once per step, each used slot's
prompt keys and values up to its length, each row's own pages) and of the dense bf16 compute ceiling, with the
card's datasheet figures. `--hf` adds HF `generate` (static cache) on the same card.
`--adapter` evaluates a random LoRA adapter on each checkpoint instead of the base model, as a
user evaluates a trained policy.
Each part runs in its own process; JSON lines are printed as results arrive.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import fixtures

ROOT = pathlib.Path(__file__).resolve().parent.parent


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def env_with_root(memory_fraction: float | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if memory_fraction:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(memory_fraction)
    return env


# ----------------------------------------------------------------------------- kernel check


def kernel_check() -> None:
    """Pallas against XLA paged attention: 8B head shapes, bf16, B=256 rows of 1-1,024 own
    tokens in shuffled 32-token pages; relative error and time per call."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from arc_jax.rollout import attention

    b, n, kh, h, ps, per_row = 256, 32, 8, 128, 32, 32
    rng = np.random.default_rng(0)
    pages = 1 + b * per_row
    bf16 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    q, k, v = bf16(b, n, h), bf16(pages, ps, kh, h), bf16(pages, ps, kh, h)
    table = jnp.asarray(1 + rng.permutation(b * per_row).reshape(b, per_row), jnp.int32)
    lengths = jnp.asarray(rng.integers(1, ps * per_row + 1, b), jnp.int32)
    record = {"stage": "kernel_check", "rows": b}
    try:
        outs = {}
        for impl in ("xla", "pallas"):
            fn = jax.jit(lambda q, k, v, t, l, impl=impl: attention.paged_attention(
                q, k, v, t, l, implementation=impl)[:2])
            outs[impl] = jax.block_until_ready(fn(q, k, v, table, lengths))
            begin = time.perf_counter()
            for _ in range(20):
                out = fn(q, k, v, table, lengths)
            jax.block_until_ready(out)
            record[f"{impl}_ms"] = round((time.perf_counter() - begin) / 20 * 1e3, 3)
        ref, ours = outs["xla"], outs["pallas"]
        record["out_rel_err"] = float(jnp.linalg.norm(ours[0] - ref[0]) / jnp.linalg.norm(ref[0]))
        record["lse_max_err"] = float(jnp.max(jnp.abs(ours[1] - ref[1])))
        read = int(jnp.sum(-(-lengths // ps) * ps)) * kh * h * 2 * 2
        record["pallas_read_gb"] = round(read / 1e9, 3)
        record["ok"] = record["out_rel_err"] < 1e-2 and record["lse_max_err"] < 5e-2
    except Exception as e:  # noqa: BLE001 - report and let the run fall back to XLA
        record["ok"] = False
        record["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
    emit(record)
    segment_memory()


def segment_memory(layers: int = 2, rows: int = 256, slots: int = 16, prompt_len: int = 4096,
                   pages: int = 2048, page_size: int = 32) -> None:
    """The compiled decoding segment's memory at the 8B widths with `layers` layers: temp
    bytes (XLA's scratch) against the page pool's bytes, per attention implementation. A temp
    that grows with the pool means the decoding loop copies the pool."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from arc_jax.model import Llama, LlamaConfig, Numerics
    from arc_jax.rollout import JaxSampler, SamplerConfig, SamplingParams
    from arc_jax.rollout.decode import Layout, PagePool, Rows, SlotCache

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128)
    model = Llama(config, numerics=Numerics(param_dtype=jnp.bfloat16, attention_impl="cudnn"),
                  rngs=nnx.Rngs(0))
    for impl in ("xla", "pallas"):
        sampler = JaxSampler(model, config=SamplerConfig(attention=impl, page_size=page_size))
        shaped = lambda f: jax.eval_shape(f)
        m = nnx.merge(*sampler._weights)
        cache = shaped(lambda: SlotCache.empty(m, slots, False))
        pool = shaped(lambda: PagePool.empty(m, pages, page_size))
        state = shaped(lambda: Rows.empty(rows, config.vocab_size, False))
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
        try:
            compiled = sampler._segment.lower(
                *sampler._weights, cache, pool, spec((slots, prompt_len // page_size), jnp.int32),
                spec((rows, 32), jnp.int32),
                Layout.fixed(slots, rows // slots), state,
                spec((rows,), bool), spec((rows,), bool), spec((rows, 2), jnp.uint32),
                spec((), jnp.int32), steps=64, sampling=SamplingParams(top_p=0.95),
                attention=impl, adapters=False).compile()
            analysis = compiled.memory_analysis()
            pool_bytes = sum(x.size * x.dtype.itemsize for x in pool.k + pool.v)
            emit({"stage": "segment_memory", "attention": impl, "layers": layers,
                  "pool_gib": round(pool_bytes / 2**30, 3),
                  "temp_gib": round(analysis.temp_size_in_bytes / 2**30, 3),
                  "alias_gib": round(analysis.alias_size_in_bytes / 2**30, 3)})
        except Exception as e:  # noqa: BLE001
            emit({"stage": "segment_memory", "attention": impl, "error": str(e)[:800]})


# ----------------------------------------------------------------------------- eval runs


def run_eval(name: str, checkpoint: pathlib.Path, out: pathlib.Path, args) -> dict:
    output_dir = out / f"eval_{name}"
    shutil.rmtree(output_dir, ignore_errors=True)
    policy_args = []
    if args.adapter:  # the trained policy's evaluation: a random adapter, no baseline
        adapter = out / f"adapter-{name}"
        if not (adapter / "adapter_config.json").exists():
            fixtures.make_adapter(checkpoint, adapter)
        policy_args = [f"--config.checkpoint={adapter}", "--config.eval.baseline=False"]
    command = [sys.executable, "-m", "arc_jax.launch", "--config=configs/eval_barc_8b.py",
               f"--config.model_path={checkpoint}", f"--config.max_tasks={args.tasks}",
               f"--config.eval.n_predictions={args.rounds * args.predictions}",
               f"--config.eval.rounds={args.rounds}",
               f"--config.eval.output_dir={output_dir}", f"--config.workdir={out / 'workdir'}",
               "--config.eval.num_pictures=0", *policy_args, *args.override]
    emit({"stage": "eval", "name": name, "command": " ".join(command[2:])})
    begin = time.perf_counter()
    with open(out / f"eval_{name}.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env_with_root(args.memory_fraction),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            log.flush()  # a run stopped by a timeout still leaves its log
            if any(k in line for k in ("round ", "rror", "Traceback", "eval plan")):
                print("  | " + line.rstrip()[:400], flush=True)
        rc = proc.wait()
    summary_path = output_dir / "summary.json"
    # one policy: the baseline, or the adapter with --adapter
    rounds = ([policy["rounds"] for policy in json.loads(summary_path.read_text()).values()][0]
              if summary_path.exists() else [])
    return {"rc": rc, "wall_s": time.perf_counter() - begin, "rounds": rounds}


def eval_table(name: str, result: dict, sizes: dict, bandwidth: float, flops: float) -> list[dict]:
    rows = []
    for r in result["rounds"]:
        seconds = r["sample_s"] + r["score_s"]
        steps = max(r.get("steps", 0), 1)
        kv = r.get("kv_bytes_per_token", sizes["kv_bytes_per_token"])  # fp8: half
        read = (steps * sizes["weight_bytes"] + kv * (r.get("prompt_kv_read", 0)
                                                       + r.get("own_kv_read", 0)))
        tokens = r["output_tokens"]
        # 2 FLOPs per weight per token (decoded and prefilled), and the attention products
        # (each lane's query against its slot's prompt up to its length, and each row's own pages).
        per_slot = r.get("lanes", r.get("rows", 1) / max(r.get("prompt_slots", 1), 1))
        keys = r.get("own_kv_read", 0) + r.get("prompt_kv_read", 0) * per_slot
        compute = (2 * sizes["params"] * (tokens + r["prompt_tokens"])
                   + 4 * sizes["layers"] * sizes["heads"] * sizes["head_dim"] * keys)
        rows.append({
            "stage": "eval_table", "lengths": name, "round": r["round"], "rc": result["rc"],
            "programs": r["programs"], "output_tokens": tokens, "sample_s": r["sample_s"],
            "score_s": r["score_s"], "output_tokens_per_s": round(tokens / seconds),
            "programs_per_s": round(r["programs"] / seconds, 1),
            "decode_steps": r.get("steps"), "rows": r.get("rows"),
            "prompt_slots": r.get("prompt_slots"), "pages": r.get("pages"),
            "preempted": r.get("preempted", 0), "prefills": r.get("prefills"),
            "segments": r.get("segments"),  # host visits: the device waits for each
            "compiled": r.get("compiled"),  # new prefill and segment programs in the round
            # until the last sample started (rows refilled all along): a long stream's rate
            "steady_tokens_per_s": round(r.get("steady_tokens", 0) / max(r.get("steady_s", 0), 1e-9)),
            # the round's seconds: prefills, decoding segments, the device waiting for the host
            **{k: r.get(k) for k in ("prefill_s", "decode_s", "host_s")},
            "row_occupancy": round(r.get("row_steps", 0) / steps / max(r.get("rows", 1), 1), 3),
            "hbm_floor_share": round(read / bandwidth / r["sample_s"], 3),
            "compute_share": round(compute / flops / r["sample_s"], 3),
            "truncated": r["truncated"], "histogram": fixtures.histogram(r["lengths"]),
            "command_wall_s": round(result["wall_s"], 1)})
    return rows


def model_sizes(checkpoint: pathlib.Path) -> dict:
    c = json.loads((checkpoint / "config.json").read_text())
    d, f, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    n, k, h = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    linear = layers * (d * n * h * 2 + d * k * h * 2 + 3 * d * f)
    return {"params": linear + d * v, "weight_bytes": 2 * (linear + 2 * d * v), "layers": layers,
            "heads": n, "head_dim": h, "kv_bytes_per_token": 2 * layers * k * h * 2}


# ----------------------------------------------------------------------------- HF generate


def hf_generate(checkpoint: pathlib.Path, rows: int, prompt_len: int, new_tokens: int) -> None:
    """transformers' `generate` (static cache, sampling) on `rows` sequences: output tokens/s."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).cuda()
    prompt = torch.randint(1000, 100000, (rows, prompt_len), device="cuda")

    def generate(steps):
        torch.manual_seed(0)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                              top_p=0.95, max_new_tokens=steps, min_new_tokens=steps,
                              cache_implementation="static", pad_token_id=0)

    generate(4)
    torch.cuda.synchronize()
    begin = time.perf_counter()
    generate(new_tokens)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    emit({"stage": "hf_generate", "rows": rows, "prompt": prompt_len, "new_tokens": new_tokens,
          "seconds": round(seconds, 2), "output_tokens_per_s": round(rows * new_tokens / seconds),
          "note": "one prefill included"})


# ----------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/inference"))
    p.add_argument("--tasks", type=int, default=16, help="evaluation tasks (N)")
    p.add_argument("--predictions", type=int, default=64, help="predictions per task per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds (round 0 also compiles)")
    p.add_argument("--skip-kernel", action="store_true", help="no kernel check")
    p.add_argument("--stop-probability", type=float, default=0.0022,
                   help="per-token stop probability of the realistic checkpoint")
    p.add_argument("--memory-fraction", type=float, default=0.95,
                   help="XLA_PYTHON_CLIENT_MEM_FRACTION of the eval runs")
    p.add_argument("--override", action="append", default=[], help="an extra --config.x=y")
    p.add_argument("--skip-worst", action="store_true")
    p.add_argument("--skip-realistic", action="store_true")
    p.add_argument("--hf", action="store_true", help="HF generate on the same card")
    p.add_argument("--adapter", action="store_true",
                   help="evaluate a random LoRA adapter on each checkpoint (a trained policy: "
                   "its adapter is merged into the sampler's weights) instead of the base model")
    p.add_argument("--phase", choices=["checkpoint", "realistic", "kernel", "hf"],
                   help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=pathlib.Path)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    worst = args.out / "checkpoint-worst"
    realistic = args.out / "checkpoint-realistic"

    if args.phase == "checkpoint":
        return fixtures.make_checkpoint(worst, "llama-3.1-8b")
    if args.phase == "realistic":
        return emit({"stage": "realistic_checkpoint", **fixtures.make_realistic_checkpoint(
            worst, realistic, args.stop_probability)})
    if args.phase == "kernel":
        return kernel_check()
    if args.phase == "hf":
        return hf_generate(worst, 64, 1024, 256)

    name, bandwidth, flops = fixtures.card()
    emit({"stage": "card", "name": name, "hbm_tbps": bandwidth / 1e12, "bf16_tflops": flops / 1e12})
    me = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--out={args.out}",
          f"--stop-probability={args.stop_probability}"]
    for phase, folder in (("checkpoint", worst), ("realistic", realistic)):
        if phase == "realistic" and args.skip_realistic:
            continue
        if not (folder / "config.json").exists():
            begin = time.perf_counter()
            subprocess.run(me + [f"--phase={phase}"], check=True, env=env_with_root())
            emit({"stage": phase, "seconds": round(time.perf_counter() - begin, 1)})
    if not args.skip_kernel:
        subprocess.run(me + ["--phase=kernel"], env=env_with_root(), cwd=ROOT)
    sizes = model_sizes(worst)
    for name_, folder, skip in (("realistic", realistic, args.skip_realistic),
                                ("worst", worst, args.skip_worst)):
        if skip:
            continue
        for row in eval_table(name_, run_eval(name_, folder, args.out, args), sizes, bandwidth, flops):
            emit(row)
    if args.hf:
        subprocess.run(me + ["--phase=hf"], env=env_with_root())


if __name__ == "__main__":
    main()

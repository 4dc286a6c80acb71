"""Decode throughput of the JAX sampler on a random model, and its share of the bandwidth floor.

A randomly initialised Llama of the chosen shape samples G completions for each of P prompts
(no stop tokens, so every sample runs the full length: the worst case) through
`JaxSampler.generate`, twice; the second call is timed. Example:

    python benchmarks/sampler.py --model tiny --prompt_len 256 --G 8 --new_tokens 64
    python benchmarks/sampler.py --model llama-3.1-8b --prompts 8 --G 32 --prompt_len 1024 \\
        --new_tokens 1024 --bandwidth_gbs 3350

The floor of the decoding steps is the bytes they must read (all weights once per step, each
prompt slot's keys and values, each row's own pages as the engine counts them) divided by the
memory bandwidth. Bandwidth is measured with a large reduction unless --bandwidth_gbs gives it
(e.g. 3350 for an H100 SXM, 4800 for an H200).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arc_jax.model import LlamaConfig, Llama, Numerics, RopeScaling
from arc_jax.rollout import JaxSampler, SamplerConfig, SamplingParams
from arc_jax.rollout.memory import kv_bytes_per_token

import fixtures

# The first 16 ARC-AGI-1 evaluation tasks' prompt lengths (default prompt, Llama-3 tokenizer),
# as `launch --config=configs/eval_barc_8b.py --config.max_tasks=16` samples them.
ARC_EVAL_FIRST_16 = [291, 2523, 1761, 967, 6707, 3785, 515, 2309, 1219, 4968, 4511, 3949, 1897,
                     1389, 1105, 967]

MODELS = {
    "tiny": LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=768,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=64),
    "small": LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=3584,
                         num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                         head_dim=64),
    "llama-3.1-8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192)),
}


def measure_bandwidth(num_bytes: int = 512 * 2 ** 20) -> float:
    """Bytes/s of a jitted sum over a large array (read-bound), best of 5."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = float("inf")
    for _ in range(5):
        begin = time.perf_counter()
        total(x).block_until_ready()
        best = min(best, time.perf_counter() - begin)
    return num_bytes / best


def time_prefix_kernels(slots: int, rows: int, lengths: list[int], prompt_len: int,
                        page_size: int = 32) -> None:
    """The prompt part of a decode step's attention at the 8B head shapes, bf16, the prompts in
    shuffled pages of a pool: XLA (gathers every page, float32 scores) against the Pallas
    kernel (real lengths only), per layer."""
    from arc_jax.rollout import attention

    rng = np.random.default_rng(0)
    bf16 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    per_prompt = -(-prompt_len // page_size)
    pages = 1 + slots * per_prompt
    q = bf16(slots, rows, 32, 128)
    k, v = bf16(pages, page_size, 8, 128), bf16(pages, page_size, 8, 128)
    table = jnp.asarray(1 + rng.permutation(pages - 1).reshape(slots, per_prompt), jnp.int32)
    lengths = jnp.asarray([lengths[i % len(lengths)] for i in range(slots)], jnp.int32)
    outs = {}
    for impl in ("xla", "pallas"):
        fn = jax.jit(lambda q, k, v, t, n, impl=impl: attention.prefix_attention(
            q, k, v, t, n, implementation=impl)[:2])
        outs[impl] = jax.block_until_ready(fn(q, k, v, table, lengths))
        begin = time.perf_counter()
        for _ in range(20):
            out = fn(q, k, v, table, lengths)
        jax.block_until_ready(out)
        ms = (time.perf_counter() - begin) / 20 * 1e3
        print(f"prefix attention {impl:>6}: {ms:.3f} ms per layer ({slots} slots x {rows} rows, "
              f"prompts paged up to {prompt_len}, real {int(lengths.sum())} tokens)", flush=True)
    err = jnp.linalg.norm(outs["pallas"][0] - outs["xla"][0]) / jnp.linalg.norm(outs["xla"][0])
    print(f"prefix attention pallas vs xla: relative error {float(err):.2e}, lse max error "
          f"{float(jnp.max(jnp.abs(outs['pallas'][1] - outs['xla'][1]))):.2e}", flush=True)


def time_top_p(rows: int, vocab: int, cuts: list[int], p: float) -> None:
    """`apply_top_p` on float32 logits [rows, vocab] for each number of cuts per pass (1 is
    the binary search), with the bytes of one read of the logits for scale."""
    from arc_jax.rollout.sampling import apply_top_p

    logits = jnp.asarray(np.random.default_rng(0).normal(size=(rows, vocab)), jnp.float32)
    kept = {}
    for c in cuts:
        fn = jax.jit(lambda x, c=c: apply_top_p(x, p, c))
        kept[c] = jax.block_until_ready(fn(logits))
        begin = time.perf_counter()
        for _ in range(20):
            out = fn(logits)
        jax.block_until_ready(out)
        ms = (time.perf_counter() - begin) / 20 * 1e3
        print(f"top-p {p} with {c} cut(s) per pass: {ms:.3f} ms on [{rows}, {vocab}] "
              f"({logits.nbytes / 2**20:.0f} MiB per read)", flush=True)
    same = all(bool(jnp.array_equal(kept[c], kept[cuts[0]])) for c in cuts)
    print(f"top-p: every cut count keeps the same tokens: {same}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--config", help="a Hugging Face config.json instead of --model")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=1, help="distinct prompts (P)")
    parser.add_argument("--prompt_len", type=int, default=256)
    parser.add_argument("--G", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--max_rows", type=int, default=256)
    parser.add_argument("--rows_per_prompt", type=int, default=16)
    parser.add_argument("--bandwidth_gbs", type=float, help="memory bandwidth in GB/s")
    parser.add_argument("--prompt_lens", default="",
                        help="comma-separated prompt lengths, cycled over the prompts (instead "
                             "of --prompt_len); 'arc-eval' = the first 16 ARC-AGI-1 evaluation "
                             "prompts' lengths with the Llama-3 tokenizer")
    parser.add_argument("--attention", default="auto", choices=["auto", "xla", "pallas"])
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--segment_steps", type=int, default=64)
    parser.add_argument("--top_p_cuts", default="",
                        help="time apply_top_p with these cuts per pass (e.g. 1,7) on [max_rows, "
                             "vocab] logits first")
    parser.add_argument("--kernels", action="store_true",
                        help="first time the prompt attention alone, XLA against Pallas")
    parser.add_argument("--profile", type=pathlib.Path,
                        help="trace the timed call into this folder and print where the device "
                             "time went, per kernel and per named scope")
    args = parser.parse_args()

    config = LlamaConfig.from_json(args.config) if args.config else MODELS[args.model]
    dtype = jnp.dtype(args.dtype)
    p, g, t = args.prompts, args.G, args.new_tokens
    lengths = ARC_EVAL_FIRST_16 if args.prompt_lens == "arc-eval" else [
        int(x) for x in args.prompt_lens.split(",") if x] or [args.prompt_len]
    lengths = [lengths[i % len(lengths)] for i in range(p)]
    s = f"{min(lengths)}-{max(lengths)}" if len(set(lengths)) > 1 else str(lengths[0])
    if args.top_p_cuts:
        time_top_p(args.max_rows, config.vocab_size, [int(c) for c in args.top_p_cuts.split(",")],
                   args.top_p)
    if args.kernels:
        slots = max(1, min(p, args.max_rows // min(g, args.rows_per_prompt)))
        bucket = SamplerConfig().buckets(max(lengths))
        time_prefix_kernels(slots, args.max_rows // slots, lengths, bucket)
    model = Llama(config, numerics=Numerics(param_dtype=dtype), rngs=nnx.Rngs(0))
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
    sampler = JaxSampler(model, config=SamplerConfig(
        max_rows=args.max_rows, rows_per_prompt=args.rows_per_prompt, attention=args.attention,
        segment_steps=args.segment_steps))
    sampling = SamplingParams(temperature=1.0, top_p=args.top_p, max_new_tokens=t,
                              stop_token_ids=(), seed=0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    begin = time.perf_counter()
    sampler.generate(prompts, g, sampling)  # compiles
    compile_s = time.perf_counter() - begin
    if args.profile:
        shutil.rmtree(args.profile, ignore_errors=True)
        jax.profiler.start_trace(str(args.profile))
    begin = time.perf_counter()
    out = sampler.generate(prompts, g, sampling)
    seconds = time.perf_counter() - begin
    if args.profile:
        jax.profiler.stop_trace()
    stats = sampler.last_stats
    assert min(len(c.token_ids) for cs in out for c in cs) == t, "every sample runs the full length"

    per_token = kv_bytes_per_token(config, dtype)
    read = (stats["steps"] * weight_bytes
            + per_token * (stats["prompt_kv_read"] + stats["own_kv_read"]))
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else measure_bandwidth()
    rows = [
        ("device", jax.devices()[0].device_kind),
        ("model / dtype", f"{args.config or args.model} / {args.dtype}"),
        ("P x prompt_len, G, new tokens", f"{p} x {s}, {g}, {t}"),
        ("rows (prompt slots, lanes per slot)", f"{stats['rows']} ({stats['prompt_slots']}, "
                                                f"{stats['lanes']})"),
        ("first call (compiles)", f"{compile_s:.1f} s"),
        ("output tokens/s", f"{p * g * t / seconds:,.0f}  ({seconds:.2f} s)"),
        ("decode steps", f"{stats['steps']} ({1e3 * seconds / stats['steps']:.2f} ms/step, "
                         "prefill included)"),
        ("bytes read (weights per step, KV read)", f"{read / 2**30:,.1f} GiB"),
        ("memory bandwidth", f"{bandwidth / 1e9:,.1f} GB/s"
                             + ("" if args.bandwidth_gbs else " (measured)")),
        ("share of the floor", f"{read / bandwidth / seconds:.1%}"),
        ("segments, prefills, preempted", f"{stats['segments']}, {stats['prefills']}, "
                                          f"{stats.get('preempted', 0)}"),
        ("attention", sampler.attention),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", flush=True)
    if args.profile:
        print(json.dumps(fixtures.summarize_trace(args.profile)), flush=True)


if __name__ == "__main__":
    main()

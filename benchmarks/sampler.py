"""Prefill and decode throughput of the JAX sampler, and decode bytes vs the bandwidth floor.

A randomly initialised Llama of the chosen shape prefills P prompts of the given length once,
then decodes G samples per prompt for the given number of new tokens (no stop tokens, so every
sample runs the full length). Example:

    python benchmarks/sampler.py --model tiny --prompt_len 256 --G 8 --new_tokens 64
    python benchmarks/sampler.py --model llama-3.1-8b --prompt_len 4096 --G 64 --new_tokens 1024

The floor of one decode step is the bytes it must read (all weights, each prompt's KV cache
once, each sample's completion KV cache so far) divided by the memory bandwidth; the table
shows how close the measured step comes to it. Bandwidth is measured with a large reduction
unless --bandwidth_gbs gives it (e.g. 3350 for an H100 SXM).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arc_jax.model import LlamaConfig, Llama, Numerics, RopeScaling
from arc_jax.rollout import SamplingParams, plan_memory
from arc_jax.rollout.decode import decode, prefill, row_keys
from arc_jax.rollout.memory import free_device_bytes, kv_bytes_per_token, check_fits

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
    return num_bytes / min(timed(lambda: total(x))[1] for _ in range(5))


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--config", help="a Hugging Face config.json instead of --model")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=1, help="distinct prompts per batch (P)")
    parser.add_argument("--prompt_len", type=int, default=256)
    parser.add_argument("--G", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--bandwidth_gbs", type=float, help="memory bandwidth in GB/s")
    args = parser.parse_args()

    config = LlamaConfig.from_json(args.config) if args.config else MODELS[args.model]
    dtype = jnp.dtype(args.dtype)
    p, s, g, t = args.prompts, args.prompt_len, args.G, args.new_tokens
    check_fits(plan_memory(config, dtype, p, s, g, t), free_device_bytes())

    model = Llama(config, numerics=Numerics(param_dtype=dtype), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    sampling = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=t, stop_token_ids=())

    @jax.jit
    def run_prefill(state, tokens, lengths):
        return prefill(nnx.merge(graphdef, state), tokens, lengths)

    @jax.jit
    def run_decode(state, prompt, tokens, first_logits):
        keys = row_keys(jnp.uint32(0), jnp.arange(p), g)
        return decode(nnx.merge(graphdef, state), prompt, tokens, first_logits,
                      jnp.ones((p,), bool), keys, n=g, sampling=sampling)

    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (p, s), dtype=np.int32)
    lengths = np.full((p,), s, np.int32)
    prompt, first = run_prefill(state, tokens, lengths)  # compile
    run_decode(state, prompt, tokens, first).lengths.block_until_ready()
    (prompt, first), prefill_s = timed(lambda: run_prefill(state, tokens, lengths))
    rollout, decode_s = timed(lambda: run_decode(state, prompt, tokens, first))
    assert int(rollout.lengths.min()) == t, "every sample should run the full length"

    per_token = kv_bytes_per_token(config, dtype)
    prompt_kv = p * s * per_token
    floor_bytes = weight_bytes + prompt_kv + p * g * per_token * (t + 1) / 2  # mean over steps
    read_bytes = weight_bytes + prompt_kv + p * g * per_token * t  # all T slots every step
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else measure_bandwidth()
    step_s = decode_s / t
    rows = [
        ("device", jax.devices()[0].device_kind),
        ("model / dtype", f"{args.config or args.model} / {args.dtype}"),
        ("P x prompt_len, G, new tokens", f"{p} x {s}, {g}, {t}"),
        ("prefill tokens/s", f"{p * s / prefill_s:,.0f}  ({prefill_s * 1e3:.1f} ms)"),
        ("decode tokens/s", f"{p * g * t / decode_s:,.0f}  ({step_s * 1e3:.2f} ms/step)"),
        ("weights", f"{weight_bytes / 2**20:,.1f} MiB"),
        ("prompt KV cache (one copy)", f"{prompt_kv / 2**20:,.1f} MiB"),
        ("bytes/step floor (mean)", f"{floor_bytes / 2**20:,.1f} MiB"),
        ("bytes/step read (full slots)", f"{read_bytes / 2**20:,.1f} MiB"),
        ("memory bandwidth", f"{bandwidth / 1e9:,.1f} GB/s"
                             + ("" if args.bandwidth_gbs else " (measured)")),
        ("floor time/step", f"{floor_bytes / bandwidth * 1e3:.2f} ms"),
        ("fraction of floor", f"{floor_bytes / bandwidth / step_s:.1%}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

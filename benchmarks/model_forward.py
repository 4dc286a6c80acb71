"""Forward (optionally forward + LoRA backward) throughput and memory of the Llama model.

Weights are random, so no checkpoint is needed. Prints one JSON line, e.g.

  python benchmarks/model_forward.py --preset tiny --batch 4 --seq 256
  python benchmarks/model_forward.py --preset llama-3.1-8b --batch 1 --seq 8192 --grad \
      --lora-rank 16 --remat nothing_saveable
  python benchmarks/model_forward.py --config path/to/checkpoint/config.json
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from arc_jax.model import LlamaConfig, LoraConfig, LoraParam, Numerics, RopeScaling
from arc_jax.model.llama import Llama

PRESETS = {
    "tiny": LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=768,
                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                        head_dim=32),
    "llama-3.1-8b": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                num_hidden_layers=32, num_attention_heads=32,
                                num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                                rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192)),
}
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--config", help="a Hugging Face config.json (overrides --preset)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--lora-rank", type=int, default=0, help="0 = no adapters")
    p.add_argument("--grad", action="store_true", help="time forward + LoRA gradient")
    p.add_argument("--remat", default=None, help="a jax.checkpoint_policies name")
    p.add_argument("--attention", choices=["xla", "cudnn"], default=None)
    p.add_argument("--iters", type=int, default=5)
    return p.parse_args()


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random(key, shape, dtype):
    return (0.02 * jax.random.normal(key, shape)).astype(dtype)


def build_model(config: LlamaConfig, numerics: Numerics, lora: LoraConfig | None) -> Llama:
    """Random weights made on the device one array at a time (one compile per distinct shape;
    building the whole model inside one jit compiles slowly for deep models)."""
    abstract = nnx.eval_shape(
        lambda: Llama(config, numerics=numerics, lora=lora, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    for _, variable in nnx.to_flat_state(state):
        variable.set_value(_random(next(keys), variable.shape, variable.dtype))
    return nnx.merge(graphdef, state)


def memory_report(model: Llama) -> dict:
    stats = jax.devices()[0].memory_stats() or {}
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    return {
        "param_gib": param_bytes / 2**30,
        "device_peak_gib": stats["peak_bytes_in_use"] / 2**30 if stats else None,
        "host_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main():
    args = parse_args()
    config = LlamaConfig.from_json(args.config) if args.config else PRESETS[args.preset]
    dtype = DTYPES[args.dtype]
    numerics = Numerics(param_dtype=dtype, attention_impl=args.attention,
                        remat_policy=args.remat)
    lora = LoraConfig(rank=args.lora_rank) if args.lora_rank else None
    if args.grad and lora is None:
        raise SystemExit("--grad needs --lora-rank > 0 (only LoRA parameters are trained)")
    model = build_model(config, numerics, lora)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, config.vocab_size)
    graphdef, trainable, frozen = nnx.split(model, LoraParam, ...)

    def loss(trainable, frozen, tokens):  # weights as arguments, never as jit constants
        logits = nnx.merge(graphdef, trainable, frozen)(tokens)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1))  # a scalar that needs all logits

    step = jax.jit(jax.grad(loss) if args.grad else loss)
    start = time.perf_counter()
    jax.block_until_ready(step(trainable, frozen, tokens))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        jax.block_until_ready(step(trainable, frozen, tokens))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(json.dumps({
        "device": str(jax.devices()[0].device_kind),
        "config": args.config or args.preset,
        "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
        "lora_rank": args.lora_rank, "grad": args.grad, "remat": args.remat,
        "first_call_s": round(compile_s, 3),
        "step_s_median": round(seconds, 5),
        "tokens_per_s": round(args.batch * args.seq / seconds, 1),
        **{k: None if v is None else round(v, 4) for k, v in memory_report(model).items()},
    }))


if __name__ == "__main__":
    main()

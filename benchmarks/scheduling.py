"""Decode steps the JAX sampler's schedule spends on a call whose samples stop at varied
lengths, against the fewest possible (the call's tokens / rows). No accelerator needed.

A tiny random Llama (61-token vocabulary) samples n completions for each of P prompts with
one stop token: lengths then spread like real completions, most short, a few at the limit.
The figures are steps, not seconds, so they come out the same on any machine; a step on a GPU
costs about the same whatever its row count, so fewer steps for the same tokens is the
throughput gained. Example (about a minute on two cores):

    python benchmarks/scheduling.py --rows 32 --rows_per_prompt 8,4 --n 16,30
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from flax import nnx

from arc_jax.model import Llama, LlamaConfig
from arc_jax.rollout import JaxSampler, PromptBuckets, SamplerConfig, SamplingParams

TINY = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                   max_position_embeddings=1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", default="16,30", help="samples per prompt, comma-separated")
    p.add_argument("--rows", type=int, default=32, help="sampler.max_rows")
    p.add_argument("--rows_per_prompt", default="8,4", help="comma-separated")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--segment_steps", type=int, default=16)
    args = p.parse_args()

    model = Llama(TINY, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    prompts = [[1] + rng.integers(6, TINY.vocab_size, int(rng.integers(8, 60))).tolist()
               for _ in range(args.prompts)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens,
                              stop_token_ids=(3,), seed=5)
    for n in (int(x) for x in args.n.split(",")):
        for r in (int(x) for x in args.rows_per_prompt.split(",")):
            sampler = JaxSampler(model, config=SamplerConfig(
                buckets=PromptBuckets(minimum=8, bits=1), page_size=8, max_rows=args.rows,
                rows_per_prompt=r, segment_steps=args.segment_steps))
            out = sampler.generate(prompts, n, sampling)
            stats = sampler.last_stats
            lengths = np.array([len(c.token_ids) for cs in out for c in cs])
            print(json.dumps({
                "prompts": args.prompts, "n": n, "rows": stats["rows"], "rows_per_prompt": r,
                "prompt_slots": stats["prompt_slots"], "lanes": stats.get("lanes"),
                "median_length": float(np.median(lengths)), "max_length": int(lengths.max()),
                "at_limit": float(np.mean(lengths == args.max_new_tokens)),
                "steps": stats["steps"], "ideal_steps": round(lengths.sum() / stats["rows"]),
                "row_occupancy": round(stats["row_steps"] / (stats["steps"] * stats["rows"]), 3),
                "segments": stats["segments"], "prefills": stats["prefills"],
                **{k: stats[k] for k in ("prefill_s", "decode_s", "host_s")}}), flush=True)


if __name__ == "__main__":
    main()

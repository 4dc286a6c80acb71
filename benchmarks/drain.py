"""How many decode steps a sampler call loses to its drain (the last rows finishing while the
others idle), for completion lengths drawn from a measured histogram. No model, no device.

Each of R rows takes the next sample as soon as its last one stops (as the JAX sampler's rows
do when pages are plentiful); the call ends when its longest-running row stops. Prints the
steps, the fewest possible (tokens / R, or the longest sample), and the row occupancy, for
calls of several sizes. Example, the eval command's round 1 of `benchmarks/inference.py` at
realistic lengths (16 tasks x 32 predictions, H100, 2026-12-07):

    python benchmarks/drain.py --rows 256 --samples 512,960,3840,24000 --histogram \
        '{"1-127": 204, "128-255": 40, "256-383": 21, "384-511": 22, "512-767": 36,
          "768-1022": 13, "1023-1023": 3, ">=1024": 173}'
"""

from __future__ import annotations

import argparse
import heapq
import json
import re

import numpy as np


def draw_lengths(histogram: dict[str, int], count: int, limit: int,
                 rng: np.random.Generator) -> np.ndarray:
    """`count` lengths [count]: a bin by its share of the histogram, then uniform inside it;
    ">=L" bins are the limit."""
    bins, weights = [], []
    for name, n in histogram.items():
        if name.startswith(">="):
            low = high = limit
        else:
            low, high = (int(x) for x in name.split("-"))
        bins.append((low, high))
        weights.append(n)
    weights = np.array(weights, np.float64) / sum(weights)
    chosen = rng.choice(len(bins), size=count, p=weights)
    return np.array([rng.integers(bins[i][0], bins[i][1] + 1) for i in chosen])


def steps(lengths: np.ndarray, rows: int) -> int:
    """Decode steps of `rows` rows taking the samples in order as they free up."""
    free = [0] * min(rows, len(lengths))  # the step at which each row is free
    heapq.heapify(free)
    end = 0
    for length in lengths:
        start = heapq.heappop(free)
        heapq.heappush(free, start + int(length))
        end = max(end, start + int(length))
    return end


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--histogram", required=True, help="JSON: {\"low-high\": count, \">=L\": count}")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--samples", default="512", help="samples per call, comma-separated")
    p.add_argument("--limit", type=int, default=1024, help="max_completion_length")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        histogram = json.loads(args.histogram)
    except json.JSONDecodeError as e:
        p.error(f"--histogram: expected JSON, got {args.histogram!r} ({e})")
    try:
        counts = [int(x) for x in args.samples.split(",")]
    except ValueError:
        p.error(f"--samples: expected comma-separated integers, got {args.samples!r}")
    if not isinstance(histogram, dict) or not histogram or not all(
            isinstance(n, int) and n >= 0 for n in histogram.values()) or not all(
            re.fullmatch(r">=\d+|\d+-\d+", name) for name in histogram):
        p.error("--histogram: expected {\"low-high\": count, ..., \">=L\": count}, got "
                f"{args.histogram!r}")
    if args.rows < 1 or min(counts) < 1 or args.limit < 1:
        p.error("--rows, --samples and --limit must be at least 1")
    rng = np.random.default_rng(args.seed)
    for count in counts:
        lengths = draw_lengths(histogram, count, args.limit, rng)
        taken = steps(lengths, args.rows)
        fewest = max(int(np.ceil(lengths.sum() / args.rows)), int(lengths.max()))
        print(json.dumps({"samples": count, "rows": args.rows, "tokens": int(lengths.sum()),
                          "steps": taken, "fewest": fewest,
                          "row_occupancy": round(float(lengths.sum()) / (taken * args.rows), 3)}))


if __name__ == "__main__":
    main()

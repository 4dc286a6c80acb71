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

With `--slots 16:32,8:64` it also replays the sampler's own schedule for those layouts (prompt
slots : lanes per slot, `sampler.rows_per_prompt` 16 and 32 at 256 rows): a prompt holds its
slot until its longest sample stops, and rows are refilled only between segments
(`--refill-rows 0,8`: `sampler.refill_rows` values to compare).
"""

from __future__ import annotations

import argparse
import collections
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


def slotted_steps(lengths: np.ndarray, rows: int, slots: int, lanes: int,
                  segment_steps: int, refill_rows: int = 0) -> tuple[int, int, int]:
    """The JAX sampler's schedule replayed for lengths [prompts, n]: a
    prompt waits for a free prompt slot (one whose prompt has every sample started and none
    running); a free row takes the next sample of the oldest slotted prompt with samples to
    start and a free lane (`lanes` per slot); rows are refilled only between segments, which
    end after `segment_steps` steps or once `refill_rows` rows finished (0: rows // 8), as
    `_Run.results` does. Returns (decode steps, row-steps, segments)."""
    prompts, n = lengths.shape
    pending = collections.deque(range(prompts))
    slot_prompt, slot_next, slot_busy = [-1] * slots, [n] * slots, [0] * slots
    slot_order, admitted = [0] * slots, 0
    left = np.zeros(rows, np.int64)  # tokens each row has left; 0 = idle
    row_slot = np.zeros(rows, np.int64)
    step = row_steps = segments = 0
    remaining = prompts * n
    while remaining:
        for s in range(slots):
            if pending and slot_next[s] >= n and slot_busy[s] == 0:
                admitted += 1
                slot_prompt[s], slot_next[s], slot_order[s] = pending.popleft(), 0, admitted
        order = sorted(range(slots), key=lambda s: slot_order[s])
        for b in np.flatnonzero(left == 0):
            s = next((s for s in order if slot_next[s] < n and slot_busy[s] < lanes), None)
            if s is None:
                break
            left[b], row_slot[b] = lengths[slot_prompt[s], slot_next[s]], s
            slot_next[s] += 1
            slot_busy[s] += 1
        refill = bool(pending) or any(slot_next[s] < n for s in range(slots))
        exit_after = (refill_rows or max(1, rows // 8)) if refill else rows + 1
        finished = k = 0
        segments += 1
        while k < segment_steps and left.any() and finished < exit_after:
            live = left > 0
            row_steps += int(live.sum())
            left[live] -= 1
            done = np.flatnonzero(live & (left == 0))
            for b in done:
                slot_busy[row_slot[b]] -= 1
            finished += len(done)
            remaining -= len(done)
            k += 1
            step += 1
    return step, row_steps, segments


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--histogram", required=True, help="JSON: {\"low-high\": count, \">=L\": count}")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--samples", default="512", help="samples per call, comma-separated")
    p.add_argument("--limit", type=int, default=1024, help="max_completion_length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slots", default="", help="also the sampler's schedule with these prompt "
                   "slot counts, comma-separated, each slot:lanes (e.g. 16:32,8:64)")
    p.add_argument("--per-prompt", type=int, default=32, help="samples per prompt (--slots)")
    p.add_argument("--segment-steps", type=int, default=64, help="sampler.segment_steps (--slots)")
    p.add_argument("--refill-rows", default="0",
                   help="sampler.refill_rows values to replay, comma-separated (--slots)")
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
    if not re.fullmatch(r"(\d+:\d+(,\d+:\d+)*)?", args.slots):
        p.error(f"--slots: expected slots:lanes pairs such as 16:32,8:64, got {args.slots!r}")
    layouts = [tuple(int(x) for x in pair.split(":")) for pair in args.slots.split(",") if pair]
    if any(min(pair) < 1 for pair in layouts) or args.per_prompt < 1 or args.segment_steps < 1:
        p.error("--slots, --per-prompt and --segment-steps must be at least 1")
    if not re.fullmatch(r"\d+(,\d+)*", args.refill_rows):
        p.error(f"--refill-rows: expected comma-separated integers >= 0, got {args.refill_rows!r}")
    refills = [int(x) for x in args.refill_rows.split(",")]
    if layouts and any(count % args.per_prompt for count in counts):
        p.error(f"--samples: with --slots each count must be a multiple of --per-prompt "
                f"({args.per_prompt}), got {args.samples!r}")
    rng = np.random.default_rng(args.seed)
    for count in counts:
        lengths = draw_lengths(histogram, count, args.limit, rng)
        taken = steps(lengths, args.rows)
        fewest = max(int(np.ceil(lengths.sum() / args.rows)), int(lengths.max()))
        print(json.dumps({"samples": count, "rows": args.rows, "tokens": int(lengths.sum()),
                          "steps": taken, "fewest": fewest,
                          "row_occupancy": round(float(lengths.sum()) / (taken * args.rows), 3)}))
        for (slots, lanes), refill in ((layout, r) for layout in layouts for r in refills):
            taken, _, segments = slotted_steps(lengths.reshape(-1, args.per_prompt), args.rows,
                                               slots, lanes, args.segment_steps, refill)
            print(json.dumps({"samples": count, "rows": args.rows, "slots": slots,
                              "lanes": lanes, "per_prompt": args.per_prompt,
                              "refill_rows": refill, "steps": taken, "segments": segments,
                              "row_occupancy": round(float(lengths.sum()) / (taken * args.rows),
                                                     3)}))


if __name__ == "__main__":
    main()

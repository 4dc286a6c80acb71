"""Throughput and timeout cost of the sandboxed execution pool.

Prints figures; it is not a test. Programs are BARC-style (they start with
`from common import *` and use the DSL). Each is paired with the ARC-AGI-1
training task it was written for plus a few other tasks, and every job runs
the program on all train and test inputs of its task, as the reward does.

    python benchmarks/execution_throughput.py [--workers N] [--jobs N]

Figures:
1. programs per second for that mix;
2. the cost of a program that times out: its worker time beyond the timeout,
   and the throughput of the other programs while it runs;
3. throughput right after a round of hostile programs, against a fresh pool.
"""

import argparse
import os
import random
import textwrap
import time

import numpy as np

from arc_jax.data import load_tasks
from arc_jax.execution import ExecutionConfig, ExecutionPool

# (task id it solves, program), in the style of the BARC model's output.
PROGRAMS = [
    ("3c9b0459", """
        # concepts: rotation
        # description: rotate the input grid by 180 degrees.
        def transform(input_grid):
            return np.rot90(input_grid, k=2)
    """),
    ("67a3c6ac", """
        # concepts: reflection
        # description: mirror the grid left to right.
        def transform(input_grid):
            return input_grid[:, ::-1]
    """),
    ("68b16354", """
        # concepts: reflection
        # description: flip the grid upside down.
        def transform(input_grid):
            return np.flipud(input_grid)
    """),
    ("74dd1130", """
        # concepts: diagonal reflection
        # description: reflect the grid along its main diagonal.
        def transform(input_grid):
            return input_grid.T.copy()
    """),
    ("a416b8f3", """
        # concepts: repetition
        # description: put a copy of the input to the right of itself.
        def transform(input_grid):
            width, height = input_grid.shape
            output_grid = np.zeros((width, 2 * height), dtype=int)
            blit_sprite(output_grid, input_grid, x=0, y=0)
            blit_sprite(output_grid, input_grid, x=0, y=height)
            return output_grid
    """),
    ("c8f0f002", """
        # concepts: color mapping
        # description: every orange pixel becomes gray.
        def transform(input_grid):
            output_grid = input_grid.copy()
            output_grid[output_grid == Color.ORANGE] = Color.GRAY
            return output_grid
    """),
    ("0d3d703e", """
        # concepts: color mapping
        # description: apply a fixed one-to-one recolouring to every pixel.
        def transform(input_grid):
            mapping = {Color.GREEN: Color.YELLOW, Color.BLUE: Color.GRAY, Color.RED: Color.PINK,
                       Color.TEAL: Color.MAROON, Color.GRAY: Color.BLUE, Color.PINK: Color.RED,
                       Color.MAROON: Color.TEAL, Color.YELLOW: Color.GREEN}
            return np.vectorize(lambda color: mapping.get(color, color))(input_grid)
    """),
    ("d511f180", """
        # concepts: color swap
        # description: swap gray and teal everywhere.
        def transform(input_grid):
            output_grid = input_grid.copy()
            output_grid[input_grid == Color.GRAY] = Color.TEAL
            output_grid[input_grid == Color.TEAL] = Color.GRAY
            return output_grid
    """),
    ("25ff71a9", """
        # concepts: translation
        # description: move every object one pixel down.
        def transform(input_grid):
            return translate(input_grid, 1, 0, background=Color.BLACK)
    """),
    ("1cf80156", """
        # concepts: cropping
        # description: crop the grid to the single object it contains.
        def transform(input_grid):
            return crop(input_grid, background=Color.BLACK)
    """),
    ("5582e5ca", """
        # concepts: counting
        # description: fill the grid with its most frequent colour.
        def transform(input_grid):
            colors, counts = np.unique(input_grid, return_counts=True)
            return np.full(input_grid.shape, colors[np.argmax(counts)])
    """),
    ("08ed6ac7", """
        # concepts: objects, sorting, color
        # description: recolor the gray bars by height: tallest blue, then red, green, yellow.
        def transform(input_grid):
            objects = find_connected_components(input_grid, background=Color.BLACK, connectivity=4)
            objects = sorted(objects, key=lambda obj: -np.sum(obj != Color.BLACK))
            output_grid = np.zeros_like(input_grid)
            for color, obj in zip([Color.BLUE, Color.RED, Color.GREEN, Color.YELLOW], objects):
                obj[obj != Color.BLACK] = color
                blit_object(output_grid, obj, background=Color.BLACK)
            return output_grid
    """),
    ("a87f7484", """
        # concepts: objects, odd one out
        # description: the input holds several 3x3 patterns; output the one whose shape is unique.
        def transform(input_grid):
            width, height = input_grid.shape
            size = min(width, height)
            tiles = [input_grid[i:i + size, j:j + size]
                     for i in range(0, width, size) for j in range(0, height, size)]
            masks = [tile != Color.BLACK for tile in tiles]
            for tile, mask in zip(tiles, masks):
                if sum(np.array_equal(mask, other) for other in masks) == 1:
                    return tile
            return tiles[0]
    """),
    ("b1948b0a", """
        # concepts: objects, color
        # description: recolor every pink object red, keeping the rest.
        def transform(input_grid):
            output_grid = input_grid.copy()
            for obj in detect_objects(input_grid, colors=[Color.PINK], monochromatic=True, connectivity=8):
                output_grid[obj == Color.PINK] = Color.RED
            return output_grid
    """),
]
OTHER_TASKS_PER_PROGRAM = 5
TIMEOUT_S = 1.0


def make_jobs(tasks: dict, num_jobs: int, seed: int = 0) -> tuple[list, list]:
    """`num_jobs` (code, inputs) pairs cycling over programs x tasks, and each job's expected outputs."""
    rng = random.Random(seed)
    task_ids = sorted(tasks)
    pairs = []
    for task_id, source in PROGRAMS:
        code = "from common import *\n\nimport numpy as np\nfrom typing import *\n\n" + textwrap.dedent(source).strip() + "\n"
        for chosen in [task_id] + rng.sample(task_ids, OTHER_TASKS_PER_PROGRAM):
            examples = tasks[chosen].train + tasks[chosen].test
            pairs.append((code, [pair.input for pair in examples], [pair.output for pair in examples]))
    chosen = [pairs[i % len(pairs)] for i in range(num_jobs)]
    return [(code, inputs) for code, inputs, _ in chosen], [outputs for _, _, outputs in chosen]


def throughput(pool: ExecutionPool, jobs: list) -> tuple[float, list]:
    start = time.perf_counter()
    results = pool.run(jobs)
    return len(jobs) / (time.perf_counter() - start), results


def report_mix(pool: ExecutionPool, jobs: list, expected: list) -> float:
    rate, results = throughput(pool, jobs)
    inputs = sum(len(inputs) for _, inputs in jobs)
    errors = sum(result.error_type is not None for result in results)
    correct = sum(
        output is not None and want is not None and np.array_equal(output, want)
        for result, wants in zip(results, expected)
        for output, want in zip(result.outputs, wants)
    )
    durations = np.array([result.duration_s for result in results]) * 1e3
    print(f"  {len(jobs)} programs ({inputs} grids) in {len(jobs) / rate:.2f} s: {rate:.0f} programs/s")
    print(f"  per program in its sandbox: median {np.median(durations):.1f} ms, p99 {np.percentile(durations, 99):.1f} ms")
    print(f"  {errors} programs with an error; {correct} of {inputs} outputs correct (sanity check)")
    return rate


def report_timeout_cost(pool: ExecutionPool, jobs: list) -> None:
    loop = "def transform(input_grid):\n    while True:\n        pass\n"
    costs = [pool.submit(loop, [np.zeros((3, 3), dtype=int)]).result().duration_s - TIMEOUT_S for _ in range(5)]
    print(f"  worker time beyond the {TIMEOUT_S} s timeout: mean {np.mean(costs) * 1e3:.1f} ms, max {max(costs) * 1e3:.1f} ms")

    rate_alone, _ = throughput(pool, jobs)
    looping = pool.submit(loop, [np.zeros((3, 3), dtype=int)])
    time.sleep(0.05)  # let a worker pick the loop up first
    rate_beside, results = throughput(pool, jobs)
    still_looping = not looping.done()
    looping.result()
    slowest = max(result.duration_s for result in results) * 1e3
    print(f"  others' throughput: {rate_alone:.0f} programs/s alone, {rate_beside:.0f} programs/s while one worker "
          f"runs the loop{'' if still_looping else ' (the loop ended during the batch)'}; slowest other program {slowest:.1f} ms")


HOSTILE = [
    "def transform(g):\n    while True:\n        pass\n",
    "def transform(g):\n    x = [1]\n    while True:\n        x.append(x * 2)\n",
    "import os\ndef transform(g):\n    while True:\n        os.fork()\n",
    "import os\ndef transform(g):\n    os.kill(os.getppid(), 9)\n",
    "import ctypes\ndef transform(g):\n    return ctypes.string_at(0)\n",
    "import os\ndef transform(g):\n    os._exit(1)\n",
    "import builtins\nbuiltins.len = None\nnp.flip = None\ndef transform(g):\n    return g\n",
    "def transform(g):\n    print('x' * 10**7)\n    return np.zeros((10_000, 10_000), dtype=int)\n",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="0 = os.cpu_count()")
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()

    tasks = load_tasks("arc-agi-1/training")
    jobs, expected = make_jobs(tasks, args.jobs)
    config = ExecutionConfig(num_workers=args.workers, timeout_s=TIMEOUT_S)
    workers = args.workers or os.cpu_count()
    print(f"{workers} workers on {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")

    with ExecutionPool(config) as pool:
        pool.run(jobs[:200])  # warm-up
        print("1. realistic mix")
        fresh_rate = report_mix(pool, jobs, expected)
        print("2. a program that times out")
        report_timeout_cost(pool, jobs[: len(jobs) // 3])

    with ExecutionPool(config) as pool:
        pool.run(jobs[:200])
        baseline, _ = throughput(pool, jobs)
        for _ in range(2):
            pool.run([(code, [np.zeros((3, 3), dtype=int)]) for code in HOSTILE])
        after, _ = throughput(pool, jobs)
    print("3. after hostile programs")
    print(f"  fresh pool {baseline:.0f} programs/s, after {2 * len(HOSTILE)} hostile programs {after:.0f} programs/s "
          f"({after / baseline - 1:+.1%}); first measurement {fresh_rate:.0f} programs/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

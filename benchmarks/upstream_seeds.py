"""Upstream BARC's seed programs, and synthetic DSL programs, graded through the sandboxed
pool and run directly.

    python benchmarks/upstream_seeds.py --seeds BARC/seeds [--timeout_s 1.0] [--synthetic 300]

Each `seeds/<task id>.py` of a BARC checkout (github.com/xu3kev/BARC) is a program whose
`main` solves that ARC-AGI-1 task. Every seed runs on all train and test inputs of its task,
and on 5 more inputs from its own `generate_input()` (seeded 0-4, made once, directly), in
three ways, each graded as the reference grades (`np.array(output, dtype=int)`; an
exception is a failure; a grid that is not 2-D with sides of 1 to 30 and values 0-9 is
invalid, the project's rule):
1. directly, in one plain Python process, with arc_jax's DSL as `common` (no sandbox);
2. through the ExecutionPool, as the trainer runs programs, with arc_jax's DSL;
3. through the ExecutionPool with upstream's own `seeds/common.py` (`--common_path`).
`--synthetic N` adds N programs built from templates of DSL calls (the functions of the
reference's DSL text, with random colours, positions, connectivities and flags), each run on
the inputs of 3 random ARC-AGI-1 training tasks. It prints the runs where 2 differs from 1 (the sandbox changed a grade) and where 3 differs
from 2 (the DSL differs from upstream's), and how many seeds solve their task each way.
Prints figures; it is not a test (the seeds are not part of this project).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

from arc_jax.data import load_tasks
from arc_jax.dsl import COMMON_PATH
from arc_jax.execution import ExecutionConfig, ExecutionPool

GENERATED = 5

# Runs in a child process: JSON jobs {name: {"program", "inputs"|"generate"}} on stdin.
_DIRECT = """
import json, random, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
sys.setrecursionlimit(10000)
jobs = json.load(sys.stdin)
out = {}
for name, job in jobs.items():
    namespace = {"__name__": "seed"}
    try:
        exec(job["program"], namespace)
    except BaseException as e:
        out[name] = {"error": type(e).__name__}
        continue
    if job.get("generate"):
        grids = []
        for seed in range(job["generate"]):
            random.seed(seed); np.random.seed(seed)
            try:
                grids.append(np.array(namespace["generate_input"](), dtype=int).tolist())
            except BaseException:
                pass
        out[name] = {"generated": grids}
        continue
    results, begin = [], time.process_time()
    for grid in job["inputs"]:
        random.seed(0); np.random.seed(0)
        try:
            results.append(np.array(namespace["main"](np.array(grid)), dtype=int).tolist())
        except BaseException as e:
            results.append(type(e).__name__)
    out[name] = {"outputs": results, "cpu_s": time.process_time() - begin}
print(json.dumps(out))
"""


def direct(jobs: dict, common_folder: pathlib.Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _DIRECT, str(common_folder)], input=json.dumps(jobs),
                            capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        sys.exit(f"error: the direct run failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def graded(output):
    """A direct run's output under the project's validity rule; error names pass through."""
    if isinstance(output, str):
        return output
    grid = np.array(output)
    if grid.ndim != 2 or not all(1 <= n <= 30 for n in grid.shape) or grid.min() < 0 or grid.max() > 9:
        return "InvalidOutput"
    return output


def pooled(pool: ExecutionPool, programs: dict, inputs: dict) -> dict:
    futures = {name: pool.submit(programs[name], [np.array(g) for g in inputs[name]]) for name in programs}
    out = {}
    for name, future in futures.items():
        r = future.result()
        out[name] = [o.tolist() if o is not None else (r.error_type or "None") for o in r.outputs]
    return out


# Templates of synthetic programs; {name} fields are drawn by `synthetic_programs`.
TEMPLATES = [
    """def main(input_grid):
    objects = find_connected_components(input_grid, background={bg}, connectivity={conn}, monochromatic={mono})
    out = np.full_like(input_grid, {bg})
    for obj in sorted(objects, key=lambda o: np.sum(o != {bg})):
        size = np.sum(obj != {bg})
        obj = obj.copy()
        obj[obj != {bg}] = {c1} if size > {k} else {c2}
        blit_object(out, obj, background={bg})
    return out
""",
    """def main(input_grid):
    return scale_sprite(crop(input_grid, background={bg}), {f})
""",
    """def main(input_grid):
    out = input_grid.copy()
    flood_fill(out, {x} % out.shape[0], {y} % out.shape[1], {c1}, connectivity={conn})
    return out
""",
    """def main(input_grid):
    out = input_grid.copy()
    end = draw_line(out, {x} % out.shape[0], {y} % out.shape[1], direction={d}, color={c1}, stop_at_color=[{c2}])
    out[end[0] % out.shape[0], end[1] % out.shape[1]] = {c2}
    return out
""",
    """def main(input_grid):
    objects = detect_objects(input_grid, background={bg}, monochromatic={mono}, connectivity={conn2},
                             colors={colors}, allowed_dimensions={dims})
    out = np.full_like(input_grid, {bg})
    for obj in objects:
        blit_object(out, translate(obj, {dx}, {dy}, background={bg}), background={bg})
    return out
""",
    """def main(input_grid):
    out = np.full_like(input_grid, {bg})
    if np.all(input_grid == {bg}):
        return out
    x, y, w, h = bounding_box(input_grid, background={bg})
    out[bounding_box_mask(input_grid, background={bg})] = {c1}
    out[x, y] = {c2}
    return out
""",
    """def main(input_grid):
    out = input_grid.copy()
    out[object_boundary(input_grid, background={bg})] = {c1}
    out[object_interior(input_grid, background={bg}) & (input_grid == {bg})] = {c2}
    out[object_neighbors(input_grid, background={bg}, connectivity={conn})] = {c3}
    return out
""",
    """def main(input_grid):
    symmetries = detect_mirror_symmetry(input_grid, ignore_colors=[{c1}], background={bg})
    out = input_grid.copy()
    for x, y in np.argwhere(input_grid == {c2})[:20]:
        for a, b in orbit(out, x, y, symmetries):
            if 0 <= a < out.shape[0] and 0 <= b < out.shape[1]:
                out[a, b] = {c2}
    return out
""",
    """def main(input_grid):
    objects = find_connected_components(input_grid, background={bg}, connectivity={conn}, monochromatic={mono})
    if len(objects) < 2:
        return np.array([[{c1}]])
    a, b = objects[0], objects[1]
    touching = contact(object1=a, object2=b, background={bg}, connectivity={conn})
    hit = collision(object1=a, object2=b, x2={dx}, y2={dy}, background={bg})
    return np.array([[{c1} if touching else {c2}, {c3} if hit else {c1}]])
""",
    """def main(input_grid):
    sprite = random_sprite({n}, {m}, density={density}, symmetry={symmetry}, color_palette=[{c1}, {c2}])
    out = input_grid.copy()
    if sprite.shape[0] <= out.shape[0] and sprite.shape[1] <= out.shape[1]:
        x, y = random_free_location_for_sprite(out, sprite, background={bg}) if np.any(out == {bg}) else (0, 0)
        blit_sprite(out, sprite, x, y, background={bg})
    return out
""",
    """def main(input_grid):
    symmetry = detect_rotational_symmetry(input_grid, ignore_colors=[{c1}], background={bg})
    out = input_grid.copy()
    if symmetry is not None:
        for x, y in np.argwhere(input_grid != {bg})[:30]:
            for a, b in orbit(out, x, y, [symmetry]):
                if 0 <= a < out.shape[0] and 0 <= b < out.shape[1] and out[a, b] == {bg}:
                    out[a, b] = input_grid[x, y]
    return out
""",
]


def synthetic_programs(count: int, task_ids: list[str]) -> tuple[dict, dict]:
    """`count` programs from TEMPLATES with drawn fields, and 3 task ids for each."""
    rng = np.random.default_rng(0)
    programs, tasks_of = {}, {}
    for k in range(count):
        colour = lambda: int(rng.integers(0, 10))
        fields = dict(
            bg="Color.BLACK" if rng.random() < 0.7 else str(colour()), c1=colour(), c2=colour(), c3=colour(),
            conn=int(rng.choice([4, 8])), conn2=str(rng.choice(["None", "4", "8"])),
            mono=bool(rng.random() < 0.5), k=int(rng.integers(1, 6)), f=int(rng.integers(1, 4)),
            x=int(rng.integers(0, 30)), y=int(rng.integers(0, 30)), dx=int(rng.integers(-3, 4)),
            dy=int(rng.integers(-3, 4)),
            d=repr(tuple(int(v) for v in rng.choice([-1, 0, 1], 2))),
            colors=rng.choice(["None", "[Color.RED, Color.BLUE]", f"[{colour()}]", "[]"]),
            dims=rng.choice(["None", "[(1, 1), (2, 2)]", "[(3, 3)]"]),
            n=int(rng.integers(1, 6)), m=int(rng.integers(1, 6)), density=float(rng.choice([0.3, 0.5, 1.0])),
            symmetry=rng.choice(["None", "'horizontal'", "'vertical'", "'diagonal'", "'radial'", "'not_symmetric'"]))
        template = TEMPLATES[k % len(TEMPLATES)]
        programs[f"synthetic{k:03d}"] = ("from common import *\nimport numpy as np\nfrom typing import *\n\n"
                                         + template.format(**fields))
        tasks_of[f"synthetic{k:03d}"] = list(rng.choice(task_ids, 3, replace=False))
    return programs, tasks_of


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=pathlib.Path, required=True, help="the seeds/ folder of a BARC checkout")
    p.add_argument("--timeout_s", type=float, default=1.0)
    p.add_argument("--synthetic", type=int, default=300, help="synthetic DSL programs (0: none)")
    args = p.parse_args()
    if not (args.seeds / "common.py").is_file():
        sys.exit(f"error: --seeds={args.seeds}: no common.py there (expected BARC's seeds/ folder)")
    tasks = {**load_tasks("arc-agi-1/training"), **load_tasks("arc-agi-1/evaluation")}
    files = sorted(f for f in args.seeds.glob("*.py") if f.stem in tasks)
    programs = {f.stem: f.read_text() for f in files}
    pairs = {name: tasks[name].train + tasks[name].test for name in programs}
    generated = direct({name: {"program": code, "generate": GENERATED} for name, code in programs.items()},
                       COMMON_PATH.parent)
    inputs = {name: [pair.input.tolist() for pair in pairs[name]] + generated[name].get("generated", [])
              for name in programs}
    training = sorted(load_tasks("arc-agi-1/training"))
    synthetic, tasks_of = synthetic_programs(args.synthetic, training)
    for name, code in synthetic.items():
        programs[name] = code
        pairs[name] = []
        inputs[name] = [pair.input.tolist() for t in tasks_of[name] for pair in tasks[t].train + tasks[t].test]
    plain = direct({name: {"program": code, "inputs": inputs[name]} for name, code in programs.items()},
                   COMMON_PATH.parent)
    plain_cpu = {name: plain[name].get("cpu_s", 0.0) for name in programs}
    # Over the pool's CPU limit (all inputs together), a direct run counts as a timeout too.
    plain = {name: ["Timeout"] * len(inputs[name]) if plain[name].get("cpu_s", 0) > args.timeout_s else
             [graded(o) for o in plain[name].get("outputs", [plain[name].get("error")] * len(inputs[name]))]
             for name in programs}
    config = ExecutionConfig(timeout_s=args.timeout_s, entry_point="main")
    with ExecutionPool(config) as pool:
        sandboxed = pooled(pool, programs, inputs)
    upstream_config = ExecutionConfig(timeout_s=args.timeout_s, entry_point="main",
                                      common_path=str(args.seeds / "common.py"))
    with ExecutionPool(upstream_config) as pool:
        upstream = pooled(pool, programs, inputs)

    runs = sum(len(v) for v in inputs.values())
    sandbox_differs = [(n, i) for n in programs for i, (a, b) in enumerate(zip(plain[n], sandboxed[n]))
                       if a != b and not (isinstance(a, str) and isinstance(b, str))]
    dsl_differs = [(n, i) for n in programs for i, (a, b) in enumerate(zip(sandboxed[n], upstream[n]))
                   if a != b and not (isinstance(a, str) and isinstance(b, str))]

    def solved(outputs: dict) -> int:
        return sum(outputs[n][:len(pairs[n])] == [pair.output.tolist() for pair in pairs[n]]
                   for n in programs if pairs[n])

    seeds = len(programs) - len(synthetic)
    print(f"{seeds} seed programs and {len(synthetic)} synthetic ones, {runs} runs "
          f"({sum(len(pairs[n]) for n in programs)} on the seeds' tasks' inputs, "
          f"{sum(len(inputs[n]) - len(pairs[n]) for n in programs if pairs[n])} on inputs from their "
          f"generate_input, {sum(len(inputs[n]) for n in synthetic)} of synthetic programs); "
          f"CPU limit {args.timeout_s} s")
    outcomes = [o for n in synthetic for o in sandboxed[n]]
    print(f"synthetic programs: {sum(not isinstance(o, str) for o in outcomes)} of {len(outcomes)} runs gave "
          f"a valid grid")
    print(f"seeds that solve their task: direct {solved(plain)}, pool {solved(sandboxed)}, pool with upstream's DSL "
          f"{solved(upstream)}")
    slow = sum(plain[n][0] == "Timeout" for n in programs if inputs[n])
    print(f"pool vs direct: {runs - len(sandbox_differs)} of {runs} runs graded the same "
          f"({slow} programs needed more than {args.timeout_s} s of CPU directly)")
    for name, i in sandbox_differs[:20]:
        print(f"  {name} input {i}: direct {str(plain[name][i])[:60]} ({plain_cpu[name]:.2f} s of CPU), "
              f"pool {str(sandboxed[name][i])[:60]}")
    print(f"arc_jax's DSL vs upstream's, both through the pool: {runs - len(dsl_differs)} of {runs} runs the same")
    by_program = {}
    for name, _ in dsl_differs:
        by_program[name] = by_program.get(name, 0) + 1
    print("  by program: " + ", ".join(f"{n} ({k})" for n, k in by_program.items()))
    upstream_slow = sum(upstream[n][i] == "Timeout" for n, i in dsl_differs)
    print(f"  of which upstream's DSL ran out of CPU time: {upstream_slow}; arc_jax's: "
          f"{sum(sandboxed[n][i] == 'Timeout' for n, i in dsl_differs)}; both gave grids that differ: "
          f"{sum(not isinstance(sandboxed[n][i], str) and not isinstance(upstream[n][i], str) for n, i in dsl_differs)}"
          f" (in programs that call random functions in main: "
          f"{sum('random_sprite' in programs[n] and not isinstance(upstream[n][i], str) for n, i in dsl_differs)})")
    for name, i in dsl_differs[:20]:
        print(f"  {name} input {i}: arc_jax {str(sandboxed[name][i])[:60]}, upstream {str(upstream[name][i])[:60]}")
    timeouts = [(n, i) for n in programs for i, o in enumerate(sandboxed[n]) if o == "Timeout"]
    print(f"timeouts in the pool (arc_jax's DSL): {len(timeouts)}"
          + "".join(f"\n  {n} input {i}: direct {str(plain[n][i])[:40]}" for n, i in timeouts[:20]))


if __name__ == "__main__":
    main()

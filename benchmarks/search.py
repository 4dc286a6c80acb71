"""Search-and-learn at 8B through the user's own command, with a learning phase that has
something to learn from.

    python benchmarks/search.py --checkpoint /tmp/bench/checkpoint-llama-3.1-8b-realistic

A random-weight policy writes no program that runs, so its relabelled set is empty and the
learning phase never runs. This script therefore writes round 0 itself, as a file the command
resumes from: for each of the first --tasks evaluation tasks, --predictions BARC-style programs
(eight transformations: identity, flips, rotations, crop, recolouring...; they run, most give
distinct outputs, none needs a test answer). Then it runs

    python -m arc_jax.launch --config=configs/search_barc_8b.py --config.model_path=DIR
        --config.max_tasks=N --config.search.n_predictions=2n --config.search.rounds=2
        --config.search.learn_steps=K --config.search.output_dir=OUT/search

which scores round 0 in the sandbox, relabels it, fine-tunes the LoRA adapter for K updates at
the 8B shape (compile, seconds per update, negative log-likelihood before and after), samples
round 1 with the new adapter, and writes the submission. Prints the round rows and the wall
time as JSON lines.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import fixtures

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "configs/search_barc_8b.py"

HEADER = "from common import *\n\nimport numpy as np\nfrom typing import *\n\n"
PROGRAMS = {
    "the grid as it is": "    return np.copy(input_grid)",
    "mirror left to right": "    return np.fliplr(input_grid).copy()",
    "mirror top to bottom": "    return np.flipud(input_grid).copy()",
    "a quarter turn": "    return np.rot90(input_grid).copy()",
    "the transpose": "    return input_grid.T.copy()",
    "crop to the content": "    return crop(input_grid, background=Color.BLACK)",
    "every colour one up": ("    output_grid = np.copy(input_grid)\n"
                            "    output_grid[input_grid != Color.BLACK] = "
                            "(input_grid[input_grid != Color.BLACK] % 9) + 1\n"
                            "    return output_grid"),
    "two copies side by side": ("    width, height = input_grid.shape\n"
                                "    output_grid = np.zeros((width, 2 * height), dtype=int)\n"
                                "    blit_sprite(output_grid, input_grid, 0, 0)\n"
                                "    blit_sprite(output_grid, input_grid, 0, height)\n"
                                "    return output_grid"),
}


def completion(description: str, body: str) -> str:
    """A completion in the BARC model's format: concepts, description, one python block."""
    return (f"# concepts:\n# geometry, colour\n\n# description:\n# The output is {description} "
            f"of the input.\n\n```python\n{HEADER}def transform(input_grid):\n{body}\n```")


def write_round_zero(config_args: list[str], checkpoint: pathlib.Path, path: pathlib.Path,
                     predictions: int) -> int:
    """Round 0 of the search policy's predictions file, for the tasks the command will load."""
    config = fixtures.load_config(ROOT / CONFIG, config_args)
    from arc_jax import data, session

    tasks = session.select_tasks(config, session.tokenizer(str(checkpoint)))
    bodies = list(PROGRAMS.items())
    identity = data.Augmentation.identity().to_json()
    lines = [{"task_id": task_id, "round": 0, "augmentation": identity,
              "completion": completion(*bodies[i % len(bodies)])}
             for task_id in sorted(tasks) for i in range(predictions)]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    path.write_bytes(gzip.compress(text.encode(), mtime=0))
    return len(tasks)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=pathlib.Path, required=True)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/search_bench"))
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--predictions", type=int, default=16, help="per task per round")
    p.add_argument("--learn-steps", type=int, default=8)
    p.add_argument("--override", action="append", default=[], help="an extra --config.x=y")
    args = p.parse_args()
    if not (args.checkpoint / "config.json").exists():
        p.error(f"--checkpoint: expected a model folder with config.json, got {args.checkpoint}")
    out = args.out / "search"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    config_args = [f"--config={ROOT / CONFIG}", f"--config.model_path={args.checkpoint}",
                   f"--config.max_tasks={args.tasks}",
                   f"--config.search.n_predictions={2 * args.predictions}",
                   "--config.search.rounds=2", f"--config.search.learn_steps={args.learn_steps}",
                   f"--config.search.output_dir={out}", f"--config.workdir={args.out / 'workdir'}",
                   *args.override]
    num_tasks = write_round_zero(config_args, args.checkpoint,
                                 out / "search.predictions.jsonl.gz", args.predictions)
    print(json.dumps({"stage": "round 0 written", "tasks": num_tasks,
                      "programs": num_tasks * args.predictions}), flush=True)
    command = [sys.executable, "-m", "arc_jax.launch", *config_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    begin = time.perf_counter()
    log_path = args.out / "search.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if re.search(r"round \d|compiled|rror|Traceback|GiB|submission", line):
                print("  | " + line.rstrip()[-300:], flush=True)
        rc = proc.wait()
    rows_path = out / "search.rounds.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    print(json.dumps({"stage": "search", "rc": rc, "wall_s": round(time.perf_counter() - begin, 1),
                      "rounds": rows}), flush=True)


if __name__ == "__main__":
    main()

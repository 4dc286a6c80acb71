"""A scripted rollout engine (for the search and training-loop tests), and search mode with it,
in-process or as a program that can kill itself at a chosen point (for the resume test):

    python tests/scripted_engine.py MODEL_DIR DATASET_DIR OUT_DIR [KILL_AT]

KILL_AT is "generate:N" (SIGKILL inside the N-th sampling call, before it returns) or
"update:V" (SIGKILL right after the adapter of learning phase V reached the engine, i.e. after
its checkpoint was written).

The engine is scripted because a tiny random Llama writes no program, and the loop's data flow
(what is relabelled, learned, kept and submitted) needs programs that run: it answers every
prompt with programs drawn from a fixed list by (seed, prompt, sample). Everything else is
real: tokenizer, prompts, execution pool, relabelling, the LoRA update and its checkpoints.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROGRAMS = (
    "def transform(grid):\n    return grid[:, ::-1]\n",
    "def transform(grid):\n    return grid.T.copy()\n",
    "def transform(grid):\n    return grid.copy()\n",
    "import numpy as np\n\ndef transform(grid):\n    return np.where(grid == 0, 5, grid)\n",
    "def transform(grid):\n    return grid[::-1]\n",
    "no code here",
)


# What a collapsed policy writes: the same line until the token limit.
COLLAPSED = "x = x + 1\n" * 400


class ScriptedEngine:
    """Answers with programs from PROGRAMS (or, in the calls numbered in `collapse_calls`, with
    COLLAPSED cut at the token limit); records the prompts it was given."""

    trainer_logprobs = True

    def __init__(self, tokenizer, kill_at: str = "", collapse_calls=()):
        self.tokenizer, self.kill_at, self.collapse_calls = tokenizer, kill_at, collapse_calls
        self.prompts: list[tuple[int, ...]] = []
        self.versions: list[int | None] = []
        self.calls = 0

    def generate(self, prompts, n, sampling):
        from arc_jax.rollout import Completion

        self.calls += 1
        self.prompts.extend(tuple(p) for p in prompts)
        out = []
        for i, _ in enumerate(prompts):
            rng = np.random.default_rng([sampling.seed, i])
            group = []
            for _ in range(n):
                code = PROGRAMS[int(rng.integers(len(PROGRAMS)))]
                text = code if code == "no code here" else f"```python\n{code}```"
                ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
                reason = "stop"
                if self.calls in self.collapse_calls:
                    ids = tuple(self.tokenizer.encode(COLLAPSED, add_special_tokens=False)
                                [:sampling.max_new_tokens])
                    text, reason = self.tokenizer.decode(ids), "length"
                group.append(Completion(ids, (0.0,) * len(ids), (0.0,) * len(ids), reason, text))
            out.append(group)
        if self.kill_at == f"generate:{self.calls}":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    def update_weights(self, lora_state, version=None, final=False):
        self.versions.append(version)
        if self.kill_at == f"update:{version}":
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def search_config(model_dir: str, dataset: str, out: str):
    from arc_jax.config import default_config

    config = default_config()
    config.mode = "search"
    config.model_path = model_dir
    config.dtype = "float32"
    config.dataset = dataset
    config.max_seq_length, config.max_completion_length = 4096, 64
    config.prompt.style, config.prompt.prefill_assistant = "arc25", True
    config.lora.rank = 4
    config.compilation_cache = False
    config.execution.num_workers = 2
    config.search.rounds = 3
    config.search.n_predictions = 9
    config.search.baseline = False
    config.search.max_relabelled_per_task = 2
    config.search.learn_steps = 2
    config.search.learn_batch = 2
    config.search.learning_rate = 1e-3
    config.search.output_dir = out
    return config


def run(config, kill_at: str = ""):
    """search.run with the scripted engine: (summary, engine)."""
    from arc_jax import search, session
    from arc_jax.execution import ExecutionPool

    tokenizer = session.tokenizer(config.model_path)
    tasks = session.select_tasks(config, tokenizer)
    model = session.load_policy(config, config.model_path, session.make_mesh(config))
    engine = ScriptedEngine(tokenizer, kill_at)
    out = pathlib.Path(config.search.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ExecutionPool(session.execution_config(config)) as pool:
        results = search.search(config, model, tokenizer, search.hide_test_outputs(tasks),
                                engine, pool, out)
    return search.report(config, results, tasks, out), engine


if __name__ == "__main__":
    model_dir, dataset, out = sys.argv[1:4]
    run(search_config(model_dir, dataset, out), sys.argv[4] if len(sys.argv) > 4 else "")

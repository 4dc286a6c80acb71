"""Evaluate the demo: `python -m arc_jax.launch --config=configs/eval_demo.py` after
`--config=configs/demo.py` has trained.

The toy policy before RL (baseline) and with the demo's LoRA adapter (its newest checkpoint in
workdir/demo), 8 predictions per task in 2 rounds (the second augmented) on the demo's tasks;
tables, pass@k, submissions and pictures go to workdir/eval_demo.
"""

from configs import demo


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/eval_demo.py takes no argument, got {arg!r}")
    config = demo.get_config()
    config.mode = "eval"
    config.checkpoint = config.workdir  # workdir/demo, which also holds the cached toy policy
    config.eval.baseline = True
    config.eval.n_predictions = 8
    config.eval.rounds = 2
    config.eval.output_dir = "workdir/eval_demo"
    config.eval.num_pictures = 2
    return config

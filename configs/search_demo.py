"""Search-and-learn on the CPU: `python -m arc_jax.launch --config=configs/search_demo.py`.

The demo's toy policy before any RL (built once and cached in workdir/demo, as
`configs/demo.py` does) on the demo's tasks, with their test outputs hidden from the loop:
32 predictions per task in 4 rounds (unaugmented), first plainly sampled ("plain"), then with a LoRA
fine-tuning on the hindsight-relabelled programs between rounds ("search"); the tables
compare the two at the same number of predictions. Files go to workdir/search_demo.

The demo's task set is the ARC-AGI-1 training tasks a program of the toy family solves, a
choice made once over the whole tasks (their test outputs included) by `task_filter`, before
the loop starts; the loop itself never sees a test output.
"""

from configs import demo


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/search_demo.py takes no argument, got {arg!r}")
    config = demo.get_config()
    config.mode = "search"
    config.search.rounds = 4
    config.search.n_predictions = 32
    config.search.baseline = True
    # Every round shows the tasks as they are: what the toy policy learns from a program is
    # that program for that prompt; it cannot carry it to a rotated or recoloured task.
    config.search.augment = False
    config.search.max_relabelled_per_task = 4
    config.search.learn_steps = 20
    config.search.learn_batch = 16
    config.search.learning_rate = 2e-3
    config.search.output_dir = "workdir/search_demo"
    return config

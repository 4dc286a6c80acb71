"""The reference 8B recipe with the recommended reward: only grids the prompt does not show.

    python -m arc_jax.launch --config=configs/barc_8b_grpo_unseen.py \
        --config.model_path=/path/to/Llama-3.1-ARC-Potpourri-Induction-8B

Everything is `configs/barc_8b_grpo.py` except `reward_name="arc-unseen"`: the reference's
`arc-v1` pools the train grids, which the prompt shows, so a program that looks up the shown
outputs scores about 7.8 of 10 without solving anything, and writing such lookup tables makes
completions long, the way the reference runs collapsed. `arc-unseen` pays for the test grids
alone (lookup = identity; a correct program 10). Watch `shown_only_ratio` in the metrics: the
share of programs right on every shown pair and wrong on a test grid. Not yet measured at 8B.
"""

from configs import barc_8b_grpo


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/barc_8b_grpo_unseen.py takes no argument, got {arg!r}")
    config = barc_8b_grpo.get_config()
    config.workdir = "workdir/barc_8b_grpo_unseen"
    config.reward_name = "arc-unseen"
    return config

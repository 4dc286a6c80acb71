"""Search-and-learn with the BARC induction model on ARC-AGI-1 evaluation, a Kaggle-like budget:

    python -m arc_jax.launch --config=configs/search_barc_8b.py \
        --config.model_path=/path/to/Llama-3.1-ARC-Potpourri-Induction-8B

512 predictions per task in 4 rounds of 128 (rounds after the first augmented, as in `eval`),
graded on the train pairs only; between rounds, 50 LoRA updates of 16 hindsight-relabelled
programs (up to 16 with distinct outputs kept per task). No plain baseline: that is
`configs/eval_barc_8b.py` with `--config.eval.n_predictions=512 --config.eval.rounds=4`,
whose rounds have the same prompts, augmentations and seeds.

Budget for 400 tasks on one H100 (`benchmarks/RESULTS.md`, versions 9 and 11):
- sampling: 204,800 programs, at 5.4k output tokens/s and a mean of about 480 tokens per
  program, about 5 hours (7.4 at a mean of 700);
- the three learning phases: 150 updates of 16 relabelled pairs (16 x 4,224 tokens), 6.40 s
  each (measured), so 16 minutes;
- running the programs: minutes.
So it fits in 12 hours. An 8B smoke run (2 tasks, 2 rounds) completed in 279 s. The full run
has not been measured end to end.
"""

from configs import barc_8b_grpo


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/search_barc_8b.py takes no argument, got {arg!r}")
    config = barc_8b_grpo.get_config()
    config.mode = "search"
    config.dataset = "arc-agi-1/evaluation"
    config.search.rounds = 4
    config.search.n_predictions = 512
    config.search.baseline = False
    config.search.augment = True
    config.search.max_relabelled_per_task = 16
    config.search.learn_steps = 50
    config.search.learn_batch = 16
    config.search.learning_rate = 1e-4
    # 16 relabelled pairs of up to 8,704 + 1,024 tokens in micro-batches of 2: about the
    # memory of a training micro-step (1 prompt x 8 completions), which fits beside the sampler
    config.gradient_accumulation_steps = 8
    config.search.output_dir = "workdir/search_barc_8b"
    config.sampler.max_prompts_per_batch = 8
    return config

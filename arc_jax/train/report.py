"""End-of-run report: solve rates before vs after RL, and a plot of reward per step."""

from __future__ import annotations

import json
import pathlib

from arc_jax.train.metrics_log import read_metrics

_ROWS = (("sample_solve_rate", "solved samples"), ("tasks_solved", "tasks solved (any sample)"),
         ("valid_code_ratio", "valid code"))


def solve_rate_table(before: dict, after: dict) -> str:
    """A plain-text table of the evaluation metrics before and after training."""
    lines = [f"{'':28s}{'before RL':>12s}{'after RL':>12s}"]
    for key, label in _ROWS:
        lines.append(f"{label:28s}{before[key]:>12.1%}{after[key]:>12.1%}")
    lines.append(f"({before['samples_per_task']} samples per task, {len(before['per_task'])} tasks)")
    return "\n".join(lines)


def plot_rewards(metrics: list[dict], path: pathlib.Path) -> None:
    """Mean reward per logged step (with min-max band) and the solved ratio, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, [m["reward/mean"] for m in metrics], label="mean reward")
    top.fill_between(steps, [m["reward/min"] for m in metrics], [m["reward/max"] for m in metrics],
                     alpha=0.2, label="min-max")
    top.set_ylabel("reward")
    top.legend()
    bottom.plot(steps, [m["solved_ratio"] for m in metrics], color="tab:green")
    bottom.set_ylabel("solved completions")
    bottom.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_summary(workdir: pathlib.Path, before: dict | None, after: dict | None) -> dict:
    """Prints the table, writes reward_per_step.png and summary.json; returns the summary."""
    metrics = read_metrics(workdir)
    summary = {"before": before, "after": after, "steps": len(metrics)}
    if metrics:
        plot_rewards(metrics, workdir / "reward_per_step.png")
        summary["plot"] = str(workdir / "reward_per_step.png")
    if before and after:
        table = solve_rate_table(before, after)
        summary["table"] = table
        print(table)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    written = [workdir / "metrics.jsonl", workdir / "checkpoints", workdir / "summary.json"]
    if metrics:
        written.insert(1, workdir / "reward_per_step.png")
    print("wrote " + ", ".join(str(path) for path in written))
    return summary

"""Search mode (`arc_jax.search`): no test answer reaches the loop, a killed run resumes to the
same files, the learning lowers the loss on the relabelled pairs, bad settings stop first."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from arc_jax import data, search
from arc_jax.train.checkpoint import Checkpointer
from conftest import save_tiny_llama3_policy

import scripted_engine

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Training tasks that programs of the scripted engine solve (mirror, flip, transpose).
TASK_IDS = ("67a3c6ac", "68b16354", "74dd1130")
FILES = ("search.predictions.jsonl.gz", "search.relabelled.jsonl", "search.rounds.json",
         "search.submission.json")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return save_tiny_llama3_policy(tmp_path_factory.mktemp("tiny_policy"))


def write_dataset(folder: pathlib.Path, garbage: bool) -> str:
    """The three tasks as a folder of task files; with `garbage`, every test output replaced
    by a grid no program above produces."""
    tasks = data.load_tasks("arc-agi-1/training")
    folder.mkdir()
    for task_id in TASK_IDS:
        task = tasks[task_id]
        if garbage:
            test = tuple(data.Pair(p.input, np.full((2, 9), 7)) for p in task.test)
            task = data.Task(task.id, task.train, test)
        (folder / f"{task_id}.json").write_text(json.dumps(data.task_to_json(task)))
    return str(folder)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return write_dataset(root / "real", False), write_dataset(root / "garbage", True)


def adapter_arrays(out: pathlib.Path) -> list[np.ndarray]:
    """The arrays (adapter and optimiser) of the newest learning phase, as saved."""
    import jax
    import orbax.checkpoint as ocp

    with Checkpointer(out / "adapters", max_to_keep=None) as checkpointer:
        step = checkpointer.latest_step()
    arrays = ocp.PyTreeCheckpointer().restore(out / "adapters" / str(step) / "arrays")
    return [np.asarray(x) for x in jax.tree.leaves(arrays)]


def test_the_loop_refuses_tasks_that_carry_test_outputs(tiny_policy, datasets, tmp_path):
    config = scripted_engine.search_config(tiny_policy, datasets[0], str(tmp_path))
    tasks = data.load_tasks(datasets[0])
    with pytest.raises(ValueError, match="without test outputs"):
        search.search(config, None, None, tasks, None, None, tmp_path)


@pytest.mark.slow
def test_garbage_test_outputs_change_nothing_before_the_final_scoring(tiny_policy, datasets,
                                                                      tmp_path):
    real_out, garbage_out = tmp_path / "real", tmp_path / "garbage"
    real, real_engine = scripted_engine.run(
        scripted_engine.search_config(tiny_policy, datasets[0], str(real_out)))
    garbage, garbage_engine = scripted_engine.run(
        scripted_engine.search_config(tiny_policy, datasets[1], str(garbage_out)))

    assert real_engine.prompts == garbage_engine.prompts  # the same prompts were sampled
    assert real_engine.versions == garbage_engine.versions == [1, 2]
    for name in FILES:
        assert (real_out / name).read_bytes() == (garbage_out / name).read_bytes(), name
    for a, b in zip(adapter_arrays(real_out), adapter_arrays(garbage_out), strict=True):
        np.testing.assert_array_equal(a, b)
    # Only the final, separate step read the answers: the real ones are found, garbage is not.
    assert real["search"]["submission"]["num_solved"] >= 1
    assert garbage["search"]["submission"]["num_solved"] == 0
    assert real["search"]["test_pass_rate"][0] > 0 == max(garbage["search"]["test_pass_rate"])

    # What the rounds found and learned, answer-free: 3 tasks x 3 programs a round, and every
    # relabelled pair re-runs to its own outputs (tests/test_relabel.py); the learning lowered
    # the loss of the first batch of each phase.
    rows = json.loads((real_out / "search.rounds.json").read_text())
    assert [r["programs"] for r in rows] == [9, 9, 9]
    assert all(r["learn_nll_after"] < r["learn_nll_before"] for r in rows[:2])
    lines = [json.loads(x) for x in (real_out / "search.relabelled.jsonl").read_text().splitlines()]
    assert {x["task_id"] for x in lines} <= set(TASK_IDS)
    assert all(len(x["test"]) == 1 and "output" in x["test"][0] for x in lines)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["update:1", "generate:3"])
def test_a_killed_search_resumes_to_the_same_files(tiny_policy, datasets, tmp_path, kill_at):
    def program(out, *kill):
        return subprocess.run([sys.executable, str(ROOT / "tests" / "scripted_engine.py"),
                               tiny_policy, datasets[0], str(out), *kill],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert program(whole).returncode == 0
    result = program(killed, kill_at)
    assert result.returncode == -9, result.stderr[-2000:]
    assert not (killed / "summary.json").exists()
    resumed = program(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rounds resumed" in resumed.stderr
    for name in FILES + ("summary.json",):
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    for a, b in zip(adapter_arrays(whole), adapter_arrays(killed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_learning_batch_pads_prompts_left_and_completions_right():
    batch = search.sft_batch([([1, 2, 3], [7, 8]), ([4], [9, 10, 11])], pad_id=0, prompt_len=4,
                             completion_len=4)
    np.testing.assert_array_equal(batch.prompt_ids, [[0, 1, 2, 3], [0, 0, 0, 4]])
    np.testing.assert_array_equal(batch.prompt_mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(batch.completion_ids, [[[7, 8, 0, 0]], [[9, 10, 11, 0]]])
    np.testing.assert_array_equal(batch.completion_mask, [[[1, 1, 0, 0]], [[1, 1, 1, 0]]])
    np.testing.assert_array_equal(batch.advantages, [[1], [1]])


BAD_SEARCH_SETTINGS = [
    ("search.n_predictions=30", "config.search.n_predictions=30: expected a positive multiple of search.rounds"),
    ("search.rounds=0", "config.search.rounds=0: expected an integer >= 1"),
    ("search.learn_batch=0", "config.search.learn_batch=0: expected a positive multiple of gradient_accumulation_steps"),
    ("search.learning_rate=-1.0", "config.search.learning_rate=-1.0: expected a finite number > 0"),
    ("search.max_relabelled_per_task=0", "config.search.max_relabelled_per_task=0: expected an integer >= 1"),
]


@pytest.mark.parametrize("override, message", BAD_SEARCH_SETTINGS,
                         ids=[o for o, _ in BAD_SEARCH_SETTINGS])
def test_a_bad_search_setting_exits_with_one_line_before_any_work(override, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "arc_jax.launch", "--config=configs/search_demo.py",
         f"--config.{override}", f"--config.workdir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).splitlines()
    errors = [line for line in output if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), output
    assert "Traceback" not in result.stderr
    assert "search plan" not in result.stdout and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_with_the_baseline_search_takes_plain_round_0_instead_of_sampling_it(tiny_policy,
                                                                             datasets, tmp_path):
    # Before any learning the search policy is the plain one (same weights, prompts, seeds):
    # its round 0 must be plain's, and sampled once.
    config = scripted_engine.search_config(tiny_policy, datasets[0], str(tmp_path))
    config.search.baseline = True
    _, engine = scripted_engine.run(config)
    assert engine.calls == 3 + 2  # plain's three rounds, then search's rounds 1 and 2

    def round_lines(name, r):
        from arc_jax import eval as evaluation

        lines = evaluation.read_rounds(tmp_path / f"{name}.predictions.jsonl.gz")[r]
        return [json.dumps(line, sort_keys=True) for line in lines]
    assert round_lines("search", 0) == round_lines("plain", 0)
    rows = json.loads((tmp_path / "search.rounds.json").read_text())
    assert [r["programs"] for r in rows] == [9, 9, 9] and rows[0]["learn_pairs"] > 0

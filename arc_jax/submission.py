"""ARC Prize submissions: pick two attempts per test input, validate, score.

    python -m arc_jax.submission validate --submission=PATH --dataset=arc-agi-1/evaluation
    python -m arc_jax.submission score --submission=PATH --dataset=arc-agi-1/evaluation

The format is `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}`, one entry per
test input in the order of the task's `test` list; a grid is a list of rows of ints 0-9.

Attempt selection follows arc25's `create_submission` (reference doc §7):
1. for each test input, keep the candidates with a valid output for it;
2. split them into tiers by the number of train pairs they reproduce, highest first;
3. within a tier, group identical grids and rank the groups by votes (candidates in the
   group, descending), then by the mean code length of the group (ascending), then by
   first appearance in the candidate sequence (arc25's stable sort), so ties are
   deterministic;
4. take attempts from the best tier, then the next, until there are two; pad with [[0]].
As in arc25, attempts are not de-duplicated across tiers: a grid found in two tiers can
fill both attempts.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app
from absl import flags

from arc_jax import data
from arc_jax.errors import UserError
from arc_jax.rewards import CompletionRecord



def define_flags() -> types.SimpleNamespace:
    """The command line's flags, defined only when this module runs as a program (importing it
    as a library, next to other modules with a --dataset flag, defines none), as one object
    handed to `main`."""
    return types.SimpleNamespace(
        submission=flags.DEFINE_string("submission", None, "Submission JSON file in the ARC Prize format."),
        dataset=flags.DEFINE_string("dataset", None,
                                    "Tasks the submission answers, e.g. arc-agi-1/evaluation or a JSON file."))


Grid = tuple[tuple[int, ...], ...]  # hashable, so identical grids group together
PADDING: Grid = ((0,),)  # the attempt that fills a missing one
ATTEMPT_KEYS = ("attempt_1", "attempt_2")


class SubmissionError(UserError, ValueError):
    """A submission or its inputs cannot be built, read or scored."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One program's predictions for one task, as attempt selection sees them."""

    code: str
    test_outputs: tuple[Grid | None, ...]  # per test input; None where that output failed
    train_correct: int  # number of train pairs reproduced exactly

    @property
    def code_length(self) -> int:
        return len(self.code)


def grid_tuple(grid: np.ndarray) -> Grid:
    """A grid as a tuple of rows of Python ints."""
    return tuple(map(tuple, np.asarray(grid).tolist()))


def candidate_from_record(record: CompletionRecord) -> Candidate:
    """The candidate of a scored completion.

    An invalid record (any error) keeps no test outputs: arc25 drops predictions without
    valid outputs, and such a record's train grade counts nothing anyway.
    """
    outputs = tuple(None if not record.valid or grid is None else grid_tuple(grid)
                    for grid in record.test_outputs)
    return Candidate(code=record.code or "", test_outputs=outputs,
                     train_correct=record.train.num_correct)


# --- Attempt selection ---------------------------------------------------------------


def ranked_grids(candidates: Sequence[Candidate], test_index: int) -> list[Grid]:
    """The distinct grids of each train-correct tier, best tier first, each tier ranked."""
    usable = [c for c in candidates if c.test_outputs[test_index] is not None]
    tiers = sorted({c.train_correct for c in usable}, reverse=True)
    return [grid for tier in tiers
            for grid in _rank_tier([(c.test_outputs[test_index], c.code_length)
                                    for c in usable if c.train_correct == tier])]


def _rank_tier(outputs: Sequence[tuple[Grid, int]]) -> list[Grid]:
    """Distinct grids of (grid, code length) pairs by votes (descending), mean code length
    (ascending), then first appearance (the sort is stable and dicts keep insertion order)."""
    lengths: dict[Grid, list[int]] = {}
    for grid, length in outputs:
        lengths.setdefault(grid, []).append(length)
    return sorted(lengths, key=lambda grid: (-len(lengths[grid]), sum(lengths[grid]) / len(lengths[grid])))


def pick_attempts(candidates: Sequence[Candidate], test_index: int) -> tuple[Grid, Grid]:
    """The two attempts for one test input (see the module docstring for the rule)."""
    attempts = ranked_grids(candidates, test_index)[:2]
    return tuple(attempts + [PADDING] * (2 - len(attempts)))


def make_submission(tasks: Mapping[str, data.Task],
                    candidates_by_task: Mapping[str, Sequence[Candidate]]) -> dict[str, list[dict]]:
    """The submission for every task and test input of the dataset, in dataset order.

    Tasks without candidates get [[0]] attempts. Candidates for a task that is not in the
    dataset, or with a wrong number of test outputs, are an error.
    """
    unknown = sorted(set(candidates_by_task) - set(tasks))
    if unknown:
        raise SubmissionError(f"candidates for tasks not in the dataset: {', '.join(unknown)}")
    submission = {}
    for task_id, task in tasks.items():
        candidates = candidates_by_task.get(task_id, ())
        for k, c in enumerate(candidates):
            if len(c.test_outputs) != len(task.test):
                raise SubmissionError(
                    f"task {task_id}: candidate {k}: test_outputs has {len(c.test_outputs)} "
                    f"entries, expected {len(task.test)} (one per test input)")
        submission[task_id] = [_json_entry(pick_attempts(candidates, i)) for i in range(len(task.test))]
    return submission


def _json_entry(attempts: tuple[Grid, Grid]) -> dict[str, list[list[int]]]:
    return {key: [list(row) for row in grid] for key, grid in zip(ATTEMPT_KEYS, attempts)}


# --- Validation ----------------------------------------------------------------------


def validate(submission: Any, tasks: Mapping[str, data.Task]) -> list[str]:
    """Every problem of a parsed submission against the dataset, one message each.

    Types are checked as `json.load` produces them: a cell must be a Python int 0-9, so a
    bool or a numpy integer (which `json.dump` cannot write) is a problem.
    """
    if not isinstance(submission, dict):
        return [f"submission must be an object mapping task id to test entries, got {_json_type(submission)}"]
    problems = [f"task {data.printable(task_id)}: not in the dataset" for task_id in submission if task_id not in tasks]
    for task_id, task in tasks.items():
        if task_id not in submission:
            problems.append(f"task {task_id}: missing, expected entries for {_test_range(len(task.test))}")
        else:
            problems += _task_problems(task_id, submission[task_id], len(task.test))
    return problems


def _task_problems(task_id: str, entries: Any, num_tests: int) -> list[str]:
    if not isinstance(entries, list):
        return [f"task {task_id}: must be a list of entries for {_test_range(num_tests)}, "
                f"got {_json_type(entries)}"]
    problems = [f"task {task_id} test {i}: missing, the list has {len(entries)} entries, expected {num_tests}"
                for i in range(len(entries), num_tests)]
    problems += [f"task {task_id} test {i}: extra entry, the task has {num_tests} test inputs"
                 for i in range(num_tests, len(entries))]
    for i, entry in enumerate(entries[:num_tests]):
        problems += _entry_problems(f"task {task_id} test {i}", entry)
    return problems


def _test_range(num_tests: int) -> str:
    return "test 0" if num_tests == 1 else f"tests 0-{num_tests - 1}"


def _entry_problems(where: str, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: must be an object with attempt_1 and attempt_2, got {_json_type(entry)}"]
    problems = [f"{where}: unexpected key {key!r}, expected attempt_1 and attempt_2"
                for key in entry if key not in ATTEMPT_KEYS]
    for key in ATTEMPT_KEYS:
        if key not in entry:
            problems.append(f"{where}: {key} is missing")
            continue
        try:  # The data loader's grid rules: non-empty, rectangular, at most 30x30, ints 0-9.
            data.grid_from_json(entry[key], f"{where} {key}")
        except data.TaskFormatError as e:
            problems.append(str(e))
    return problems


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- Scoring -------------------------------------------------------------------------


def score(submission: Any, tasks: Mapping[str, data.Task]) -> dict[str, Any]:
    """The ARC Prize score of a valid submission (reference doc §7).

    A test input scores 1 if either attempt equals its output; a task scores the mean over
    its test inputs; `score` is the mean over tasks. `num_solved` counts tasks with every
    test input right. Needs the dataset's test outputs.
    """
    if not tasks:
        raise SubmissionError("cannot score against an empty dataset")
    problems = validate(submission, tasks)
    if problems:
        raise SubmissionError(f"submission has {len(problems)} problems, the first: {problems[0]}")
    task_scores = {task_id: _task_score(task_id, task, submission[task_id]) for task_id, task in tasks.items()}
    return {"score": sum(task_scores.values()) / len(task_scores), "tasks": task_scores,
            "num_tasks": len(task_scores), "num_solved": sum(s == 1.0 for s in task_scores.values())}


def _task_score(task_id: str, task: data.Task, entries: list[dict]) -> float:
    hits = []
    for i, (pair, entry) in enumerate(zip(task.test, entries)):
        if pair.output is None:
            raise SubmissionError(f"task {task_id} test {i}: the expected output is hidden; "
                                  "scoring needs a dataset with test outputs")
        hits.append(data.grid_to_json(pair.output) in [entry[key] for key in ATTEMPT_KEYS])
    return sum(hits) / len(hits)


# --- CLI -----------------------------------------------------------------------------


def read_submission(path: str) -> Any:
    """The parsed JSON of a submission file (a regular file of at most 1 GiB)."""
    return data.read_json_file(path, SubmissionError)


def format_report(tasks: Mapping[str, data.Task], problems: Sequence[str]) -> str:
    """Dataset size, problem count and one line per problem."""
    num_tests = sum(len(task.test) for task in tasks.values())
    return "\n".join([f"tasks: {len(tasks)}", f"test inputs: {num_tests}",
                      f"problems: {len(problems)}", *problems])


def main(f: types.SimpleNamespace, argv):
    command = argv[1:]
    if command not in (["validate"], ["score"]):
        sys.exit(f"error: expected one command, validate or score, got {' '.join(command) or 'none'}")
    for flag in (f.submission, f.dataset):
        if not flag.value:
            sys.exit(f"error: --{flag.name} is required (expected a file or, for --dataset, a bundled name)")
    try:
        tasks = data.load_tasks(f.dataset.value)
        submission = read_submission(f.submission.value)
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")
    problems = validate(submission, tasks)
    print(format_report(tasks, problems))
    if problems:
        sys.exit(1)
    if command == ["score"]:
        try:
            result = score(submission, tasks)
        except SubmissionError as e:
            sys.exit(f"error: {e}")
        print(f"score: {result['score']:.4f}")
        print(f"solved tasks: {result['num_solved']} of {result['num_tasks']}")


if __name__ == "__main__":
    app.run(functools.partial(main, define_flags()))

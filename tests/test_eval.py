"""`arc_jax.eval`: resumable prediction files, test-time augmentation mapped back, the plan."""

import pathlib
import re
import subprocess
import sys

import pytest
import transformers

from arc_jax import data, episode, eval as evaluation, prompts, rewards, session
from arc_jax.config import default_config
from arc_jax.execution import ExecutionConfig, ExecutionPool
from arc_jax.rollout import PromptBuckets

ROOT = pathlib.Path(__file__).resolve().parent.parent
from conftest import save_tiny_llama3_policy, weight_bytes


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return save_tiny_llama3_policy(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(ExecutionConfig(num_workers=2)) as pool:
        yield pool


def eval_config(model_path: str):
    config = default_config()
    config.model_path = model_path
    config.dtype = "float32"
    config.dataset = "arc-agi-1/training"
    config.max_tasks = 2
    config.max_seq_length, config.max_completion_length = 8192, 6
    config.prompt.style, config.prompt.prefill_assistant = "arc25", True
    config.eval.n_predictions, config.eval.rounds = 4, 2
    config.lora.rank = 4
    return config


def run_rounds(config, pool, path: pathlib.Path) -> dict:
    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model_path)
    tasks = session.select_tasks(config, tokenizer)
    model = session.load_policy(config, config.model_path, session.make_mesh(config))
    max_prompt = config.max_seq_length - config.max_completion_length
    engine = session.make_engine(config, model, tokenizer, PromptBuckets(maximum=max_prompt),
                                 config.model_path)
    maker = episode.PromptMaker(config, tokenizer, max_prompt)
    return evaluation.evaluate(config, engine, pool, maker, prompts.stop_token_ids(tokenizer),
                               tasks, path)


@pytest.mark.slow
def test_an_interrupted_eval_resumes_to_the_same_file(tiny_policy, pool, tmp_path):
    config = eval_config(tiny_policy)
    whole = tmp_path / "whole.predictions.jsonl.gz"
    records = run_rounds(config, pool, whole)
    assert sorted(records) == sorted(data.load_tasks("arc-agi-1/training"))[:2]
    assert all(len(r) == config.eval.n_predictions for r in records.values())
    assert sorted(evaluation.read_rounds(whole)) == [0, 1]

    # Killed while writing round 1: the torn member is cut off and round 1 runs again.
    torn = tmp_path / "torn.predictions.jsonl.gz"
    torn.write_bytes(whole.read_bytes()[:-7])
    assert sorted(evaluation.read_rounds(torn)) == [0]
    resumed = run_rounds(config, pool, torn)
    assert torn.read_bytes() == whole.read_bytes()
    for task_id in records:
        assert [r.reward for r in resumed[task_id]] == [r.reward for r in records[task_id]]


def test_augmented_rounds_map_outputs_back_to_the_expected_grids(pool):
    # A program written for the augmented task (it knows that task's answers) must grade as
    # correct on the original task once its outputs are reverted.
    config = default_config()
    tasks = {t: task for t, task in sorted(data.load_tasks("arc-agi-1/training").items())[:3]}
    for draw in evaluation.round_draws(config, tasks, 1):
        assert draw.augmentation != data.Augmentation.identity() or draw.task == tasks[draw.task.id]
        pairs = [(p.input.tolist(), p.output.tolist()) for p in draw.task.train + draw.task.test]
        code = (f"PAIRS = {pairs!r}\n\ndef transform(grid):\n"
                "    for x, y in PAIRS:\n        if grid.tolist() == x:\n            return y\n")
        record = rewards.submit_completion(pool, f"```python\n{code}```", tasks[draw.task.id],
                                           draw.augmentation).record("arc-v1")
        assert record.error_type is None, record.error_message
        assert record.train.is_correct and record.test.is_correct and record.solved
    assert any(d.augmentation != data.Augmentation.identity() for d in evaluation.round_draws(config, tasks, 1))
    assert all(d.augmentation == data.Augmentation.identity() for d in evaluation.round_draws(config, tasks, 0))


def test_eval_dry_run_prints_the_plan_without_a_model():
    result = subprocess.run([sys.executable, "-m", "arc_jax.launch", "--config=configs/eval_barc_8b.py",
                             "--config.dry_run=True", "--config.checkpoint=workdir/some_run"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ("eval plan: 2 policies (baseline, some_run) x 400 tasks x 480 predictions (8 rounds of 60, "
            "rounds after the first augmented) = 384000 programs") in result.stdout


def test_compare_table_puts_policies_side_by_side():
    a = {"valid_code": 0.5, "is_correct": 0.25}
    b = {"valid_code": 1.0, "is_correct": None}
    lines = rewards.compare_table({"baseline": a, "rl": b}).splitlines()
    assert lines[0].split() == ["policy", "valid_code", "is_correct"]
    assert lines[1].split() == ["baseline", "50.0%", "25.0%"]
    assert lines[2].split() == ["rl", "100.0%", "-"]


def test_eval_run_writes_tables_submission_curve_and_pictures(tiny_policy, tmp_path, capsys):
    import json

    from arc_jax import submission

    config = eval_config(tiny_policy)
    config.eval.output_dir = str(tmp_path / "out")
    config.eval.num_pictures = 1
    config.execution.num_workers = 2
    results = evaluation.run(config)
    out = tmp_path / "out"
    assert list(results) == ["baseline"]
    printed = capsys.readouterr().out
    assert "--- baseline ---" in printed
    # The round line splits the sampling seconds the way the JAX sampler spent them.
    assert re.search(r"round 0: \d+ programs, .* sampled in [\d.]+ s \(prefills [\d.]+ s, "
                     r"decoding [\d.]+ s, host visits [\d.]+ s\)", printed), printed
    assert max(len(line) for line in printed.split("--- baseline ---")[1].splitlines()[:3]) <= 100
    full = (out / "baseline.metrics.txt").read_text().splitlines()[0].split()
    assert "unique_outputs" in full and "test_pixel_score" in full
    assert f"wrote to {tmp_path / 'out'}: " in printed and "tasks_challenges.json" in printed
    tasks = dict(sorted(data.load_tasks("arc-agi-1/training").items())[:2])
    entries = json.loads((out / "baseline.submission.json").read_text())
    assert submission.validate(entries, tasks) == []
    curve = json.loads((out / "baseline.pass_at_k.json").read_text())
    assert list(curve) == ["1", "2", "3", "4"] and all(0 <= v <= 1 for v in curve.values())
    assert (out / "baseline.pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob("baseline.*.png"))) == 2  # the curve and one task
    # The README's commands check the submission against the tasks the eval wrote beside it.
    for command in ("validate", "score"):
        result = subprocess.run(
            [sys.executable, "-m", "arc_jax.submission", command,
             f"--submission={out / 'baseline.submission.json'}",
             f"--dataset={out / 'tasks_challenges.json'}"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "solved tasks:" in result.stdout and "of 2" in result.stdout


def test_a_prompt_over_the_length_limit_stops_eval_with_one_line_before_the_model_loads(
        tiny_policy, tmp_path, monkeypatch):
    import re

    from arc_jax.config import ConfigError

    config = eval_config(tiny_policy)
    config.max_seq_length = 600  # 594 prompt tokens: ARC prompts of 20 x 20 grids need more
    config.eval.output_dir = str(tmp_path / "out")
    monkeypatch.setattr(session, "load_policy", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError) as error:
        evaluation.run(config)
    match = re.fullmatch(r"task (\w+), round (\d): its prompt has (\d+) tokens, more than "
                         r"max_seq_length - max_completion_length = 594; raise "
                         r"config.max_seq_length to at least (\d+) or leave the task out of "
                         r"config.dataset", str(error.value))
    assert match, str(error.value)
    task_id, length, needed = match[1], int(match[3]), int(match[4])
    assert task_id in sorted(data.load_tasks("arc-agi-1/training"))[:2]
    assert length > 594 and needed == length + 6
    assert not list((tmp_path / "out").glob("*.predictions.jsonl.gz"))


def test_eval_loads_the_adapters_of_a_training_checkpoint_without_building_an_updater(
        tiny_policy, tmp_path, monkeypatch):
    import jax
    import numpy as np
    from flax import nnx

    from arc_jax.model import LoraParam
    from arc_jax.train import update
    from arc_jax.train.checkpoint import Checkpointer

    config = eval_config(tiny_policy)
    mesh = session.make_mesh(config)
    trained = session.load_policy(config, tiny_policy, mesh)
    saved = update.GRPOUpdater(trained, session.loss_config(config),
                               session.optimizer_config(config, 1)).state()
    rng = np.random.default_rng(0)
    steps = {}
    with Checkpointer(tmp_path / "run" / "checkpoints", max_to_keep=None) as checkpointer:
        for step in (1, 2):
            lora = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), saved["lora"])
            steps[step] = lora
            checkpointer.save(step, {**saved, "lora": lora}, {"step": step})

    def no_updater(*args, **kwargs):
        raise AssertionError("eval built a GRPOUpdater to read adapters")

    monkeypatch.setattr(update.GRPOUpdater, "__init__", no_updater)
    config.checkpoint = str(tmp_path / "run")
    for step, expected_step in ((0, 2), (1, 1)):
        config.eval.step = step
        model = session.load_policy(config, tiny_policy, mesh)
        evaluation.load_adapter(config, model)
        loaded = nnx.to_pure_dict(nnx.state(model, LoraParam))
        expected = steps[expected_step]
        assert jax.tree.structure(loaded) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(np.asarray(got), want)


def test_eval_of_an_adapter_folds_it_into_the_samplers_only_copy_of_the_weights(
        tiny_policy, tmp_path, monkeypatch):
    # The adapter is the last policy evaluated: eval drops its model and the in-process
    # sampler folds the adapter into the base kernels, so its weights do not grow by a merged
    # copy of the adapted kernels (the memory goes to key/value pages).
    import jax
    import numpy as np
    from flax import nnx

    from arc_jax.model import LoraParam
    from arc_jax.model.checkpoint import save_peft_adapter
    from arc_jax.rollout import JaxSampler

    config = eval_config(tiny_policy)
    trained = session.load_policy(config, tiny_policy, session.make_mesh(config))
    rng = np.random.default_rng(5)
    nnx.update(trained, jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype),
                                     nnx.state(trained, LoraParam)))
    save_peft_adapter(trained, tmp_path / "adapter", base_model_name_or_path=tiny_policy)
    adapted = {jax.tree_util.keystr(path).replace("['lora_a']", "['kernel']")
               for path, _ in jax.tree_util.tree_flatten_with_path(
                   nnx.state(trained, LoraParam))[0] if "lora_a" in jax.tree_util.keystr(path)}
    kernel_bytes = sum(x.nbytes for path, x in jax.tree_util.tree_flatten_with_path(
        nnx.state(trained, nnx.Param))[0] if jax.tree_util.keystr(path) in adapted)
    del trained
    calls = []
    update = JaxSampler.update_weights

    def measured(self, lora_state, version=None, final=False):
        before = weight_bytes()
        update(self, lora_state, version, final)
        calls.append((final, weight_bytes() - before))

    monkeypatch.setattr(JaxSampler, "update_weights", measured)
    config.checkpoint = str(tmp_path / "adapter")
    config.eval.baseline = False
    config.max_tasks, config.eval.n_predictions, config.eval.rounds = 1, 2, 1
    config.eval.output_dir = str(tmp_path / "out")
    config.eval.num_pictures = 0
    assert list(evaluation.run(config)) == ["adapter"]
    [(final, grown)] = calls
    assert final and grown < kernel_bytes / 2, (grown, kernel_bytes)


def test_training_before_and_after_table_is_the_evaluators_solve_rate(tmp_path):
    # Training's before/after table goes through eval's sample-and-score path. The scripted
    # engine answers with programs from a fixed list; the expected rates come from running
    # those programs here, on the tasks' grids, outside the sandbox and the scoring code.
    import json

    import numpy as np

    import scripted_engine
    from conftest import save_tiny_llama3_policy
    from arc_jax.train import loop

    task_ids = ("67a3c6ac", "68b16354", "74dd1130", "007bbfb7")  # 3 solvable by the list, 1 not
    all_tasks = data.load_tasks("arc-agi-1/training")
    folder = tmp_path / "tasks"
    folder.mkdir()
    for task_id in task_ids:
        (folder / f"{task_id}.json").write_text(json.dumps(data.task_to_json(all_tasks[task_id])))

    def solves(code: str, task) -> bool:
        if "def transform" not in code:
            return False
        scope = {}
        exec(code, scope)  # the fixed, known programs of the scripted engine
        return all(np.array_equal(scope["transform"](np.array(p.input)), p.output)
                   for p in (*task.train, *task.test))

    solved = {t: [solves(code, all_tasks[t]) for code in scripted_engine.PROGRAMS]
              for t in task_ids}
    assert sum(map(any, solved.values())) == 3

    config = default_config()
    config.model_path = save_tiny_llama3_policy(tmp_path / "policy")
    config.workdir = str(tmp_path / "run")
    config.dtype = "float32"
    config.dataset = str(folder)
    config.max_seq_length, config.max_completion_length = 4096, 48
    config.prompt.style, config.prompt.prefill_assistant = "arc25", True
    config.lora.rank = 4
    config.num_generations, config.generation_batch_size = 2, 2
    config.max_steps = config.save_steps = 1
    config.tensorboard = config.compilation_cache = False
    config.execution.num_workers = 2
    config.eval.num_samples = 6

    calls = []

    class Recording(scripted_engine.ScriptedEngine):
        def generate(self, prompts, n, sampling):
            calls.append((len(prompts), n, sampling.seed))
            return super().generate(prompts, n, sampling)

    loop.run(config, make_engine=lambda config, model, tokenizer, *_: Recording(tokenizer))

    ordered = sorted(task_ids)
    for name, call in (("before", calls[0]), ("after", calls[-1])):
        assert call[:2] == (4, 6)
        picks = {}  # the engine draws a prompt's 6 picks from one generator
        for i, t in enumerate(ordered):
            rng = np.random.default_rng([call[2], i])
            picks[t] = [int(rng.integers(len(scripted_engine.PROGRAMS))) for _ in range(6)]
        per_task = {t: float(np.mean([solved[t][k] for k in picks[t]])) for t in ordered}
        result = json.loads((tmp_path / "run" / f"eval_{name}.json").read_text())
        assert result["per_task"] == pytest.approx(per_task)
        assert result["sample_solve_rate"] == pytest.approx(np.mean(list(per_task.values())))
        assert result["tasks_solved"] == pytest.approx(np.mean([r > 0 for r in per_task.values()]))
        parses = [scripted_engine.PROGRAMS[k] != "no code here" for t in ordered for k in picks[t]]
        assert result["valid_code_ratio"] == pytest.approx(np.mean(parses))
    assert calls[0][2] == calls[-1][2]  # one seed for both: the tables differ by the policy only

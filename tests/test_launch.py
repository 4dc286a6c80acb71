"""The launch CLI: flags, config files with an argument, overrides, mode dispatch."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from arc_jax import dry_run
from arc_jax import launch

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_config_module(name: str):
    spec = importlib.util.spec_from_file_location(name, _ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_config_module("demo")


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arc_jax.launch", *args],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_the_config_flag_and_every_field_with_its_default():
    result = _launch("--help")
    assert result.returncode == 0
    assert "--config" in result.stdout
    assert "configs/demo.py" in result.stdout
    assert "--config.learning_rate=1e-06" in result.stdout
    assert ("--config.sampler.page_size=32  # tokens per page of the key/value cache (prompts and rows)"
            in result.stdout)
    assert "--config.rollout.vllm.server_port=0  # 0 = a free port" in result.stdout


def test_an_unknown_mode_is_one_line_without_the_help():
    result = _launch("--config=configs/demo.py", "--config.mode=evaluate")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: config.mode='evaluate' is not a mode; expected one of ['dry_run', 'eval', 'search', 'train']"]


def test_unknown_override_fails_with_the_field_name():
    result = _launch("--config=configs/demo.py", "--config.learning_rat=1e-6")
    assert result.returncode != 0
    assert "unknown config field 'learning_rat'" in result.stderr
    assert "--config.learning_rat" in result.stderr


def test_unknown_nested_override_suggests_the_field():
    result = _launch("--config=configs/demo.py", "--config.prompt.styl=arc25")
    assert result.returncode != 0
    assert "'styl'" in result.stderr and '"style"' in result.stderr


def test_bad_override_type_is_rejected():
    result = _launch("--config=configs/demo.py", "--config.seed=abc")
    assert result.returncode != 0
    assert "--config.seed=abc" in result.stderr


def test_config_file_argument_is_passed_to_get_config():
    result = _launch("--config=configs/demo.py:nonsense")
    assert result.returncode != 0
    assert "takes no argument or 'smoke', got 'nonsense'" in result.stderr


def test_every_mode_resolves_to_its_run_function():
    from arc_jax import eval as evaluation
    from arc_jax.train import loop

    assert launch.resolve_mode("eval") is evaluation.run
    assert launch.resolve_mode("train") is loop.run
    assert launch.resolve_mode("dry_run") is dry_run.run


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(SystemExit, match=r"config.mode='sample' is not a mode; expected one of \['dry_run', 'eval', 'search', 'train'\]"):
        launch.resolve_mode("sample")


def test_every_mode_maps_to_a_module_function():
    for target in launch.MODES.values():
        module, function = target.split(":")
        assert module.startswith("arc_jax.") and function.isidentifier()


def test_dry_run_mode_renders_prompts():
    result = _launch("--config=configs/demo.py:smoke", "--config.mode=dry_run",
                     "--config.prompt.style=barc", "--config.prompt.prefill_assistant=False")
    assert result.returncode == 0, result.stderr
    assert "dry run: 400 tasks in arc-agi-1/training; rendered the run's first 4 barc prompts" in result.stdout
    # The shown prompt is a full Llama-3.1 chat prompt in the barc layout.
    assert "<|begin_of_text|><|start_header_id|>system<|end_header_id|>" in result.stdout
    assert "Here is the input grid for the test example:\nInput:\n" in result.stdout
    assert result.stdout.count("<|start_header_id|>assistant<|end_header_id|>\n\n") == 1


def test_bad_dataset_is_one_clear_line():
    result = _launch("--config=configs/demo.py:smoke", "--config.mode=dry_run",
                     "--config.dataset=no/such/tasks.json")
    assert result.returncode != 0
    assert "error: config.dataset='no/such/tasks.json': expected a bundled dataset" in result.stderr
    assert "Traceback" not in result.stderr


def _llama3_tokenizer_dir() -> str:
    from conftest import LLAMA3_TOKENIZER

    return str(LLAMA3_TOKENIZER)


@pytest.mark.parametrize("budget, expected_skipped", [(1, 4), (100_000, 0)])
def test_dry_run_skips_prompts_over_the_token_budget(budget, expected_skipped):
    config = demo.get_config("smoke")
    config.preview.tokenizer_path = _llama3_tokenizer_dir()
    config.prompt.style = "arc25"
    config.max_completion_length = 100
    config.max_seq_length = budget + 100
    config.preview.show_prompts = 0
    summary = dry_run.run(config)
    assert summary["length_unit"] == "tokens"
    assert summary["num_prompts"] == 4
    assert summary["num_skipped_over_budget"] == expected_skipped


def test_dry_run_shows_the_prompts_the_run_draws():
    # The trainer's draws: its task stream and prompt maker (episode.task_stream, PromptMaker).
    import transformers

    from arc_jax import data, episode

    config = demo.get_config("smoke")
    config.preview.tokenizer_path = _llama3_tokenizer_dir()
    config.prompt.style = "arc25"
    config.preview.num_tasks, config.preview.show_prompts = 6, 0
    config.max_seq_length, config.max_completion_length = 9700, 1024
    summary = dry_run.run(config)
    tokenizer = transformers.AutoTokenizer.from_pretrained(_llama3_tokenizer_dir())
    maker = episode.PromptMaker(config, tokenizer, config.max_seq_length - config.max_completion_length)
    stream = episode.task_stream(config, data.load_tasks(config.dataset))
    draws, _, skipped = maker.next_prompts(stream, len(summary["drawn_task_ids"]))
    assert [d.task.id for d in draws] == summary["drawn_task_ids"]
    assert skipped <= summary["num_skipped_over_budget"]  # (the dry run also counts later skips)
    assert len(set(summary["drawn_task_ids"])) > 1


# The bad settings a user has typed, each with the message's start.
BAD_SETTINGS = [
    ("num_generations", -1, "config.num_generations=-1: expected an integer >= 2"),
    ("num_generations", 0, "config.num_generations=0: expected an integer >= 2"),
    ("generation_batch_size", 0, "config.generation_batch_size=0: expected a positive multiple"),
    ("generation_batch_size", 12, "config.generation_batch_size=12: expected a positive multiple"),
    ("logging_steps", 0, "config.logging_steps=0: expected an integer >= 1"),
    ("save_steps", 0, "config.save_steps=0: expected an integer >= 1"),
    ("num_iterations", 0, "config.num_iterations=0: expected an integer >= 1"),
    ("learning_rate", float("nan"), "config.learning_rate=nan: expected a finite number > 0"),
    ("learning_rate", -1e-6, "config.learning_rate=-1e-06: expected a finite number > 0"),
    ("max_completion_length", 1024, "config.max_completion_length=1024: expected an integer >= 1 "
                                    "and below max_seq_length"),
    ("top_p", 0.0, "config.top_p=0.0: expected a number in (0, 1]"),
    ("reward_name", "arc-v9", "config.reward_name='arc-v9': expected one of ['arc-unseen',"),
    ("top_entropy_quantile", 1.5, "config.top_entropy_quantile must be in [0, 1], got 1.5"),
    ("sampler.max_prompts_per_batch", 3, "config.sampler.max_prompts_per_batch=3: expected a "
                                         "power of two"),
    ("execution.timeout_s", float("inf"), "config.execution.timeout_s=inf: expected a number of seconds"),
    ("execution.wall_timeout_s", 0.5, "config.execution.wall_timeout_s=0.5: expected 0 (5 x timeout_s)"),
    ("execution.memory_limit_mb", 10**9, "config.execution.memory_limit_mb=1000000000: expected an integer"),
    ("execution.num_workers", 4096, "config.execution.num_workers=4096 (4096 workers) x execution.memory_limit_mb="),
]


@pytest.mark.parametrize("field, value, message", BAD_SETTINGS,
                         ids=[f"{f}={v}" for f, v, _ in BAD_SETTINGS])
def test_validate_names_each_bad_setting(field, value, message):
    from arc_jax.config import ConfigError, validate

    config = _demo_smoke_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value).startswith(message), str(error.value)


def _demo_smoke_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", _ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.max_seq_length = 1000  # so that max_completion_length=1024 is out of range
    return config


# Fields whose value is free text (paths, names, addresses: checked where they are opened);
# `mode` is checked by the launcher itself. Every other field has a check in `validate`.
FREE_TEXT = {"checkpoint", "model_path", "workdir", "eval.output_dir", "search.output_dir",
             "execution.common_path", "preview.tokenizer_path", "wandb_project", "mode",
             "rollout.vllm.devices", "rollout.vllm.extra_args", "rollout.vllm.python",
             "rollout.vllm.server_base_url", "rollout.vllm.server_host"}


def _fields() -> list[tuple[str, object]]:
    from arc_jax.config import default_config

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value
    # A bool cannot hold a bad value: the config refuses anything but True and False.
    return [(f, v) for f, v in leaves(default_config().to_dict())
            if f not in FREE_TEXT and not isinstance(v, bool)]


@pytest.mark.parametrize("field, default", _fields(), ids=[f for f, _ in _fields()])
def test_every_field_refuses_a_bad_value_naming_itself(field, default):
    # A new field without a check fails here: give it a rule in config._RULES (or a
    # self-checking settings dataclass), or add it to FREE_TEXT if any text is valid.
    from arc_jax.config import ConfigError, default_config, validate

    if isinstance(default, str):
        bad = "no-such-choice"
    elif isinstance(default, tuple):
        bad = ("no_such_module",)
    elif isinstance(default, int):
        bad = -10**9
    else:  # a float, or None for an optional number
        bad = float("nan")
    config = default_config()
    config.update_from_flattened_dict({field: bad})
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value).startswith(f"config.{field}"), str(error.value)


# The bad settings the launcher must refuse from the command line, each with its message's start.
BAD_OVERRIDES = [
    ("prompt.style=xml", "config.prompt.style: expected one of ('barc', 'arc25')"),
    ("collapse.action=stop", "config.collapse.action must be one of ('warn', 'rollback')"),
    ("reward_name=arc-v9", "config.reward_name='arc-v9': expected one of"),
    ("task_filter=easy", "config.task_filter='easy': expected '' (every task) or 'toy_solvable'"),
    ("dataset=no/such/tasks", "config.dataset='no/such/tasks': expected a bundled dataset"),
    ("remat_policy=keep_all", "config.remat_policy='keep_all': expected a jax.checkpoint_policies name"),
    ("lr_scheduler_type=linear", "config.lr_scheduler_type must be one of"),
    ("num_generations=-1", "config.num_generations=-1: expected an integer >= 2"),
    ("num_generations=0", "config.num_generations=0: expected an integer >= 2"),
    ("generation_batch_size=0", "config.generation_batch_size=0: expected a positive multiple"),
    ("logging_steps=0", "config.logging_steps=0: expected an integer >= 1"),
    ("save_steps=0", "config.save_steps=0: expected an integer >= 1"),
    ("num_iterations=0", "config.num_iterations=0: expected an integer >= 1"),
    ("learning_rate=nan", "config.learning_rate=nan: expected a finite number > 0"),
    ("learning_rate=inf", "config.learning_rate=inf: expected a finite number > 0"),
]


@pytest.mark.parametrize("override, message", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_setting_exits_1_with_one_line_before_any_work(override, message):
    result = _launch("--config=configs/demo.py:smoke", f"--config.{override}")
    assert result.returncode == 1
    output = (result.stdout + result.stderr).splitlines()
    errors = [line for line in output if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), output
    assert "Traceback" not in result.stderr
    assert "step plan" not in result.stdout  # stopped before the data and the model


def test_every_user_error_is_one_family():
    # launch and the CLIs catch UserError alone: each class of bad input or settings must be one.
    from arc_jax.config import ConfigError
    from arc_jax.data import TaskFormatError
    from arc_jax.distributed import DistributedSettingsError
    from arc_jax.errors import UserError
    from arc_jax.execution import ExecutionMemoryError, WorkerStartError
    from arc_jax.model.checkpoint import CheckpointError as ModelCheckpointError
    from arc_jax.model.config import ConfigError as ModelConfigError
    from arc_jax.model.safetensors_io import SafetensorsError
    from arc_jax.rollout.memory import RolloutMemoryError
    from arc_jax.rollout.vllm import VLLMError
    from arc_jax.score import PredictionFormatError
    from arc_jax.submission import SubmissionError
    from arc_jax.train.checkpoint import CheckpointError as TrainCheckpointError
    from arc_jax.train.memory import UpdateMemoryError
    from arc_jax.train.metrics_log import MetricsError

    classes = [ConfigError, TaskFormatError, DistributedSettingsError, ExecutionMemoryError, WorkerStartError,
               ModelCheckpointError, ModelConfigError, SafetensorsError, RolloutMemoryError, VLLMError,
               PredictionFormatError, SubmissionError, TrainCheckpointError, UpdateMemoryError, MetricsError]
    assert [c.__name__ for c in classes if not issubclass(c, UserError)] == []
    # and each keeps its builtin base for library callers
    assert issubclass(TaskFormatError, ValueError) and issubclass(UpdateMemoryError, MemoryError)
    assert issubclass(VLLMError, RuntimeError)


@pytest.mark.parametrize("name", sorted(p.stem for p in (_ROOT / "configs").glob("*.py")
                                        if p.stem != "__init__"))
def test_every_config_file_loads_and_validates(name):
    import importlib

    from arc_jax.config import validate

    config = importlib.import_module(f"configs.{name}").get_config()
    validate(config)
    assert config.mode in ("train", "eval", "dry_run", "search")

"""launch/sweep.py: the grid's expansion, run names and workdirs, bad input, running a sweep."""

import importlib.util
import pathlib
import shlex
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SCRIPT = _ROOT / "launch" / "sweep.py"

_spec = importlib.util.spec_from_file_location("sweep", _SCRIPT)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

_LAUNCH = ["python", "-m", "arc_jax.launch"]


def _sweep(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(_SCRIPT), *args], cwd=_ROOT, check=False,
                          capture_output=True, text=True, timeout=timeout)


def test_parse_axis_keeps_the_values_as_strings_and_drops_the_config_prefix():
    assert sweep.parse_axis("learning_rate=1e-6,2e-6") == ("learning_rate", ["1e-6", "2e-6"])
    assert sweep.parse_axis("config.lora.rank=8,16") == ("lora.rank", ["8", "16"])
    assert sweep.parse_axis("prompt.style=a=b") == ("prompt.style", ["a=b"])


def test_a_2x2_grid_expands_in_order_with_the_last_axis_fastest():
    axes = [("learning_rate", ["1e-6", "2e-6"]), ("num_generations", ["16", "32"])]
    assert sweep.expand(axes) == [
        {"learning_rate": "1e-6", "num_generations": "16"},
        {"learning_rate": "1e-6", "num_generations": "32"},
        {"learning_rate": "2e-6", "num_generations": "16"},
        {"learning_rate": "2e-6", "num_generations": "32"},
    ]
    runs = sweep.commands("configs/demo.py", axes, ["--config.max_steps=10"], "workdir/sw")
    fixed = ["--config=configs/demo.py", "--config.max_steps=10"]
    assert runs == [
        ("learning_rate=1e-6,num_generations=16",
         [*_LAUNCH, *fixed, "--config.learning_rate=1e-6", "--config.num_generations=16",
          "--config.workdir=workdir/sw/learning_rate=1e-6,num_generations=16"]),
        ("learning_rate=1e-6,num_generations=32",
         [*_LAUNCH, *fixed, "--config.learning_rate=1e-6", "--config.num_generations=32",
          "--config.workdir=workdir/sw/learning_rate=1e-6,num_generations=32"]),
        ("learning_rate=2e-6,num_generations=16",
         [*_LAUNCH, *fixed, "--config.learning_rate=2e-6", "--config.num_generations=16",
          "--config.workdir=workdir/sw/learning_rate=2e-6,num_generations=16"]),
        ("learning_rate=2e-6,num_generations=32",
         [*_LAUNCH, *fixed, "--config.learning_rate=2e-6", "--config.num_generations=32",
          "--config.workdir=workdir/sw/learning_rate=2e-6,num_generations=32"]),
    ]


def test_workdirs_are_distinct_safe_and_stable():
    axes = [("prompt.style", ["arc25", "a/b", "a_b", "a b", "x" * 300, "x" * 301]),
            ("seed", ["0", "-1"])]
    names = [name for name, _ in sweep.commands("configs/demo.py", axes, [], "r")]
    assert len(set(names)) == len(names) == 12
    for name in names:
        assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                "0123456789._=,-"), name
        assert len(name) <= 255
    assert names[0] == "prompt.style=arc25,seed=0"
    # The same point always gets the same name, wherever it sits in the grid.
    again = sweep.commands("configs/demo.py", [("prompt.style", ["a/b"]), ("seed", ["-1"])],
                           [], "r")
    assert again[0][0] == names[3]
    assert sweep.run_name({"prompt.style": "a/b", "seed": "-1"}) == names[3]


def test_the_default_root_is_named_after_the_config_file():
    assert sweep.default_root("configs/demo.py") == "workdir/sweeps/demo"
    assert sweep.default_root("configs/demo.py:smoke") == "workdir/sweeps/demo-smoke"


def test_fixed_overrides_and_other_flags_pass_through_unchanged():
    options, axes, fixed, root = sweep.parse_args(
        ["--config=configs/demo.py", "--config.lora.rank=4", "--sweep=seed=1,2",
         "--config.prompt.style=arc25", "--verbosity=1", "--config.dry_run"])
    assert axes == [("seed", ["1", "2"])]
    assert fixed == ["--config.lora.rank=4", "--config.prompt.style=arc25", "--verbosity=1",
                     "--config.dry_run"]
    assert root == "workdir/sweeps/demo"
    _, argv = sweep.commands(options.config, axes, fixed, root)[1]
    assert argv == [*_LAUNCH, "--config=configs/demo.py", *fixed, "--config.seed=2",
                    "--config.workdir=workdir/sweeps/demo/seed=2"]


def test_a_config_workdir_given_to_the_sweep_is_the_root():
    _, _, fixed, root = sweep.parse_args(
        ["--config=configs/demo.py", "--config.workdir=/data/sw/", "--sweep=seed=1"])
    assert fixed == [] and root == "/data/sw/"
    (_, argv), = sweep.commands("configs/demo.py", [("seed", ["1"])], fixed, root)
    assert argv[-1] == "--config.workdir=/data/sw/seed=1"
    assert sum(a.startswith("--config.workdir") for a in argv) == 1


def test_print_writes_one_shell_command_per_run():
    result = _sweep("--config=configs/demo.py", "--sweep=config.learning_rate=1e-6,2e-6",
                    "--sweep=prompt.style=arc25,my style", "--config.max_steps=10", "--print",
                    "--workdir_root=workdir/sweeps/x y")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    parsed = [shlex.split(line) for line in lines]
    assert parsed[1] == [*_LAUNCH, "--config=configs/demo.py", "--config.max_steps=10",
                         "--config.learning_rate=1e-6", "--config.prompt.style=my style",
                         "--config.workdir=workdir/sweeps/x y/"
                         + sweep.run_name({"learning_rate": "1e-6",
                                           "prompt.style": "my style"})]
    assert [p[-2] for p in parsed] == ["--config.prompt.style=arc25",
                                      "--config.prompt.style=my style"] * 2
    assert len({p[-1] for p in parsed}) == 4


@pytest.mark.parametrize("args, message", [
    (["--sweep=learning_rate"], "expected FIELD=V1,V2,..."),
    (["--sweep=learning_rate="], "no values"),
    (["--sweep=learning_rate=1e-6,"], "an empty value"),
    (["--sweep=seed=1,1"], "repeats 1"),
    (["--sweep=seed=1,2", "--sweep=config.seed=3"], "more than once"),
    (["--sweep=seed=1,2", "--config.seed=3"], "--config.seed=3 sets a field"),
    ([], "no --sweep"),
    (["--sweep=seed=1", "--config.max_steps", "10"], "unexpected argument '10'"),
    (["--sweep=a b=1"], "not a config field path"),
    (["--sweep=workdir=a,b"], "--workdir_root"),
    (["--sweep=seed=1", "--config.workdir="], "root is empty"),
    (["--sweep=seed=1", "--config.workdir=a", "--workdir_root=b"], "not both"),
    (["--sweep=seed=1", "--launcher='unclosed"], "--launcher="),
])
def test_bad_input_is_one_error_line_and_exit_code_2(args, message):
    result = _sweep("--config=configs/demo.py", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--sweep=seed=1,2"], "--config=configs/<name>.py is required"),
    (["--config=configs/nope.py", "--sweep=seed=1,2"],
     "--config=configs/nope.py: no such file configs/nope.py"),
])
def test_a_missing_config_is_one_error_line_and_exit_code_2(args, message):
    result = _sweep(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {message}"]


# A stand-in for arc_jax.launch: fails with exit code 3 for --config.mode=bad.
_FAKE = f"{shlex.quote(sys.executable)} -c " + shlex.quote(
    "import sys; sys.exit(3 if '--config.mode=bad' in sys.argv else 0)")


def test_a_sweep_stops_at_the_first_failing_run():
    result = _sweep("--config=configs/demo.py", f"--launcher={_FAKE}",
                    "--sweep=mode=dry_run,bad,eval")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: run mode=bad failed with exit code 3"]
    assert result.stdout.count("=== sweep run") == 2
    summary = result.stdout.split("=== sweep summary")[1].splitlines()
    assert summary[0] == " (workdir/sweeps/demo): 1 of 3 runs succeeded"
    assert summary[1].split() == ["mode=dry_run", "exit", "code", "0"]
    assert summary[2].split() == ["mode=bad", "exit", "code", "3"]
    assert summary[3].split() == ["mode=eval", "not", "run"]


def test_keep_going_runs_every_point_and_still_fails():
    result = _sweep("--config=configs/demo.py", f"--launcher={_FAKE}", "--keep_going",
                    "--sweep=mode=dry_run,bad,eval")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: run mode=bad failed with exit code 3"]
    assert result.stdout.count("=== sweep run") == 3
    assert "2 of 3 runs succeeded" in result.stdout


def test_a_sweep_of_the_demo_config_runs_each_point_in_its_own_workdir(tmp_path):
    # --verbosity=0 makes each run log the config it parsed, workdir included.
    root = tmp_path / "sweep"
    result = _sweep("--config=configs/demo.py", "--config.mode=dry_run",
                    "--config.preview.show_prompts=0", "--verbosity=0",
                    "--sweep=preview.num_tasks=1,2", f"--workdir_root={root}", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("=== sweep run") == 2
    assert "rendered the run's first 1 arc25 prompts" in out
    assert "rendered the run's first 2 arc25 prompts" in out
    assert out.index("first 1 arc25") < out.index("=== sweep run 2/2") < out.index("first 2")
    logged = [line.strip() for line in result.stderr.splitlines()
              if line.strip().startswith("workdir:")]
    assert logged == [f"workdir: {root}/preview.num_tasks=1",
                      f"workdir: {root}/preview.num_tasks=2"]
    summary = out.split("=== sweep summary")[1].splitlines()
    assert "2 of 2 runs succeeded" in summary[0]
    assert [line.split() for line in summary[1:]] == [
        ["preview.num_tasks=1", "exit", "code", "0"],
        ["preview.num_tasks=2", "exit", "code", "0"],
    ]

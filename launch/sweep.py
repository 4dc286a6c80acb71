"""Runs a grid of `arc_jax.launch` jobs, one per point of the Cartesian product of the axes.

    python launch/sweep.py --config=configs/demo.py \\
        --sweep=learning_rate=1e-6,2e-6 --sweep=num_generations=16,32 \\
        [--config.max_steps=10 ...] [--workdir_root=DIR] [--print] [--keep_going]

Each `--sweep=FIELD=V1,V2,...` is one axis (FIELD a config field path such as `lora.rank`,
with or without the `config.` prefix); the last axis varies fastest. Every other argument
(`--config.x=y`, `--verbosity=1`) goes to every run unchanged. Each run gets its own
`--config.workdir=ROOT/NAME`, NAME built from its swept values as given
(`learning_rate=1e-6,num_generations=16`), so a rerun of the same point resumes in the same
workdir. ROOT is `--workdir_root`, else a `--config.workdir` given here, else
`workdir/sweeps/<config file stem>` (`<stem>-<arg>` for `--config=file.py:arg`).

By default the runs go one after another on this machine, stopping at the first failure
(`--keep_going` runs them all); `--print` prints one shell command per run and runs nothing,
for a scheduler. Values stay strings: absl and ml_collections parse them in each run, so a
value cannot contain a comma. This script does not import jax or the project.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import pathlib
import re
import shlex
import subprocess
import sys

# What starts one run, in --print's output and with --launcher unset.
LAUNCH = ("python", "-m", "arc_jax.launch")

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,-]")
_MAX_NAME = 200  # a file name may have 255 bytes; leave room for the hash suffix


class SweepError(ValueError):
    """Bad input to the sweep: reported as one `error:` line, exit code 2."""


def field_name(text: str) -> str:
    """`config.lora.rank` or `lora.rank` -> `lora.rank`; raises SweepError for a bad path."""
    field = text.removeprefix("config.")
    if not _FIELD.fullmatch(field):
        raise SweepError(f"{text!r} is not a config field path (e.g. lora.rank)")
    return field


def parse_axis(text: str) -> tuple[str, list[str]]:
    """`FIELD=V1,V2,...` -> (field, [V1, V2, ...]); the values stay strings."""
    field, sep, values = text.partition("=")
    if not sep:
        raise SweepError(f"--sweep={text}: expected FIELD=V1,V2,...")
    field = field_name(field)
    if field == "workdir":
        raise SweepError("--sweep=workdir=...: each run's workdir is set by the sweep; "
                         "give its root with --workdir_root")
    items = values.split(",") if values else []
    if not items:
        raise SweepError(f"--sweep={text}: no values")
    if "" in items:
        raise SweepError(f"--sweep={text}: an empty value")
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise SweepError(f"--sweep={text}: repeats {', '.join(repeated)}")
    return field, items


def override_field(arg: str) -> str | None:
    """The config field that `--config.x=y` (or `--noconfig.x`) sets; None for other flags."""
    name = arg.lstrip("-").partition("=")[0]
    for prefix in ("config.", "noconfig."):
        if arg.startswith("--") and name.startswith(prefix):
            return name[len(prefix):]
    return None


def check_axes(axes: list[tuple[str, list[str]]], fixed: list[str]) -> None:
    """Raises SweepError for no axes, an axis given twice, or an axis also set by `fixed`."""
    if not axes:
        raise SweepError("no --sweep=FIELD=V1,V2,... axis given")
    fields = [field for field, _ in axes]
    for field in fields:
        if fields.count(field) > 1:
            raise SweepError(f"--sweep={field}=... is given more than once")
    for arg in fixed:
        if override_field(arg) in fields:
            raise SweepError(f"{arg} sets a field that --sweep={override_field(arg)}=... sweeps")


def expand(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The grid's points, {field: value} in axis order, the last axis varying fastest."""
    fields = [field for field, _ in axes]
    return [dict(zip(fields, values)) for values in itertools.product(*(v for _, v in axes))]


def run_name(point: dict[str, str]) -> str:
    """`field=value,...` as a file name: [A-Za-z0-9._=,-] only, the same for the same point.

    A name that had to be changed (another character, or too long) ends in a hash of the
    original, so two points never share a name."""
    raw = ",".join(f"{field}={value}" for field, value in point.items())
    name = _UNSAFE.sub("_", raw)
    if name == raw and len(name) <= _MAX_NAME and name not in (".", ".."):
        return name
    return f"{name[:_MAX_NAME]}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"


def default_root(config: str) -> str:
    """`workdir/sweeps/<stem>` for `--config=path/<stem>.py`, `<stem>-<arg>` with `:arg`."""
    path, _, arg = config.partition(":")
    stem = pathlib.Path(path).stem
    return f"workdir/sweeps/{_UNSAFE.sub('_', f'{stem}-{arg}' if arg else stem)}"


def workdir(root: str, name: str) -> str:
    """The workdir of run `name` under `root`."""
    return f"{root.rstrip('/')}/{name}"


def commands(config: str, axes: list[tuple[str, list[str]]], fixed: list[str], root: str,
             launcher: tuple[str, ...] | list[str] = LAUNCH) -> list[tuple[str, list[str]]]:
    """(name, argv) for each grid point, in grid order.

    argv = launcher, --config, the fixed arguments as given, the point's overrides in axis
    order, then --config.workdir=<root>/<name>."""
    check_axes(axes, fixed)
    runs = []
    for point in expand(axes):
        name = run_name(point)
        argv = [*launcher, f"--config={config}", *fixed,
                *(f"--config.{field}={value}" for field, value in point.items()),
                f"--config.workdir={workdir(root, name)}"]
        runs.append((name, argv))
    return runs


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise SweepError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="launch/sweep.py", allow_abbrev=False,
        description="Runs arc_jax.launch once per point of a grid of config overrides. "
                    "Other arguments (--config.x=y) go to every run unchanged.")
    parser.add_argument("--config", help="config file, as for arc_jax.launch: "
                        "configs/<name>.py[:arg]")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="one axis of the grid; repeat for more (the last varies fastest)")
    parser.add_argument("--workdir_root", help="the runs' workdirs are ROOT/<name> "
                        "(default: --config.workdir if given, else workdir/sweeps/<stem>)")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print one shell command per run and run nothing")
    parser.add_argument("--keep_going", action="store_true",
                        help="run every point even after a run failed")
    parser.add_argument("--launcher", default=None,
                        help="the command that starts one run (default: this Python's "
                             "`-m arc_jax.launch`; `python -m arc_jax.launch` with --print), "
                             "e.g. 'bash launch/gpu.sh'")
    return parser


def parse_args(argv: list[str]):
    """(options, axes, fixed arguments, workdir root); raises SweepError for bad input."""
    options, rest = _parser().parse_known_args(argv)
    if not options.config:
        raise SweepError("--config=configs/<name>.py is required")
    path = options.config.partition(":")[0]
    if not pathlib.Path(path).is_file():
        raise SweepError(f"--config={options.config}: no such file {path}")
    for arg in rest:
        if not arg.startswith("-") or arg in ("-", "--"):
            raise SweepError(f"unexpected argument {arg!r}; write overrides as "
                             "--config.field=value")
    axes = [parse_axis(text) for text in options.sweep]
    root = options.workdir_root
    fixed = []
    for arg in rest:
        if override_field(arg) == "workdir":
            if "=" not in arg:
                raise SweepError(f"{arg}: expected --config.workdir=DIR")
            if root is not None:
                raise SweepError("give the workdirs' root with --workdir_root or "
                                 "--config.workdir, not both")
            root = arg.partition("=")[2]
        else:
            fixed.append(arg)
    if root == "":
        raise SweepError("the workdirs' root is empty")
    if root is None:
        root = default_root(options.config)
    return options, axes, fixed, root


def main(argv: list[str] | None = None) -> int:
    try:
        options, axes, fixed, root = parse_args(sys.argv[1:] if argv is None else argv)
        if options.launcher is not None:
            try:
                launcher = shlex.split(options.launcher)
            except ValueError as e:
                raise SweepError(f"--launcher={options.launcher}: {e}") from None
            if not launcher:
                raise SweepError("--launcher is empty")
        else:
            launcher = list(LAUNCH) if options.print_only else [sys.executable, *LAUNCH[1:]]
        runs = commands(options.config, axes, fixed, root, launcher)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if options.print_only:
        for _, argv_ in runs:
            print(shlex.join(argv_))
        return 0

    results: dict[str, int] = {}
    failed = None
    for i, (name, argv_) in enumerate(runs, 1):
        print(f"=== sweep run {i}/{len(runs)}: {name} -> {workdir(root, name)}", flush=True)
        print(f"    {shlex.join(argv_)}", flush=True)
        try:
            code = subprocess.run(argv_, check=False).returncode
        except KeyboardInterrupt:
            print(f"error: interrupted during run {name}", file=sys.stderr)
            return 130
        except OSError as e:  # e.g. a --launcher that does not exist
            print(f"error: run {name} could not start: {e}", file=sys.stderr)
            return 1
        results[name] = code
        if code != 0 and failed is None:
            failed = (name, code)
            if not options.keep_going:
                break

    width = max(len(name) for name, _ in runs)
    print(f"=== sweep summary ({root}): {sum(c == 0 for c in results.values())} of "
          f"{len(runs)} runs succeeded")
    for name, _ in runs:
        status = f"exit code {results[name]}" if name in results else "not run"
        print(f"  {name:<{width}}  {status}")
    if failed is None:
        return 0
    bad = [name for name, code in results.items() if code != 0]
    if options.keep_going and len(bad) > 1:
        print(f"error: {len(bad)} runs failed: {', '.join(bad)}", file=sys.stderr)
    else:
        print(f"error: run {failed[0]} failed with exit code {failed[1]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

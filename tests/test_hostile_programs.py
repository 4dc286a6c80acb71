"""Hostile programs: each gets a typed error (or is harmlessly contained), and
the pool, its workers and the files around it survive.

The programs really run, in the real sandbox. Signals that could hurt this
machine if the sandbox failed are sent as signal 0 (a permission check only)
wherever that proves the same thing.
"""

import pathlib
import textwrap

import numpy as np
import pytest

from arc_jax.execution import ErrorType, ExecutionConfig, ExecutionPool

GRID = np.array([[1, 2], [3, 4]])
PROJECT_DIR = pathlib.Path(__file__).resolve().parent.parent
SENTINEL_TEXT = "untouched\n"
TIMEOUT_S = 0.5


def program(body: str) -> str:
    """A transform whose body is `body`, returning the input when it gets that far."""
    return "import os, sys\n\ndef transform(grid):\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n    return grid\n"


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    path = tmp_path_factory.mktemp("outside") / "sentinel.txt"
    path.write_text(SENTINEL_TEXT)
    return path


@pytest.fixture(scope="module")
def pool():
    config = ExecutionConfig(num_workers=2, timeout_s=TIMEOUT_S, memory_limit_mb=1024, max_output_chars=1000)
    with ExecutionPool(config) as pool:
        yield pool


@pytest.fixture(scope="module")
def original_worker_pids(pool):
    return pool.worker_pids()


def hostile_cases(sentinel: pathlib.Path) -> dict[str, tuple[str, set[str], str]]:
    """name -> (code, acceptable error types, a part of the error message)."""
    permission = ({ErrorType.EXCEPTION}, "PermissionError")
    return {
        "infinite loop": (program("while True:\n    pass"), {ErrorType.TIMEOUT}, ""),
        "sleep": (program("import time\ntime.sleep(60)"), {ErrorType.TIMEOUT}, ""),
        # Address-space growth is either stopped by the limit or, if the page
        # faults are slow, by the timeout first; both are typed and contained.
        "memory bomb": (program("x = [1]\nwhile True:\n    x.append(x * 2)"), {ErrorType.MEMORY, ErrorType.TIMEOUT}, ""),
        "one huge allocation": (program("x = np.ones(2**31, dtype=np.uint8)"), {ErrorType.MEMORY}, "MemoryError"),
        "fork bomb": (program("while True:\n    os.fork()"), *permission),
        "os.system": (program(f"os.system('echo pwned > {sentinel}')"), *permission),
        "subprocess": (program("import subprocess\nsubprocess.run(['true'])"), *permission),
        "exec a binary": (program("os.execv('/bin/true', ['true'])"), *permission),
        "write outside": (program(f"open({str(sentinel)!r}, 'w').write('pwned')"), *permission),
        "append outside": (program(f"open({str(sentinel)!r}, 'a').write('pwned')"), *permission),
        "delete outside": (program(f"os.remove({str(sentinel)!r})"), *permission),
        "rename outside": (program(f"os.rename({str(sentinel)!r}, {str(sentinel) + '.moved'!r})"), *permission),
        # rmdir of a non-empty directory would fail anyway; EPERM (not ENOTEMPTY) shows the sandbox stopped it.
        "delete project dir": (program(f"os.rmdir({str(PROJECT_DIR / 'arc_jax')!r})"), *permission),
        "write inside workdir": (program("open('scratch.txt', 'w').write('x')"), *permission),
        "delete inside workdir": (program("os.remove('scratch.txt')"), *permission),
        "mkdir inside workdir": (program("os.mkdir('sub')"), *permission),
        "socket": (program("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)"), *permission),
        "unix socket": (program("import socket\nsocket.socket(socket.AF_UNIX)"), *permission),
        "kill parent": (program("os.kill(os.getppid(), 9)"), *permission),
        "signal everyone": (program("os.kill(-1, 0)"), *permission),
        "leave the session": (program("os.setsid()"), *permission),
        "raise limits": (program("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"), {ErrorType.EXCEPTION}, ""),
        "deep recursion": (
            program("sys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)"),
            {ErrorType.CRASH, ErrorType.TIMEOUT, ErrorType.EXCEPTION, ErrorType.MEMORY},
            "",
        ),
        "segfault": (program("import ctypes\nctypes.string_at(0)"), {ErrorType.CRASH}, "SIGSEGV"),
        "abort": (program("os.abort()"), {ErrorType.CRASH}, "SIGABRT"),
        "sys.exit": (program("sys.exit(0)"), {ErrorType.EXIT}, "SystemExit"),
        "os._exit": (program("os._exit(0)"), {ErrorType.EXIT}, "status 0"),
        "keyboard interrupt": (program("raise KeyboardInterrupt"), {ErrorType.EXCEPTION}, "KeyboardInterrupt"),
        "huge output": (program("return np.zeros((10_000, 10_000), dtype=np.int64)"), {ErrorType.INVALID_OUTPUT}, "(10000, 10000)"),
        "generator": (program("return (row for row in grid)"), {ErrorType.INVALID_OUTPUT}, "generator"),
        "forged result bytes": (program("os.write(3, b'\\xff' * 64)"), {ErrorType.CRASH}, "not a result"),
        "closed result pipe": (program("os.close(3)"), {ErrorType.EXIT}, "before sending"),
        "endless printing": (program("while True:\n    print('spam' * 1000)"), {ErrorType.TIMEOUT}, ""),
        "runaway thread": (
            program("import threading\nthreading.Thread(target=lambda: os.fork(), daemon=True).start()\nwhile True:\n    pass"),
            {ErrorType.TIMEOUT},
            "",
        ),
    }


@pytest.fixture(scope="module")
def hostile_results(pool, original_worker_pids, sentinel):
    cases = hostile_cases(sentinel)
    results = pool.run([(code, [GRID]) for code, _, _ in cases.values()])
    return dict(zip(cases, results))


@pytest.mark.parametrize("name", list(hostile_cases(pathlib.Path("sentinel.txt"))))
def test_hostile_program_gets_a_typed_error(hostile_results, sentinel, name):
    _, error_types, message_part = hostile_cases(sentinel)[name]
    result = hostile_results[name]
    assert result.error_type in error_types, result
    assert message_part in result.error_message, result.error_message
    assert result.outputs == (None,)


def test_allowed_but_contained_programs_do_no_harm(pool, sentinel):
    huge_print = "def transform(grid):\n    print('x' * 10**7)\n    return grid\n"
    vandal = "import builtins\nbuiltins.len = None\nbuiltins.print = None\nnp.flip = None\ndef transform(grid):\n    return grid\n"
    results = pool.run([(huge_print, [GRID]), (vandal, [GRID])])
    assert results[0].error_type is None
    assert len(results[0].stdout) < 1100 and results[0].stdout.endswith(f"[truncated {10**7 + 1 - 1000} chars]")
    assert results[1].error_type is None
    for result in results:
        np.testing.assert_array_equal(result.outputs[0], GRID)


def test_no_file_outside_the_sandbox_changed(hostile_results, sentinel):
    assert sentinel.read_text() == SENTINEL_TEXT
    assert sorted(path.name for path in sentinel.parent.iterdir()) == ["sentinel.txt"]
    assert (PROJECT_DIR / "arc_jax" / "execution" / "__init__.py").is_file()


def test_workers_survive_and_later_results_are_correct(pool, hostile_results, original_worker_pids):
    assert pool.worker_pids() == original_worker_pids  # no worker died, not even from "kill parent"
    jobs = [(f"def transform(grid):\n    return np.roll(grid, {k}, axis=1)\n", [GRID, GRID.T]) for k in range(40)]
    results = pool.run(jobs)
    assert len(results) == len(jobs)
    even = ([[1, 2], [3, 4]], [[1, 3], [2, 4]])
    odd = ([[2, 1], [4, 3]], [[3, 1], [4, 2]])
    for k, result in enumerate(results):
        assert result.error_type is None, result
        for output, expected in zip(result.outputs, odd if k % 2 else even):
            np.testing.assert_array_equal(output, expected)

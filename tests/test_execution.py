"""Tests of the sandboxed execution pool and of output validation.

Everything runs for real: worker processes, forked sandboxed children, the
project's DSL. Expected values are written by hand.
"""

import os
import random
import signal
import textwrap
import time

import numpy as np
import pytest

from arc_jax.execution import (
    ErrorType,
    ExecutionConfig,
    ExecutionPool,
    InvalidOutputError,
    WorkerStartError,
    validate_output,
)

GRID = np.array([[1, 2, 3], [4, 5, 6]])


def program(source: str) -> str:
    return textwrap.dedent(source).strip() + "\n"


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(ExecutionConfig(num_workers=1, timeout_s=0.5, memory_limit_mb=1024)) as pool:
        yield pool


# ------------------------------------------------------------------ validate_output


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.array([[1, 2], [3, 4]], dtype=np.int8), [[1, 2], [3, 4]]),
        ([[0, 9], [9, 0]], [[0, 9], [9, 0]]),
        (((5,),), [[5]]),
        (np.array([[1.0, 2.0]]), [[1, 2]]),
        (np.zeros((30, 30), dtype=np.uint8), [[0] * 30] * 30),
        # What the reference's np.array(x, dtype=int) accepts too:
        (np.array([[True, False]]), [[1, 0]]),
        (np.array([[1, np.int64(2)], [True, 3.0]], dtype=object), [[1, 2], [1, 3]]),
        ([[np.uint8(4), False], [2.0, np.float32(5)]], [[4, 0], [2, 5]]),
        ([np.array([1, 2]), np.array([3.0, 4.0])], [[1, 2], [3, 4]]),
    ],
)
def test_validate_output_accepts_grids(value, expected):
    grid = validate_output(value)
    assert grid.dtype == np.int64
    np.testing.assert_array_equal(grid, np.array(expected))


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "NoneType"),
        ((x for x in [[1]]), "generator"),
        (3, "int"),
        ("12", "str"),
        (np.array([[0.5, 1.0]]), "non-integer"),
        (np.array([[np.nan]]), "non-integer"),
        (np.zeros((2, 2, 2), dtype=int), "2 dimensions"),
        (np.zeros((3,), dtype=int), "2 dimensions"),
        ([[1, 2], [3]], "different lengths"),
        ([1, 2], "row 0 is a int"),
        ([], "0 rows"),
        (np.zeros((0, 3), dtype=int), "both sides in 1..30"),
        (np.zeros((31, 2), dtype=int), "both sides in 1..30"),
        ([[0] * 31], "31 cells"),
        (np.array([[10]]), "0-9"),
        (np.array([[-1]]), "0-9"),
        (np.array([[None]]), "cell 0 is a NoneType"),
        ([[1, None]], "row 0, cell 1 is a NoneType"),
        (np.array([["1"]], dtype=object), "cell 0 is a str"),
        (np.array([[1.5]], dtype=object), "non-integer"),
        ([[1.0, float("nan")]], "non-integer"),
        (np.array([[10**30]], dtype=object), "0-9"),
        (np.array([["1", "2"]]), "dtype <U1"),
        (np.array([[1 + 0j]]), "dtype complex128"),
        (np.ma.array([[1, 2]]), "MaskedArray"),
    ],
)
def test_validate_output_rejects_non_grids(value, reason):
    with pytest.raises(InvalidOutputError, match=reason):
        validate_output(value)


def test_validate_output_max_side_is_configurable():
    assert validate_output(np.zeros((31, 31), dtype=int), max_grid_side=31).shape == (31, 31)
    with pytest.raises(InvalidOutputError, match="1..4"):
        validate_output(np.zeros((5, 1), dtype=int), max_grid_side=4)


def test_validate_output_rejects_huge_output_by_shape_alone():
    huge = np.broadcast_to(np.int8(3), (10_000, 10_000))  # no 100 MB allocation needed
    with pytest.raises(InvalidOutputError, match=r"\(10000, 10000\)"):
        validate_output(huge)


# ------------------------------------------------------------------ running programs


def test_runs_transform_on_each_input_in_order(pool):
    code = program("""
        from common import *

        def transform(input_grid):
            return np.flip(input_grid, axis=0)
    """)
    second = np.array([[7], [8], [9]])
    result = pool.submit(code, [GRID, second]).result()
    assert result.error_type is None and result.error_message == ""
    np.testing.assert_array_equal(result.outputs[0], [[4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(result.outputs[1], [[9], [8], [7]])
    assert result.duration_s > 0


def test_common_is_the_projects_dsl(pool):
    code = program("""
        from common import *

        def transform(grid):
            objects = find_connected_components(grid, background=Color.BLACK, monochromatic=True)
            return np.full((1, len(objects)), Color.RED)
    """)
    grid = np.array([[0, 1, 1], [0, 0, 0], [3, 0, 3]])  # three 4-connected objects
    result = pool.submit(code, [grid]).result()
    assert result.error_type is None, result.error_message
    np.testing.assert_array_equal(result.outputs[0], [[2, 2, 2]])


def test_np_random_and_typing_are_available_without_import(pool):
    code = program("""
        def transform(grid: List[List[int]]) -> np.ndarray:
            return np.array([[random.randint(0, 9), np.random.randint(0, 10)]])
    """)
    random.seed(0)
    expected_python = random.randint(0, 9)
    np.random.seed(0)
    expected_numpy = np.random.randint(0, 10)
    first, second = pool.run([(code, [GRID, GRID]), (code, [GRID])])
    # Seeds are reset before every input, so every call sees the same numbers.
    for grid in (*first.outputs, *second.outputs):
        np.testing.assert_array_equal(grid, [[expected_python, expected_numpy]])


def test_no_state_leaks_between_programs(pool):
    vandal = program("""
        from common import *
        import builtins

        Color.RED = 7
        Color.ALL_COLORS.clear()
        np.flip = None
        builtins.len = None
        random.seed(123)

        def transform(grid):
            return grid
    """)
    probe = program("""
        from common import *

        def transform(grid):
            return np.array([[Color.RED, len(Color.ALL_COLORS) % 10, int(np.flip(grid)[0, 0])]])
    """)
    results = pool.run([(vandal, [GRID]), (probe, [GRID])])
    assert results[0].error_type is None
    assert results[1].error_type is None, results[1].error_message
    np.testing.assert_array_equal(results[1].outputs[0], [[2, 0, 6]])  # 10 colours -> 10 % 10 == 0


def test_each_call_gets_its_own_copy_of_the_input(pool):
    code = program("""
        def transform(grid):
            grid[0, 0] = 9
            return grid
    """)
    caller_grid = GRID.copy()
    result = pool.submit(code, [caller_grid, caller_grid]).result()
    np.testing.assert_array_equal(caller_grid, GRID)
    for output in result.outputs:
        np.testing.assert_array_equal(output, [[9, 2, 3], [4, 5, 6]])


def test_inputs_arrive_as_untransposed_int_arrays(pool):
    code = program("""
        def transform(grid):
            assert isinstance(grid, np.ndarray) and grid.dtype.kind == "i", (type(grid), grid.dtype)
            return np.array([[grid.shape[0], grid.shape[1], grid[0, 2]]])
    """)
    result = pool.submit(code, [[[1, 2, 3], [4, 5, 6]]]).result()  # a list of lists is accepted as input
    assert result.error_type is None, result.error_message
    np.testing.assert_array_equal(result.outputs[0], [[2, 3, 3]])


def test_a_failing_input_does_not_cost_the_others(pool):
    code = program("""
        def transform(grid):
            return grid * (1 // (grid.shape[0] - 1))
    """)
    result = pool.submit(code, [np.array([[4]]), np.array([[4], [6]])]).result()
    assert result.outputs[0] is None
    np.testing.assert_array_equal(result.outputs[1], [[4], [6]])
    assert result.error_type == ErrorType.EXCEPTION
    assert "input 0" in result.error_message and "ZeroDivisionError" in result.error_message


def test_list_output_is_converted(pool):
    result = pool.submit("def transform(grid):\n    return [[1, 2], [3, 4]]\n", [GRID]).result()
    assert result.error_type is None
    np.testing.assert_array_equal(result.outputs[0], [[1, 2], [3, 4]])


def test_main_is_the_fallback_entry_point(pool):
    result = pool.submit("def main(grid):\n    return grid.T\n", [GRID]).result()
    assert result.error_type is None
    np.testing.assert_array_equal(result.outputs[0], [[1, 4], [2, 5], [3, 6]])


@pytest.mark.parametrize(
    "code, error_type, message_part",
    [
        ("def transform(grid:\n", ErrorType.SYNTAX, "SyntaxError"),
        ("x = 1\n", ErrorType.NO_ENTRY_POINT, "'transform'"),
        ("transform = 3\n", ErrorType.NO_ENTRY_POINT, "'transform'"),
        ("raise ValueError('at import')\n", ErrorType.EXCEPTION, "ValueError: at import"),
        ("def transform(grid):\n    raise KeyboardInterrupt\n", ErrorType.EXCEPTION, "KeyboardInterrupt"),
        ("import sys\ndef transform(grid):\n    sys.exit(2)\n", ErrorType.EXIT, "SystemExit: 2"),
        ("def transform(grid):\n    exit()\n", ErrorType.EXIT, "SystemExit"),
        ("import os\ndef transform(grid):\n    os._exit(3)\n", ErrorType.EXIT, "status 3"),
        ("def transform(grid):\n    return grid * 5\n", ErrorType.INVALID_OUTPUT, "0-9"),
        ("def transform(grid):\n    return None\n", ErrorType.INVALID_OUTPUT, "NoneType"),
        ("def transform(grid):\n    while True:\n        pass\n", ErrorType.TIMEOUT, "0.5 s"),
        ("def transform(grid):\n    return np.ones(2**31, dtype=np.uint8)\n", ErrorType.MEMORY, "MemoryError"),
        ("import signal, os\ndef transform(grid):\n    os.kill(os.getpid(), signal.SIGSEGV)\n", ErrorType.CRASH, "SIGSEGV"),
    ],
)
def test_failures_are_typed(pool, code, error_type, message_part):
    result = pool.submit(code, [GRID, GRID]).result()
    assert result.error_type == error_type, result
    assert message_part in result.error_message
    assert result.outputs == (None, None)


def test_timeout_is_enforced_from_outside(pool):
    # time.sleep uses no CPU, so only the worker's wall-clock backstop (5 x timeout_s) stops it.
    result = pool.submit("import time\ndef transform(grid):\n    time.sleep(30)\n", [GRID]).result()
    assert result.error_type == ErrorType.TIMEOUT and "wall-clock" in result.error_message
    assert 5 * pool.config.timeout_s <= result.duration_s < 5 * pool.config.timeout_s + 1


def test_stdout_and_stderr_are_captured_and_truncated():
    code = program("""
        import sys
        print("to stdout")
        def transform(grid):
            print("to stderr", file=sys.stderr)
            print("x" * 100)
            return grid
    """)
    with ExecutionPool(ExecutionConfig(num_workers=1, max_output_chars=30)) as pool:
        result = pool.submit(code, [GRID]).result()
    assert result.error_type is None
    assert result.stdout.startswith("to stdout\nto stderr\n" + "x" * 10)
    assert result.stdout.endswith("[truncated 91 chars]")  # 10 + 10 + 101 characters written, 30 kept


def test_entry_point_is_configurable():
    code = "def solve(grid):\n    return grid[:1]\n\ndef transform(grid):\n    return grid\n"
    with ExecutionPool(ExecutionConfig(num_workers=1, entry_point="solve")) as pool:
        result = pool.submit(code, [GRID]).result()
    np.testing.assert_array_equal(result.outputs[0], [[1, 2, 3]])


def test_common_path_points_star_import_at_another_file(tmp_path):
    (tmp_path / "common.py").write_text("import numpy as np\nMARK = 4\ndef _private():\n    pass\n")
    code = program("""
        from common import *

        def transform(grid):
            return np.array([[MARK, int("_private" in globals())]])
    """)
    with ExecutionPool(ExecutionConfig(num_workers=1, common_path=str(tmp_path / "common.py"))) as pool:
        result = pool.submit(code, [GRID]).result()
    assert result.error_type is None, result.error_message
    np.testing.assert_array_equal(result.outputs[0], [[4, 0]])


def test_a_missing_or_broken_common_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        ExecutionPool(ExecutionConfig(num_workers=1, common_path=str(tmp_path / "nowhere.py")))
    (tmp_path / "common.py").write_text("raise ImportError('broken DSL')\n")
    with pytest.raises(WorkerStartError, match="broken DSL"):
        ExecutionPool(ExecutionConfig(num_workers=1, common_path=str(tmp_path / "common.py")))


@pytest.mark.parametrize(
    "inputs, message",
    [([np.zeros((2, 2, 2), dtype=int)], "input 0 has shape"), ([GRID, np.array([[0.5]])], "input 1 .* float64")],
)
def test_bad_inputs_are_refused_at_submit(pool, inputs, message):
    with pytest.raises(ValueError, match=message):
        pool.submit("def transform(grid):\n    return grid\n", inputs)


@pytest.mark.parametrize("field, value", [("timeout_s", 0), ("num_workers", -1), ("entry_point", "not a name")])
def test_config_out_of_range_is_refused(field, value):
    with pytest.raises(ValueError, match=f"ExecutionConfig.{field}"):
        ExecutionConfig(**{field: value})


def test_submit_returns_before_the_program_finishes(pool):
    future = pool.submit("import time\ndef transform(grid):\n    time.sleep(0.2)\n    return grid\n", [GRID])
    assert not future.done()
    assert future.result().error_type is None


def test_a_dead_worker_is_replaced_and_its_job_still_answered():
    sleeper = "import time\ndef transform(grid):\n    time.sleep(0.5)\n    return grid\n"
    with ExecutionPool(ExecutionConfig(num_workers=1, timeout_s=5)) as pool:
        [old_pid] = pool.worker_pids()
        future = pool.submit(sleeper, [GRID])
        time.sleep(0.2)
        os.kill(old_pid, signal.SIGKILL)
        result = future.result()
        assert result.error_type == ErrorType.CRASH and "worker" in result.error_message
        after = pool.submit("def transform(grid):\n    return grid[::-1]\n", [GRID]).result()
        [new_pid] = pool.worker_pids()
    assert after.error_type is None
    np.testing.assert_array_equal(after.outputs[0], GRID[::-1])
    assert new_pid != old_pid


def test_close_answers_every_submitted_job_then_refuses_more():
    pool = ExecutionPool(ExecutionConfig(num_workers=2))
    futures = [pool.submit(f"def transform(grid):\n    return grid * 0 + {i}\n", [GRID]) for i in range(10)]
    pool.close()
    assert all(future.done() for future in futures)
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result().outputs[0], np.full((2, 3), i))
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("def transform(grid):\n    return grid\n", [GRID])


class _Liar:
    """A cell that answers every question the way a grader might ask it."""

    def __eq__(self, other):
        return True

    def __index__(self):
        return 3

    def __int__(self):
        return 3

    def __array__(self, dtype=None, copy=None):
        return np.array(3)


class _Int(int):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("cell", [_Liar(), _Int(3), np.array([[3]])])
def test_validate_output_refuses_cells_with_their_own_value_tricks(cell):
    for grid in ([[cell]], np.array([[None]], dtype=object)):
        if isinstance(grid, np.ndarray):
            grid[0, 0] = cell
        with pytest.raises(InvalidOutputError, match=r"cell 0 is a (_Liar|_Int|ndarray)"):
            validate_output(grid)


def test_an_object_grid_program_is_graded_as_the_reference_grades_it(pool):
    # Builds its answer in an object array, as some BARC programs do; the reference grades it
    # with np.array(x, dtype=int) and so does the pool, in the program's own process.
    code = ("import numpy as np\n"
            "def transform(grid):\n"
            "    out = np.zeros(grid.shape, dtype=object)\n"
            "    out[:, :] = grid[::-1]\n"
            "    return out\n")
    grid = np.array([[1, 2], [3, 4]])
    result = pool.submit(code, [grid]).result()
    assert result.error_type is None, result.error_message
    np.testing.assert_array_equal(result.outputs[0], grid[::-1])

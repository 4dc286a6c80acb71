"""BARC-style programs run against `common` as a top-level module, on real ARC tasks.

The programs are written in the style the BARC model produces (`from common
import *`, `Color.PURPLE`, `transform(input_grid)`), and each one solves its
task only if the DSL calls it makes behave as documented.
"""

import json
import subprocess
import sys

import pytest

from arc_jax.data import load_tasks
from arc_jax.dsl import COMMON_PATH

PROGRAMS = {
    # Crop the single object.
    "1cf80156": """
from common import *

import numpy as np
from typing import *

def transform(input_grid):
    return crop(input_grid, background=Color.BLACK)
""",
    # Two copies of the input side by side.
    "a416b8f3": """
from common import *

import numpy as np
from typing import *

def transform(input_grid):
    width, height = input_grid.shape
    output_grid = np.zeros((width, 2 * height), dtype=int)
    blit(output_grid, input_grid, 0, 0)
    blit(output_grid, input_grid, 0, height)
    return output_grid
""",
    # Pink regions on an orange background turn red.
    "b1948b0a": """
from common import *

import numpy as np
from typing import *

def transform(input_grid):
    output_grid = np.copy(input_grid)
    for obj in find_connected_components(input_grid, background=Color.ORANGE):
        obj[obj == Color.PINK] = Color.RED
        blit_object(output_grid, obj, background=Color.ORANGE)
    return output_grid
""",
    # A red cell between two blue cells one apart.
    "a699fb00": """
from common import *

import numpy as np
from typing import *

def transform(input_grid):
    output_grid = np.copy(input_grid)
    width, height = input_grid.shape
    for x in range(width):
        for y in range(height - 2):
            if input_grid[x, y] == Color.BLUE and input_grid[x, y + 2] == Color.BLUE:
                draw_line(output_grid, x, y + 1, length=1, direction=(0, 1), color=Color.RED,
                          stop_at_color=[Color.BLUE])
    return output_grid
""",
    # A fixed coloured cross around every blue pixel, clipped at the edges.
    "d364b489": """
from common import *

import numpy as np
from typing import *

def transform(input_grid):
    output_grid = np.copy(input_grid)
    cross = np.array([[Color.BLACK, Color.RED, Color.BLACK],
                      [Color.ORANGE, Color.BLUE, Color.PINK],
                      [Color.BLACK, Color.PURPLE, Color.BLACK]])
    for x, y in np.argwhere(input_grid == Color.BLUE):
        blit_sprite(output_grid, cross, x - 1, y - 1)
    return output_grid
""",
    # Enclosed black cells become yellow.
    "00d62c1b": """
from common import *

import numpy as np
from typing import *

def transform(input_grid):
    output_grid = np.copy(input_grid)
    enclosed = object_interior(input_grid, background=Color.BLACK) & (input_grid == Color.BLACK)
    output_grid[enclosed] = Color.YELLOW
    return output_grid
""",
}

_RUNNER = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
jobs = json.load(sys.stdin)
results = {}
for task_id, job in jobs.items():
    namespace = {}
    exec(job["program"], namespace)
    results[task_id] = [  # graded as the reference grades: np.array(output, dtype=int)
        np.array(namespace["transform"](np.array(grid)), dtype=int).tolist()
        for grid in job["inputs"]]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs():
    tasks = load_tasks("arc-agi-1/training")
    pairs = {task_id: tasks[task_id].train + tasks[task_id].test for task_id in PROGRAMS}
    jobs = {task_id: {"program": program,
                      "inputs": [pair.input.tolist() for pair in pairs[task_id]]}
            for task_id, program in PROGRAMS.items()}
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(COMMON_PATH.parent)],
                            input=json.dumps(jobs), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)
    return {task_id: (outputs[task_id], [pair.output.tolist() for pair in pairs[task_id]])
            for task_id in PROGRAMS}


@pytest.mark.parametrize("task_id", sorted(PROGRAMS))
def test_program_solves_every_pair_of_its_task(runs, task_id):
    predicted, expected = runs[task_id]
    assert len(predicted) == len(expected) >= 3
    assert predicted == expected


# An object-array answer (as some BARC programs build theirs): right for the reference.
PROGRAMS_OBJECT_OUTPUT = {
    "a416b8f3": """
from common import *

import numpy as np

def transform(input_grid):
    out = np.zeros((input_grid.shape[0], 2 * input_grid.shape[1]), dtype=object)
    out[:, :input_grid.shape[1]] = input_grid
    out[:, input_grid.shape[1]:] = input_grid
    return out
""",
}


def test_the_sandboxed_pool_grades_every_program_as_direct_execution(runs):
    """Each program's outputs through the pool (sandboxed, converted in the program's
    process) equal those of the plain run above, graded with np.array(x, dtype=int)."""
    from arc_jax.execution import ExecutionConfig, ExecutionPool

    tasks = load_tasks("arc-agi-1/training")
    with ExecutionPool(ExecutionConfig(num_workers=2)) as pool:
        for programs in (PROGRAMS, PROGRAMS_OBJECT_OUTPUT):
            for task_id, program in programs.items():
                pairs = tasks[task_id].train + tasks[task_id].test
                result = pool.submit(program, [pair.input for pair in pairs]).result()
                assert result.error_type is None, (task_id, result.error_message)
                assert [o.tolist() for o in result.outputs] == runs[task_id][0], task_id

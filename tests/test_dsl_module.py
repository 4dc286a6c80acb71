"""The `common` module contract: what star-import exports, how it loads, `Color`."""

import json
import random as stdlib_random
import subprocess
import sys

import numpy as np
import pytest

from arc_jax.dsl import COMMON_PATH, common

# Every public name of the DSL, written out from the reference (section 1, 4.1, 5).
EXPECTED_STAR_EXPORTS = {
    "np", "random",
    "Color", "Symmetry", "TranslationalSymmetry", "MirrorSymmetry",
    "flood_fill", "draw_line", "blit", "blit_object", "blit_sprite",
    "randomly_scatter_points", "scale_sprite", "scale_pattern", "translate",
    "find_connected_components", "detect_objects", "bounding_box", "bounding_box_mask",
    "object_position", "object_colors", "crop", "collision", "contact",
    "check_between_objects", "object_interior", "object_boundary", "object_neighbors",
    "is_contiguous", "randomly_spaced_indices", "random_free_location_for_sprite",
    "random_free_location_for_object", "random_sprite", "generate_sprite",
    "apply_symmetry", "apply_diagonal_symmetry", "orbit",
    "detect_translational_symmetry", "detect_mirror_symmetry", "detect_rotational_symmetry",
    "show_colored_grid", "visualize",
    # Legacy names.
    "random_scatter_points", "generate_position_has_interval", "find_monochromatic_sprite",
    "calc_neighbors",
}

_STANDALONE_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import common
heavy = sorted(m for m in ("scipy", "matplotlib", "arc_jax") if m in sys.modules)
namespace = {}
exec("from common import *", namespace)
namespace.pop("__builtins__")
print(json.dumps({
    "names": sorted(namespace),
    "heavy": heavy,
    "np_is_numpy": namespace["np"].__name__ == "numpy",
    "random_is_stdlib": namespace["random"].__name__ == "random",
    "file": common.__file__,
}))
"""


@pytest.fixture(scope="module")
def standalone():
    """Import common.py as a top-level module `common` in a clean interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _STANDALONE_PROBE, str(COMMON_PATH.parent)],
        capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def test_star_import_exports_exactly_the_reference_names(standalone):
    assert set(standalone["names"]) == EXPECTED_STAR_EXPORTS


def test_star_import_gives_numpy_and_stdlib_random(standalone):
    assert standalone["np_is_numpy"] and standalone["random_is_stdlib"]


def test_standalone_import_pulls_in_nothing_heavy_nor_the_package(standalone):
    assert standalone["heavy"] == []
    assert standalone["file"].endswith("common.py")


def test_private_names_and_rotational_class_are_not_exported():
    namespace = {}
    exec("from arc_jax.dsl.common import *", namespace)
    assert "RotationalSymmetry" not in namespace
    assert "_score_symmetry" not in namespace
    assert not any(name.startswith("_") for name in namespace if name != "__builtins__")


def test_module_has_no_all():
    assert not hasattr(common, "__all__")


def test_exported_np_and_random_are_the_real_modules():
    assert common.np is np
    assert common.random is stdlib_random


def test_color_values_and_aliases():
    c = common.Color
    assert (c.BLACK, c.BLUE, c.RED, c.GREEN, c.YELLOW) == (0, 1, 2, 3, 4)
    assert (c.GREY, c.GRAY, c.PINK, c.ORANGE) == (5, 5, 6, 7)
    assert (c.TEAL, c.PURPLE, c.MAROON, c.BROWN) == (8, 8, 9, 9)
    assert (c.TRANSPARENT, c.BACKGROUND) == (0, 0)
    assert c.ALL_COLORS == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert c.NOT_BLACK == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert type(c.ALL_COLORS) is list and type(c.NOT_BLACK) is list


def test_colors_are_plain_ints_usable_in_arithmetic():
    assert type(common.Color.RED) is int
    assert common.Color.RED + common.Color.GREEN == 5

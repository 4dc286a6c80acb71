"""The `common` DSL that generated programs import.

`common.py` is self-contained (stdlib, numpy and, lazily, scipy) so that the
program sandbox can load it as the top-level module `common`; COMMON_PATH is
that file.
"""

import pathlib

COMMON_PATH = pathlib.Path(__file__).with_name("common.py")

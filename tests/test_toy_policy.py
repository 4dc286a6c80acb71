"""The toy policy: supervised warm start, the cached Hugging Face-style folder, demo tasks.

The model is tiny here so that builds take seconds; the folder is loaded back through the
same paths as the real checkpoint (`from_pretrained`, `AutoTokenizer`) and through
transformers' own `LlamaForCausalLM`.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoTokenizer, LlamaForCausalLM

from arc_jax import prompts
from arc_jax.data import load_tasks
from arc_jax.model import Llama, LlamaConfig, Numerics, from_pretrained
from arc_jax.toy import MARKER_FILE, ToyPolicyConfig, build_toy_policy, demo_tasks, read_build_info
from arc_jax.toy.sft import Example, SftConfig, completion_loss, make_example, pad_batch, train
from arc_jax.toy.synthetic import synthetic_tasks
from arc_jax.prompts import stop_token_ids

TINY = ToyPolicyConfig(
    hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
    vocab_size=500, max_seq_len=768, max_prompt_tokens=400, num_synthetic_tasks=96,
    sft=SftConfig(steps=3, batch_size=4, warmup_steps=1, length_multiple=768),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_toy_policy(tmp_path_factory.mktemp("toy") / "policy", TINY, seed=0)


def test_pad_batch_masks_completion_tokens_only():
    examples = [Example((5, 6, 7, 8), prompt_length=2), Example((9, 10, 11), prompt_length=1)]
    tokens, mask = pad_batch(examples, multiple=3, pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 8, 0, 0], [9, 10, 11, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]])


def test_completion_loss_ignores_prompt_and_padding():
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    model = Llama(config, numerics=Numerics(param_dtype=jnp.float32), rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 2, 3, 4, 0, 0]])
    mask = jnp.array([[0, 0, 1, 1, 0, 0]], jnp.float32)
    log_probs = np.asarray(jax.nn.log_softmax(model(tokens), axis=-1))
    # Tokens 3 and 4 are predicted from positions 1 and 2.
    expected = -(log_probs[0, 1, 3] + log_probs[0, 2, 4]) / 2
    np.testing.assert_allclose(completion_loss(model, tokens, mask), expected, rtol=1e-5)
    changed = tokens.at[0, 0].set(7).at[0, 5].set(9)  # a prompt token earlier, padding later
    assert not np.isclose(completion_loss(model, changed, mask), expected)
    np.testing.assert_allclose(completion_loss(model, tokens.at[0, 5].set(9), mask), expected,
                               rtol=1e-5)


def test_short_sft_run_lowers_the_loss(built):
    tokenizer = AutoTokenizer.from_pretrained(built)
    examples = [make_example(tokenizer, task, program, TINY.prompt_config, seed=i)
                for i, (task, program) in enumerate(synthetic_tasks(8, seed=1))]
    model = Llama(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16),
                  numerics=Numerics(param_dtype=jnp.float32), rngs=nnx.Rngs(0))
    tokens, mask = pad_batch(examples, 128, tokenizer.pad_token_id)
    before = float(completion_loss(model, tokens, mask))
    config = SftConfig(steps=15, batch_size=8, learning_rate=1e-2, warmup_steps=0,
                       length_multiple=128)
    losses = train(model, examples, config, tokenizer.pad_token_id, seed=0)
    after = float(completion_loss(model, tokens, mask))
    assert len(losses) == 15
    assert after < before - 1.0, (before, after)


def test_folder_loads_like_a_hugging_face_checkpoint(built):
    files = set(os.listdir(built))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", MARKER_FILE} <= files
    tokenizer = AutoTokenizer.from_pretrained(built)
    model = from_pretrained(built, dtype=jnp.float32)
    assert model.config.vocab_size == len(tokenizer) <= TINY.vocab_size
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    assert model.config.eos_token_id == stop_token_ids(tokenizer)

    reference = LlamaForCausalLM.from_pretrained(built, dtype=torch.float32).eval()
    ids = tokenizer("Red Blue\nGreen", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.array([ids]))), expected, atol=1e-4)


def test_build_info_records_settings_and_losses(built):
    info = read_build_info(built)
    assert info["done"] is True
    assert info["settings"]["config"]["sft"]["steps"] == 3
    assert len(info["sft_losses"]) == 3
    assert info["build_seconds"] > 0


def test_cache_is_reused_and_rebuilt_when_a_setting_changes(built, tmp_path):
    directory = tmp_path / "policy"
    shutil.copytree(built, directory)
    weights = directory / "model.safetensors"
    first_build = os.stat(weights).st_mtime_ns
    first_info = read_build_info(directory)

    build_toy_policy(directory, TINY, seed=0)
    assert os.stat(weights).st_mtime_ns == first_build
    assert read_build_info(directory) == first_info

    changed = dataclasses.replace(TINY, sft=dataclasses.replace(TINY.sft, steps=2))
    build_toy_policy(directory, changed, seed=0)
    assert os.stat(weights).st_mtime_ns != first_build
    assert len(read_build_info(directory)["sft_losses"]) == 2

    # A build that never wrote its marker (e.g. interrupted) does not count as finished.
    os.remove(directory / MARKER_FILE)
    assert read_build_info(directory) is None
    (directory / MARKER_FILE).write_text(json.dumps({"settings": {}, "done": False}))
    assert read_build_info(directory) is None


def test_demo_tasks_keep_solvable_tasks_with_short_prompts(built):
    tokenizer = AutoTokenizer.from_pretrained(built)
    tasks = load_tasks("arc-agi-1/training")
    demo = demo_tasks(tasks, tokenizer, TINY)
    assert {"67a3c6ac", "6150a2bd", "b1948b0a", "7fe24cdd"} <= set(demo)
    assert "007bbfb7" not in demo  # not a whole-grid transformation of the family
    for task in demo.values():
        text = prompts.render_prompt(task, dataclasses.replace(TINY.prompt_config, test_index=0))
        assert prompts.prompt_num_tokens(tokenizer, text) <= TINY.max_prompt_tokens
    shorter = demo_tasks(tasks, tokenizer, dataclasses.replace(TINY, max_prompt_tokens=150))
    assert set(shorter) < set(demo)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ToyPolicyConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        ToyPolicyConfig(max_prompt_tokens=2000, max_seq_len=1024)
    with pytest.raises(ValueError, match="style"):
        ToyPolicyConfig(prompt_style="chat")


def test_synthetic_tasks_longer_than_the_model_are_refused(tmp_path):
    short = dataclasses.replace(TINY, max_seq_len=200, max_prompt_tokens=100)
    with pytest.raises(ValueError, match="more than max_seq_len=200"):
        build_toy_policy(tmp_path / "policy", short, seed=0)
    assert read_build_info(tmp_path / "policy") is None

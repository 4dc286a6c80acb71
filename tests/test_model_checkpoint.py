"""Checkpoint loading (sharded, streamed), merged export and PEFT adapters, against
transformers and peft on CPU."""

import json
import shutil
import weakref

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx

from arc_jax.model import (
    CheckpointError, ConfigError, LoraConfig, LoraParam, Numerics, from_pretrained,
    load_peft_adapter, save_merged, save_peft_adapter,
)
from arc_jax.model import checkpoint as checkpoint_module
from arc_jax.model.safetensors_io import SafetensorsReader
from test_model import SHAPES, hf_logits, make_hf_model, padded_batch, randomize_lora

EXACT = Numerics(param_dtype=jnp.float32, precision="highest")
ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """An untied GQA model saved as one safetensors file."""
    model = make_hf_model(seed=5, **SHAPES["mqa_untied_llama3_wide_heads"])
    path = tmp_path_factory.mktemp("untied")
    model.save_pretrained(path)
    return model, path


def load_hf(path) -> transformers.LlamaForCausalLM:
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_sharded_checkpoint_is_streamed_one_shard_at_a_time(tmp_path, monkeypatch):
    hf = make_hf_model(seed=1, **SHAPES["gqa2_tied_llama3"])
    hf.save_pretrained(tmp_path, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert len(shard_names) >= 4
    tensors_per_shard = {name: sum(v == name for v in index["weight_map"].values())
                         for name in shard_names}
    assert max(tensors_per_shard.values()) >= 2  # some shard holds several tensors

    events = []  # ("open" | "close", file) and ("read", file, live arrays of other files)
    live: dict[str, int] = {}

    class RecordingReader(SafetensorsReader):
        def __init__(self, path):
            super().__init__(path)
            events.append(("open", self.path))

        def read(self, name):
            array = super().read(name)
            others = sum(n for f, n in live.items() if f != self.path)
            events.append(("read", self.path, others))
            live[self.path] = live.get(self.path, 0) + 1
            weakref.finalize(array, lambda f=self.path: live.__setitem__(f, live[f] - 1))
            return array

        def close(self):
            super().close()
            events.append(("close", self.path))

    monkeypatch.setattr(checkpoint_module, "SafetensorsReader", RecordingReader)
    model = from_pretrained(tmp_path, dtype=jnp.float32, numerics=EXACT)

    opened = [e[1].rsplit("/", 1)[1] for e in events if e[0] == "open"]
    assert opened == shard_names  # each shard opened exactly once
    current = None
    reads: dict[str, int] = {}
    for event in events:
        if event[0] == "open":
            assert current is None, "a shard was opened before the previous one was closed"
            current = event[1]
        elif event[0] == "close":
            current = None
        else:
            assert event[1] == current
            assert event[2] == 0, "host arrays of an earlier shard were still alive"
            reads[current] = reads.get(current, 0) + 1
    assert {f.rsplit("/", 1)[1]: n for f, n in reads.items()} == tensors_per_shard

    tokens, mask = padded_batch(160)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens), attention_mask=mask))[mask == 1],
                               hf_logits(hf, tokens, mask)[mask == 1], atol=1e-4)


def rewrite_weights(directory, change):
    """Rewrites model.safetensors of `directory` with change(dict of tensors) applied."""
    file = directory / "model.safetensors"
    tensors = safetensors.torch.load_file(file)
    change(tensors)
    safetensors.torch.save_file(tensors, file, metadata={"format": "pt"})


@pytest.fixture
def copy_of(untied, tmp_path):
    shutil.copytree(untied[1], tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_missing_tensor_is_named(copy_of):
    rewrite_weights(copy_of, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError,
                       match=r"lacks 1 tensor\(s\), e.g. \['model.layers.1.mlp.up_proj.weight'\]"):
        from_pretrained(copy_of, dtype=jnp.float32)


def test_misshaped_tensor_names_both_shapes(copy_of):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    rewrite_weights(copy_of, shrink)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor "
                       r"'model.layers.0.self_attn.k_proj.weight' has shape \[16, 64\], "
                       r"expected \[32, 64\]"):
        from_pretrained(copy_of, dtype=jnp.float32)


def test_unexpected_tensor_is_refused(copy_of):
    def add(t):
        t["model.layers.2.mlp.up_proj.weight"] = torch.zeros(80, 64)
    rewrite_weights(copy_of, add)
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.2.mlp.up_proj"):
        from_pretrained(copy_of, dtype=jnp.float32)


def test_missing_files_and_unsupported_configs(copy_of, tmp_path):
    with pytest.raises(ConfigError, match="config.json: config file not found"):
        from_pretrained(tmp_path / "nowhere", dtype=jnp.float32)
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor "
                       "model.safetensors.index.json found"):
        from_pretrained(copy_of, dtype=jnp.float32)
    (copy_of / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors: shard listed"):
        from_pretrained(copy_of, dtype=jnp.float32)
    config = json.loads((copy_of / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unsupported architecture"):
        from_pretrained(copy_of, dtype=jnp.float32)


def test_exported_adapter_loads_in_peft_with_the_same_logits(untied, tmp_path):
    hf, path = untied
    lora = LoraConfig(rank=4, alpha=16.0, use_rslora=True)
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT, lora=lora)
    randomize_lora(model, seed=2)
    save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(path))

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 16.0, True)
    with SafetensorsReader(tmp_path / "adapter" / "adapter_model.safetensors") as reader:
        assert len(reader.entries) == 2 * 7 * 2
        # torch [out, in] layout: A is [r, in], B is [out, r]; k_proj out = 1 kv head x 32.
        assert reader.shape("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight") \
            == (4, 64)
        assert reader.shape("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight") \
            == (32, 4)
        assert reader.shape("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight") \
            == (4, 80)

    peft_model = peft.PeftModel.from_pretrained(load_hf(path), tmp_path / "adapter").eval()
    tokens, mask = padded_batch(256)
    expected = hf_logits(peft_model, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens), attention_mask=mask))
    real = mask == 1
    assert np.abs(expected - hf_logits(hf, tokens, mask))[real].max() > 1e-2  # adapter matters
    np.testing.assert_array_less(np.abs(got - expected)[real], 1e-4)


def test_the_benchmarks_random_adapter_loads_in_peft_and_ours_with_the_same_logits(untied,
                                                                                   tmp_path):
    # `benchmarks/inference.py --adapter` evaluates the adapter `fixtures.make_adapter` writes:
    # it must be a PEFT adapter of the checkpoint, and change what the model computes.
    import importlib.util
    import pathlib

    folder = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("fixtures", folder / "fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    hf, path = untied
    fixtures.make_adapter(path, tmp_path / "adapter", rank=4, alpha=16.0, scale=0.1)
    peft_model = peft.PeftModel.from_pretrained(load_hf(path), tmp_path / "adapter").eval()
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT,
                            lora=LoraConfig(rank=4, alpha=16.0, use_rslora=True))
    load_peft_adapter(model, tmp_path / "adapter")
    tokens, mask = padded_batch(256, seed=6)
    real = mask == 1
    expected = hf_logits(peft_model, tokens, mask)
    assert np.abs(expected - hf_logits(hf, tokens, mask))[real].max() > 1e-2  # adapter matters
    got = np.asarray(model(jnp.asarray(tokens), attention_mask=mask))
    np.testing.assert_array_less(np.abs(got - expected)[real], 1e-4)


def test_peft_made_adapter_loads_in_ours_with_the_same_logits(untied, tmp_path):
    _, path = untied
    torch.manual_seed(3)
    peft_config = peft.LoraConfig(r=8, lora_alpha=32, use_rslora=False, lora_dropout=0.0,
                                  target_modules=["q_proj", "v_proj", "down_proj"],
                                  init_lora_weights=False)  # random A and B
    peft_model = peft.get_peft_model(load_hf(path), peft_config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")

    lora = LoraConfig(rank=8, alpha=32.0, use_rslora=False,
                      target_modules=("q_proj", "v_proj", "down_proj"))
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT, lora=lora)
    load_peft_adapter(model, tmp_path / "adapter")
    tokens, mask = padded_batch(256, seed=4)
    real = mask == 1
    got = np.asarray(model(jnp.asarray(tokens), attention_mask=mask))
    np.testing.assert_array_less(np.abs(got - hf_logits(peft_model, tokens, mask))[real], 1e-4)

    wrong_rank = from_pretrained(path, dtype=jnp.float32, lora=LoraConfig(
        rank=4, alpha=32.0, use_rslora=False, target_modules=("q_proj", "v_proj", "down_proj")))
    with pytest.raises(ConfigError, match="adapter_config.json: r is 8 but the model's LoRA "
                       "has 4"):
        load_peft_adapter(wrong_rank, tmp_path / "adapter")
    wrong_targets = from_pretrained(path, dtype=jnp.float32, lora=LoraConfig(
        rank=8, alpha=32.0, use_rslora=False))
    with pytest.raises(ConfigError, match="target_modules"):
        load_peft_adapter(wrong_targets, tmp_path / "adapter")


def test_merged_export_loads_in_transformers_and_back(untied, tmp_path):
    _, path = untied
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT,
                            lora=LoraConfig(rank=4, alpha=8.0, target_modules=ALL_MODULES))
    randomize_lora(model, seed=6)
    out = tmp_path / "merged"
    save_merged(model, out, max_shard_bytes=100_000)
    assert (out / "model.safetensors.index.json").exists()  # several shards were written

    tokens, mask = padded_batch(256, seed=7)
    real = mask == 1
    ours = np.asarray(model(jnp.asarray(tokens), attention_mask=mask))
    base = np.asarray(model(jnp.asarray(tokens), attention_mask=mask, adapters=False))
    assert np.abs(ours - base)[real].max() > 1e-2
    merged_hf = load_hf(out)
    np.testing.assert_array_less(np.abs(hf_logits(merged_hf, tokens, mask) - ours)[real], 1e-4)

    reloaded = from_pretrained(out, dtype=jnp.float32, numerics=EXACT)
    again = np.asarray(reloaded(jnp.asarray(tokens), attention_mask=mask))
    np.testing.assert_array_less(np.abs(again - ours)[real], 1e-4)


def test_bf16_merged_export_and_adapter_roundtrip(untied, tmp_path):
    _, path = untied
    lora = LoraConfig(rank=2, alpha=4.0, target_modules=("o_proj",))
    model = from_pretrained(path, dtype=jnp.bfloat16, lora=lora)
    randomize_lora(model, seed=8)
    save_merged(model, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["torch_dtype"] \
        == "bfloat16"
    merged_hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged_hf.model.layers[0].self_attn.o_proj.weight.dtype == torch.bfloat16

    save_peft_adapter(model, tmp_path / "adapter", dtype=jnp.bfloat16)
    other = from_pretrained(path, dtype=jnp.bfloat16, lora=lora, seed=99)
    load_peft_adapter(other, tmp_path / "adapter")
    for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model, LoraParam)),
                              nnx.to_flat_state(nnx.state(other, LoraParam))):
        expected = np.asarray(a[...].astype(jnp.bfloat16).astype(jnp.float32))
        np.testing.assert_array_equal(np.asarray(b[...]), expected)

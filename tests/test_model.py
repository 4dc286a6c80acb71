"""The JAX Llama against transformers' LlamaForCausalLM (float32, CPU), plus cache, LoRA, remat."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from arc_jax.model import (
    ConfigError, KVCache, LlamaConfig, LoraConfig, LoraParam, Numerics, from_pretrained,
    positions_from_mask,
)

torch.set_num_threads(1)
EXACT = Numerics(param_dtype=jnp.float32, precision="highest")
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# (name, transformers.LlamaConfig kwargs): GQA ratios 2, 1 and 4, tied and untied embeddings,
# llama3 and plain rope, head_dim different from hidden/heads.
SHAPES = {
    "gqa2_tied_llama3": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                             num_key_value_heads=2, tie_word_embeddings=True,
                             rope_scaling=LLAMA3_ROPE, rope_theta=500000.0, vocab_size=160),
    "mha_untied_default": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_key_value_heads=4, tie_word_embeddings=False,
                               rope_theta=10000.0, vocab_size=128),
    "mqa_untied_llama3_wide_heads": dict(hidden_size=64, intermediate_size=80,
                                         num_attention_heads=4, num_key_value_heads=1,
                                         head_dim=32, tie_word_embeddings=False,
                                         rope_scaling=LLAMA3_ROPE, rope_theta=500000.0,
                                         vocab_size=256),
}


def make_hf_model(seed=0, num_hidden_layers=2, **kwargs) -> transformers.LlamaForCausalLM:
    """A random LlamaForCausalLM with weights large enough that logits differ clearly."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(num_hidden_layers=num_hidden_layers, rms_norm_eps=1e-5,
                                      max_position_embeddings=256, **kwargs)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def hf_logits(model, tokens, attention_mask=None, positions=None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(tokens)),
                    attention_mask=None if attention_mask is None
                    else torch.tensor(np.asarray(attention_mask)),
                    position_ids=None if positions is None else torch.tensor(np.asarray(positions)))
    return out.logits.numpy()


def padded_batch(vocab, seed=0):
    """Tokens [3, 12]: row 0 full, row 1 right-padded (9 real), row 2 left-padded (7 real)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (3, 12))
    mask = np.ones((3, 12), np.int32)
    mask[1, 9:] = 0
    mask[2, :5] = 0
    return tokens, mask


@pytest.fixture(scope="module", params=sorted(SHAPES))
def saved(request, tmp_path_factory):
    """(HF model, its save_pretrained directory) for each shape."""
    model = make_hf_model(**SHAPES[request.param])
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, path


def test_logits_match_transformers_with_padding(saved):
    hf, path = saved
    ours = from_pretrained(path, dtype=jnp.float32, numerics=EXACT)
    tokens, mask = padded_batch(hf.config.vocab_size)
    positions = positions_from_mask(jnp.asarray(mask))
    expected = hf_logits(hf, tokens, mask, positions)
    got = np.asarray(ours(jnp.asarray(tokens), positions=positions, attention_mask=mask))
    assert got.shape == (3, 12, hf.config.vocab_size) and got.dtype == np.float32
    real = mask.astype(bool)
    assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero numbers
    np.testing.assert_array_less(np.abs(got - expected)[real], 1e-4)


def test_default_positions_match_transformers(saved):
    hf, path = saved
    ours = from_pretrained(path, dtype=jnp.float32, numerics=EXACT)
    tokens, _ = padded_batch(hf.config.vocab_size, seed=1)
    got = np.asarray(ours(jnp.asarray(tokens)))
    np.testing.assert_array_less(np.abs(got - hf_logits(hf, tokens)), 1e-4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """HF model and directory of the GQA / llama3 shape."""
    model = make_hf_model(**SHAPES["gqa2_tied_llama3"])
    path = tmp_path_factory.mktemp("small")
    model.save_pretrained(path)
    return model, path


def test_right_padding_needs_no_mask(small):
    _, path = small
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT)
    tokens, mask = padded_batch(160, seed=5)
    tokens, mask = tokens[:2], mask[:2]  # full and right-padded rows
    masked = np.asarray(model(jnp.asarray(tokens), attention_mask=mask))
    unmasked = np.asarray(model(jnp.asarray(tokens)))
    real = mask == 1
    np.testing.assert_allclose(unmasked[real], masked[real], atol=1e-5)
    assert np.abs(unmasked - masked)[~real].max() > 1e-3  # the mask did act on padding rows


def test_prefill_then_decode_matches_full_forward(small):
    hf, path = small
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT)
    tokens, mask = padded_batch(hf.config.vocab_size, seed=2)
    tokens, mask = tokens[[0, 2]], mask[[0, 2]]  # left padding only, as a sampler batches
    positions = positions_from_mask(jnp.asarray(mask))
    full = np.asarray(model(jnp.asarray(tokens), positions=positions, attention_mask=mask))

    step = nnx.jit(lambda m, t, p, a, c: m(t, positions=p, attention_mask=a, cache=c))
    cache = KVCache.empty(model.config, batch=2, max_len=16, dtype=jnp.float32)
    logits, cache = step(model, tokens[:, :8], positions[:, :8], mask[:, :8], cache)
    pieces = [logits]
    for t in range(8, 12):  # one token at a time
        logits, cache = step(model, tokens[:, t:t + 1], positions[:, t:t + 1],
                             mask[:, t:t + 1], cache)
        pieces.append(logits)
    assert int(cache.end) == 12
    cached = np.concatenate(pieces, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(cached[real], full[real], atol=1e-5)


def test_repeated_cache_decodes_each_copy_like_the_original(small):
    hf, path = small
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT)
    prompt = jnp.asarray(np.random.default_rng(3).integers(0, 160, (1, 6)))
    cache = KVCache.empty(model.config, batch=1, max_len=8, dtype=jnp.float32)
    _, cache = model(prompt, cache=cache)
    fanned = cache.repeat(3)
    next_tokens = jnp.array([[5], [17], [99]])
    logits, _ = model(next_tokens, cache=fanned)
    for i in range(3):
        expected = hf_logits(hf, np.concatenate([prompt[0], next_tokens[i]])[None])[0, -1]
        np.testing.assert_allclose(np.asarray(logits[i, 0]), expected, atol=1e-4)


def test_cache_overflow_is_refused(small):
    _, path = small
    model = from_pretrained(path, dtype=jnp.float32)
    cache = KVCache.empty(model.config, batch=1, max_len=4, dtype=jnp.float32)
    with pytest.raises(ValueError, match="KV cache overflow: 0 slots used \\+ 5 new tokens"):
        model(jnp.zeros((1, 5), jnp.int32), cache=cache)


def test_bad_token_input_names_the_problem(small):
    _, path = small
    model = from_pretrained(path, dtype=jnp.float32)
    with pytest.raises(ValueError, match="integer array \\[batch, seq\\]"):
        model(jnp.zeros((5,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask must have the shape of tokens"):
        model(jnp.zeros((2, 5), jnp.int32), attention_mask=jnp.ones((2, 4)))


def randomize_lora(model, seed, scale=0.1):
    """Gives every LoRA matrix (B included) random values, so adapters change the output."""
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    for _, variable in nnx.to_flat_state(nnx.state(model, LoraParam)):
        value = variable.get_value()
        variable.set_value(scale * jax.random.normal(next(keys), value.shape, value.dtype))


def test_lora_state_adapter_switch_and_zero_init(small):
    hf, path = small
    lora = LoraConfig(rank=4, alpha=8.0, use_rslora=True, target_modules=("q_proj", "down_proj"))
    model = from_pretrained(path, dtype=jnp.float32, numerics=EXACT, lora=lora)
    lora_vars = dict(nnx.to_flat_state(nnx.state(model, LoraParam)))
    # 2 layers x 2 modules x (A, B); nothing else is trainable.
    assert sorted(lora_vars) == sorted(
        (("layers", i, m, p, ab) for i in range(2)
         for m, p in (("self_attn", "q_proj"), ("mlp", "down_proj")) for ab in ("lora_a", "lora_b")))
    assert lora_vars[("layers", 0, "self_attn", "q_proj", "lora_a")].shape == (64, 4)
    assert lora_vars[("layers", 0, "mlp", "down_proj", "lora_b")].shape == (4, 64)
    assert not np.any(np.asarray(lora_vars[("layers", 1, "mlp", "down_proj", "lora_b")][...]))
    param_paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert not any("lora" in str(p) for p in param_paths)

    tokens = jnp.asarray(padded_batch(160)[0])
    base = hf_logits(hf, tokens)
    np.testing.assert_allclose(np.asarray(model(tokens)), base, atol=1e-4)  # B = 0
    randomize_lora(model, seed=0)
    with_adapters = np.asarray(model(tokens))
    assert np.abs(with_adapters - base).max() > 1e-2
    np.testing.assert_allclose(np.asarray(model(tokens, adapters=False)), base, atol=1e-4)


def test_lora_scaling_formulas():
    assert LoraConfig(rank=16, alpha=64.0, use_rslora=True).scaling == 16.0   # 64 / sqrt(16)
    assert LoraConfig(rank=16, alpha=64.0, use_rslora=False).scaling == 4.0   # 64 / 16
    with pytest.raises(ConfigError, match="target_modules"):
        LoraConfig(target_modules=("q_proj", "lm_head"))


def test_remat_gives_the_same_gradients(small):
    _, path = small
    lora = LoraConfig(rank=2, alpha=4.0)
    tokens = jnp.asarray(padded_batch(160)[0])

    def lora_grads(remat_policy):
        numerics = Numerics(param_dtype=jnp.float32, precision="highest",
                            remat_policy=remat_policy)
        model = from_pretrained(path, dtype=jnp.float32, numerics=numerics, lora=lora)
        randomize_lora(model, seed=1)
        graphdef, trainable, frozen = nnx.split(model, LoraParam, ...)

        def loss(trainable, frozen):
            logits = nnx.merge(graphdef, trainable, frozen)(tokens)
            return jax.nn.log_softmax(logits)[..., 0].mean()

        return jax.tree.leaves(jax.jit(jax.grad(loss))(trainable, frozen))

    plain, remat = lora_grads(None), lora_grads("nothing_saveable")
    assert len(plain) == 28 and max(float(jnp.abs(g).max()) for g in plain) > 0
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bf16_params_give_close_logits(small):
    hf, path = small
    model = from_pretrained(path, dtype=jnp.bfloat16)
    assert model.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.bfloat16
    tokens = jnp.asarray(padded_batch(160)[0])
    logits = np.asarray(model(tokens))
    expected = hf_logits(hf, tokens)
    assert logits.dtype == np.float32
    # bf16 keeps ~3 significant digits; logits are O(10).
    assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max()


def test_config_parsing_errors(tmp_path):
    good = make_hf_model(**SHAPES["gqa2_tied_llama3"]).config.to_dict()
    parsed = LlamaConfig.from_hf_dict(good)
    assert (parsed.num_key_value_heads, parsed.head_dim, parsed.rope_theta) == (2, 16, 500000.0)
    assert parsed.rope_scaling.original_max_position_embeddings == 16
    # The pre-transformers-5 spelling (rope_theta + rope_scaling) reads the same.
    old = {k: v for k, v in good.items() if k != "rope_parameters"}
    old.update(rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE})
    assert LlamaConfig.from_hf_dict(old) == parsed

    cases = [
        ({"model_type": "mistral"}, "unsupported architecture model_type='mistral'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
         "unsupported rope type 'yarn'"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 2.0}},
         "llama3 rope scaling lacks field 'low_freq_factor'"),
        ({"attention_bias": True}, "unsupported attention_bias=True"),
        ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads \\(3\\)"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            LlamaConfig.from_hf_dict({**good, **change})
    missing = {k: v for k, v in good.items() if k != "hidden_size"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(missing))
    with pytest.raises(ConfigError, match=f"{path}: missing field 'hidden_size'"):
        LlamaConfig.from_json(path)
    with pytest.raises(ConfigError, match="config file not found"):
        LlamaConfig.from_json(tmp_path / "nope.json")


def test_params_land_with_their_sharding_on_a_4_device_mesh(small):
    """Placement on a (data, fsdp, tensor) = (1, 2, 2) mesh of 4 CPU devices, in a subprocess
    because the device count is fixed when JAX starts."""
    _, path = small
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, PartitionSpec as P
        from flax import nnx
        from arc_jax.model import from_pretrained, LoraConfig, LoraParam, Sharding, state_shardings
        mesh = Mesh(np.array(jax.devices()).reshape(1, 2, 2), ("data", "fsdp", "tensor"))
        model = from_pretrained({str(path)!r}, dtype=jnp.float32, mesh=mesh,
                                lora=LoraConfig(rank=2, alpha=4.0))
        attn = model.layers[0].self_attn
        print("q", tuple(attn.q_proj.kernel[...].sharding.spec))
        print("embed", tuple(model.embed_tokens.weight[...].sharding.spec))
        print("lora_b", tuple(attn.q_proj.lora_b[...].sharding.spec))
        print("norm", tuple(model.norm.weight[...].sharding.spec))
        tokens = jnp.zeros((2, 5), jnp.int32)
        logits = nnx.jit(lambda m, t: m(t))(model, tokens)
        rules = Sharding(mesh)
        print("uneven", tuple(rules.spec(("embed", "mlp"), shape=(4, 3))))
        print("reuse", tuple(rules.spec(("batch", "embed"))))
        lora_shardings = state_shardings(nnx.state(model, LoraParam), rules)
        print("lora_a", lora_shardings["layers"][1]["mlp"]["down_proj"]["lora_a"].spec == P("tensor", None))
        want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
        print("logits", logits.sharding.is_equivalent_to(want, 3), logits.shape)
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["q"] == "('fsdp', 'tensor')"
    assert lines["embed"] == "('tensor', 'fsdp')"
    assert lines["lora_b"] == "(None, 'tensor')"
    assert lines["norm"] == "(None,)"
    assert lines["logits"] == "True (2, 5, 160)"
    assert lines["uneven"] == "('fsdp', None)"  # 3 does not split over 2 devices
    assert lines["reuse"] == "(('data', 'fsdp'), None)"  # fsdp already taken by the batch
    assert lines["lora_a"] == "True"

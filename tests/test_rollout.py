"""JaxSampler on a tiny random Llama, checked against transformers (torch, float32)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from arc_jax.model import LoraConfig, LoraParam, Numerics, from_pretrained
from conftest import save_tiny_llama, weight_bytes
from arc_jax.rollout import (
    JaxSampler,
    PromptBuckets,
    RolloutEngine,
    RolloutMemoryError,
    SamplerConfig,
    SamplingParams,
    choose_slots,
)
from arc_jax.rollout.decode import Layout, PagePool, Rows, SlotCache
from arc_jax.rollout.memory import plan_slots
from arc_jax.rollout.sampler import bucket_length

VOCAB = 97
PROMPTS = [[1, 5, 6, 7, 8, 9, 10, 11, 12], [1, 20, 21, 22]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    model = save_tiny_llama(path, seed=0, vocab_size=VOCAB, hidden_size=64, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, max_position_embeddings=2048)
    return path, model


def load(path, **kwargs):
    return from_pretrained(path, dtype=np.float32, numerics=Numerics(precision="highest"),
                           **kwargs)


@pytest.fixture(scope="module")
def sampler(checkpoint):
    return JaxSampler(load(checkpoint[0]))


def hf_greedy(model, prompt, steps):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=steps,
                         min_new_tokens=steps, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_jax_sampler_implements_the_interface(sampler):
    assert isinstance(sampler, RolloutEngine)


def test_greedy_matches_transformers_generate(checkpoint, sampler):
    _, hf_model = checkpoint
    results = sampler.generate(PROMPTS, 3, GREEDY)
    assert len(results) == 2
    for prompt, completions in zip(PROMPTS, results):
        expected = hf_greedy(hf_model, prompt, 20)
        assert len(completions) == 3
        for c in completions:
            assert list(c.token_ids) == expected
            assert c.finish_reason == "length" and c.truncated
            assert len(c.logprobs) == len(c.temperature_logprobs) == 20


def test_greedy_matches_transformers_with_prompts_of_other_buckets_in_one_slot_set(checkpoint):
    # Two slots (memory for exactly that layout: pages of 4 tokens for the two longest prompts,
    # 101 and 45 tokens, and for two rows of 20) for five prompts, their page tables as wide
    # as the bucket of the longest (128) from the start, although it comes last (shortest
    # first): the 5- and 7-token prompts are prefilled at 8, the 41- and 45-token ones at their
    # own bucket (64), into pages that held other prompts' keys. One decoding program for the
    # call.
    _, hf_model = checkpoint
    rng = np.random.default_rng(3)
    prompts = [[1] + rng.integers(2, VOCAB, size).tolist() for size in (40, 4, 44, 6, 100)]
    model = load(checkpoint[0])
    exact = plan_slots(model.config, np.float32, prompts=2, rows_per_prompt=1, prompt_len=128,
                       max_new_tokens=20, page_size=4, pages=1 + 26 + 12 + 2 * 5).total
    sampler = JaxSampler(model, config=SamplerConfig(
        buckets=PromptBuckets(minimum=8, bits=1), max_rows=2, rows_per_prompt=1, page_size=4,
        segment_steps=5, memory_bytes=exact))
    compiled = sampler._segment._cache_size()  # jit's cache is shared with earlier samplers
    results = sampler.generate(prompts, 2, GREEDY)
    assert sampler.last_stats["prompt_slots"] == 2 and sampler.last_stats["prefills"] == 5
    assert sampler._segment._cache_size() - compiled <= 1
    for prompt, completions in zip(prompts, results):
        ids = torch.tensor([prompt])
        with torch.no_grad():  # argmax over every token (generate's min_new_tokens hides EOS)
            for _ in range(20):
                ids = torch.cat([ids, hf_model(ids).logits[:, -1:].argmax(-1)], dim=1)
        expected = ids[0, len(prompt):].tolist()
        assert [list(c.token_ids) for c in completions] == [expected, expected]


def test_greedy_stops_at_a_stop_token_and_keeps_it(checkpoint, sampler):
    _, hf_model = checkpoint
    expected = hf_greedy(hf_model, PROMPTS[0], 20)
    stop = expected[4]
    cut = expected.index(stop) + 1
    [[c]] = sampler.generate([PROMPTS[0]], 1, dataclasses.replace(GREEDY, stop_token_ids=(stop,)))
    assert list(c.token_ids) == expected[:cut]
    assert c.finish_reason == "stop" and not c.truncated
    assert len(c.logprobs) == cut


def torch_logits(hf_model, prompt, completion):
    """Logits [len(completion), V] that predicted each completion token."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = hf_model(ids).logits[0]
    return logits[len(prompt) - 1:-1]


def test_sampled_logprobs_equal_log_softmax_of_transformed_logits(checkpoint, sampler):
    _, hf_model = checkpoint
    sampling = SamplingParams(temperature=0.8, top_k=30, top_p=0.9, repetition_penalty=1.05,
                              max_new_tokens=12, stop_token_ids=(), seed=3)
    results = sampler.generate(PROMPTS, 2, sampling)
    for prompt, completions in zip(PROMPTS, results):
        for c in completions:
            logits = torch_logits(hf_model, prompt, c.token_ids)
            for t, token in enumerate(c.token_ids):
                ids = torch.tensor([list(prompt) + list(c.token_ids[:t])])
                scores = logits[t:t + 1].clone()
                raw = torch.log_softmax(scores / sampling.temperature, -1)[0, token].item()
                for proc in (RepetitionPenaltyLogitsProcessor(1.05), TemperatureLogitsWarper(0.8),
                             TopKLogitsWarper(30), TopPLogitsWarper(0.9)):
                    scores = proc(ids, scores)
                processed = torch.log_softmax(scores, -1)[0, token].item()
                assert np.isfinite(processed), "sampled a token outside the kept set"
                assert c.logprobs[t] == pytest.approx(processed, abs=2e-4)
                assert c.temperature_logprobs[t] == pytest.approx(raw, abs=2e-4)
    # Truncation renormalises, so the two kinds of log-probability must differ somewhere.
    c = results[0][0]
    assert not np.allclose(c.logprobs, c.temperature_logprobs, atol=1e-3)


def test_seed_reproducible_across_batching_and_different_per_seed(checkpoint, sampler):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, stop_token_ids=(), seed=7)
    together = sampler.generate(PROMPTS, 2, sampling)
    one_by_one = JaxSampler(load(checkpoint[0]), config=SamplerConfig(max_rows=2))
    apart = one_by_one.generate(PROMPTS, 2, sampling)
    tokens = lambda results: [[c.token_ids for c in cs] for cs in results]
    assert tokens(together) == tokens(apart)
    other = sampler.generate(PROMPTS, 2, dataclasses.replace(sampling, seed=8))
    assert tokens(other) != tokens(together)
    assert together[0][0].token_ids != together[0][1].token_ids  # samples differ


def test_prompt_cache_is_not_copied_per_sample(sampler):
    # The compiled decoding segment: going from 1 to 8 rows per prompt slot must not add 7
    # prompt caches (the rows of a slot share its prompt's keys and values).
    def temp_bytes(rows_per_prompt):
        plan = choose_slots(sampler.model_config, np.float32, 2 ** 30, num_prompts=1,
                            n=rows_per_prompt, prompt_len=1024, max_new_tokens=4,
                            max_rows=rows_per_prompt, rows_per_prompt=rows_per_prompt,
                            page_size=4)
        model = nnx.merge(*sampler._weights)
        cache = SlotCache.empty(model, plan.prompts, False)
        pool = PagePool.empty(model, plan.pages, plan.page_size)
        rows = Rows.empty(plan.rows, VOCAB, False)
        b = plan.rows
        compiled = sampler._segment.lower(
            *sampler._weights, cache, pool,
            np.zeros((plan.prompts, plan.pages_per_prompt), np.int32), np.zeros((b, 1), np.int32),
            Layout.fixed(plan.prompts, plan.rows_per_prompt), rows, np.ones(b, bool),
            np.ones(b, bool), np.zeros((b, 2), np.uint32), np.int32(b + 1), steps=4,
            sampling=SamplingParams(max_new_tokens=4), attention="xla", adapters=True).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    prompt_cache_bytes = 1024 * 2 * 2 * 2 * 16 * 4  # S x layers x (k, v) x K x H x 4 bytes
    assert temp_bytes(8) - temp_bytes(1) < prompt_cache_bytes


def test_update_weights_changes_outputs_without_recompiling(checkpoint):
    path, _ = checkpoint
    lora = LoraConfig(rank=4, alpha=8.0)
    sampler = JaxSampler(load(path, lora=lora))
    before = sampler.generate(PROMPTS, 1, GREEDY)
    compiled = sampler._segment._cache_size()

    trained = load(path, lora=lora)
    state = nnx.state(trained, LoraParam)
    state = jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                         state)
    nnx.update(trained, state)
    sampler.update_weights(state)
    after = sampler.generate(PROMPTS, 1, GREEDY)
    assert sampler._segment._cache_size() == compiled
    assert [c[0].token_ids for c in after] != [c[0].token_ids for c in before]
    fresh = JaxSampler(trained).generate(PROMPTS, 1, GREEDY)
    assert [c[0].token_ids for c in after] == [c[0].token_ids for c in fresh]

    wrong = jax.tree.map(lambda x: x[:1], state)
    with pytest.raises(ValueError, match="lora_a"):
        sampler.update_weights(wrong)


def test_fresh_adapters_decode_on_the_base_kernels_and_say_what_they_defer(checkpoint):
    path, _ = checkpoint
    lora = LoraConfig(rank=4, alpha=8.0)
    model = load(path, lora=lora)
    sampler = JaxSampler(model)
    # 2 layers x (q, k, v, o: 64 x 64, 64 x 32 twice, 64 x 64; gate, up: 64 x 128; down:
    # 128 x 64) float32 kernels: the merged copy the first update will make.
    kernel_floats = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)
    assert sampler.deferred_bytes == 4 * kernel_floats
    state = jax.tree.map(lambda x: x + 0.1, nnx.state(model, LoraParam))
    sampler.update_weights(state)
    assert sampler.deferred_bytes == 0
    assert JaxSampler(model, config=SamplerConfig(merge_lora=False)).deferred_bytes == 0


def test_merged_weights_sample_what_the_adapters_compute(checkpoint):
    # The default sampler decodes with W + s * A B merged into the kernels; the unmerged one
    # runs the adapters. Both must give the same greedy tokens and log-probs (float32 here).
    path, _ = checkpoint
    lora = LoraConfig(rank=4, alpha=8.0)
    model = load(path, lora=lora)
    state = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
                         nnx.state(model, LoraParam))
    nnx.update(model, state)
    kernels = [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    merged = JaxSampler(model).generate(PROMPTS, 1, GREEDY)
    for before, after in zip(kernels, jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(before, after)  # the trainer's weights stay unmerged
    separate = JaxSampler(model, config=SamplerConfig(merge_lora=False)).generate(PROMPTS, 1, GREEDY)
    base = JaxSampler(load(path, lora=lora)).generate(PROMPTS, 1, GREEDY)
    tokens = lambda results: [c[0].token_ids for c in results]
    assert tokens(merged) == tokens(separate) != tokens(base)
    for a, b in zip(merged, separate):
        np.testing.assert_allclose(a[0].logprobs, b[0].logprobs, atol=1e-4)


def test_final_update_folds_the_adapters_in_and_frees_the_unmerged_kernels(checkpoint):
    # Evaluation's last policy: with final=True and the model dropped, the sampler folds the
    # adapters into its only copy of the weights, so the memory of the merged copy that a
    # training update keeps beside the base kernels is never added; the samples are those of
    # that merged copy.
    path, _ = checkpoint
    lora = LoraConfig(rank=4, alpha=8.0)
    kernel_bytes = 4 * 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)  # the adapted kernels
    trained = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(4), x.shape),
                           nnx.state(load(path, lora=lora), LoraParam))
    results = {}
    for final in (False, True):
        model = load(path, lora=lora)
        sampler = JaxSampler(model)
        del model
        before = weight_bytes()
        sampler.update_weights(trained, final=final)
        grown = weight_bytes() - before
        assert sampler.deferred_bytes == 0
        if final:
            assert grown < kernel_bytes / 4  # at most the adapters' own placed copy
        else:
            assert grown >= kernel_bytes  # the merged copy beside the base kernels
        results[final] = sampler.generate(PROMPTS, 2, SamplingParams(
            temperature=1.0, max_new_tokens=12, stop_token_ids=(), seed=3))
        if final:
            with pytest.raises(ValueError, match="final=True"):
                sampler.update_weights(trained)
        del sampler
    for copied, folded in zip(results[False], results[True]):
        for a, b in zip(copied, folded):
            assert a.token_ids == b.token_ids and a.logprobs == b.logprobs


def test_final_update_with_the_model_still_held_keeps_its_weights(checkpoint):
    # A caller that keeps its model keeps its unmerged kernels: folding must not touch them.
    path, _ = checkpoint
    lora = LoraConfig(rank=4, alpha=8.0)
    model = load(path, lora=lora)
    kernels = [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    sampler = JaxSampler(model)
    sampler.update_weights(jax.tree.map(lambda x: x + 0.2, nnx.state(model, LoraParam)),
                           final=True)
    for before, after in zip(kernels, jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(before, after)


def test_slot_plan_by_hand(sampler):
    # 2 layers x (k, v) x 2 kv heads x 16 dims x 4 bytes = 512 bytes per token.
    plan = choose_slots(sampler.model_config, np.float32, 2 ** 30, num_prompts=5, n=3,
                        prompt_len=64, max_new_tokens=20, max_rows=8, rows_per_prompt=16,
                        page_size=8)
    # 8 // 3 = 2 prompts' rows (3 each); 5 prompts, so twice the slots: 4, up to 6 rows each
    assert (plan.prompts, plan.rows_per_prompt, plan.rows, plan.lanes) == (4, 3, 6, 6)
    # Every slot can hold a 64-token prompt (8 pages) and every row can reach 20 tokens.
    assert plan.pages_per_row == 3 and plan.pages_per_prompt == 8
    assert plan.pages == 1 + 4 * 8 + 6 * 3
    assert plan.page_pool == plan.pages * 8 * 512
    # Each slot: float32 logits and a token set over the vocabulary, and 8 page numbers.
    assert plan.prompt_cache == 4 * (VOCAB * 5 + 8 * 4)
    # The larger of the sampling transforms' [B, V] copies (6 x 97 x 33 bytes) and one prefill
    # (64 tokens x (4 x 64 + 3 x 128) float32 activations, 4 x 64 x 64 float32 scores), and
    # nothing more: the slots are allocated at the call's longest bucket and never grow.
    assert plan.workspace == max(6 * 97 * 33, 64 * (4 * 64 + 3 * 128) * 4 + 4 * 64 * 64 * 4)
    # The extra slots only come with every page: a byte less, and the call gets 2 slots.
    fewer = choose_slots(sampler.model_config, np.float32, plan.total - 1, num_prompts=5, n=3,
                         prompt_len=64, max_new_tokens=20, max_rows=8, rows_per_prompt=16,
                         page_size=8)
    assert (fewer.prompts, fewer.rows, fewer.pages) == (2, 6, 1 + 2 * 8 + 6 * 3)
    assert fewer.prompt_cache == 2 * (VOCAB * 5 + 8 * 4)


def test_slot_plan_counts_the_real_pages_of_the_longest_prompts(sampler):
    # Prompts of 10, 64, 30, 5 and 17 tokens take 2, 8, 4, 1 and 3 pages of 8 tokens. Four
    # slots never hold more than the four longest: 8 + 4 + 3 + 2 = 17 pages, where four
    # prompts at the longest bucket would count 4 x 8 = 32; 6 rows of 20 tokens take 18.
    args = dict(num_prompts=5, n=3, prompt_len=64, max_new_tokens=20, max_rows=8,
                rows_per_prompt=16, page_size=8)
    lengths = [10, 64, 30, 5, 17]
    # Memory for 39 pages (and the trash page): 4 slots with the real lengths (35 needed; the
    # count is rounded down to a multiple of 1/16 of the 50 pages at the bucket, 3 here).
    budget = plan_slots(sampler.model_config, np.float32, prompts=4, rows_per_prompt=3,
                        prompt_len=64, max_new_tokens=20, page_size=8, pages=40, rows=6).total
    plan = choose_slots(sampler.model_config, np.float32, budget, prompt_lengths=lengths, **args)
    assert (plan.prompts, plan.rows, plan.pages) == (4, 6, 40)
    assert plan.pages_per_prompt == 8  # the prompt table stays as wide as the longest bucket
    # Counted at the bucket, the same memory holds two slots' prompts beside the rows.
    bucketed = choose_slots(sampler.model_config, np.float32, budget, **args)
    assert (bucketed.prompts, bucketed.rows, bucketed.pages) == (2, 6, 1 + 2 * 8 + 6 * 3)
    # With room for everything, the page count is that of the bucket whatever the lengths, so
    # calls of one bucket share a decoding program.
    for lengths in ([10, 64, 30, 5, 17], [64, 64, 64, 64, 64], [1, 2, 3, 4, 64]):
        roomy = choose_slots(sampler.model_config, np.float32, 2 ** 30, prompt_lengths=lengths,
                             **args)
        assert (roomy.prompts, roomy.rows, roomy.pages) == (4, 6, 1 + 4 * 8 + 6 * 3)


def test_short_memory_gives_fewer_pages_then_fewer_rows(sampler):
    args = dict(num_prompts=4, n=4, prompt_len=64, max_new_tokens=32, max_rows=16,
                rows_per_prompt=4, page_size=8)
    full = choose_slots(sampler.model_config, np.float32, 2 ** 30, **args)
    assert full.rows == 16 and full.pages == 1 + 4 * 8 + 16 * 4  # 4 prompts, 16 rows
    # Pages for the prompts and for more than half of every row's reach: still 16 rows, which
    # then wait for pages.
    half = choose_slots(sampler.model_config, np.float32, full.total - 24 * 8 * 512, **args)
    assert half.rows == 16 and 1 + 4 * 8 + 16 * 2 <= half.pages < full.pages
    # Less than half (pages come in steps of 1/16 of the full count, 6 here): 8 rows.
    fewer = choose_slots(sampler.model_config, np.float32, half.total - 12 * 8 * 512, **args)
    assert fewer.rows == 8


def test_refuses_a_call_that_does_not_fit_in_one_line(checkpoint):
    tiny = JaxSampler(load(checkpoint[0]), config=SamplerConfig(memory_bytes=10_000))
    with pytest.raises(RolloutMemoryError) as error:
        tiny.generate(PROMPTS, 3, GREEDY)
    message = str(error.value)
    assert "\n" not in message
    assert "needs" in message and "GiB" in message and "sampler.memory_fraction" in message


def test_prompt_length_buckets():
    assert bucket_length(10, 64, 2) == 64
    assert bucket_length(65, 64, 2) == 96
    assert bucket_length(4096, 64, 2) == 4096
    assert bucket_length(4097, 64, 2) == 6144
    assert bucket_length(8635, 64, 2) == 12288
    assert bucket_length(4097, 64, 1) == 8192
    assert bucket_length(4097, 64, 3) == 5120


def test_completion_text_is_decoded_without_the_stop_token(checkpoint):
    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    sampler = JaxSampler(load(checkpoint[0]), tokenizer=tokenizer)
    expected = hf_greedy(checkpoint[1], PROMPTS[1], 20)
    stop = expected[3]
    cut = expected.index(stop)
    [[c]] = sampler.generate([PROMPTS[1]], 1, dataclasses.replace(GREEDY, stop_token_ids=(stop,)))
    assert c.text == " ".join(f"w{t}" for t in expected[:cut])


@pytest.mark.parametrize("prompts, n, match", [
    ([[]], 1, "prompt 0"),
    ([[1, 2], [1, VOCAB]], 1, "prompt 1 .* vocabulary"),
    ([[1, 2], [[1, 2]]], 1, "prompt 1"),
    ([[1, 2]], 0, "n must"),
    ([[1] * 2040], 1, "prompt 0 has 2040 tokens"),
])
def test_bad_requests_name_the_prompt(sampler, prompts, n, match):
    with pytest.raises(ValueError, match=match):
        sampler.generate(prompts, n, GREEDY)


SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh
from arc_jax.model import Numerics, from_pretrained
from arc_jax.rollout import JaxSampler, SamplingParams
mesh = Mesh(np.array(jax.devices()).reshape(1, 2), ("fsdp", "tensor"))
model = from_pretrained(sys.argv[1], dtype=np.float32, numerics=Numerics(precision="highest"),
                        mesh=mesh)
assert len(model.layers[0].self_attn.q_proj.kernel[...].sharding.device_set) == 2
out = JaxSampler(model).generate(json.loads(sys.argv[2]), 2, SamplingParams(
    temperature=0, max_new_tokens=10, stop_token_ids=()))
print(json.dumps([[list(c.token_ids) for c in cs] for cs in out]))
"""


def test_runs_under_a_two_device_mesh(checkpoint):
    path, hf_model = checkpoint
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(path), json.dumps(PROMPTS)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    tokens = json.loads(result.stdout.strip().splitlines()[-1])
    for prompt, samples in zip(PROMPTS, tokens):
        assert samples == [hf_greedy(hf_model, prompt, 10)] * 2


DATA_PARALLEL_SCRIPT = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh
from arc_jax.model import Numerics, from_pretrained
from arc_jax.rollout import JaxSampler, SamplingParams
devices = np.array(jax.devices())
out = {}
for name, grid in (("one", devices[:1].reshape(1, 1, 1)), ("eight", devices.reshape(8, 1, 1))):
    mesh = Mesh(grid, ("data", "fsdp", "tensor"))
    model = from_pretrained(sys.argv[1], dtype=np.float32, mesh=mesh,
                            numerics=Numerics(precision="highest"))
    sampler = JaxSampler(model)
    prompts = json.loads(sys.argv[2])
    out[name] = [[list(c.token_ids) for c in cs] for sampling in (
        SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=()),
        SamplingParams(temperature=1.0, max_new_tokens=8, stop_token_ids=(), seed=5))
        for cs in sampler.generate(prompts, 4, sampling)]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_data_parallel_mesh_samples_what_one_device_samples(checkpoint):
    """8 CPU devices on the data axis: the rows of the batch (prompts x n) are split over
    them; greedy and seeded samples equal those of one device."""
    path, _ = checkpoint
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    prompts = (PROMPTS * 4)[:4]
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT, str(path),
                             json.dumps(prompts)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["eight"] == out["one"]
    assert len(out["one"]) == 8 and len({tuple(s) for g in out["one"][4:] for s in g}) > 1


def test_free_host_memory_is_memavailable_not_memfree(tmp_path):
    # Page cache counts as free: MemAvailable, not MemFree (which a busy machine fills).
    from arc_jax.rollout.memory import available_host_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:          250000 kB\n"
                       "MemAvailable:   20000000 kB\nBuffers:          100000 kB\n")
    assert available_host_bytes(str(meminfo)) == 20000000 * 1024
    missing = tmp_path / "old_kernel_meminfo"
    missing.write_text("MemTotal:       24000000 kB\nMemFree:          250000 kB\n")
    assert available_host_bytes(str(missing)) > 0  # falls back to the free page count

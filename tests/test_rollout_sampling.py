"""Sampling transforms against transformers' logits processors, and SamplingParams checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from arc_jax.rollout import SamplingParams
from arc_jax.rollout.sampling import (
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    ordered_keys,
    choose_tokens,
    process_logits,
    token_logprobs,
)

B, V = 4, 50


def random_logits(seed=0):
    return np.random.default_rng(seed).normal(0.0, 3.0, (B, V)).astype(np.float32)


def hf(processors, logits, input_ids=None):
    ids = torch.zeros((B, 1), dtype=torch.long) if input_ids is None else torch.tensor(input_ids)
    scores = torch.tensor(logits)
    for proc in processors:
        scores = proc(ids, scores)
    return scores.numpy()


def assert_same_logits(ours, theirs):
    ours = np.asarray(ours)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 49, 50, 80])
def test_top_k_matches_transformers(k):
    logits = random_logits(k)
    assert_same_logits(apply_top_k(jnp.asarray(logits), k), hf([TopKLogitsWarper(k)], logits))


@pytest.mark.parametrize("cuts", [1, 7])
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_top_p_matches_transformers(p, cuts):
    logits = random_logits(int(p * 100))
    ours = apply_top_p(jnp.asarray(logits), p, cuts)
    assert_same_logits(ours, hf([TopPLogitsWarper(p)], logits))
    assert np.all(np.isfinite(np.asarray(ours)).sum(-1) >= 1)


@pytest.mark.parametrize("cuts", [1, 3, 7])
def test_top_p_handles_removed_peaked_and_llama_sized_rows(cuts):
    # Rows already cut by top-k (-inf entries), one token holding more than p, and a
    # near-uniform row over a Llama-sized vocabulary.
    rng = np.random.default_rng(3)
    cut = rng.normal(0, 3, (4, 500)).astype(np.float32)
    cut[:, ::3] = -np.inf
    peaked = rng.normal(0, 1, (4, 500)).astype(np.float32)
    peaked[:, 7] = 30.0
    for logits in (cut, peaked, rng.normal(0, 0.01, (2, 128256)).astype(np.float32)):
        for p in (0.3, 0.95):
            scores = torch.tensor(logits)
            expected = TopPLogitsWarper(p)(torch.zeros((len(logits), 1), dtype=torch.long), scores)
            assert_same_logits(apply_top_p(jnp.asarray(logits), p, cuts), expected.numpy())


@pytest.mark.parametrize("cuts", [1, 7])
def test_top_p_keeps_all_ties_at_the_threshold(cuts):
    # transformers removes an order-dependent part of a tie at the boundary; the rule here is
    # "kept iff the probability of all logits at or below this one exceeds 1 - p".
    logits = np.round(np.random.default_rng(4).normal(0, 2, (4, 500))).astype(np.float32)
    for p in (0.3, 0.95):
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        at_or_below = np.stack([[probs[r][logits[r] <= x].sum() for x in logits[r]]
                                for r in range(len(logits))])
        kept = np.isfinite(np.asarray(apply_top_p(jnp.asarray(logits), p, cuts)))
        np.testing.assert_array_equal(kept, at_or_below > 1 - p)


def test_ordered_keys_order_like_the_floats():
    values = np.array([-np.inf, -3e38, -2.0, -1.0, -1e-30, 0.0, 1e-30, 1.0, 2.0, 3e38, np.inf],
                      np.float32)
    keys = np.asarray(ordered_keys(jnp.asarray(values)))
    assert np.all(np.diff(keys) > 0)
    assert ordered_keys(jnp.float32(-0.0)) == ordered_keys(jnp.float32(0.0))


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 1.0])
def test_min_p_matches_transformers(min_p):
    logits = random_logits(7)
    assert_same_logits(apply_min_p(jnp.asarray(logits), min_p),
                       hf([MinPLogitsWarper(min_p)], logits))


@pytest.mark.parametrize("penalty", [1.05, 1.3, 0.8])
def test_repetition_penalty_matches_transformers(penalty):
    logits = random_logits(3)
    input_ids = np.random.default_rng(4).integers(0, V, (B, 12))
    seen = np.zeros((B, V), bool)
    np.put_along_axis(seen, input_ids, True, axis=1)
    ours = apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), penalty)
    assert_same_logits(ours, hf([RepetitionPenaltyLogitsProcessor(penalty)], logits, input_ids))
    # Both signs occur among the penalised entries, so both branches were compared.
    assert (logits[seen] > 0).any() and (logits[seen] < 0).any()


@pytest.mark.parametrize("params", [
    dict(temperature=0.7, top_k=10, top_p=0.9, min_p=0.05, repetition_penalty=1.05),
    dict(temperature=1.3, top_p=0.95),
    dict(temperature=1.0, top_k=3),
    dict(temperature=0.5, min_p=0.2, repetition_penalty=1.2),
])
def test_full_chain_matches_transformers_generate_order(params):
    logits = random_logits(11)
    input_ids = np.random.default_rng(12).integers(0, V, (B, 8))
    seen = np.zeros((B, V), bool)
    np.put_along_axis(seen, input_ids, True, axis=1)
    sampling = SamplingParams(**params)
    processors = []  # the order of transformers' _get_logits_processor
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    processors.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        processors.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        processors.append(TopPLogitsWarper(sampling.top_p))
    if sampling.min_p > 0.0:
        processors.append(MinPLogitsWarper(sampling.min_p))
    expected = hf(processors, logits, input_ids)
    assert_same_logits(process_logits(jnp.asarray(logits), jnp.asarray(seen), sampling), expected)


@pytest.mark.parametrize("off", [0, -1])
def test_top_k_zero_or_minus_one_is_off(off):
    logits = random_logits(5)
    out = process_logits(jnp.asarray(logits), None, SamplingParams(top_k=off))
    np.testing.assert_array_equal(np.asarray(out), logits)


def test_greedy_applies_only_the_penalty_and_picks_argmax():
    logits = random_logits(6)
    sampling = SamplingParams(temperature=0.0, top_p=0.5, top_k=2)
    out = process_logits(jnp.asarray(logits), None, sampling)
    np.testing.assert_array_equal(np.asarray(out), logits)
    tokens = choose_tokens(None, out, greedy=True)
    np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(-1))


def test_penalty_without_seen_mask_is_an_error():
    with pytest.raises(ValueError, match="seen"):
        process_logits(jnp.zeros((1, 3)), None, SamplingParams(repetition_penalty=1.1))


def test_categorical_draws_follow_the_processed_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2, 0.0, 0.0]]))  # two impossible tokens
    draws = 4000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    tokens = choose_tokens(keys, jnp.repeat(logits, draws, axis=0), greedy=False)
    freq = np.bincount(np.asarray(tokens), minlength=5) / draws
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2, 0.0, 0.0], atol=0.03)


def test_token_logprobs_are_log_softmax_of_the_chosen_entries():
    logits = jnp.array([[0.0, np.log(3.0)], [1.0, -jnp.inf]])
    out = token_logprobs(logits, jnp.array([1, 0]))
    np.testing.assert_allclose(np.asarray(out), [np.log(0.75), 0.0], atol=1e-6)


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 1.5),
    ("repetition_penalty", 0.0), ("max_new_tokens", 0), ("stop_token_ids", (-3,)),
])
def test_sampling_params_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_sampling_params_defaults_stop_at_llama3_end_tokens():
    params = SamplingParams(stop_token_ids=[128009])
    assert params.stop_token_ids == (128009,)
    # The default is what the trainer derives from the real Llama-3 tokenizer, in its order.
    import transformers

    from arc_jax import prompts
    from conftest import LLAMA3_TOKENIZER

    tokenizer = transformers.AutoTokenizer.from_pretrained(LLAMA3_TOKENIZER)
    assert SamplingParams().stop_token_ids == prompts.stop_token_ids(tokenizer) == (128009, 128001)
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy

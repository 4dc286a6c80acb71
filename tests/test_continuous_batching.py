"""Continuous batching in the JaxSampler: a sample depends only on (seed, prompt index, sample
index), whatever the slot layout, the page supply or the other requests; the paged attention
computes the dense attention."""

import importlib.util
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arc_jax.model import Numerics, from_pretrained
from conftest import save_tiny_llama
from arc_jax.model.llama import shared_prefix_scores
from arc_jax.rollout import JaxSampler, PromptBuckets, SamplerConfig, SamplingParams
from arc_jax.rollout import attention
from arc_jax.rollout.memory import plan_slots

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 61
# Mixed lengths (three prompt-length buckets with minimum 8), given out of length order.
PROMPTS = [[1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
           [1, 20, 21],
           [1, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39],
           [1, 40, 41, 42, 43]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path, seed=1, vocab_size=VOCAB, hidden_size=32, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
    return from_pretrained(path, dtype=np.float32, numerics=Numerics(precision="highest"))


def sampling(**kwargs):
    # Three stop tokens of a 61-token vocabulary: samples stop after 1 to 24 tokens.
    base = dict(temperature=1.0, top_p=0.9, max_new_tokens=24, stop_token_ids=(3, 4, 5), seed=11)
    return SamplingParams(**{**base, **kwargs})


def run(model, n=5, params=None, **config):
    config = dict(dict(page_size=4, segment_steps=6), **config)
    sampler = JaxSampler(model, config=SamplerConfig(buckets=_buckets(), **config))
    out = sampler.generate(PROMPTS, n, params or sampling())
    return out, sampler.last_stats


def _buckets():
    return PromptBuckets(minimum=8, bits=1)


def as_lists(out):
    return [[(c.token_ids, c.finish_reason) for c in cs] for cs in out]


def assert_same(out, reference):
    """The same tokens and finish reasons; log-probs equal up to float32 rounding (a layout
    pads the prompts to other lengths and runs other row counts, which changes XLA's order of
    summation, not the values summed)."""
    assert as_lists(out) == as_lists(reference)
    for cs, ref in zip(out, reference):
        for c, r in zip(cs, ref):
            np.testing.assert_allclose(c.logprobs, r.logprobs, rtol=0, atol=2e-6)
            np.testing.assert_allclose(c.temperature_logprobs, r.temperature_logprobs, rtol=0,
                                       atol=2e-6)


@pytest.mark.slow
def test_a_sample_does_not_depend_on_the_slot_layout(model):
    reference, stats = run(model, max_rows=64, rows_per_prompt=16)
    assert stats["rows"] == 20 and stats["prompt_slots"] == 4
    lengths = [len(c.token_ids) for cs in reference for c in cs]
    assert min(lengths) < 10 and max(lengths) == 24  # rows stop at varied lengths
    assert len({c.finish_reason for cs in reference for c in cs}) == 2
    for layout in (dict(max_rows=1), dict(max_rows=3, rows_per_prompt=3),
                   dict(max_rows=4, rows_per_prompt=2), dict(max_rows=6, rows_per_prompt=1)):
        out, stats = run(model, **layout)
        assert stats["rows"] < 20  # more requests than rows: rows were refilled
        assert_same(out, reference)


def test_rows_move_to_another_prompt_and_samples_stay_the_same(model):
    # 4 rows (2 per prompt), 4 prompt slots (twice what the rows need: 4 prompts) of 4 lanes:
    # the rows are not tied to a slot. All four start on the oldest prompt (5 samples to
    # start), and move on to the next prompts as they finish.
    reference, _ = run(model, max_rows=64, rows_per_prompt=16)
    out, stats = run(model, max_rows=4, rows_per_prompt=2)
    assert (stats["rows"], stats["prompt_slots"], stats["lanes"]) == (4, 4, 4)
    assert stats["most_rows_on_one_slot"] == 4
    assert_same(out, reference)
    # Segments that run on until 3 rows finished (not 1): other refills, the same samples.
    later, fewer = run(model, max_rows=4, rows_per_prompt=2, refill_rows=3)
    assert fewer["segments"] < stats["segments"]
    assert_same(later, reference)


def test_one_prompt_on_fewer_rows_than_samples_gives_the_same_samples(model):
    # One slot whose rows each restart on the next sample (the layout without gathers).
    config = dict(buckets=_buckets(), page_size=4, segment_steps=6)
    sampler = JaxSampler(model, config=SamplerConfig(max_rows=3, **config))
    out = sampler.generate(PROMPTS[:1], 7, sampling())
    assert (sampler.last_stats["rows"], sampler.last_stats["prompt_slots"]) == (3, 1)
    reference = JaxSampler(model, config=SamplerConfig(max_rows=64, **config)).generate(
        PROMPTS[:1], 7, sampling())
    assert_same(out, reference)


def test_a_sample_survives_giving_its_pages_back(model):
    no_stop = sampling(stop_token_ids=())  # every row needs all of its 6 pages
    reference, _ = run(model, params=no_stop)
    # Room for 20 rows but pages for the prompts and 12 rows: running rows give pages back
    # and restart.
    probe = JaxSampler(model, config=SamplerConfig(buckets=_buckets(), page_size=4,
                                                   segment_steps=6, max_rows=20))
    plan = probe.plan([len(p) for p in PROMPTS], 5, 24)
    page_bytes = plan.page_pool // plan.pages
    prompt_pages = plan.prompts * plan.pages_per_prompt
    short = plan.total - plan.page_pool + (prompt_pages + plan.pages_per_row * 12 + 1) * page_bytes
    out, stats = run(model, params=no_stop, max_rows=20, memory_bytes=short)
    assert stats["rows"] == 20
    assert stats["pages"] <= prompt_pages + 12 * plan.pages_per_row
    assert stats.get("preempted", 0) > 0
    assert_same(out, reference)


def test_the_call_seconds_split_into_prefills_segments_and_host_visits(model):
    # 4 prompts on 2 slots: a second round of prefills after the first segments.
    begin = time.perf_counter()
    _, stats = run(model, max_rows=4, rows_per_prompt=2, segment_steps=3)
    wall = time.perf_counter() - begin
    assert stats["prefills"] == 4 and stats["segments"] >= 8
    assert stats["prefill_s"] > 0 and stats["decode_s"] > 0 and stats["host_s"] > 0
    assert stats["prefill_s"] + stats["decode_s"] + stats["host_s"] <= wall
    # 20 samples on 4 rows: samples wait for rows until the last ones start, then the drain
    assert 0 < stats["steady_tokens"] < stats["row_steps"]
    assert 0 < stats["steady_s"] < wall
    # every sample starts at once: nothing waits, so no steady phase
    _, stats = run(model, n=2, max_rows=8, rows_per_prompt=2, segment_steps=3)
    assert stats.get("steady_tokens", 0) == 0 and stats["steady_s"] == 0


def test_rounds_of_other_prompts_in_one_bucket_compile_nothing_new(model):
    # Evaluation's rounds: the same tasks, other augmentations, so other prompt lengths in the
    # same buckets. The plan's page count follows the bucket, not the lengths, so the second
    # and third calls reuse the first call's programs; a longer bucket compiles new ones.
    sampler = JaxSampler(model, config=SamplerConfig(
        buckets=_buckets(), page_size=4, segment_steps=6, max_rows=8, memory_bytes=2 ** 28))
    rng = np.random.default_rng(0)
    calls = [PROMPTS, [[1] + rng.integers(6, VOCAB, len(p) - 1 - (len(p) > 8)).tolist()
                       for p in PROMPTS], [p[:-1] for p in PROMPTS]]
    calls.append(calls[0] + [[1] + list(range(6, 40))])  # 35 tokens: a bucket of 64
    compiled, pages = [], []
    for prompts in calls:
        sampler.generate(prompts, 3, sampling())
        compiled.append(sampler.last_stats["compiled"])
        pages.append(sampler.last_stats["pages"])
    assert compiled[1] == compiled[2] == 0 and pages[0] == pages[1] == pages[2], (compiled, pages)
    assert compiled[3] > 0 and pages[3] != pages[0]


@pytest.mark.parametrize("n,rows,rows_per_prompt,refill_rows",
                         [(2, 8, 2, 0), (5, 4, 2, 0), (3, 6, 3, 0), (3, 12, 4, 3)])
def test_the_drain_model_replays_the_samplers_schedule_step_for_step(model, n, rows,
                                                                      rows_per_prompt,
                                                                      refill_rows):
    # `benchmarks/drain.py` predicts the steps of layouts no GPU has run; fed the lengths the
    # sampler produced, it must reproduce the sampler's own steps and row-steps. 10 prompts
    # on rows / R slots (memory for exactly that layout, so no extra slots): a slot takes the
    # next prompt only when its last row finishes, and rows are refilled between segments.
    spec = importlib.util.spec_from_file_location("drain", ROOT / "benchmarks" / "drain.py")
    drain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drain)
    rng = np.random.default_rng(0)
    prompts = [[1] + rng.integers(6, VOCAB, int(rng.integers(2, 30))).tolist() for _ in range(10)]
    r = min(n, rows_per_prompt)
    exact = plan_slots(model.config, np.float32, prompts=rows // r, rows_per_prompt=r,
                       prompt_len=32, max_new_tokens=24, page_size=4,
                       pages=1 + rows // r * 8 + rows * 6).total
    sampler = JaxSampler(model, config=SamplerConfig(
        buckets=_buckets(), page_size=4, segment_steps=6, max_rows=rows,
        rows_per_prompt=rows_per_prompt, refill_rows=refill_rows, memory_bytes=exact))
    out, stats = sampler.generate(prompts, n, sampling()), sampler.last_stats
    assert stats["prompt_slots"] == rows // r and not stats.get("preempted")
    first = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # the sampler's order
    lengths = np.array([[len(c.token_ids) for c in out[i]] for i in first])
    assert len(np.unique(lengths)) > 5
    replayed = drain.slotted_steps(lengths, stats["rows"], stats["prompt_slots"], stats["lanes"],
                                   segment_steps=6, refill_rows=refill_rows)
    assert replayed == (stats["steps"], stats["row_steps"], stats["segments"])


def test_samples_of_a_prompt_differ_and_seeds_matter(model):
    out, _ = run(model)
    assert len({c.token_ids for c in out[0]}) > 1
    other = JaxSampler(model, config=SamplerConfig(page_size=4)).generate(
        PROMPTS, 5, sampling(seed=12))
    assert as_lists(other) != as_lists(out)


def test_a_seed_beyond_32_bits_samples_as_its_low_32_bits(model):
    # Dynamic sampling's later generation batches have seeds past 2**32 (seeds.step_sampling);
    # they once stopped the run with an OverflowError.
    big = 7_919_000_012
    out, _ = run(model, n=2, params=sampling(seed=big))
    reference, _ = run(model, n=2, params=sampling(seed=big % 2 ** 32))
    assert_same(out, reference)


def test_greedy_samples_are_identical_and_match_one_row(model):
    greedy = sampling(temperature=0.0, top_p=1.0)
    many = JaxSampler(model, config=SamplerConfig(page_size=4)).generate(PROMPTS, 3, greedy)
    one = JaxSampler(model, config=SamplerConfig(page_size=4, max_rows=1)).generate(
        PROMPTS, 3, greedy)
    assert_same(many, one)
    assert all(len({c.token_ids for c in cs}) == 1 for cs in many)


def test_an_fp8_cache_takes_a_quarter_of_float32_and_samples_close_to_the_exact_one(model):
    # 2 layers x (k, v) x 2 heads x 8 dims: 64 values a token, 256 bytes in float32, 64 in fp8.
    # The first token of every sample comes from the prefill's logits, not the cache, so it is
    # the same; the greedy completions' log-probs differ by the cache's rounding while the
    # tokens agree (most of them here), and the log-probs are not the trainer's.
    greedy = sampling(temperature=0.0, top_p=1.0, stop_token_ids=())
    config = dict(buckets=_buckets(), page_size=4, segment_steps=6, memory_bytes=2 ** 20)
    exact = JaxSampler(model, config=SamplerConfig(**config))
    fp8 = JaxSampler(model, config=SamplerConfig(kv_cache_dtype="fp8", **config))
    assert exact.trainer_logprobs and not fp8.trainer_logprobs
    lengths = [len(p) for p in PROMPTS]
    plans = [sampler.plan(lengths, 3, 24) for sampler in (exact, fp8)]
    assert [plan.page_pool // plan.pages for plan in plans] == [4 * 256, 4 * 64]
    a, b = (sampler.generate(PROMPTS, 1, greedy) for sampler in (exact, fp8))
    # the bytes the eval benchmark counts per cached token read
    assert (exact.last_stats["kv_bytes_per_token"], fp8.last_stats["kv_bytes_per_token"]) == (
        256, 64)
    agreed, differences = 0, []
    for (x,), (y,) in zip(a, b):
        assert x.token_ids[0] == y.token_ids[0]
        same = next((i for i, (s, t) in enumerate(zip(x.token_ids, y.token_ids)) if s != t),
                    len(x.token_ids))
        agreed += same
        differences += np.abs(np.subtract(x.logprobs[:same], y.logprobs[:same])).tolist()
    assert agreed >= len(PROMPTS) * 24 // 2
    assert 1e-5 < max(differences) < 0.01


# ----------------------------------------------------------------------------- attention


def random_case(seed, rows_per_prompt=3, prompts=2, prompt_len=24, page_size=4, pages_per_row=5,
                heads=4, kv_heads=2, head_dim=8):
    rng = np.random.default_rng(seed)
    """Rows' and prompts' keys in pages of one pool, shuffled, and the prompts' keys also as
    dense [P, S, K, H] arrays for the reference. Returns (q, k_pages, v_pages, table, lengths,
    prefix_k, prefix_v, prefix_lengths, prompt_table)."""
    rng = np.random.default_rng(seed)
    b = prompts * rows_per_prompt
    per_prompt = -(-prompt_len // page_size)
    total_pages = 1 + b * pages_per_row + prompts * per_prompt
    q = rng.normal(size=(b, heads, head_dim)).astype(np.float32)
    k_pages = rng.normal(size=(total_pages, page_size, kv_heads, head_dim)).astype(np.float32)
    v_pages = rng.normal(size=(total_pages, page_size, kv_heads, head_dim)).astype(np.float32)
    order = 1 + rng.permutation(total_pages - 1).astype(np.int32)
    table = order[:b * pages_per_row].reshape(b, pages_per_row)
    prompt_table = order[b * pages_per_row:].reshape(prompts, per_prompt)
    lengths = rng.integers(1, page_size * pages_per_row + 1, b).astype(np.int32)
    lengths[0] = 1
    lengths[-1] = page_size * pages_per_row
    prefix_k = rng.normal(size=(prompts, prompt_len, kv_heads, head_dim)).astype(np.float32)
    prefix_v = rng.normal(size=(prompts, prompt_len, kv_heads, head_dim)).astype(np.float32)
    for pages, dense in ((k_pages, prefix_k), (v_pages, prefix_v)):
        padded = np.zeros((prompts, per_prompt * page_size, kv_heads, head_dim), np.float32)
        padded[:, :prompt_len] = dense
        pages[prompt_table] = padded.reshape(prompts, per_prompt, page_size, kv_heads, head_dim)
    prefix_lengths = rng.integers(1, prompt_len + 1, prompts).astype(np.int32)
    prefix_lengths[0] = 1
    return (q, k_pages, v_pages, table, lengths, prefix_k, prefix_v, prefix_lengths,
            prompt_table)


def dense_reference(q, k_pages, v_pages, table, lengths, prefix_k, prefix_v, prefix_lengths,
                    prompt_table):
    """The attention as `shared_prefix_scores` computes it, with each row's own keys copied out
    of its pages into a dense [P, R, T, K, H] cache and the prompts' dense keys."""
    p = prefix_k.shape[0]
    b, n, h = q.shape
    r = b // p
    own_k = k_pages[table].reshape(p, r, -1, *k_pages.shape[2:])
    own_v = v_pages[table].reshape(p, r, -1, *v_pages.shape[2:])
    t = own_k.shape[2]
    prefix_valid = np.arange(prefix_k.shape[1])[None, :] < prefix_lengths[:, None]
    out = np.zeros_like(q)
    for row in range(b):  # one row at a time: each has its own visible length
        mask = np.arange(t)[None, :] < lengths[row]
        pi, ri = divmod(row, r)
        out[row] = shared_prefix_scores(
            jnp.asarray(q[row][None, None, None]), prefix_k[pi:pi + 1], prefix_v[pi:pi + 1],
            prefix_valid[pi:pi + 1], own_k[pi:pi + 1, ri:ri + 1], own_v[pi:pi + 1, ri:ri + 1],
            jnp.asarray(mask))[0, 0, 0]
    return out


def split_parts(case, implementation):
    q, k_pages, v_pages, table, lengths, prefix_k, prefix_v, prefix_lengths, prompt_table = case
    p = prefix_k.shape[0]
    prefix = attention.prefix_attention(q.reshape(p, -1, *q.shape[1:]), k_pages, v_pages,
                                        prompt_table, prefix_lengths,
                                        implementation=implementation)[:2]
    prefix = jax.tree.map(lambda x: x.reshape(q.shape[0], *x.shape[2:]), prefix)
    own = attention.paged_attention(q, k_pages, v_pages, table, lengths,
                                    implementation=implementation)[:2]
    return np.asarray(attention.merge(prefix, own))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paged_attention_equals_the_dense_attention(seed):
    case = random_case(seed)
    np.testing.assert_allclose(split_parts(case, "xla"), dense_reference(*case), atol=2e-5)


def test_an_empty_own_part_leaves_the_prefix_attention():
    q, k_pages, v_pages, table, lengths, prefix_k, _, prefix_lengths, prompt_table = \
        random_case(3)
    own = attention.paged_attention(q, k_pages, v_pages, table, np.zeros_like(lengths))[:2]
    assert np.all(np.isneginf(own[1])) and np.all(own[0] == 0)
    p = prefix_k.shape[0]
    prefix = attention.prefix_attention(q.reshape(p, -1, *q.shape[1:]), k_pages, v_pages,
                                        prompt_table, prefix_lengths)[:2]
    prefix = jax.tree.map(lambda x: x.reshape(q.shape[0], *x.shape[2:]), prefix)
    np.testing.assert_allclose(attention.merge(prefix, own), prefix[0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_pallas_kernel_equals_the_xla_paged_attention(seed):
    # Pallas' interpreter on the CPU runs the kernel's program; 16-token pages and 16-dim
    # heads are the smallest sizes the compiled GPU kernel takes.
    case = random_case(seed, page_size=16, pages_per_row=3, heads=8, kv_heads=2, head_dim=16)
    q, k_pages, v_pages, table, lengths = case[:5]
    lengths[1] = 0
    ours = attention.paged_attention(q, k_pages, v_pages, table, lengths,
                                     implementation="pallas")[:2]
    ref = attention.paged_attention(q, k_pages, v_pages, table, lengths, implementation="xla")[:2]
    np.testing.assert_allclose(ours[0], ref[0], atol=2e-5)
    np.testing.assert_array_equal(np.isneginf(ours[1]), np.isneginf(ref[1]))
    finite = np.isfinite(ref[1])
    np.testing.assert_allclose(np.asarray(ours[1])[finite], np.asarray(ref[1])[finite], atol=2e-5)


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_fp8_pages_are_read_in_fp8_and_attended_in_the_queries_type(implementation):
    # sampler.kv_cache_dtype="fp8": the pool holds float8 e4m3 keys and values. Both parts of
    # the attention must equal the dense attention over the float8-rounded keys and values
    # (upcast to the queries' float32), and differ from the unrounded attention by rounding.
    case = list(random_case(4, page_size=16, pages_per_row=2, prompt_len=40, heads=8,
                            kv_heads=2, head_dim=16))
    rounded = lambda x: np.asarray(jnp.asarray(x, jnp.float8_e4m3fn).astype(jnp.float32))
    exact = dense_reference(*case)
    for i in (1, 2):  # the pool, as the sampler stores it
        case[i] = jnp.asarray(case[i], jnp.float8_e4m3fn)
    ours = split_parts(case, implementation)
    reference = list(case)
    for i in (1, 2, 5, 6):  # the reference on the same rounded values, in float32
        reference[i] = rounded(case[i])
    np.testing.assert_allclose(ours, dense_reference(*reference), atol=2e-5)
    error = np.abs(ours - exact).max()
    assert 1e-3 < error < 0.2, error  # e4m3 keeps 3 bits of mantissa


def test_fp8_pages_go_to_the_kernels_only_on_gpus_that_convert_fp8():
    from types import SimpleNamespace

    from arc_jax.rollout.pallas_attention import reads_fp8

    gpu = lambda capability: SimpleNamespace(compute_capability=capability)
    assert not reads_fp8(gpu("8.0")) and not reads_fp8(gpu("8.6"))  # A100, A10: XLA instead
    assert reads_fp8(gpu("8.9")) and reads_fp8(gpu("9.0")) and reads_fp8(gpu("10.0"))


@pytest.mark.parametrize("kernel", ["prefix_attention", "paged_attention"])
@pytest.mark.parametrize("pool_dtype", [jnp.bfloat16, jnp.float8_e4m3fn])
def test_the_pallas_kernels_lower_to_triton_for_a_gpu(kernel, pool_dtype):
    # The CPU runs the kernels in Pallas' interpreter, which takes shapes that Triton refuses
    # (for example a block that is not a power of two). Lowering them for a GPU, as jax.export
    # does on any machine, runs Pallas' Triton lowering: the 8B head shapes, a pool and tables
    # whose sizes are not powers of two, the pool aliased in and out.
    from jax import export

    from arc_jax.rollout import pallas_attention

    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    int32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    # M pages of 32 tokens, 8 key/value heads of 128 (bf16, or fp8 with bf16 queries)
    pool = jax.ShapeDtypeStruct((101, 32, 8, 128), pool_dtype)
    if kernel == "prefix_attention":  # 3 slots of 5 lanes, tables of 9 pages
        args = (bf16(3, 5, 32, 128), pool, pool, int32(3, 9), int32(3))
    else:  # 6 rows, tables of 3 pages
        args = (bf16(6, 32, 128), pool, pool, int32(6, 3), int32(6))
    fn = jax.jit(lambda *a: getattr(pallas_attention, kernel)(*a, interpret=False))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    module = export.export(fn, platforms=["cuda"], disabled_checks=[triton])(*args).mlir_module()
    assert module.count("__gpu$xla.gpu.triton") == 1
    assert module.count("#stablehlo.output_operand_alias<") == 2  # the key and value pools


@pytest.mark.parametrize("prompt_len, rows_per_prompt", [(200, 3), (64, 5)])
def test_the_pallas_prefix_kernel_equals_the_dense_attention(prompt_len, rows_per_prompt):
    # Prompts of 1 token, of a partial last page and of the whole padded length, in shuffled
    # pages; the kernel splits each prompt into chunks (200 tokens: several chunks, some
    # empty) and merges them.
    case = random_case(7, rows_per_prompt=rows_per_prompt, prompts=3, prompt_len=prompt_len,
                       page_size=16, pages_per_row=2, heads=8, kv_heads=2, head_dim=16)
    case[7][:] = [1, prompt_len - 7, prompt_len]
    np.testing.assert_allclose(split_parts(case, "pallas"), dense_reference(*case), atol=3e-5)
    q, k_pages, v_pages, prefix_lengths, prompt_table = case[0], *case[1:3], *case[7:]
    ours = attention.prefix_attention(q.reshape(3, -1, *q.shape[1:]), k_pages, v_pages,
                                      prompt_table, prefix_lengths, implementation="pallas")
    ref = attention.prefix_attention(q.reshape(3, -1, *q.shape[1:]), k_pages, v_pages,
                                     prompt_table, prefix_lengths)
    np.testing.assert_allclose(ours[1], ref[1], atol=3e-5)
    np.testing.assert_array_equal(ours[2], k_pages)  # the pool goes out unchanged

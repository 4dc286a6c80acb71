"""The toy tokenizer, trained for real with `tokenizers` on project-generated text."""

import pytest
from transformers import AutoTokenizer

from arc_jax import prompts
from arc_jax.toy.programs import COLOR_CONSTANTS
from arc_jax.toy.sft import completion_text
from arc_jax.toy.synthetic import synthetic_tasks
from arc_jax.prompts import EOT, stop_token_ids
from arc_jax.toy.tokenizer import train_tokenizer

CONFIG = prompts.PromptConfig(style="arc25", prefill_assistant=True)
VOCAB = 600


def _corpus(count=150, seed=0):
    return [prompts.render_prompt(task, CONFIG, seed=i) + completion_text(program) + EOT
            for i, (task, program) in enumerate(synthetic_tasks(count, seed))]


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus, VOCAB, model_max_length=1024)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_vocabulary_size(tokenizer):
    # BPE learns VOCAB - 38 tokens; the 38 fixed phrases add one token each unless BPE already
    # has them (colour names such as " Red" are frequent enough to be learnt).
    assert VOCAB - 38 < len(tokenizer) <= VOCAB


def test_colour_names_and_constants_are_single_tokens(tokenizer):
    for name in ("Black", "Blue", "Red", "Green", "Yellow", "Gray", "Pink", "Orange", "Purple",
                 "Brown"):
        assert len(_ids(tokenizer, name)) == 1, name
        assert len(_ids(tokenizer, " " + name)) == 1, name
    for name in COLOR_CONSTANTS:
        assert len(_ids(tokenizer, f"Color.{name}")) == 1, name


def test_fixed_prompt_sentences_are_single_tokens(tokenizer):
    for phrase in (prompts.PREAMBLE, prompts.INSTRUCTION, prompts.ASSISTANT_PREFIX.strip()):
        assert len(_ids(tokenizer, phrase)) == 1


def test_round_trip_of_prompts_programs_and_other_text(tokenizer, corpus):
    texts = corpus[:20] + [
        "def f(x):\n\treturn x  # ünïcödé, emoji \U0001F600, CRLF\r\n",
        "Color.PURPLEX Black  Blue\n\n\n  Blackish,Red",
    ]
    for text in texts:
        assert tokenizer.decode(_ids(tokenizer, text)) == text


def test_encode_prompt_gives_exactly_one_bos(tokenizer):
    task, _ = synthetic_tasks(1, seed=5)[0]
    text = prompts.render_prompt(task, CONFIG, tokenizer=tokenizer)
    assert tokenizer.chat_template is None  # so render_prompt used the project's template
    assert text.startswith(prompts.BOS + "<|start_header_id|>system<|end_header_id|>")
    ids = prompts.encode_prompt(tokenizer, text)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    # Like Llama-3's tokenizer, the default encoding adds the BOS in front.
    assert tokenizer("Black")["input_ids"] == [tokenizer.bos_token_id] + _ids(tokenizer, "Black")


def test_special_tokens(tokenizer):
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"
    for token in ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"):
        assert _ids(tokenizer, token) == [tokenizer.convert_tokens_to_ids(token)]
    eot, end = stop_token_ids(tokenizer)
    assert _ids(tokenizer, "Red<|eot_id|>")[-1] == eot
    assert tokenizer.decode(_ids(tokenizer, "Red Blue<|eot_id|><|end_of_text|>"),
                            skip_special_tokens=True) == "Red Blue"
    assert eot != end


def test_saved_tokenizer_loads_with_auto_tokenizer(tokenizer, corpus, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert _ids(loaded, corpus[0]) == _ids(tokenizer, corpus[0])
    assert loaded.decode(_ids(loaded, corpus[1])) == corpus[1]
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)


def test_training_is_deterministic(tokenizer, corpus):
    again = train_tokenizer(corpus, VOCAB, model_max_length=1024)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_too_small_vocabulary_is_refused(corpus):
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        train_tokenizer(corpus, 100, model_max_length=1024)


def test_too_small_corpus_is_refused():
    with pytest.raises(ValueError, match="corpus supports only"):
        train_tokenizer(["Black Blue"], 400, model_max_length=1024)

"""A small byte-level BPE tokenizer for the toy policy, trained on project-generated text.

It has the Llama-3 special tokens (`<|begin_of_text|>` as BOS, added in front when
`add_special_tokens=True`, like Llama-3's tokenizer), no chat template (so prompts use the
project's own Llama-3.1 layout), and the prompt's fixed sentences as single tokens, so that
a prompt costs about as many tokens as its grids; colour names (" Red", "Color.RED") are
single tokens too, whatever the corpus. Words are split Llama-3 style, except
that identifiers keep their underscores (`output_grid` can become one token).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import trainers
from transformers import PreTrainedTokenizerFast

from arc_jax import prompts
from arc_jax.prompts import BOS, END_OF_TEXT, EOT
from arc_jax.toy.programs import COLOR_CONSTANTS, HEADER

PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = (BOS, END_OF_TEXT, "<|start_header_id|>", "<|end_header_id|>", EOT, PAD)

# Text that every prompt (or every program) contains verbatim, the colour names of grids
# and the colour constants of programs; each becomes one token, whatever the corpus.
FIXED_PHRASES = (
    prompts.SYSTEM_HEADER_DATES,
    prompts.SYSTEM_PROMPT,
    prompts.PREAMBLE,
    prompts.EXAMPLES_HEADER,
    prompts.TEST_HEADER,
    prompts.INSTRUCTION,
    prompts.ASSISTANT_PREFIX.strip(),
    HEADER,
)
FIXED_PHRASES += tuple(prefix + name for name in prompts.COLOR_NAMES for prefix in ("", " "))
FIXED_PHRASES += tuple(f"Color.{name}" for name in COLOR_CONSTANTS)

# Identifiers (with underscores), numbers, punctuation runs, whitespace runs.
_SPLIT_PATTERN = r" ?[A-Za-z_][A-Za-z0-9_]*| ?[0-9]+| ?[^\sA-Za-z0-9_]+|\s+(?!\S)|\s+"


def train_tokenizer(corpus: Iterable[str], vocab_size: int,
                    model_max_length: int) -> PreTrainedTokenizerFast:
    """Trains the tokenizer on `corpus`; its vocabulary has at most `vocab_size` tokens (fewer
    when BPE learnt some of the fixed phrases, such as " Red", by itself).

    Deterministic: the same corpus gives the same tokenizer.
    """
    base_size = vocab_size - len(FIXED_PHRASES)
    minimum = len(SPECIAL_TOKENS) + 256
    if base_size < minimum:
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} is too small; it needs at "
                         f"least {minimum + len(FIXED_PHRASES)} (specials, bytes, fixed phrases)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    if tokenizer.get_vocab_size() != base_size:
        raise ValueError(f"train_tokenizer: the corpus supports only {tokenizer.get_vocab_size()} "
                         f"BPE tokens, fewer than the {base_size} asked; use a larger corpus or "
                         "a smaller vocab_size")
    tokenizer.add_tokens([AddedToken(p, normalized=False, special=False) for p in FIXED_PHRASES])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )

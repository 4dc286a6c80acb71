"""BARC induction prompts: ARC task -> Llama-3.1 chat prompt, and completion -> code.

Two prompt styles are supported:

- `barc` (Format A): the exact layout the BARC induction model was trained on.
  Train pairs in file order, all test inputs in one prompt, and the model writes the
  assistant prefix itself (the prompt ends with the assistant header). Project default.
- `arc25` (Format B): the variant used in the published GRPO runs on this model.
  One blank line between examples, no `Input:` line before the test grid, shuffled
  train pairs, one test input per prompt, and the assistant turn prefilled with the
  prefix (the prompt ends at `...describing how to solve the problem:`).

Grids are written with colour names, one grid row per line. Every piece below is a pure
function of its arguments; randomness comes only from an explicit integer seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from arc_jax.data.types import Task

# ARC colour index -> name (BARC's table with Grey, Teal, Maroon renamed Gray, Purple, Brown).
COLOR_NAMES = (
    "Black", "Blue", "Red", "Green", "Yellow", "Gray", "Pink", "Orange", "Purple", "Brown"
)

SYSTEM_PROMPT = (
    "You are a world-class puzzle solver with exceptional pattern recognition skills and "
    "expertise in Python programming. Your task is to analyze puzzles and provide Python solutions."
)

PREAMBLE = (
    "Given input-output grid pairs as reference examples, carefully observe the patterns to "
    "predict the output grid for new test input. Each pair follows the same transformation rule. "
    "Grids are 2D arrays represented as strings, with cells (colors) separated by spaces and rows "
    "by newlines."
)

EXAMPLES_HEADER = "Here are the input and output grids for the reference examples:"

TEST_HEADER = "Here is the input grid for the test example:"

INSTRUCTION = (
    "Write a Python function `transform` that can convert any given input grid to its "
    "corresponding output grid based on the pattern observed in the reference examples."
)

ASSISTANT_PREFIX = (
    "Let's solve this puzzle using Python code with the common library functions. We'll first "
    "reason about the problem and then write the code to solve it. The `transform` function will "
    "take the input grid and return the output grid. Here is the Python code with the comments "
    "describing how to solve the problem:\n"
)

# Llama-3.1 chat layout, as rendered by the stock template with its default date.
BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
END_OF_TEXT = "<|end_of_text|>"
SYSTEM_HEADER_DATES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

STYLES = ("barc", "arc25")
TEST_INPUT_MODES = ("all", "one")

# What differs between the styles inside the user message.
_EXAMPLE_END = {"barc": "\n\n\n", "arc25": "\n\n"}
_TEST_HEADER = {"barc": TEST_HEADER + "\nInput:\n", "arc25": "\n" + TEST_HEADER + "\n"}

# Defaults that each style fills in for the PromptConfig fields left as None.
_STYLE_DEFAULTS = {
    "barc": {"prefill_assistant": False, "shuffle_train": False, "test_inputs": "all"},
    "arc25": {"prefill_assistant": True, "shuffle_train": True, "test_inputs": "one"},
}

# Independent random streams per seed, so that turning shuffling on or off does not
# change which test input is chosen.
_SHUFFLE_STREAM = 0
_TEST_CHOICE_STREAM = 1


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How a task becomes a prompt. Fields left as None take the style's default.

    style: "barc" (Format A, training format) or "arc25" (Format B).
    prefill_assistant: end the prompt with the assistant prefix (continue_final_message)
      instead of an empty assistant turn (add_generation_prompt). barc: False, arc25: True.
    shuffle_train: show the train pairs in a seeded random order. barc: False, arc25: True.
    test_inputs: "all" test inputs in one prompt, or "one". barc: "all", arc25: "one".
    test_index: the test input to show; implies "one". None with "one": seeded random choice.
    """

    style: str = "barc"
    prefill_assistant: bool | None = None
    shuffle_train: bool | None = None
    test_inputs: str | None = None
    test_index: int | None = None

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"PromptConfig.style: expected one of {STYLES}, got {self.style!r}")
        if self.test_inputs is not None and self.test_inputs not in TEST_INPUT_MODES:
            raise ValueError(
                f"PromptConfig.test_inputs: expected one of {TEST_INPUT_MODES} or None, "
                f"got {self.test_inputs!r}"
            )
        if self.test_index is not None and self.test_inputs == "all":
            raise ValueError(
                f"PromptConfig: test_index={self.test_index} selects one test input, "
                "which contradicts test_inputs='all'"
            )

    def resolve(self) -> PromptConfig:
        """Returns a copy with every None setting replaced by the style's default."""
        defaults = dict(_STYLE_DEFAULTS[self.style])
        if self.test_index is not None:
            defaults["test_inputs"] = "one"
        return dataclasses.replace(
            self, **{name: value for name, value in defaults.items() if getattr(self, name) is None}
        )


def grid_to_text(grid: np.ndarray, *, where: str = "grid") -> str:
    """Colour names separated by spaces, one grid row (axis 0) per line, no trailing newline.

    `where` names the grid in error messages (e.g. "task 007bbfb7 train[0].input").
    """
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{where}: expected a non-empty 2-D grid, got shape {grid.shape}")
    if not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"{where}: expected integer colours, got dtype {grid.dtype}")
    if grid.min() < 0 or grid.max() > 9:
        raise ValueError(f"{where}: expected colours 0-9, got values {grid.min()}..{grid.max()}")
    return "\n".join(" ".join(COLOR_NAMES[value] for value in row) for row in grid.tolist())


def render_user_message(
    task: Task,
    *,
    style: str = "barc",
    train_order: Sequence[int] | None = None,
    test_indices: Sequence[int] | None = None,
) -> str:
    """The user turn for `task` in the given style.

    train_order: indices into task.train, in display order (default: file order).
    test_indices: indices into task.test to show (default: all). Test outputs are not used,
      so tasks with hidden test outputs render too.
    """
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    train_order = range(len(task.train)) if train_order is None else train_order
    test_indices = range(len(task.test)) if test_indices is None else test_indices
    if not task.train or not task.test:
        raise ValueError(
            f"task {task.id}: a prompt needs at least one train and one test pair, "
            f"got {len(task.train)} train and {len(task.test)} test"
        )
    _check_indices(task.id, "train", train_order, len(task.train))
    _check_indices(task.id, "test", test_indices, len(task.test))

    examples = []
    for number, i in enumerate(train_order, start=1):
        pair = task.train[i]
        if pair.output is None:
            raise ValueError(f"task {task.id} train[{i}].output: expected a grid, got None")
        input_text = grid_to_text(pair.input, where=f"task {task.id} train[{i}].input")
        output_text = grid_to_text(pair.output, where=f"task {task.id} train[{i}].output")
        examples.append(
            f"Example {number}\nInput:\n{input_text}\n\nOutput:\n{output_text}{_EXAMPLE_END[style]}"
        )
    tests = [
        grid_to_text(task.test[i].input, where=f"task {task.id} test[{i}].input")
        for i in test_indices
    ]
    return (
        f"{PREAMBLE}\n{EXAMPLES_HEADER}\n"
        + "".join(examples)
        + _TEST_HEADER[style]
        + "".join(test + "\n\n" for test in tests)
        + INSTRUCTION
    )


def _check_indices(task_id: str, field: str, indices: Sequence[int], size: int) -> None:
    if len(indices) == 0:
        raise ValueError(f"task {task_id}: no {field} pairs selected")
    for i in indices:
        if not 0 <= i < size:
            raise ValueError(
                f"task {task_id}: {field} index {i} out of range, task has {size} {field} pairs"
            )


def select_examples(
    task: Task, config: PromptConfig, *, seed: int = 0
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns (train_order, test_indices) for `task` under `config`, reproducible from `seed`."""
    config = config.resolve()
    train_order = tuple(range(len(task.train)))
    if config.shuffle_train:
        rng = np.random.default_rng([seed, _SHUFFLE_STREAM])
        train_order = tuple(int(i) for i in rng.permutation(len(task.train)))
    if config.test_inputs == "all":
        return train_order, tuple(range(len(task.test)))
    if config.test_index is not None:
        return train_order, (config.test_index,)
    if not task.test:
        raise ValueError(f"task {task.id}: no test pairs to choose from")
    rng = np.random.default_rng([seed, _TEST_CHOICE_STREAM])
    return train_order, (int(rng.integers(len(task.test))),)


def build_messages(task: Task, config: PromptConfig, *, seed: int = 0) -> list[dict[str, str]]:
    """Chat messages (system, user, and the assistant prefix when prefilled)."""
    config = config.resolve()
    train_order, test_indices = select_examples(task, config, seed=seed)
    user = render_user_message(
        task, style=config.style, train_order=train_order, test_indices=test_indices
    )
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    if config.prefill_assistant:
        messages.append({"role": "assistant", "content": ASSISTANT_PREFIX})
    return messages


def render_chat(
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
) -> str:
    """The stock Llama-3.1 chat template (no tools), written out in Python.

    Contents are stripped, as the template's `trim` does. `add_generation_prompt` appends an
    empty assistant header; `continue_final_message` ends the text right after the last
    message's stripped content (no <|eot_id|>), like transformers' option of the same name.
    """
    if add_generation_prompt and continue_final_message:
        raise ValueError(
            "render_chat: add_generation_prompt and continue_final_message are exclusive"
        )
    if not messages:
        raise ValueError("render_chat: expected at least one message, got none")
    for i, message in enumerate(messages):
        allowed = ("system", "user", "assistant") if i == 0 else ("user", "assistant")
        if message.get("role") not in allowed:
            raise ValueError(
                f"render_chat: messages[{i}].role: expected one of {allowed}, "
                f"got {message.get('role')!r}"
            )
        if not isinstance(message.get("content"), str):
            raise ValueError(f"render_chat: messages[{i}].content: expected a string")
    system = messages[0]["content"].strip() if messages[0]["role"] == "system" else ""
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if continue_final_message and not turns:
        raise ValueError(
            "render_chat: continue_final_message needs a message after the system prompt"
        )

    text = f"{BOS}<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM_HEADER_DATES}{system}{EOT}"
    for message in turns:
        header = f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n"
        text += header + message["content"].strip() + EOT
    if continue_final_message:
        return text[: -len(EOT)]
    if add_generation_prompt:
        text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return text


def render_prompt(
    task: Task, config: PromptConfig = PromptConfig(), *, tokenizer: Any = None, seed: int = 0
) -> str:
    """The full prompt text for `task`, starting with <|begin_of_text|>.

    Uses `tokenizer.apply_chat_template` when the tokenizer has a chat template, and
    `render_chat` otherwise. Tokenise the result with `encode_prompt`, not with the
    tokenizer's defaults, to avoid a second BOS.
    """
    config = config.resolve()
    messages = build_messages(task, config, seed=seed)
    prefill = bool(config.prefill_assistant)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
        )
    return render_chat(messages, add_generation_prompt=not prefill, continue_final_message=prefill)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, without adding special tokens.

    The rendered text already starts with <|begin_of_text|>; when the tokenizer has a BOS
    token, the ids must hold exactly one BOS, at position 0.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        positions = [i for i, token in enumerate(ids) if token == bos]
        if positions != [0]:
            raise ValueError(
                f"encode_prompt: expected exactly one BOS token (id {bos}) at position 0, "
                f"found it at positions {positions[:10]}; render the prompt with render_prompt "
                "and do not prepend another BOS"
            )
    return ids


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids that end a completion: <|eot_id|> (the end of the answer), then <|end_of_text|>,
    those of the two that the tokenizer's vocabulary has."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in (EOT, END_OF_TEXT)]
    ids = tuple(i for i in ids if i is not None and i != tokenizer.unk_token_id)
    if not ids:
        raise ValueError(f"the tokenizer has neither {EOT} nor {END_OF_TEXT} to stop on")
    return ids


def prompt_num_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens of a rendered prompt, so callers can skip or cut over-long prompts."""
    return len(encode_prompt(tokenizer, text))


def extract_code(completion: str) -> str | None:
    """The first ```python code block of a completion, stripped; None if there is no usable one.

    Rule (the same as the arc25 reference): find the first "```python"; the code is the text
    after it up to the next "```", stripped of surrounding whitespace. Returns None when there
    is no "```python", when that block has no closing fence (a truncated completion), or when
    the block is empty. Text before and after the block is ignored. CRLF line ends inside
    the block are kept as written (Python compiles them).

    A plain ``` fence is deliberately not accepted as a fallback (BARC's scorer accepts it):
    the model was trained to always open its answer with ```python, so a plain fence is a
    format error, and rewarding it in RL would reward drifting away from the trained format.
    """
    opening = "```python"
    start = completion.find(opening)
    if start < 0:
        return None
    body_start = start + len(opening)
    end = completion.find("```", body_start)
    if end < 0:
        return None
    code = completion[body_start:end].strip()
    return code or None

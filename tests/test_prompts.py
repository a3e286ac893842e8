"""Prompt templates: exact wording, brace safety, synthetic match, chat templates."""
from __future__ import annotations

import pytest

from spine.reasoning.problems import Problem
from spine.reasoning.prompts import PROMPT_TEMPLATES, render_chat_prompt, render_prompt
from spine.reasoning.synthetic import ArithmeticProblems, format_document, format_prompt, to_problem

BOOK_PROMPT = (
    "You are a helpful math assistant.\n"
    "Answer the question and write the final result on a new line as:\n"
    "\\boxed{ANSWER}\n\n"
    "Question:\nWhat is 1+1?\n\nAnswer:"
)


def test_math_template_is_the_books_prompt():
    assert render_prompt("What is 1+1?") == BOOK_PROMPT
    assert render_prompt(Problem("p1", "What is 1+1?", "2"), "math") == BOOK_PROMPT


def test_braces_in_problem_text_survive():
    latex = r"Find $\frac{1}{2} + {x}$ when {problem} is $x=\boxed{3}$."
    out = render_prompt(latex, "math")
    assert out.count(latex) == 1 and out.endswith(f"Question:\n{latex}\n\nAnswer:")
    assert render_prompt(latex, "plain") == latex


def test_cot_and_plain():
    cot = render_prompt("Q?", "math_cot")
    assert cot.startswith(render_prompt("Q?", "math")) and "step by step" in cot
    assert render_prompt(Problem("a", "just this", "1"), "plain") == "just this"
    assert {"math", "math_cot", "plain", "synthetic"} <= set(PROMPT_TEMPLATES)


def test_synthetic_template_matches_pretraining_documents():
    for sp in ArithmeticProblems(seed=0, level=3).take(5):
        prompt = render_prompt(to_problem(sp), "synthetic")
        assert prompt == format_prompt(sp)
        assert format_document(sp).startswith(prompt) and prompt.endswith("\nAnswer:")


def test_unknown_template():
    known = "known templates: math, math_cot, plain, synthetic"
    with pytest.raises(ValueError, match=f"unknown prompt template 'mth'; {known}"):
        render_prompt("x", "mth")
    with pytest.raises(TypeError):
        render_prompt(42)


class HFLikeTokenizer:
    """Mimics transformers: tokenizes unless tokenize=False."""

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False, **kwargs):
        self.calls.append((messages, tokenize, add_generation_prompt, kwargs))
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
            if not kwargs.get("enable_thinking", True):
                text += "<think>\n\n</think>\n\n"
        return [1, 2, 3] if tokenize else text


class PlainChatTokenizer:
    """Mimics a spine tokenizer whose apply_chat_template returns text and has no tokenize flag."""

    def apply_chat_template(self, messages, add_generation_prompt, enable_thinking):
        return f"[{messages[0]['content']}|gen={add_generation_prompt}|think={enable_thinking}]"


def test_render_chat_prompt_hf_like():
    tok = HFLikeTokenizer()
    out = render_chat_prompt("What is 1+1?", tok)
    assert out == f"<|im_start|>user\n{BOOK_PROMPT}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    messages, tokenize, gen, kwargs = tok.calls[0]
    assert messages == [{"role": "user", "content": BOOK_PROMPT}] and tokenize is False and gen is True
    assert kwargs == {"enable_thinking": False}
    assert render_chat_prompt("Q", tok, template="plain", enable_thinking=True).endswith("<|im_start|>assistant\n")


def test_render_chat_prompt_plain_and_errors():
    assert render_chat_prompt("Q", PlainChatTokenizer(), "plain", enable_thinking=True) == "[Q|gen=True|think=True]"
    with pytest.raises(TypeError, match="no apply_chat_template"):
        render_chat_prompt("Q", object())

    class Ids:
        def apply_chat_template(self, messages, add_generation_prompt, enable_thinking):
            return [1, 2]

    with pytest.raises(TypeError, match="expected the prompt text"):
        render_chat_prompt("Q", Ids())

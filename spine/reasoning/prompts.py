"""Prompt templates that turn a `Problem` into model input.

Templates hold the literal placeholder "{problem}" and are filled with `str.replace`, never
`str.format`: both the templates ("\\boxed{ANSWER}") and LaTeX problem text contain braces.
"""
from __future__ import annotations

import inspect
import re
from typing import Any

from spine.reasoning.problems import Problem

__all__ = ["PROMPT_TEMPLATES", "STEP_TEMPLATES", "fill", "render_prompt", "render_chat_prompt"]

# "math" is the prompt of the reasoning book (ch03, render_prompt).
_MATH = (
    "You are a helpful math assistant.\n"
    "Answer the question and write the final result on a new line as:\n"
    "\\boxed{ANSWER}\n\n"
    "Question:\n{problem}\n\nAnswer:"
)

PROMPT_TEMPLATES: dict[str, str] = {
    "math": _MATH,
    # Zero-shot chain of thought (Kojima et al.): the cue goes right after "Answer:".
    "math_cot": _MATH + " Let's think step by step.",
    "plain": "{problem}",
    # Identical to spine.reasoning.synthetic.format_prompt, the prefix of its pretraining documents.
    "synthetic": "Question: {problem}\nAnswer:",
}


# Templates of the steps after the first answer (self-verification, critique, revision). Placeholders:
# {prompt} = the problem's rendered prompt, {answer} = the answer under review, {critique} = the review.
# Each ends in the "Question: ... / Answer:" (or "Review:") shape a base model continues, so models that
# only ever saw "Question: ...\nAnswer: ... \boxed{x}" documents (the synthetic-task models) still answer
# in their own format; the revision ends with the problem's own prompt, so it is a fresh answer in context.
STEP_TEMPLATES: dict[str, str] = {
    "verify": "{prompt}{answer}\n\nQuestion: Is the answer above correct? Answer yes or no.\nAnswer:",
    "critique": ("{prompt}{answer}\n\nReview the answer above. Check every step and the arithmetic; say "
                 "whether it is right and, if not, what to fix.\nReview:"),
    "revise": ("{prompt}{answer}\n\nReview:{critique}\n\nUsing the review, answer again. End with the "
               "final result as \\boxed{ANSWER}.\n\n{prompt}"),
}


def fill(template: str, **values: str) -> str:
    """`template` with each "{name}" replaced by `values[name]` (str.replace: LaTeX braces stay put).
    Values are substituted in one pass, so a value containing "{critique}" is never filled again."""
    names = "|".join(re.escape(k) for k in values)
    if not names:
        return template
    return re.sub(r"\{(" + names + r")\}", lambda m: values[m.group(1)], template)


def _text(problem: Problem | str) -> str:
    if isinstance(problem, Problem):
        return problem.prompt
    if isinstance(problem, str):
        return problem
    raise TypeError(f"expected a Problem or a str, got {type(problem).__name__}")


def render_prompt(problem: Problem | str, template: str = "math") -> str:
    """The prompt for `problem` under the named template (unknown name -> ValueError)."""
    try:
        tpl = PROMPT_TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; known templates: "
                         f"{', '.join(sorted(PROMPT_TEMPLATES))}") from None
    return tpl.replace("{problem}", _text(problem))


def render_chat_prompt(problem: Problem | str, tokenizer: Any, template: str = "math",
                       enable_thinking: bool = False) -> str:
    """The rendered prompt as one user turn in the tokenizer's chat template (e.g. Qwen3).

    `tokenizer` needs `apply_chat_template(messages, add_generation_prompt=True,
    enable_thinking=...)`. Hugging Face tokenizers tokenize by default, so `tokenize=False` is
    passed when the method accepts it; the result must be the prompt text.
    """
    fn = getattr(tokenizer, "apply_chat_template", None)
    if not callable(fn):
        raise TypeError(f"{type(tokenizer).__name__} has no apply_chat_template(); use render_prompt() "
                        "for base models without a chat template")
    messages = [{"role": "user", "content": render_prompt(problem, template)}]
    kwargs: dict[str, Any] = {"add_generation_prompt": True, "enable_thinking": enable_thinking}
    try:
        params = inspect.signature(fn).parameters
        if "tokenize" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["tokenize"] = False
    except (TypeError, ValueError):  # builtins without a signature: call as documented
        pass
    out = fn(messages, **kwargs)
    if not isinstance(out, str):
        raise TypeError(f"{type(tokenizer).__name__}.apply_chat_template returned "
                        f"{type(out).__name__}, expected the prompt text (str)")
    return out

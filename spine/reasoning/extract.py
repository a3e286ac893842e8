"""Answer extraction from model completions.

Policy (in order):

1. ``<think>`` blocks are removed first.  If the text contains ``</think>``, everything up to and
   including the *last* ``</think>`` is thinking (this also covers chat templates that put the
   opening ``<think>`` in the prompt).  An *unterminated* ``<think>`` (opening tag, no closing tag
   after it) means the model never left its thinking: everything from that tag to the end is
   thinking and is ignored, so only text *before* it can hold an answer.  A truncated
   generation therefore usually scores "no answer", which is what it is.
2. The answer is the content of the *last* ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces are
   balanced; ``\\{``/``\\}`` are escaped braces and do not count).  The space form
   ``\\boxed 5`` takes the next whitespace-delimited token.  An empty box is skipped (the
   previous box is used).  An *unbalanced* box (``\\boxed{12`` at the end of a truncated
   generation) yields everything after the opening brace, stripped: the most useful reading of
   a cut-off answer, and it cannot run past the end of the text.
3. Fallback: the last number in the visible text (integers, decimals, negatives, fractions
   ``3/4``, thousands separators ``1,234`` -> ``1234``), method ``"last_number"``.
4. Otherwise no answer: ``Extraction(None, "none")``.

Everything is a single linear scan or a linear regular expression without nested quantifiers,
so 1 MB inputs and 10,000 nested braces finish in milliseconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Extraction", "extract", "extract_answer", "strip_think", "last_boxed"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# A number token: digits with embedded commas (decided afterwards: thousands separators or a
# list), optional decimals / fraction, or a bare decimal.  `[\d,]*\d` backtracks at most over
# trailing commas and finditer resumes after each match, so the scan is linear.
_NUMBER_RE = re.compile(
    r"(?<![\w.])"  # not glued to a word or to another number
    r"(?P<sign>-)?"
    r"(?P<num>\d(?:[\d,]*\d)?(?:\.\d+)?(?:/\d+)?|\.\d+)"
)
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")


@dataclass(frozen=True)
class Extraction:
    """An extracted answer: ``answer`` is None when there is none; ``method`` says how."""

    answer: str | None
    method: str  # "boxed" | "fbox" | "last_number" | "none"


def strip_think(text: str) -> str:
    """Remove reasoning inside ``<think>...</think>`` (see the module docstring for the policy)."""
    close = text.rfind("</think>")
    if close != -1:
        text = text[close + len("</think>"):]
    opened = text.find("<think>")
    if opened != -1:
        # Any <think> still present has no closing tag after it: the rest is thinking.
        text = text[:opened]
    return text


def _match_brace(text: str, open_idx: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, or -1 when unbalanced (linear)."""
    depth = 0
    i, n = open_idx, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # escaped char such as \{ or \}: never a delimiter
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def last_boxed(text: str) -> tuple[str, str] | None:
    """Content and command name (``"boxed"``/``"fbox"``) of the last non-empty box, or None."""
    # Last position of each command; only the one just consumed is searched again, further
    # left, so the total work of all rfind calls is linear even with 100k empty boxes.
    pos = {cmd: text.rfind(cmd) for cmd in _BOX_COMMANDS}
    while True:
        cmd = max(pos, key=lambda c: pos[c])
        best, name = pos[cmd], cmd[1:]
        if best == -1:
            return None
        pos[cmd] = text.rfind(cmd, 0, best)
        i = best + len(name) + 1
        if i < len(text) and text[i].isalpha():
            continue  # e.g. \fboxsep: another command, not a box
        while i < len(text) and text[i] in " \t\n":
            i += 1
        if i < len(text) and text[i] == "{":
            close = _match_brace(text, i)
            content = text[i + 1:close] if close != -1 else text[i + 1:]
        else:
            # Space form "\boxed 5": one whitespace-delimited token, minus sentence punctuation.
            j = i
            while j < len(text) and not text[j].isspace() and text[j] != "$":
                j += 1
            content = text[i:j].rstrip(".,;")
        content = content.strip()
        if content:
            return content, name


def _last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    sign, num = last.group("sign") or "", last.group("num")
    if "," in num:
        if _THOUSANDS_RE.fullmatch(num):
            num = num.replace(",", "")
        else:  # a comma list such as "1,2,3": the last number is the last item
            sign, num = "", num.rsplit(",", 1)[1]
    return sign + num


def extract(text: str) -> Extraction:
    """Extract the final answer of a completion (boxed, else last number, else none)."""
    if not isinstance(text, str):
        raise TypeError(f"extract() needs a str, got {type(text).__name__}")
    visible = strip_think(text)
    boxed = last_boxed(visible)
    if boxed is not None:
        return Extraction(boxed[0], boxed[1])
    number = _last_number(visible)
    if number is not None:
        return Extraction(number, "last_number")
    return Extraction(None, "none")


def extract_answer(text: str, *, fallback: bool = True) -> str | None:
    """``extract(text).answer``; with ``fallback=False`` only boxed answers count."""
    result = extract(text)
    if not fallback and result.method == "last_number":
        return None
    return result.answer

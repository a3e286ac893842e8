"""String normalisation of LaTeX answers, and the small scanners the grader builds on.

``normalize`` maps an answer to a canonical string; two answers whose canonical strings are
equal are equal (rule ``normalized_string``).  It never changes the mathematical value, except
for the documented MATH conventions:

* units are dropped: ``\\text{ cm}``, ``inches^2``, ``^\\circ``/``°``/``degrees`` (with a
  temperature scale: ``36^\\circ\\text{C}``, ``98.6°F``, ``20 degrees Celsius``), ``\\$``/dollars,
  ``\\%``/percent.  A percentage keeps its number: ``50\\%`` == ``50`` but **not** ``0.5``
  (MATH asks "what percent" and expects 50; accepting 0.5 too would make 0.5 and 50 equal).
* thousands separators are removed by context: ``10,\\!080`` and ``{,}`` always; plain commas
  only in an answer without brackets, with no comma followed by a space, where *every* comma
  belongs to a correctly grouped number ``d{1,3}(,ddd)+`` (``58,500``, ``1,000,000``,
  ``1,234/2``).  So the lists ``1, 100`` / ``1,-2`` / ``3, 5, 7`` / ``12345,678`` and the tuple
  ``(1,100)`` stay intact.  The one ambiguous spelling, ``1,100`` (no space), reads as 1100, as
  math-verify reads it (MATH writes lists with ``, ``).
* a mixed number that is the whole answer is a sum: ``2\\frac{1}{2}`` (and ``2\\frac12``) ==
  ``\\frac{5}{2}``; elsewhere juxtaposition is multiplication.
* ``\\text{(C)}`` / ``(C)`` -> ``C`` (multiple-choice letters A-E).

Also canonicalised: ``$``, ``\\(``/``\\)``, ``\\displaystyle``, ``\\left``/``\\right``, LaTeX spacing,
``\\dfrac``/``\\tfrac``, ``\\frac12``/``\\sqrt2`` braces, ``\\text``-like wrappers, trailing full
stop, ``\\infty`` spellings, ``\\emptyset``/``\\varnothing``/``\\{\\}``, ``\\mathbb{R}`` ->
``(-\\infty,\\infty)``, repeating decimals ``0.\\overline{3}`` -> ``\\frac{1}{3}``, plain-text
``sqrt(2)``/``2pi``/``x**2``, ``a \\text{ or } b`` -> ``a,b``, unicode minus/times/pi.

Every pass is a single left-to-right scan or a linear regular expression; the grader bounds the
input length before calling in here.
"""
from __future__ import annotations

import math
import re

__all__ = [
    "normalize", "strip_assignment", "split_top_level", "match_brackets", "expand_pm",
    "unwrap_text", "TEXT_COMMANDS",
]

TEXT_COMMANDS = ("text", "textbf", "textit", "textrm", "textnormal", "textsf", "texttt", "mathrm",
                 "mathbf", "mathit", "mathsf", "mathtt", "mbox", "hbox", "boldsymbol", "mathnormal")
_TEXT_CMD_RE = re.compile(r"\\(" + "|".join(sorted(TEXT_COMMANDS, key=len, reverse=True))
                          + r")(?![a-zA-Z])\s*(?=\{)")

_UNITS = (
    "units?", "square\\s+units?", "sq\\.?\\s*units?", "cubic\\s+units?", "cm", "centimeters?",
    "mm", "millimeters?", "km", "kilometers?", "meters?", "metres?", "inch(?:es)?", "feet", "foot",
    "ft", "yards?", "yd", "miles?", "mi", "mph", "kg", "kilograms?", "grams?", "pounds?", "lbs?",
    "ounces?", "oz", "liters?", "litres?", "gallons?", "cents?", "dollars?", "euros?",
    "degrees?(?:\\s+(?:celsius|fahrenheit|centigrade))?",
    "percent", "seconds?", "sec", "minutes?", "min", "hours?", "hrs?", "days?", "weeks?", "months?",
    "years?", "people", "students?", "ways", "times", "radians?",
)
# Unit after a number-like end (digit, closing brace/paren, dot), optionally squared/cubed.
_UNIT_TAIL_RE = re.compile(
    r"(?<=[\d}).])\s*(?:sq\.?\s+|square\s+|cubic\s+)?(?:" + "|".join(_UNITS) + r")"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?|\s+squared|\s+cubed)?\s*\.?\s*$",
    re.IGNORECASE,
)
# A degree sign, with the temperature scale that may follow it (36^\circ\text{C}, 98.6°F).
_DEGREE_RE = re.compile(r"(?:\{\}\^\{?\\circ\}?|\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\^\s*\\degree|\\degree)"
                        r"(?:\s*(?:\\(?:text|mathrm|textrm|mbox)\s*\{\s*[CF]\s*\}|[CF](?![a-zA-Z])))?|[℃℉]")
_SPACING_RE = re.compile(r"\\[!,;:> ]|\\q?quad(?![a-zA-Z])|\\(?:en|thin|med|thick)space(?![a-zA-Z])|~")
_SIZING_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*\.?|\\[bB]igg?[lrm]?(?![a-zA-Z])")
_STYLE_RE = re.compile(r"\\(?:displaystyle|textstyle|scriptstyle)(?![a-zA-Z])")
_GROUPED_RE = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?!\d)")
_SPACED_COMMA_RE = re.compile(r",\s")
_THOUSANDS_ESCAPED_RE = re.compile(r"(\d)\s*(?:,\\!|\{,\})\s*(?=\d{3}(?!\d))")
_PLAIN_FUNC_RE = re.compile(r"(?<![\\a-zA-Z])(sqrt|sin|cos|tan|cot|sec|csc|log|ln|exp|pi)(?![a-zA-Z])")
_MIXED_RE = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_CHOICE_RE = re.compile(r"\(?([A-E])\)")
_INFTY_RE = re.compile(r"\\infin(?:ity)?(?![a-zA-Z])|∞|(?<![a-zA-Z\\])(?:infinity|inf)(?![a-zA-Z])")
_ASSIGN_RE = re.compile(
    r"\s*(?:[a-zA-Z]|\\(?:alpha|beta|gamma|delta|epsilon|theta|phi|varphi|psi|lambda|mu|nu|sigma|omega|"
    r"rho|tau|xi|eta|zeta|kappa|chi))"
    r"(?:_\{?\w+\}?)?(?:\([a-zA-Z,\s]*\))?\s*(?:=|\\in(?![a-zA-Z]))\s*"
)
_AND_RE = re.compile(r"(?<!\s)\s*\\(?:text|mbox|textrm|mathrm)\s*\{\s*(?:and|or)\s*\}\s*"
                     r"|(?<=[\d})])\s+(?:and|or)\s+(?=[-\d\\(a-z])")
_EMPTY_RE = re.compile(r"\\(?:emptyset|varnothing)(?![a-zA-Z])|∅")
_REALS_RE = re.compile(r"\\mathbb\s*\{?\s*R\s*\}?|ℝ")
_REPEATING_RE = re.compile(r"(?<!\d)(\d*)\.(\d*)\\overline\s*\{(\d{1,50})\}")
_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ",
            "√": "\\sqrt", "≤": "\\le ", "≥": "\\ge ", "∪": "\\cup ", "θ": "\\theta "}
_ALIASES = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
            ("\\dbinom", "\\binom"), ("\\tbinom", "\\binom"), ("\\lbrace", "\\{"),
            ("\\rbrace", "\\}"), ("\\langle", "("), ("\\rangle", ")"), ("\\lvert", "|"),
            ("\\rvert", "|"), ("\\vert", "|"), ("\\lbrack", "["), ("\\rbrack", "]"),
            ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\neq", "\\ne"), ("\\colon", ":"))
_OPEN, _CLOSE = "([{", ")]}"
_ROWSEP = "\x01"
_DIGITS = "0123456789"


def match_brackets(s: str) -> dict[int, int]:
    """Map each opening ``( [ {`` to its closer in one pass; ``\\{``/``\\}`` pair with each other.

    Brackets match by depth, not by kind, so half-open intervals ``[1,3)`` pair up.  Unmatched
    brackets are simply absent from the map.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            if i + 1 < n and s[i + 1] in "{}":
                if s[i + 1] == "{":
                    stack.append(i)
                elif stack:
                    pairs[stack.pop()] = i
            i += 2
            continue
        if c in _OPEN:
            stack.append(i)
        elif c in _CLOSE and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def split_top_level(s: str, sep: str) -> list[str]:
    """Split ``s`` on ``sep`` occurrences at bracket depth 0 (one linear scan)."""
    parts, depth, start, i, n, k = [], 0, 0, 0, len(s), len(sep)
    glued = sep[-1].isalpha()  # "\\cup" must not match the start of "\\cupcake"
    while i < n:
        if depth == 0 and s.startswith(sep, i) and not (glued and i + k < n and s[i + k].isalpha()):
            parts.append(s[start:i])
            i += k
            start = i
            continue
        c = s[i]
        if c == "\\":
            if i + 1 < n and s[i + 1] in "{}":
                depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(depth - 1, 0)
        i += 1
    parts.append(s[start:])
    return parts


def unwrap_text(s: str) -> str:
    """``\\text{abc}`` -> ``abc`` for all text-like commands, nested or not, in one pass."""
    if "\\" not in s:
        return s
    out: list[str] = []
    drop_stack: list[bool] = []
    i, n = 0, len(s)
    while i < n:
        m = _TEXT_CMD_RE.match(s, i) if s[i] == "\\" else None
        if m:
            i = m.end() + 1  # skip the command and its "{"
            drop_stack.append(True)
            continue
        c = s[i]
        if c == "\\" and i + 1 < n:
            out.append(s[i:i + 2])
            i += 2
            continue
        if c == "{":
            drop_stack.append(False)
        elif c == "}":
            if drop_stack and drop_stack.pop():
                i += 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _drop_trailing_text_unit(s: str) -> str:
    """``5.4 \\text{ cents}`` -> ``5.4``: a trailing text group of letters after math content.

    One letter counts as a unit only when typed with a leading space (``5\\text{ m}``), so
    ``3\\mathrm{i}`` keeps its imaginary unit.
    """
    m = re.search(r"\\(?:text|textrm|mbox|mathrm|textnormal)\s*\{(\s*)([A-Za-z][A-Za-z .]*)\}"
                  r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$", s)
    if m and s[:m.start()].strip() and (m.group(1) or len(m.group(2).replace(" ", "")) >= 2):
        return s[:m.start()]
    return s


def _repeating_decimal(m: re.Match) -> str:
    """``0.1\\overline{6}`` -> ``\\frac{1}{6}`` (exact)."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    den = 10 ** len(fixed) * (10 ** len(rep) - 1)
    num = int(whole) * den + int(fixed + rep) - int(fixed or "0")
    g = math.gcd(num, den)
    return f"\\frac{{{num // g}}}{{{den // g}}}"


def _brace_single_args(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``, ``\\frac{270}7`` etc.

    LaTeX semantics: an unbraced argument is a single character or a single control word.
    """
    if "\\frac" not in s and "\\sqrt" not in s and "\\binom" not in s:
        return s
    pairs = match_brackets(s)
    inserts: dict[int, str] = {}
    for m in re.finditer(r"\\(frac|binom|sqrt)(?![a-zA-Z])", s):
        p, nargs = m.end(), (1 if m.group(1) == "sqrt" else 2)
        for _ in range(nargs):
            while p < len(s) and s[p] == " ":
                p += 1
            if p >= len(s):
                break
            if s[p] == "[" and nargs == 1 and p in pairs:  # \sqrt[n]{x}
                p = pairs[p] + 1
                while p < len(s) and s[p] == " ":
                    p += 1
                if p >= len(s):
                    break
            if s[p] == "{":
                if p not in pairs:
                    break
                p = pairs[p] + 1
                continue
            cmd = re.match(r"\\[a-zA-Z]+", s[p:p + 40])
            end = p + (cmd.end() if cmd else 1)
            if not (cmd or s[p].isalnum()):
                break  # "\\frac(1)(2)" and friends: not LaTeX arguments, leave for the parser
            inserts[p] = inserts.get(p, "") + "{"
            inserts[end] = "}" + inserts.get(end, "")
            p = end
    if not inserts:
        return s
    out, last = [], 0
    for pos in sorted(inserts):
        out.append(s[last:pos])
        out.append(inserts[pos])
        last = pos
    out.append(s[last:])
    return "".join(out)


def _collapse_spaces(s: str) -> str:
    # Keep one space where it separates a control word from a letter ("\cot x", "\pi r").
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x00", s)
    s = re.sub(r"\s+", "", s)
    return s.replace("\x00", " ")


def strip_assignment(s: str) -> str:
    """``x = 5`` -> ``5``, ``f(x)=x^2`` -> ``x^2``, ``x \\in [1,2]`` -> ``[1,2]``.

    Only a single variable (optionally subscripted or applied to arguments) before a single
    ``=``; ``5x - 7y + 4 = 0`` and ``x = y = 1`` are left alone.
    """
    m = _ASSIGN_RE.match(s)
    if m and "=" not in s[m.end():]:
        rest = s[m.end():]
        if rest.strip():
            return rest
    return s


def expand_pm(s: str) -> list[str]:
    """``1\\pm\\sqrt{2}`` -> ``["1+\\sqrt{2}", "1-\\sqrt{2}"]``; ``\\mp`` is the correlated sign."""
    if "\\pm" not in s and "\\mp" not in s:
        return [s]
    plus = re.sub(r"\\mp(?![a-zA-Z])", "-", re.sub(r"\\pm(?![a-zA-Z])", "+", s))
    minus = re.sub(r"\\mp(?![a-zA-Z])", "+", re.sub(r"\\pm(?![a-zA-Z])", "-", s))
    return [plus, minus]


def normalize(s: str) -> str:
    """Canonical string form of a LaTeX answer (see the module docstring)."""
    # A LaTeX line break "\\\\" (matrix rows) must not be read as "\\" + the next character.
    s = s.strip().replace("\\\\", _ROWSEP)
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    m = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", s, re.DOTALL)
    if m and match_brackets(s).get(s.index("{")) == len(s) - 1:
        s = m.group(1).strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)
    s = _STYLE_RE.sub("", s)
    s = _SIZING_RE.sub("", s)
    for a, b in _ALIASES:
        if a in s:
            s = re.sub(re.escape(a) + r"(?![a-zA-Z])", lambda _m, b=b: b, s)
    s = _THOUSANDS_ESCAPED_RE.sub(r"\1", s)
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _drop_trailing_text_unit(s)
    s = _AND_RE.sub(",", s)  # "2 \\text{ or } 3": a list
    s = unwrap_text(s)
    s = _UNIT_TAIL_RE.sub("", s).strip()
    s = re.sub(r"\\operatorname\*?\{([a-zA-Z]+)\}", r"\\\1 ", s)
    s = _INFTY_RE.sub(r"\\infty ", s)
    s = _EMPTY_RE.sub(r"\\emptyset ", s)
    s = _REALS_RE.sub(r"(-\\infty,\\infty)", s)
    s = _REPEATING_RE.sub(_repeating_decimal, s)
    s = _PLAIN_FUNC_RE.sub(r"\\\1 ", s.replace("**", "^"))  # plain-text "sqrt(2)", "2pi", "x**2"
    s = _brace_single_args(s)
    spaced_comma = bool(_SPACED_COMMA_RE.search(s))  # "1, 100" is a list, never 1100
    s = _collapse_spaces(s)
    s = s.rstrip(". " + _ROWSEP)  # trailing full stop (and a stray line-break "\\\\")
    if "," in s and not spaced_comma and not any(c in s for c in "([") and "\\{" not in s:
        # Every comma inside a correctly grouped number: thousands ("1,234/2", "1,000,000").
        if sum(m.group().count(",") for m in _GROUPED_RE.finditer(s)) == s.count(","):
            s = s.replace(",", "")
    s = re.sub(r"(^|[(\[,])\+(?=\\infty)", r"\1", s)
    if s.startswith("+") and len(s) > 1:
        s = s.lstrip("+")
    m = _MIXED_RE.fullmatch(s)
    if m:
        whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
        if den:
            s = f"{m.group(1)}\\frac{{{whole * den + num}}}{{{den}}}"
    if s == "\\{\\}":
        s = "\\emptyset"
    m = _CHOICE_RE.fullmatch(s)
    if m:
        s = m.group(1)
    return s.replace(_ROWSEP, "\\\\")

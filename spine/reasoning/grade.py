"""Grading a predicted final answer against a gold answer, without executing model text.

``grade(predicted, gold)`` returns a ``Verdict`` whose ``rule`` names what decided it.  Rules,
tried in this order:

* ``no_answer`` (nothing predicted), ``too_large`` (over ``max_len`` characters, nesting deeper
  than ``mathexpr.MAX_DEPTH``, or a power/factorial beyond the size guards), ``timeout``.
* ``exact_string`` (equal after ``strip()``), ``normalized_string`` (equal after
  ``normalize.normalize``: units, ``$``, ``\\left``, ``\\dfrac``, ``\\text``, thousands ... removed).
* ``equation``: two equations ``l1 = r1`` / ``l2 = r2`` with ``l1 - r1 = c (l2 - r2)``, c != 0
  (same solution set).  Otherwise a *single-variable assignment* ``x = 5`` / ``f(x) = ...`` /
  ``x \\in S`` has its left side dropped, so ``x = 5`` == ``5`` (and == ``y = 5``); a chain of
  constants ``2+3=5`` stands for its last side; an equation with unknowns never equals a value.
* ``text``: answers made of letters only (``\\text{Evelyn}``, ``even``) compare
  case-insensitively; a multiple-choice ``\\text{(C)}`` is ``C``, and the single letters A-E
  match their lower case (``c`` is choice C; any other single letter is a case-sensitive
  variable, so ``3R^2 != 3r^2``).
* ``base``: ``52_8`` equals ``52_{8}`` and also a bare ``52`` (the digits the question asked for).
  Only a real numeral is a base-n numeral (``base_numeral``): ``a_1`` and ``x_0`` are variables.
* structures, compared element by element with the scalar rules:
  ``tuple`` -- ``(1,2)``: ordered, brackets must agree; ``interval`` -- any element set with
  ``[``/``]`` or ``\\infty``, and unions ``\\cup`` (order of the pieces is free);
  ``set`` -- ``\\{1,2\\}``: order-insensitive; ``list`` -- a bare ``1, 2, 3``: MATH asks for these
  as "all solutions, separated by commas", so order is ignored too, as math-verify does (it
  reads a bare list as a FiniteSet); multiplicities count, a set and a bare list compare equal.
  Order matters only inside brackets: ``(1, 100) != (100, 1)`` but ``100, 1 == 1, 100``, and a
  list is never a number (``1, 100 != 1100``; see ``normalize`` for thousands separators); ``\\pm`` expands to the two-element list (``\\mp`` is the
  correlated sign); ``matrix`` -- pmatrix/bmatrix/... by shape and element; an n x 1 or 1 x n
  matrix also equals an n-tuple (a vector written either way).
* scalars: ``exact_rational`` when both are constant rationals (decimals are exact: ``0.5`` ==
  ``1/2`` but ``0.333 != 1/3``; scientific ``1e-3`` is accepted as 0.001 when it is the whole
  answer); ``symbolic`` otherwise -- both are parsed by ``mathexpr`` and evaluated at shared
  random rational points (exactly where possible) and compared within ``rtol=1e-9``.  So
  ``\\sqrt{8}`` == ``2\\sqrt{2}``, ``x^2+2x+1`` == ``(x+1)^2``; a decimal equals an irrational
  closed form only if it agrees to ~9 significant digits (``3.14 != \\pi``).  Free variables
  get 6 deterministic rational points of both signs (so ``|x| != x``, ``\\sqrt{x^2} != x``,
  ``\\log(x^2) != 2\\log x``; principal branches, except that a rational power with an odd
  denominator of a negative number is the real root, as ``\\sqrt[3]{-8} = -2``), or natural
  numbers if the expressions are undefined there (``n!``); ``e`` and ``i`` are constants; the
  variables are case-sensitive, and subscripted names (``a_1``) are variables of their own.
* failures: ``mismatch`` (detail says which comparison failed), ``parse_error`` (different
  strings and one side outside the supported subset), ``error`` (an unexpected internal error,
  reported rather than raised so that one bad sample cannot stop an evaluation run).

Time limit: cooperative.  Inputs are length-capped first; normalisation is linear; the parser and
evaluator check a ``Deadline`` at every token and node and refuse oversized powers before
computing them, so every step is bounded and the deadline is honoured within a few ms.  This is
much faster than a worker process (500 MATH answers grade in well under a second) and cannot
leak processes; tests check hostile inputs finish inside the limit.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from spine.reasoning import mathexpr as mx
from spine.reasoning.normalize import (
    expand_pm, match_brackets, normalize, split_top_level, strip_assignment,
)

__all__ = ["Verdict", "grade", "answers_equivalent", "base_numeral"]

_MATRIX_RE = re.compile(r"\\begin\{([pbvBV]?matrix|array|smallmatrix)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}",
                        re.DOTALL)
_BASE_RE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")
_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z' ]*[A-Za-z]")
_SCI_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d{1,4}")


@dataclass(frozen=True)
class Verdict:
    """The outcome of grading one answer: ``rule`` names the check that decided it."""

    correct: bool
    rule: str
    predicted_normalized: str | None
    gold_normalized: str | None
    detail: str = ""


class _Result:
    """(equal, rule, detail) of one comparison; truthiness is equality."""

    __slots__ = ("ok", "rule", "detail")

    def __init__(self, ok: bool, rule: str, detail: str = "") -> None:
        self.ok, self.rule, self.detail = ok, rule, detail

    def __bool__(self) -> bool:
        return self.ok


def _no(detail: str, rule: str = "mismatch") -> _Result:
    return _Result(False, rule, detail)


# -- structure ------------------------------------------------------------------------------
def _structure(s: str, depth: int = 0) -> tuple:
    """Classify a normalised answer: matrix, union, set, tuple, list, pm-list or scalar."""
    if depth > mx.MAX_DEPTH:
        raise mx.TooLarge("structure nested too deeply")
    s = strip_assignment(s).strip()
    m = _MATRIX_RE.fullmatch(s)
    if m:
        rows = [r for r in split_top_level(m.group(2), "\\\\") if r.strip()]
        return ("matrix", [[_structure(c, depth + 1) for c in split_top_level(r, "&")] for r in rows])
    parts = split_top_level(s, "\\cup")
    if len(parts) > 1:
        return ("union", [_structure(p, depth + 1) for p in parts])
    pairs = match_brackets(s) if s else {}
    if s.startswith("\\{") and s.endswith("\\}") and pairs.get(0) == len(s) - 2:
        inner = s[2:-2]
        elems = [e for e in split_top_level(inner, ",")] if inner.strip() else []
        return ("set", _flatten_pm([_structure(e, depth + 1) for e in elems]))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and pairs.get(0) == len(s) - 1:
        elems = split_top_level(s[1:-1], ",")
        if len(elems) > 1:
            return ("tuple", s[0] + s[-1], [_structure(e, depth + 1) for e in elems])
    elems = split_top_level(s, ",")
    if len(elems) > 1:
        return ("list", _flatten_pm([_structure(e, depth + 1) for e in elems]))
    variants = expand_pm(s)
    if len(variants) > 1:
        return ("list", [("scalar", v) for v in variants])
    return ("scalar", s)


def _flatten_pm(items: list[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for it in items:
        out.extend(it[1] if it[0] == "list" else [it])
    return out


def _has_infinity(node: tuple) -> bool:
    kind = node[0]
    if kind == "scalar":
        return "\\infty" in node[1]
    kids = node[2] if kind == "tuple" else [c for r in node[1] for c in r] if kind == "matrix" else node[1]
    return any(_has_infinity(k) for k in kids)


def _as_vector(node: tuple) -> list[tuple] | None:
    if node[0] == "matrix":
        rows = node[1]
        if all(len(r) == 1 for r in rows):
            return [r[0] for r in rows]
        if len(rows) == 1:
            return rows[0]
    if node[0] == "tuple" and node[1] == "()":
        return node[2]
    return None


def _unordered(xs: list[tuple], ys: list[tuple], dl: mx.Deadline, rule: str) -> _Result:
    if len(xs) != len(ys):
        return _no(f"{rule}: {len(xs)} vs {len(ys)} elements")
    unused = list(range(len(ys)))
    for i, x in enumerate(xs):
        for j in unused:
            if _compare(x, ys[j], dl):
                unused.remove(j)
                break
        else:
            return _no(f"{rule}: element {i + 1} has no equal")
    return _Result(True, rule)


def _ordered(xs: list[tuple], ys: list[tuple], dl: mx.Deadline, rule: str) -> _Result:
    if len(xs) != len(ys):
        return _no(f"{rule}: {len(xs)} vs {len(ys)} elements")
    for i, (x, y) in enumerate(zip(xs, ys)):
        r = _compare(x, y, dl)
        if not r:
            return _no(f"{rule}: element {i + 1} differs ({r.detail})")
    return _Result(True, rule)


def _compare(a: tuple, b: tuple, dl: mx.Deadline) -> _Result:
    dl.check()
    ka, kb = a[0], b[0]
    if ka == "scalar" and kb == "scalar":
        return _compare_scalar(a[1], b[1], dl)
    if ka == "tuple" and kb == "tuple":
        rule = "interval" if a[1] != "()" or b[1] != "()" or _has_infinity(a) or _has_infinity(b) else "tuple"
        if a[1] != b[1]:
            return _no(f"{rule}: brackets {a[1]} vs {b[1]}")
        return _ordered(a[2], b[2], dl, rule)
    if ka == "union" and kb == "union":
        return _unordered(a[1], b[1], dl, "interval")
    if ka in ("set", "list") and kb in ("set", "list"):
        return _unordered(a[1], b[1], dl, "set" if "set" in (ka, kb) else "list")
    if ka == "matrix" and kb == "matrix":
        if [len(r) for r in a[1]] != [len(r) for r in b[1]]:
            return _no("matrix: shapes differ")
        return _ordered([c for r in a[1] for c in r], [c for r in b[1] for c in r], dl, "matrix")
    if "matrix" in (ka, kb):
        va, vb = _as_vector(a), _as_vector(b)
        if va is not None and vb is not None:
            return _ordered(va, vb, dl, "matrix")
    return _no(f"structure: {ka} vs {kb}")


# -- expression equivalence ------------------------------------------------------------------
N_POINTS = 6  # shared random evaluation points for expressions with free variables


def _points(names: set[str], integers: bool = False) -> list[dict[str, Fraction]]:
    """Deterministic random rationals of both signs (or natural numbers) for each variable.

    Signs matter: on positive points alone ``|x|``, ``\\sqrt{x^2}`` and ``x`` agree, and so do
    ``\\log(x^2)`` and ``2\\log x``.  The first point is all positive, the second all negative,
    the rest draw each variable's sign at random, so every variable is seen with both signs and
    two-variable sign patterns are mixed.  Integer points (for ``n!``, ``\\binom{n}{k}``) stay
    natural: those expressions are undefined at negative integers on both sides anyway.
    """
    rng = random.Random(0x5EED)
    ordered = sorted(names)
    if integers:
        return [{v: Fraction(rng.randint(2, 12)) for v in ordered} for _ in range(N_POINTS)]
    points = []
    for k in range(N_POINTS):
        point = {}
        for v in ordered:
            sign = 1 if k == 0 else -1 if k == 1 else rng.choice((1, -1))
            point[v] = sign * Fraction(rng.randint(3, 97), rng.randint(2, 13))
        points.append(point)
    return points


def _values(a: tuple, b: tuple, deadline: mx.Deadline) -> list[tuple] | None:
    """Paired values of two ASTs at shared random points; None if one is undefined alone.

    Rational points first; if both sides are undefined at all of them (``n!``), integers.
    """
    names = mx.free_vars(a) | mx.free_vars(b)
    pairs = _values_at(a, b, _points(names), deadline)
    if pairs == [] and names:
        pairs = _values_at(a, b, _points(names, integers=True), deadline)
    return pairs


def _try_eval(tree: tuple, env: dict, dl: mx.Deadline) -> Fraction | complex | None:
    """Value at a point, or None where the expression is undefined (1/0, log 0, (1/2)!)."""
    try:
        return mx.evaluate(tree, env, dl)
    except mx.MathParseError:
        raise
    except (ZeroDivisionError, ValueError, OverflowError):
        return None


def _values_at(a: tuple, b: tuple, points: list[dict], dl: mx.Deadline) -> list[tuple] | None:
    pairs = []
    for env in points:
        va, vb = _try_eval(a, env, dl), _try_eval(b, env, dl)
        if (va is None) != (vb is None):
            return None  # defined on one side only: different functions
        if va is not None:
            pairs.append((va, vb))
    return pairs


def compare_trees(a: tuple, b: tuple, deadline: mx.Deadline | None = None) -> tuple[bool, str]:
    """Are two ASTs equal?  ``(equal, how)``, how in ``exact_rational``/``symbolic``.

    Constants that are both exact rationals are compared exactly (so ``0.333 != 1/3``);
    anything else is compared numerically at shared random points (rational points, so
    polynomial identities are still checked exactly) within ``RTOL``/``ATOL``.
    """
    dl = deadline or mx.Deadline(None)
    pairs = _values(a, b, dl)
    exact = bool(pairs) and all(isinstance(x, Fraction) and isinstance(y, Fraction) for x, y in pairs)
    how = "exact_rational" if exact and not (mx.free_vars(a) | mx.free_vars(b)) else "symbolic"
    if not pairs:
        return False, how
    return all(mx.close(x, y) for x, y in pairs), how


def compare_equations(l1: tuple, r1: tuple, l2: tuple, r2: tuple,
                      deadline: mx.Deadline | None = None) -> bool:
    """Same solution set by proportionality: ``l1 - r1 == c * (l2 - r2)`` for one c != 0."""
    dl = deadline or mx.Deadline(None)
    d1 = ("sum", ((1, l1), (-1, r1)))
    d2 = ("sum", ((1, l2), (-1, r2)))
    pairs = _values(d1, d2, dl)
    if not pairs:
        return False
    ratio = None
    for x, y in pairs:
        if mx.close(x, 0) or mx.close(y, 0):
            if not (mx.close(x, 0) and mx.close(y, 0)):
                return False
            continue
        r = x / y if isinstance(x, Fraction) and isinstance(y, Fraction) else mx.to_complex(x) / mx.to_complex(y)
        if ratio is None:
            ratio = r
        elif not mx.close(r, ratio):
            return False
    return True


# -- scalars --------------------------------------------------------------------------------
def base_numeral(s: str) -> tuple[str, int] | None:
    """``52_8`` -> ``("52", 8)``: digits and base of a base-n numeral, else None.

    A subscript is a base only when it is 2..36 and every digit is a digit of that base, and the
    numeral has a decimal digit (``1A_{11}``) or is upper-case letters in a base above 10
    (``AB_{12}``): so ``a_1``, ``x_0``, ``x_{12}`` are subscripted variables, not numerals.
    """
    m = _BASE_RE.fullmatch(s)
    if not m:
        return None
    digits, base = m.group(1), int(m.group(2))
    if not 2 <= base <= 36 or any(int(c, 36) >= base for c in digits):
        return None
    if not (any(c.isdigit() for c in digits) or (digits.isupper() and len(digits) > 1)):
        return None
    return digits, base


def _is_text(s: str) -> bool:
    return bool(_TEXT_RE.fullmatch(s))


def _sci(s: str) -> str:
    """``1e-3`` (the whole answer) -> ``1\\times10^{-3}``; anything else unchanged.

    The power goes through the evaluator's size guards, so ``1.5e9999`` is ``too_large``
    rather than a 10,000-digit literal.
    """
    if _SCI_RE.fullmatch(s):
        mant, _, exp = s.lower().partition("e")
        return f"{mant}\\times10^{{{int(exp)}}}"
    return s


def _compare_scalar(a: str, b: str, dl: mx.Deadline) -> _Result:
    if a == b:
        return _Result(True, "normalized_string")
    if not a or not b:
        return _no("empty element")
    if "=" in a and "=" in b:  # equations were compared as equations already (see _grade)
        return _no("equations differ")
    if "=" in a or "=" in b:
        # A constant computation "2+3=5" stands for its last side; an equation with unknowns
        # ("x+y=0") is not a value.
        chain, other = (a, b) if "=" in a else (b, a)
        sides = split_top_level(chain, "=")
        trees = [_parse(x, dl) for x in sides]
        if any(t is None or mx.free_vars(t) for t in trees):
            return _no("equation vs expression")
        return _compare_scalar(sides[-1], other, dl) if chain is a else _compare_scalar(other, sides[-1], dl)
    if len(a) == len(b) == 1 and a.upper() == b.upper() and a.upper() in "ABCDE":
        return _Result(True, "text")  # a multiple-choice letter: (c) is (C)
    if _is_text(a) or _is_text(b):
        if a.replace(" ", "").lower() == b.replace(" ", "").lower():
            return _Result(True, "text")
        if not (len(a) <= 3 and len(b) <= 3):  # "ab" vs "ba" may still be equal products
            return _no("text answers differ")
    ba, bb = base_numeral(a), base_numeral(b)
    if ba or bb:
        da, db = (ba[0] if ba else a), (bb[0] if bb else b)
        same_base = not (ba and bb) or ba[1] == bb[1]
        if da.isalnum() and db.isalnum():
            ok = same_base and da.lower() == db.lower()
            return _Result(True, "base") if ok else _no("base-n numerals differ")
    if "\\infty" in a or "\\infty" in b:
        return _no("infinities differ")
    ta, tb = _parse(_sci(a), dl), _parse(_sci(b), dl)
    if ta is None or tb is None:
        side, text = ("predicted", a) if ta is None else ("gold", b)
        return _no(f"{side}: {_PARSE_CACHE.get(text, 'unparseable')}", "parse_error")
    ok, how = compare_trees(ta, tb, dl)
    return _Result(True, how) if ok else _no(f"{how}: values differ")


_PARSE_CACHE: dict[str, tuple | str] = {}  # text -> AST, or the parse error message


def _parse(text: str, dl: mx.Deadline) -> tuple | None:
    """Cached ``mathexpr.parse``: None when the text is outside the subset.

    Parsing is a pure function of the text, so results are memoised (bounded) across calls:
    majority voting compares the same answers many times.
    """
    hit = _PARSE_CACHE.get(text)
    if hit is None:
        try:
            hit = mx.parse(text, dl)
        except mx.MathParseError as exc:
            hit = str(exc) or "unparseable"
        if len(_PARSE_CACHE) >= 4096:
            _PARSE_CACHE.clear()
        _PARSE_CACHE[text] = hit
    return hit if isinstance(hit, tuple) else None


def _equation_sides(s: str) -> tuple[str, str] | None:
    parts = split_top_level(s, "=")
    if len(parts) == 2 and all(p.strip() for p in parts):
        return parts[0], parts[1]
    return None


def _grade(pred: str, gold: str, dl: mx.Deadline) -> _Result:
    ea, eb = _equation_sides(pred), _equation_sides(gold)
    if ea and eb:  # two equations: same solution set, whatever the arrangement
        sides = [_parse(x, dl) for x in (*ea, *eb)]
        if all(t is not None for t in sides) and compare_equations(*sides, deadline=dl):
            return _Result(True, "equation")
    a, b = strip_assignment(pred), strip_assignment(gold)
    if a == b:
        return _Result(True, "normalized_string")
    return _compare(_structure(a), _structure(b), dl)


def grade(predicted: str | None, gold: str, *, timeout_s: float = 2.0, max_len: int = 2000,
          backend: str = "spine") -> Verdict:
    """Grade ``predicted`` against ``gold`` (see the module docstring for the rules).

    Never raises for bad *predicted* text: hostile, huge or malformed answers give a Verdict.
    ``backend="math-verify"`` delegates the decision to HF ``math-verify`` (optional dependency).
    """
    if predicted is not None and not isinstance(predicted, str):
        raise TypeError(f"predicted must be a str or None, got {type(predicted).__name__}")
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a str, got {type(gold).__name__}")
    if not gold.strip():
        raise ValueError("gold answer is empty")
    if backend not in ("spine", "math-verify"):
        raise ValueError(f"unknown backend {backend!r} (use 'spine' or 'math-verify')")
    mv = _import_math_verify() if backend == "math-verify" else None
    if predicted is None or not predicted.strip():
        return Verdict(False, "no_answer", None, None, "no predicted answer")
    if len(predicted) > max_len or len(gold) > max_len:
        side = "predicted" if len(predicted) > max_len else "gold"
        return Verdict(False, "too_large", None, None, f"{side} answer longer than {max_len} characters")
    if predicted.strip() == gold.strip():
        s = gold.strip()
        return Verdict(True, "exact_string", s, s)
    if mv is not None:
        return _grade_math_verify(mv, predicted, gold, timeout_s)
    dl = mx.Deadline(timeout_s)
    np_ = ng = None
    try:
        np_, ng = normalize(predicted), normalize(gold)
        if not np_:
            return Verdict(False, "no_answer", np_, ng, "predicted answer is empty after normalisation")
        if np_ == ng:
            return Verdict(True, "normalized_string", np_, ng)
        r = _grade(np_, ng, dl)
        return Verdict(r.ok, r.rule, np_, ng, r.detail)
    except mx.GradeTimeout:
        return Verdict(False, "timeout", np_, ng, f"grading took longer than {timeout_s} s")
    except (mx.TooLarge, RecursionError, MemoryError) as exc:
        return Verdict(False, "too_large", np_, ng, str(exc) or type(exc).__name__)
    except mx.MathParseError as exc:
        return Verdict(False, "parse_error", np_, ng, str(exc))
    except Exception as exc:  # noqa: BLE001 - a grader bug must not abort an evaluation run
        return Verdict(False, "error", np_, ng, f"{type(exc).__name__}: {exc}")


def _import_math_verify():
    """The optional math-verify package, imported only when asked for."""
    try:
        import math_verify
    except ImportError as exc:
        raise ImportError("grade(..., backend='math-verify') needs the optional package "
                          "math-verify: pip install math-verify") from exc
    return math_verify


def _grade_math_verify(mv, predicted: str, gold: str, timeout_s: float) -> Verdict:
    """Delegate to math-verify (sympy based; its timeouts use signals: main thread only)."""
    secs = max(1, int(round(timeout_s)))
    try:
        g = mv.parse(f"\\boxed{{{gold}}}", parsing_timeout=secs)
        p = mv.parse(f"\\boxed{{{predicted}}}", parsing_timeout=secs)
        ok = bool(g) and bool(p) and bool(mv.verify(g, p, timeout_seconds=secs))
    except Exception as exc:  # noqa: BLE001 - same contract as the spine backend
        return Verdict(False, "error", None, None, f"math-verify: {type(exc).__name__}: {exc}")
    return Verdict(ok, "math_verify", str(p[0]) if p else None, str(g[0]) if g else None)


def answers_equivalent(a: str, b: str, **kw) -> bool:
    """True when two answers are equal under ``grade`` (used to group votes)."""
    if not a or not b:
        return False
    return grade(a, b, **kw).correct

"""A safe parser and evaluator for the LaTeX math subset that final answers use.

Model text is *never* executed: this module tokenises it, parses it with a hand-written
recursive-descent parser into a tuple AST, and evaluates that AST with ``fractions.Fraction``
(exact) or ``complex`` (``cmath``) arithmetic.  No ``eval``, ``exec`` or computer-algebra
parsing is involved, so hostile strings are just strings that fail to parse.

Grammar (LaTeX precedence, implicit multiplication binds like ``*``)::

    expr    := term (('+'|'-') term)*
    term    := unary (('*'|'\\cdot'|'\\times'|'/'|'\\div') unary | <implicit> power)*
    unary   := ('-'|'+') unary | power
    power   := postfix ('^' (unary-exponent))?        right-associative: a^b^c = a^(b^c)
    postfix := atom '!'*
    atom    := number | variable | \\pi | e | i | (expr) | [expr] | {expr} | |expr|
             | \\frac{a}{b} | \\sqrt[n]{a} | \\binom{n}{k} | \\sin x ... | \\log_b x

``^`` takes a whole number token (``2^10`` is 1024, not LaTeX's ``2^1 0``); ``\\log`` is the
natural logarithm; ``e`` is Euler's number and ``i`` the imaginary unit.

Time and size are bounded *cooperatively* (no worker process: grading 500 answers costs no
process start-up and cannot leak children): nesting depth is capped (``MAX_DEPTH``), every parser
step and evaluation node calls ``Deadline.check``, exact rationals are capped at ``MAX_BITS``
bits (beyond that arithmetic falls back to floats), and a power whose float magnitude leaves
``[1e-300, 1e300]`` raises ``TooLarge`` instead of being computed, so ``9^9^9^9`` and
``10^{10^{10}}`` cost microseconds.  Every operation is therefore bounded, and the deadline
stops the (input-length-bounded) loops.
"""
from __future__ import annotations

import cmath
import math
from fractions import Fraction

# the parser lives in mathparse; its names are re-exported here, the module callers import
from .mathparse import (_NO_DEADLINE, MAX_BITS, MAX_DEPTH, MAX_FACTORIAL,  # noqa: F401
                        Deadline, GradeTimeout, MathParseError, TooLarge, parse)

RTOL, ATOL = 1e-9, 1e-12  # numeric equality of non-rational values

__all__ = ["MathParseError", "TooLarge", "GradeTimeout", "Deadline", "parse", "free_vars",
           "evaluate", "close", "to_complex", "MAX_DEPTH", "MAX_BITS"]


def _children(n: tuple) -> tuple:
    kind = n[0]
    if kind == "sum":
        return tuple(t for _, t in n[1])
    if kind == "prod":
        return n[1] + n[2]
    if kind in ("neg", "abs", "fact"):
        return (n[1],)
    if kind == "func":
        return (n[2],)
    if kind in ("pow", "binom", "log", "root"):
        return tuple(c for c in n[1:] if c is not None)
    return ()


def free_vars(node: tuple) -> set[str]:
    """Names of the free variables of an AST (iterative: no recursion limit)."""
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n[0] == "var":
            out.add(n[1])
        stack.extend(_children(n))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation: Fraction while exact, complex otherwise.
def to_complex(v: Fraction | complex) -> complex:
    """A value as a complex float (TooLarge when it does not fit)."""
    if isinstance(v, Fraction):
        try:
            return complex(float(v))
        except OverflowError as exc:
            raise TooLarge("number too large for floating point") from exc
    return v


def _finite(z: complex) -> complex:
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        raise TooLarge("floating-point overflow")
    return z


def _bounded(q: Fraction) -> Fraction | complex:
    """Exact while small; a float past MAX_BITS (which may itself overflow -> TooLarge)."""
    if q.numerator.bit_length() > MAX_BITS or q.denominator.bit_length() > MAX_BITS:
        return _finite(to_complex(q))
    return q


def _iroot(a: int, n: int) -> int | None:
    """Exact integer n-th root of a >= 0, or None (Newton's method on integers)."""
    if a < 2:
        return a
    if n == 2:
        r = math.isqrt(a)
        return r if r * r == a else None
    x = 1 << (a.bit_length() // n + 1)
    while True:
        y = ((n - 1) * x + a // x ** (n - 1)) // n
        if y >= x:
            break
        x = y
    return x if x ** n == a else None


def _exact_root(q: Fraction, n: int) -> Fraction | None:
    if n < 1 or n > 64:
        return None
    sign = 1
    if q < 0:
        if n % 2 == 0:
            return None
        sign, q = -1, -q
    p, d = _iroot(q.numerator, n), _iroot(q.denominator, n)
    return None if p is None or d is None else sign * Fraction(p, d)


def _power(b: Fraction | complex, e: Fraction | complex) -> Fraction | complex:
    if isinstance(b, Fraction) and isinstance(e, Fraction):
        if b in (0, 1) and e.denominator == 1:
            if b == 0 and e < 0:
                raise ZeroDivisionError("0 to a negative power")
            return b if e != 0 else Fraction(1)
        if b == -1 and e.denominator == 1:
            return Fraction(-1 if e.numerator % 2 else 1)
        if e.denominator == 1:
            n = e.numerator
            bits = max(b.numerator.bit_length(), b.denominator.bit_length())
            if n.bit_length() < 64 and bits * abs(n) <= MAX_BITS:
                return b ** n
        elif b > 0 and e.denominator <= 64:
            root = _exact_root(b, e.denominator)
            if root is not None:
                return _power(root, Fraction(e.numerator))
        if b < 0 and e.denominator % 2 == 1:
            # Real odd root, as \sqrt[3]{-8} = -2: x^{1/3} and \sqrt[3]{x} must agree at x < 0.
            magnitude = _power(-b, e)
            return -magnitude if e.numerator % 2 else magnitude
    # Float path, with the magnitude estimated from logarithms *before* computing anything.
    if e == 0:
        return Fraction(1)
    if b == 0:
        if to_complex(e).real > 0:
            return Fraction(0)
        raise ZeroDivisionError("0 to a non-positive power")
    if isinstance(e, Fraction) and e.numerator.bit_length() > 1000:
        raise TooLarge("exponent too large")
    w = to_complex(e) * _log(b)
    if abs(w.real) > 690:  # |result| outside [1e-300, 1e300]
        raise TooLarge(f"power of magnitude 10^{w.real / math.log(10):.3g}")
    return _finite(cmath.exp(w))


def _log(v: Fraction | complex) -> complex:
    """Principal complex logarithm; exact-integer logs so 20,000-bit rationals do not overflow.

    Near 1 the difference of two logs cancels (``1 + 10^{-20}`` would give 0, and
    ``(1+10^{-20})^{10^{20}}`` would be 1): there ``log1p`` of the exactly computed ``v - 1``.
    """
    if isinstance(v, Fraction):
        a = abs(v)
        if Fraction(1, 2) < a < 2:
            mag = math.log1p(float(a - 1))
        else:
            mag = math.log(a.numerator) - math.log(a.denominator)
        return complex(mag, math.pi if v < 0 else 0.0)
    return cmath.log(v)


_CFUNCS = {"sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "arcsin": cmath.asin,
           "arccos": cmath.acos, "arctan": cmath.atan, "sinh": cmath.sinh, "cosh": cmath.cosh,
           "tanh": cmath.tanh, "cot": lambda z: 1 / cmath.tan(z),
           "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z)}


def evaluate(node: tuple, env: dict[str, Fraction | complex],
             deadline: Deadline | None = None, _depth: int = 0) -> Fraction | complex:
    """Value of an AST under ``env`` (Fraction when exact, complex otherwise).

    Raises ZeroDivisionError/ValueError where the expression is undefined, TooLarge past the
    size guards and GradeTimeout past the deadline.
    """
    dl = deadline or _NO_DEADLINE
    dl.check()
    if _depth > 4 * MAX_DEPTH:
        raise TooLarge("expression nested too deeply")
    kind = node[0]

    def ev(n: tuple) -> Fraction | complex:
        return evaluate(n, env, dl, _depth + 1)

    if kind == "num":
        return node[1]
    if kind == "var":
        if node[1] not in env:
            raise MathParseError(f"unbound variable {node[1]}")
        return env[node[1]]
    if kind == "const":
        return {"pi": complex(math.pi), "e": complex(math.e), "i": 1j}[node[1]]
    if kind == "sum":
        vals = [(sign, ev(t)) for sign, t in node[1]]
        if all(isinstance(v, Fraction) for _, v in vals):
            return _bounded(sum((sign * v for sign, v in vals), Fraction(0)))
        return _finite(sum(sign * to_complex(v) for sign, v in vals))
    if kind == "prod":
        acc: Fraction | complex = Fraction(1)
        for n, divide in [(n, False) for n in node[1]] + [(n, True) for n in node[2]]:
            v = ev(n)
            if divide and v == 0:
                raise ZeroDivisionError("division by zero")
            if isinstance(acc, Fraction) and isinstance(v, Fraction):
                acc = _bounded(acc / v if divide else acc * v)
            else:
                za, zv = to_complex(acc), to_complex(v)
                acc = _finite(za / zv if divide else za * zv)
        return acc
    if kind == "neg":
        return -ev(node[1])
    if kind == "abs":
        v = ev(node[1])
        return abs(v) if isinstance(v, Fraction) else complex(abs(v))
    if kind == "pow":
        return _power(ev(node[1]), ev(node[2]))
    if kind == "root":
        v = ev(node[1])
        n = ev(node[2]) if node[2] is not None else Fraction(2)
        if isinstance(n, Fraction) and n.denominator == 1 and 1 <= n.numerator <= 64:
            k = n.numerator
            if isinstance(v, Fraction):
                exact = _exact_root(v, k)
                if exact is not None:
                    return exact
                if v < 0 and k % 2 == 1:  # real odd root: \sqrt[3]{-8} = -2
                    return -_power(-v, Fraction(1, k))
            return _power(v, Fraction(1, k))
        return _power(v, _power(n, Fraction(-1)))
    if kind == "func":
        z = to_complex(ev(node[2]))
        if node[1] == "exp":
            if abs(z.real) > 690:
                raise TooLarge("exp overflow")
            return cmath.exp(z)
        if abs(z) > 1e6 and node[1] in ("sinh", "cosh", "tanh", "sin", "cos", "tan"):
            raise TooLarge("trigonometric argument too large")
        return _finite(_CFUNCS[node[1]](z))
    if kind == "log":
        z = to_complex(ev(node[1]))
        if z == 0:
            raise ValueError("log of zero")
        value = cmath.log(z)
        if node[2] is not None:
            base = to_complex(ev(node[2]))
            if base in (0, 1):
                raise ValueError("bad logarithm base")
            value /= cmath.log(base)
        return value
    if kind == "fact":
        v = ev(node[1])
        if not (isinstance(v, Fraction) and v.denominator == 1 and v >= 0):
            raise ValueError("factorial of a non-natural number")
        if v > MAX_FACTORIAL:
            raise TooLarge("factorial too large")
        return Fraction(math.factorial(int(v)))
    if kind == "binom":
        n, k = ev(node[1]), ev(node[2])
        if not all(isinstance(v, Fraction) and v.denominator == 1 for v in (n, k)):
            raise ValueError("binomial of non-integers")
        if abs(n) > 10 * MAX_FACTORIAL:
            raise TooLarge("binomial too large")
        return Fraction(math.comb(int(n), int(k))) if 0 <= k <= n else Fraction(0)
    raise MathParseError(f"unknown node {kind}")


def close(a: Fraction | complex, b: Fraction | complex) -> bool:
    """Exact equality for two rationals, else ``|a-b| <= RTOL*max(|a|,|b|) + ATOL``."""
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    za, zb = to_complex(a), to_complex(b)
    return abs(za - zb) <= RTOL * max(abs(za), abs(zb)) + ATOL

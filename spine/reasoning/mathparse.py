"""The tokenizer and recursive-descent parser of `mathexpr` (its grammar and bounds are described
there): LaTeX answer text in, a tuple AST out. Model text is never executed."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

MAX_DEPTH = 50          # nesting of groups/powers/unary signs; keeps Python recursion shallow
MAX_BITS = 20_000       # largest exact numerator/denominator (about 6,000 digits)
MAX_FACTORIAL = 1_000


class MathParseError(ValueError):
    """The text is not in the supported math subset."""


class TooLarge(ArithmeticError):
    """A value, exponent or nesting depth beyond the guards."""


class GradeTimeout(Exception):
    """The cooperative deadline passed."""


class Deadline:
    """A wall-clock deadline checked cooperatively inside every loop and recursion."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise GradeTimeout("deadline exceeded")


_NO_DEADLINE = Deadline(None)
_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "log", "ln", "exp", "lg"}
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
          "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon",
          "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
          "Phi", "Psi", "Omega"}
_MULOPS = {"*", "cdot", "times"}
_DIVOPS = {"/", "div"}
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)"
    r"|(?P<var>[a-zA-Z](?:_(?:\{[a-zA-Z0-9]{1,8}\}|[a-zA-Z0-9]))?)"
    r"|\\(?P<cmd>[a-zA-Z]+)(?P<sub>_(?:\{[a-zA-Z0-9]{1,8}\}|[a-zA-Z0-9]))?"
    r"|(?P<op>[-+*/^!()\[\]{}|_]))"
)


def _tokenize(s: str, deadline: Deadline) -> list[tuple[str, object]]:
    toks: list[tuple[str, object]] = []
    pos, n = 0, len(s)
    while pos < n:
        deadline.check()
        m = _TOKEN_RE.match(s, pos)
        if m is None or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise MathParseError(f"unexpected {s[pos:pos + 10]!r}")
        pos = m.end()
        if m.group("num") is not None:
            toks.append(("num", Fraction(m.group("num"))))
        elif m.group("var") is not None:
            toks.append(("var", m.group("var").replace("{", "").replace("}", "")))
        elif m.group("cmd") is not None:
            name = m.group("cmd")
            if name in _GREEK:
                toks.append(("var", name + (m.group("sub") or "").replace("{", "").replace("}", "")))
            else:
                toks.append(("cmd", name))
                sub = m.group("sub")
                if sub:  # \log_28 is log base 2 of 8: the subscript is one token (or a group)
                    toks.append(("op", "_"))
                    body = sub[1:].strip("{}")
                    toks.extend([("op", "{"), *_tokenize(body, deadline), ("op", "}")])
        else:
            toks.append(("op", m.group("op")))
    return toks


class _Parser:
    def __init__(self, toks: list[tuple[str, object]], deadline: Deadline) -> None:
        self.toks, self.i, self.depth, self.abs_open, self.dl = toks, 0, 0, 0, deadline

    # -- helpers ---------------------------------------------------------------------------
    def peek(self) -> tuple[str, object] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> tuple[str, object]:
        self.dl.check()
        if self.i >= len(self.toks):
            raise MathParseError("unexpected end of expression")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_op(self, *ops: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "op" and t[1] in ops

    def expect(self, op: str) -> None:
        t = self.next()
        if t != ("op", op):
            raise MathParseError(f"expected {op!r}, got {t[1]!r}")

    @contextmanager
    def nested(self) -> Iterator[None]:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooLarge(f"nesting deeper than {MAX_DEPTH}")
        try:
            yield
        finally:
            self.depth -= 1

    def starts_atom(self) -> bool:
        t = self.peek()
        if t is None:
            return False
        kind, val = t
        if kind in ("num", "var"):
            return True
        if kind == "cmd":
            return val not in _MULOPS and val not in _DIVOPS
        return val in ("(", "[", "{") or (val == "|" and self.abs_open == 0)

    # -- grammar ---------------------------------------------------------------------------
    def parse(self) -> tuple:
        node = self.expr()
        if self.i != len(self.toks):
            raise MathParseError(f"unexpected {self.toks[self.i][1]!r}")
        return node

    def expr(self) -> tuple:
        terms = [(1, self.term())]
        while self.is_op("+", "-"):
            sign = 1 if self.next()[1] == "+" else -1
            terms.append((sign, self.term()))
        if len(terms) == 1:
            return terms[0][1]
        return ("sum", tuple(terms))

    def term(self) -> tuple:
        num, den = [self.unary()], []
        while True:
            t = self.peek()
            if t is None:
                break
            if t[1] in _MULOPS and (t[0] == "cmd" or t[1] == "*"):
                self.next()
                num.append(self.unary())
            elif t[1] in _DIVOPS and (t[0] == "cmd" or t[1] == "/"):
                self.next()
                den.append(self.unary())
            elif self.starts_atom():
                num.append(self.power())
            else:
                break
        if len(num) == 1 and not den:
            return num[0]
        return ("prod", tuple(num), tuple(den))

    def unary(self) -> tuple:
        if self.is_op("-", "+"):
            sign = self.next()[1]
            with self.nested():
                inner = self.unary()
            return ("neg", inner) if sign == "-" else inner
        return self.power()

    def power(self) -> tuple:
        base = self.postfix()
        if not self.is_op("^"):
            return base
        self.next()
        with self.nested():
            if self.is_op("-", "+"):
                exp = self.unary()
            elif self.is_op("{"):
                exp = self.group("{", "}")
                if self.is_op("^"):  # x^{a}^{b}: keep right-associativity
                    self.next()
                    exp = ("pow", exp, self.unary())
            else:
                exp = self.power()
        return ("pow", base, exp)

    def postfix(self) -> tuple:
        node = self.atom()
        while self.is_op("!"):
            self.next()
            node = ("fact", node)
        return node

    def group(self, open_: str, close: str) -> tuple:
        self.expect(open_)
        with self.nested():
            node = self.expr()
        self.expect(close)
        return node

    def arg(self) -> tuple:
        """A LaTeX macro argument: ``{expr}``, ``(expr)``, or a single atom."""
        if self.is_op("{"):
            return self.group("{", "}")
        if self.is_op("("):
            return self.group("(", ")")
        return self.atom()

    def atom(self) -> tuple:
        kind, val = self.next()
        if kind == "num":
            return ("num", val)
        if kind == "var":
            return ("const", val) if val in ("e", "i") else ("var", val)
        if kind == "op":
            if val in ("(", "[", "{"):
                self.i -= 1
                return self.group(val, {"(": ")", "[": "]", "{": "}"}[val])
            if val == "|" and self.abs_open == 0:
                self.abs_open += 1
                with self.nested():
                    inner = self.expr()
                self.abs_open -= 1
                self.expect("|")
                return ("abs", inner)
            raise MathParseError(f"unexpected {val!r}")
        return self.command(val)

    def command(self, name: str) -> tuple:
        if name == "pi":
            return ("const", "pi")
        if name == "frac":
            return ("prod", (self.arg(),), (self.arg(),))
        if name == "binom":
            return ("binom", self.arg(), self.arg())
        if name == "sqrt":
            index = None
            if self.is_op("["):
                index = self.group("[", "]")
            return ("root", self.arg(), index)
        if name in _FUNCS:
            return self.function(name)
        raise MathParseError(f"unsupported command \\{name}")

    def function(self, name: str) -> tuple:
        power = base = None
        if name == "log" and self.is_op("_"):
            self.next()
            base = self.arg()
        if self.is_op("^"):
            self.next()
            power = self.group("{", "}") if self.is_op("{") else self.unary()
        if name == "log" and base is None and self.is_op("_"):
            self.next()
            base = self.arg()
        if power == ("neg", ("num", Fraction(1))) and name in _INVERSE:
            name, power = _INVERSE[name], None
        with self.nested():
            if self.is_op("("):
                arg = self.group("(", ")")
            else:  # \sin 2x = sin(2x): an implicit product of powers, stopping at operators
                factors = [self.power()]
                while self.starts_atom() and not (self.peek()[0] == "cmd" and self.peek()[1] in _FUNCS):
                    factors.append(self.power())
                arg = factors[0] if len(factors) == 1 else ("prod", tuple(factors), ())
        if name == "lg":
            name, base = "log", ("num", Fraction(10))
        node = ("log", arg, base) if name in ("log", "ln") else ("func", name, arg)
        return ("pow", node, power) if power is not None else node


def parse(text: str, deadline: Deadline | None = None) -> tuple:
    """Parse a normalised LaTeX expression into a tuple AST (raises MathParseError/TooLarge)."""
    dl = deadline or _NO_DEADLINE
    toks = _tokenize(text, dl)
    if not toks:
        raise MathParseError("empty expression")
    try:
        return _Parser(toks, dl).parse()
    except RecursionError as exc:  # belt and braces: MAX_DEPTH should prevent this
        raise TooLarge("expression nested too deeply") from exc

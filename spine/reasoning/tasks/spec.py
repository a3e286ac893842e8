"""Task spec strings: problems for `spine eval --problems` / `ReasoningEval`, and training text.

    task:countdown:level=3,n=200,seed=1,split=eval            evaluation problems
    task:arith+linear:levels=1-5,n=20000,seed=0,split=train   a mixture (SFT / pretraining corpus)

Families are joined with "+"; `level=K` or `levels=A-B` (inclusive; each family keeps the levels
it has). A mixture cycles through its (family, level) pairs: problem i comes from pair i mod P, so
every pair gets n/P problems. Defaults: level=1, n=100, seed=0, split=eval (a problem spec is for
evaluation; a corpus spec must say split=train, see `task_documents`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from spine.reasoning.problems import Problem

from . import TASKS, get_task

PREFIX = "task:"
_KEYS = ("level", "levels", "n", "seed", "split")


@dataclass(frozen=True)
class TaskSpec:
    families: tuple[str, ...]
    levels: tuple[int, ...] | None  # None: `level` (one level) was given or defaulted
    level: int
    n: int
    seed: int
    split: str

    def pairs(self) -> list[tuple[str, int]]:
        """The (family, level) pairs of the mixture, in order."""
        out = []
        for fam in self.families:
            known = get_task(fam).levels
            want = self.levels if self.levels is not None else (self.level,)
            mine = [lv for lv in want if lv in known]
            if not mine:
                raise ValueError(f"task spec: {fam!r} has no level in {list(want)}; its levels are "
                                 f"{', '.join(map(str, known))}")
            out += [(fam, lv) for lv in mine]
        return out


def is_task_spec(source: object) -> bool:
    return isinstance(source, str) and source.strip().startswith(PREFIX)


def _int(spec: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"task spec {spec!r}: {key} must be an integer, got {value!r}") from None


def parse_task_spec(spec: str) -> TaskSpec:
    """Parse "task:FAMILY[+FAMILY...]:key=value,..." (any typo -> one-line ValueError)."""
    s = spec.strip()
    if not s.startswith(PREFIX):
        raise ValueError(f"not a task spec: {spec!r} (expected 'task:FAMILY:level=..,n=..')")
    fams, _, body = s[len(PREFIX):].partition(":")
    families = tuple(f.strip() for f in fams.split("+"))
    for f in families:
        if f not in TASKS:
            raise ValueError(f"task spec {spec!r}: unknown task {f!r}; known tasks: {', '.join(TASKS)}")
    vals: dict[str, str] = {}
    for part in filter(None, (x.strip() for x in body.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in _KEYS or not value:
            raise ValueError(f"task spec {spec!r}: bad item {part!r}; known keys: {', '.join(_KEYS)}")
        if key in vals:
            raise ValueError(f"task spec {spec!r}: {key} given twice")
        vals[key] = value
    if "level" in vals and "levels" in vals:
        raise ValueError(f"task spec {spec!r}: give level=K or levels=A-B, not both")
    levels = None
    if "levels" in vals:
        lo, dash, hi = vals["levels"].partition("-")
        a = _int(spec, "levels", lo)
        b = _int(spec, "levels", hi) if dash else a
        if b < a:
            raise ValueError(f"task spec {spec!r}: levels={vals['levels']} is an empty range")
        levels = tuple(range(a, b + 1))
    out = TaskSpec(families=families, levels=levels, level=_int(spec, "level", vals.get("level", "1")),
                   n=_int(spec, "n", vals.get("n", "100")), seed=_int(spec, "seed", vals.get("seed", "0")),
                   split=vals.get("split", "eval"))
    if out.n < 1:
        raise ValueError(f"task spec {spec!r}: n must be >= 1")
    if out.split not in ("train", "eval"):
        raise ValueError(f"task spec {spec!r}: split must be train or eval, got {out.split!r}")
    out.pairs()  # every family has a level in range
    return out


def iter_task_problems(spec: str | TaskSpec) -> Iterator[Problem]:
    """The spec's `n` problems (a mixture cycles through its (family, level) pairs)."""
    ts = parse_task_spec(spec) if isinstance(spec, str) else spec
    pairs = ts.pairs()
    streams = [get_task(f).stream(lv, seed=ts.seed, split=ts.split) for f, lv in pairs]
    for i in range(ts.n):
        yield next(streams[i % len(streams)])


def load_task_problems(spec: str) -> list[Problem]:
    """`spine eval --problems task:...` and `ReasoningEval(problems="task:...")`."""
    return list(iter_task_problems(spec))


def format_document(problem: Problem) -> str:
    """"Question: <prompt>\\nAnswer: <worked solution>" — the prompt template "synthetic" is its prefix."""
    return f"Question: {problem.prompt}\nAnswer: {problem.metadata['solution']}"


def task_documents(spec: str) -> list[str]:
    """Worked-solution documents of a corpus spec; refuses split=eval (held-out problems stay held out)."""
    ts = parse_task_spec(spec)
    if ts.split != "train":
        raise ValueError(f"task corpus {spec!r}: training text must come from split=train "
                         f"(got split={ts.split}); add ',split=train'")
    return [format_document(p) for p in iter_task_problems(ts)]

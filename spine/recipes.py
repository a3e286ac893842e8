"""`spine configs`: the shipped recipes (configs/**/*.yaml), what each does and what it costs.

Each recipe may start with a header of `# key: value` comment lines that this listing reads:

    # summary: one line: what the recipe does
    # cpu: wall time on a CPU (say which, and where the number comes from)
    # gpu: wall time on a GPU
    # memory: peak memory
    # disk: what the run writes (checkpoints, caches)
    # needs: files or network it needs

A field continues on the comment lines below it that are indented by two or more spaces (`#   more`).
A recipe without the header is listed too: its first comment line is the summary and the rest
reads "-". Numbers come from the recipe's author; nothing here measures anything.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Optional

from .commands import command

FIELDS = ("summary", "cpu", "gpu", "memory", "disk", "needs")
_KEY = re.compile(r"#\s*(" + "|".join(FIELDS) + r")\s*:\s*(.*)$")
_MORE = re.compile(r"#\s{2,}(\S.*)$")  # an indented comment line: continues the field above


def default_config_dir() -> Path:
    """configs/ beside the installed packages (an editable install or a checkout), else ./configs."""
    here = Path(__file__).resolve().parents[1] / "configs"
    return here if here.is_dir() else Path("configs")


def read_header(path: str | Path) -> dict[str, str]:
    """The header fields of one recipe (missing ones absent); tolerant of any YAML file."""
    info: dict[str, str] = {}
    first_comment = None
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return info
    field = None  # the field the next indented line continues ("" for a repeated key: its lines are dropped)
    for line in lines:
        s = line.strip()
        if not s:
            field = None
            continue
        if not s.startswith("#"):
            break  # the header is the leading comment block
        m = _KEY.match(s)
        more = _MORE.match(s)
        if m:
            field = "" if m.group(1) in info else m.group(1)
            info.setdefault(m.group(1), m.group(2).strip())
        elif field is not None and more:
            if field:
                info[field] = " ".join(filter(None, (info[field], more.group(1).strip())))
        else:
            field = None
            if first_comment is None and s.lstrip("#").strip():
                first_comment = s.lstrip("#").strip()
    if "summary" not in info and first_comment:
        info["summary"] = first_comment
    return info


def list_recipes(config_dir: str | Path | None = None) -> list[tuple[str, dict[str, str]]]:
    """(path relative to the repository, header) for every *.yaml under `config_dir`, sorted."""
    root = Path(config_dir) if config_dir else default_config_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"config directory not found: {root}")
    out = []
    for p in sorted(root.rglob("*.y*ml")):
        if p.suffix in (".yaml", ".yml"):
            out.append((str(Path(root.name) / p.relative_to(root)), read_header(p)))
    return out


@command("configs")
def configs(config_dir: Optional[str] = None, verbose: bool = False) -> int:
    """List the shipped recipes (configs/*.yaml): what each does and its CPU/GPU time (--verbose: all fields).

    Args:
        config_dir: directory of recipes (default: the repository's configs/).
        verbose: one block per recipe with every header field whole, instead of two lines each cut to the
            terminal's width.
    """
    recipes = list_recipes(config_dir)
    cols = max(40, shutil.get_terminal_size((120, 24)).columns)
    if verbose:
        for name, info in recipes:
            print(name)
            for key in FIELDS:
                print(f"  {key + ':':<8} {info.get(key, '-')}")
    else:
        # two lines per recipe, as wide as the terminal: long fields are cut (--verbose true prints them whole)
        width = max((len(name) for name, _ in recipes), default=10)
        half = (cols - 16) // 2
        for name, info in recipes:
            print(f"{name:<{width}}  {_cut(info.get('summary', '-'), cols - width - 2)}")
            print(f"    cpu: {_cut(info.get('cpu', '-'), half):<{half}}  gpu: {_cut(info.get('gpu', '-'), half)}")
    print(_cut("\nrun one: spine fit --config RECIPE   (all fields: --verbose true)", 1 + cols))
    return 0


def _cut(text: str, n: int) -> str:
    """`text` in at most `n` characters, ending in an ellipsis when cut."""
    if len(text) <= n:
        return text
    mark = "…" if _can_print("…") else "..."
    if n <= len(mark):
        return mark[:max(n, 0)]
    return text[:n - len(mark)].rstrip() + mark


def _can_print(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
        return True
    except (UnicodeEncodeError, LookupError):
        return False

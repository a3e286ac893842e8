"""Serving a spine model: an OpenAI-compatible HTTP server, a terminal chat, and an LLM judge client.

- `spine serve` (`spine.serve.app`): FastAPI + uvicorn; every request goes through
  `spine.engine.Engine.generate` via a micro-batcher (`spine.serve.batcher`); no decode loop here.
- `spine chat` (`spine.serve.chat`): multi-turn terminal chat on the same engine, in-process.
- `spine judge` (`spine.serve.judge`): scores responses through any OpenAI-compatible endpoint.

The web stack and the `openai` client are an optional extra; importing `spine.serve` needs neither
(`protocol`, `templates`, `batcher` and `chat` are plain Python on top of the engine).
"""
from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install -e '.[serve]'"


class MissingExtra(RuntimeError):
    """An optional dependency of the serve extra is not installed."""


def require(module: str, what: str) -> ModuleType:
    """Import `module` or raise a one-line `MissingExtra` naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = getattr(e, "name", None) or top
        # an installed package whose own dependency is missing must say which one, not "not installed"
        if missing.split(".")[0] != top:
            raise MissingExtra(f"{what} needs the '{top}' package, which is installed but cannot be imported: "
                               f"its dependency '{missing}' is missing ({INSTALL_HINT})") from None
        raise MissingExtra(f"{what} needs the '{top}' package, which is not installed: "
                           f"{INSTALL_HINT}") from None

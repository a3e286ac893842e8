"""`spine chat`: a multi-turn terminal chat over the engine (in-process, no server).

Two modes show what instruction tuning changes:
- chat: the history is rendered with the chat template (the tokenizer's, or alpaca/phi3/plain) and
  the model answers as the assistant; its turn ends at a stop token or at the template's next-turn
  marker. An instruction-tuned (chat) model answers; a base model rambles in the template's shape.
- completion: there is no template; what you type is appended to one running text and the model
  continues it, as a base (completion) model is meant to be used.

Commands: /reset (forget the history), /history, /help, /quit (or end of input).
"""
from __future__ import annotations

import secrets
from dataclasses import replace
from typing import IO, Literal

from ..engine import Engine, SamplingParams
from .templates import ChatTemplate

HELP = "commands: /reset forgets the conversation, /history shows it, /quit exits"


def run_chat(engine: Engine, params: SamplingParams, *, mode: Literal["chat", "completion"] = "chat",
             template: ChatTemplate | None = None, system: str | None = None, enable_thinking: bool = False,
             stdin: IO[str], stdout: IO[str], interactive: bool = False) -> int:
    """Read user turns from `stdin` until EOF or /quit; print each reply to `stdout`. Returns turns answered."""
    tok, ctx = engine.tokenizer, engine.context_length
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    history: list[dict[str, str]] = []
    document = ""
    turns = 0

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    label = f"chat mode, template {template.name}" if mode == "chat" else "completion mode (no template)"
    say(f"[spine chat] {label}, context {ctx} tokens; {HELP}")
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        cmd = text.strip()
        if cmd in ("/quit", "/exit"):
            break
        if cmd == "/reset":
            history, document = [], ""
            say("[history cleared]")
            continue
        if cmd == "/help":
            say(HELP)
            continue
        if cmd == "/history":
            say("\n".join(f"{m['role']}: {m['content']}" for m in history) if mode == "chat" else document)
            continue
        if not cmd:
            continue

        if mode == "chat":
            history.append({"role": "user", "content": text})
            msgs = ([{"role": "system", "content": system}] if system else []) + history
            ids = template.encode(tok, msgs, enable_thinking=enable_thinking)
            # forget the oldest exchanges until the prompt leaves room for a full reply
            while len(ids) + params.max_new_tokens > ctx and len(history) > 1:
                history = history[2:] if len(history) > 2 else history[-1:]
                msgs = ([{"role": "system", "content": system}] if system else []) + history
                ids = template.encode(tok, msgs, enable_thinking=enable_thinking)
                say("[dropped the oldest turn to fit the context]")
            stop = tuple(dict.fromkeys(params.stop + template.stop))
        else:
            document = f"{document}\n{text}" if document else text
            ids = tok.encode(document)
            if len(ids) + params.max_new_tokens > ctx:  # keep the end of the running text
                ids = ids[-(ctx - params.max_new_tokens):]
            stop = params.stop
        if len(ids) + params.max_new_tokens > ctx:
            say(f"[this turn needs {len(ids)} + {params.max_new_tokens} tokens; the context is {ctx}: "
                "shorten it, lower --max_tokens or /reset]")
            if mode == "chat":
                history.pop()
            continue
        p = replace(params, stop=stop, seed=seed, n=1)
        out = engine.generate([ids], p, keys=[f"turn{turns}"])[0][0]
        turns += 1
        if mode == "chat":
            history.append({"role": "assistant", "content": out.text})
        else:
            document += out.text
        say(("assistant> " if interactive else "") + out.text)
    return turns

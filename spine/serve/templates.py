"""Chat templates: messages -> prompt token ids, for `spine serve` and `spine chat`.

- "tokenizer": the tokenizer's own template (Qwen3's ChatML, `Qwen3Tokenizer.encode_chat`).
- "alpaca": the instruction format spine's instruction stage trains on (`spine.instruct`, the first
  book's ch. 7). One user turn renders exactly as `spine.instruct.prompt_text`; later turns repeat
  the Instruction/Response blocks; a system message replaces the preamble.
- "phi3": the book's exercise 7.1 format, `<|user|>\\n...\\n<|assistant|>\\n...`, turns joined by "\\n".
- "plain": a transcript for base (completion) models: optional system text, then `User: ...` /
  `Assistant: ...` lines, ending with `Assistant:`.

"auto" picks "tokenizer" when the tokenizer has a chat template, else "alpaca". Plain-text templates
also carry stop strings (the start of the next turn), so a model that does not emit end-of-text
still ends its turn. Message text is never parsed for special tokens: "<|endoftext|>" typed by a
user is ordinary text (only the Qwen3 template inserts its own special tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..instruct import ALPACA_PREAMBLE

TEMPLATE_NAMES = ("auto", "tokenizer", "alpaca", "phi3", "plain")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """A named way of turning messages into prompt ids, plus the stop strings it implies."""

    name: str
    stop: tuple[str, ...] = ()

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """Prompt text for a plain-text template (not used for "tokenizer")."""
        check_messages(messages)
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        if self.name == "alpaca":
            parts = [system or ALPACA_PREAMBLE]
            for m in turns:
                parts.append(f"\n\n### Instruction:\n{m['content']}" if m["role"] == "user"
                             else f"\n\n### Response:\n{m['content']}")
            if not turns or turns[-1]["role"] == "user":
                parts.append("\n\n### Response:\n")
            return "".join(parts)
        if self.name == "phi3":
            parts = [f"{system}\n" if system else ""]
            for i, m in enumerate(turns):
                sep = "\n" if i else ""
                parts.append(f"{sep}<|user|>\n{m['content']}" if m["role"] == "user"
                             else f"{sep}<|assistant|>\n{m['content']}")
            if not turns or turns[-1]["role"] == "user":
                parts.append("\n<|assistant|>\n")
            return "".join(parts)
        if self.name == "plain":
            lines = [f"{system}\n\n"] if system else []
            for m in turns:
                c = m["content"]
                if m["role"] == "user":
                    lines.append(f"User: {c}\n")
                else:  # a reply the model generated after "Assistant:" already starts with its space
                    lines.append(f"Assistant:{c if c.startswith((' ', chr(10))) else ' ' + c}\n")
            lines.append("Assistant:")
            return "".join(lines)
        raise ValueError(f"template {self.name!r} renders through the tokenizer")

    def encode(self, tokenizer: Any, messages: Sequence[dict[str, str]], *,
               enable_thinking: bool = True) -> list[int]:
        """Prompt token ids for `messages` ending with the assistant's generation prompt."""
        if self.name == "tokenizer":
            return tokenizer.encode_chat(list(messages), add_generation_prompt=True,
                                         enable_thinking=enable_thinking)
        return tokenizer.encode(self.render(messages))


_STOPS = {
    "alpaca": ("\n\n### Instruction:", "\n\n### Input:", "\n\n### Response:"),
    "phi3": ("\n<|user|>", "\n<|assistant|>"),
    "plain": ("\nUser:",),
    "tokenizer": (),
}


def check_messages(messages: Any) -> None:
    """ValueError naming the message index unless `messages` is a non-empty list of role/content dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with a string 'content'")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {list(ROLES)}, got {m.get('role')!r}")


def chat_template_for(tokenizer: Any, name: str = "auto") -> ChatTemplate:
    """The template `name` ("auto": the tokenizer's when it has one, else "alpaca")."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"chat template must be one of {list(TEMPLATE_NAMES)}, got {name!r}")
    has_own = callable(getattr(tokenizer, "encode_chat", None))
    if name == "auto":
        name = "tokenizer" if has_own else "alpaca"
    if name == "tokenizer" and not has_own:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name', tokenizer)!r} has no chat template; "
                         "use --chat_template alpaca, phi3 or plain")
    return ChatTemplate(name, _STOPS[name])

"""Chat-formatted prompts: the conversation a deployed assistant sees, before the model's own chat
template renders it into tokens (``core.predict.encode_chat``).

Torch-free (front ends check a conversation before a model loads):

* ``Message`` / ``Conversation``: the messages, in order; a conversation that ends with an
  assistant message is traced up to the start of that answer, whose first token is the default
  target ("why did it answer X");
* ``read_messages`` / ``parse_messages``: a JSON file of messages (a list of ``{"role",
  "content"}``, or ``{"messages": [...]}``), every problem named in one sentence;
* ``conversation``: the conversation a ``ChatSettings`` (``--chat`` / ``--system`` /
  ``--messages``) makes of a prompt, or None for a raw prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import CircuitDeskError
from core.paths import read_user_text
from core.prompt import EMPTY_PROMPT, require_utf8
from core.settings import ChatSettings

ROLES = ("system", "user", "assistant")
MAX_MESSAGES_FILE_BYTES = 16 * 1024**2
MAX_MESSAGES = 10_000


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str

    def to_json(self) -> dict:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """A prompt in chat form: ``messages`` rendered by the model's chat template."""

    messages: tuple[Message, ...]

    @property
    def answer(self) -> Message | None:
        """The final assistant message, whose first token is the default target (None: the
        conversation ends with the user, and the template's generation prompt follows)."""
        last = self.messages[-1]
        return last if last.role == "assistant" and len(self.messages) > 1 else None

    @property
    def context(self) -> tuple[Message, ...]:
        """The messages the traced sequence renders: all of them but the answer."""
        return self.messages[:-1] if self.answer is not None else self.messages

    @property
    def system(self) -> str | None:
        first = self.messages[0]
        return first.content if first.role == "system" else None

    def to_json(self) -> list[dict]:
        return [m.to_json() for m in self.messages]

    def summary(self, n: int = 60) -> str:
        """One line for lists and titles: the number of messages and the last user message."""
        user = next((m.content for m in reversed(self.context) if m.role == "user"), self.context[-1].content)
        user = " ".join(user.split())
        user = user if len(user) <= n else user[: n - 1] + "…"
        count = f"{len(self.messages)} message{'s' * (len(self.messages) != 1)}"
        return f"chat, {count}: “{user}”" + (" → the assistant's answer" if self.answer else "")


def parse_messages(data, where: str) -> Conversation:
    """The conversation in parsed JSON ``data`` (a list of messages or ``{"messages": [...]}``);
    ``where`` names it in errors ("conv.json")."""
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list):
        raise CircuitDeskError(f"{where} must hold a list of messages, each {{\"role\": …, \"content\": …}} "
                               "(or an object whose \"messages\" is that list).")
    if not data:
        raise CircuitDeskError(f"{where} holds no messages; add at least one user message.")
    if len(data) > MAX_MESSAGES:
        raise CircuitDeskError(f"{where} holds {len(data):,} messages; at most {MAX_MESSAGES:,} are read.")
    messages = []
    for i, item in enumerate(data, 1):
        at = f"{where}, message {i}"
        if not isinstance(item, dict):
            raise CircuitDeskError(f"{at} is not an object with \"role\" and \"content\".")
        missing = [k for k in ("role", "content") if k not in item]
        if missing:
            raise CircuitDeskError(f"{at} has no {' and no '.join(repr(k) for k in missing)}.")
        role, content = item["role"], item["content"]
        if role not in ROLES:
            raise CircuitDeskError(f"{at} has the role {role!r}; a role is one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise CircuitDeskError(f"{at}: \"content\" must be text (got {type(content).__name__}).")
        if not content.strip():
            raise CircuitDeskError(f"{at} ({role}) is empty; give it some text or leave it out.")
        require_utf8(content, at)
        if role == "system" and i != 1:
            raise CircuitDeskError(f"{at} is a system message; only the first message may be one.")
        messages.append(Message(role, content))
    if all(m.role == "system" for m in messages):
        raise CircuitDeskError(f"{where} holds only a system message; add the user's message.")
    if messages[-1].role == "assistant" and not any(m.role == "user" for m in messages):
        raise CircuitDeskError(f"{where} has an assistant answer but no user message before it.")
    return Conversation(tuple(messages))


def read_messages(path: str | Path) -> Conversation:
    """The conversation in a JSON file of messages (see ``parse_messages``)."""
    path, text = read_user_text(path, "messages file", MAX_MESSAGES_FILE_BYTES, "; save it as UTF-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CircuitDeskError(f"{path.name} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    except RecursionError:
        raise CircuitDeskError(f"{path.name} is nested too deeply to be a list of messages.") from None
    return parse_messages(data, path.name)


def with_system(conv: Conversation, system: str | None, where: str = "The conversation") -> Conversation:
    """``conv`` with a system message first (``system`` None or empty: as it is)."""
    if not system:
        return conv
    require_utf8(system, "The system message")
    if conv.system is not None:
        raise CircuitDeskError(f"{where} already starts with a system message; give --system or that message, "
                               "not both.")
    return Conversation((Message("system", system),) + conv.messages)


def conversation(prompt: str | None, chat: ChatSettings) -> Conversation | None:
    """The conversation ``chat`` makes of ``prompt``: the messages file's (``--messages``), or the
    prompt as the user's message (``--chat``), with ``--system`` first; None for a raw prompt."""
    if chat.messages:
        if prompt:
            raise CircuitDeskError("Give the prompt or a messages file, not both (the file holds the user's "
                                   "messages).")
        conv = read_messages(chat.messages)
        return with_system(conv, chat.system, Path(chat.messages).name)
    if not chat.chat:
        if chat.system:
            raise CircuitDeskError("A system message belongs to a chat conversation; add --chat (or tick Chat).")
        return None
    if not isinstance(prompt, str) or not prompt.strip():
        raise CircuitDeskError(EMPTY_PROMPT)
    require_utf8(prompt, "The prompt")
    return with_system(Conversation((Message("user", prompt),)), chat.system)


def conversation_from_json(data, where: str = "the session") -> Conversation:
    """A conversation a session recorded (``Conversation.to_json``), checked like a file's."""
    return parse_messages(data, where)

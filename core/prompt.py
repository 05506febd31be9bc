"""Prompt checks that need no model (torch-free, so front ends can run them before loading)."""

from core.errors import CircuitDeskError

EMPTY_PROMPT = "The prompt is empty; type the text whose next token you want to explain."


def require_prompt(prompt: object, what: str = "The prompt") -> str:
    """The prompt itself, or a clear error when it is empty, not text, or not valid UTF-8."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise CircuitDeskError(EMPTY_PROMPT)
    return require_utf8(prompt, what)


def require_utf8(text: str, what: str) -> str:
    """``text`` itself, or a clear error when it holds a lone surrogate, which no tokenizer takes.

    Python gives one for each byte of a command-line argument that is not UTF-8 (U+DC80..U+DCFF,
    e.g. ``--prompt "$(cat latin1.txt)"``) and for an unpaired ``\\ud800`` escape in JSON.
    """
    at = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
    if at is None:
        return text
    code = ord(text[at])
    found = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"an unpaired surrogate U+{code:04X}"
    raise CircuitDeskError(
        f"{what} is not valid UTF-8 text ({found} at character {at + 1}); convert the file it came from to UTF-8."
    )

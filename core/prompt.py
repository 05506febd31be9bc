"""Prompt checks that need no model (torch-free, so front ends can run them before loading)."""

from core.errors import CircuitDeskError

EMPTY_PROMPT = "The prompt is empty; type the text whose next token you want to explain."


def require_prompt(prompt: object) -> str:
    """The prompt itself, or a clear error when it is empty or not text."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise CircuitDeskError(EMPTY_PROMPT)
    return prompt

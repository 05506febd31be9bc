"""Next-token prediction: the first thing an auditor checks before tracing a prompt."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from core.chat import Conversation
from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.models import LoadedModel
from core.prompt import require_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenProb:
    token_id: int
    token: str  # decoded text, e.g. " Paris"
    probability: float
    logit: float


@dataclass(frozen=True)
class Prediction:
    prompt: str
    prompt_tokens: tuple[str, ...]
    top: tuple[TokenProb, ...]
    seconds: float

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "prompt_tokens": list(self.prompt_tokens),
            "top": [t.__dict__ for t in self.top],
            "seconds": round(self.seconds, 4),
        }


def encode_prompt(model: LoadedModel, prompt: str | Conversation) -> torch.Tensor:
    """Token ids [1, seq] for a prompt (a conversation: as its chat template renders it, see
    ``encode_chat``), refusing empty prompts and prompts longer than the context."""
    if isinstance(prompt, Conversation):
        return encode_chat(model, prompt).ids.to(model.device)
    require_prompt(prompt)
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    _check_length(model, ids.shape[1])
    return ids.to(model.device)


def _check_length(model: LoadedModel, n: int) -> None:
    limit = model.facts.context_length
    if limit and n > limit:
        raise CircuitDeskError(f"The prompt is {n} tokens long but {model.name} reads at most {limit}; shorten it.")
    if n == 0:
        raise CircuitDeskError("The prompt produced no tokens; type some text.")


@dataclass(frozen=True)
class ChatEncoding:
    """A conversation as the model's chat template renders it, up to the assistant's turn."""

    ids: torch.Tensor  # [1, seq]: exactly the tokenizer's apply_chat_template(context, add_generation_prompt=True)
    text: str  # the same, rendered as text (special tokens included)
    answer_id: int | None  # the first token of the final assistant message, if the conversation ends with one


def no_template_error(model: LoadedModel) -> CircuitDeskError:
    return CircuitDeskError(f"{model.name} has no chat template (its tokenizer config or GGUF file carries none); "
                            "trace the raw prompt, without --chat (or with Chat unticked).")


def encode_chat(model: LoadedModel, conv: Conversation) -> ChatEncoding:
    """The conversation's context (every message but a final assistant answer) rendered by the
    model's own chat template with the generation prompt, so the next token is the assistant's
    first. The ids are the tokenizer's own ``apply_chat_template`` output: the template holds its
    special tokens, nothing is added to them."""
    tok = model.tokenizer
    if not getattr(tok, "chat_template", None):
        raise no_template_error(model)
    context = [m.to_json() for m in conv.context]
    ids = _template_ids(model, context, add_generation_prompt=True)
    _check_length(model, len(ids))
    text = _apply_template(model, context, tokenize=False, add_generation_prompt=True)
    answer_id = None
    if conv.answer is not None:
        answer_id = _answer_token(model, context, conv.answer.to_json(), ids)
    return ChatEncoding(torch.tensor([ids], dtype=torch.long), str(text), answer_id)


def _apply_template(model: LoadedModel, messages: list[dict], **options):
    try:
        return model.tokenizer.apply_chat_template(messages, **options)
    except CircuitDeskError:
        raise
    except Exception as e:  # a template's own raise_exception("roles must alternate…"), or what jinja refuses
        log.info("chat template refused the conversation", exc_info=True)
        raise CircuitDeskError(f"The chat template of {model.name} refused this conversation "
                               f"({str(e).strip().rstrip('.') or type(e).__name__}).") from None


def _template_ids(model: LoadedModel, messages: list[dict], **options) -> list[int]:
    out = _apply_template(model, messages, tokenize=True, return_dict=True, **options)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]


def _answer_token(model: LoadedModel, context: list[dict], answer: dict, prefix: list[int]) -> int:
    """The first token of ``answer`` where the template puts it after ``prefix`` (the context with
    the generation prompt); when the template renders the answer's turn otherwise, the first token
    of the answer's text alone."""
    try:  # the answer as the model sees it while writing it: its turn left open
        full = _template_ids(model, context + [answer], continue_final_message=True)
    except CircuitDeskError:
        full = _template_ids(model, context + [answer])
    if len(full) > len(prefix) and full[: len(prefix)] == prefix:
        return full[len(prefix)]
    alone = model.tokenizer(answer["content"], add_special_tokens=False).input_ids
    if not alone:
        raise CircuitDeskError("The assistant's final answer produced no tokens; give it some text.")
    return int(alone[0])


def prompt_text(model: LoadedModel, prompt: str | Conversation) -> str:
    """The text the model reads: the prompt, or the conversation rendered by the chat template."""
    return encode_chat(model, prompt).text if isinstance(prompt, Conversation) else prompt


def answer_target(model: LoadedModel, prompt: str | Conversation) -> str | None:
    """The target a conversation ending with an assistant answer explains by default: that
    answer's first token (``#id``); None otherwise."""
    if not isinstance(prompt, Conversation) or prompt.answer is None:
        return None
    return f"#{encode_chat(model, prompt).answer_id}"


def token_strings(model: LoadedModel, ids) -> tuple[str, ...]:
    return tuple(model.tokenizer.decode([int(i)]) for i in ids)


def predict_next(model: LoadedModel, prompt: str | Conversation, top_k: int = 10,
                 ctx: JobContext | None = None) -> Prediction:
    """The model's top-k next tokens after ``prompt`` (a conversation: after its chat template's
    opening of the assistant's turn) with their probabilities."""
    return predict_ids(model, encode_prompt(model, prompt), prompt_text(model, prompt), top_k, ctx)


def predict_ids(model: LoadedModel, ids: torch.Tensor, prompt: str, top_k: int = 10,
                ctx: JobContext | None = None) -> Prediction:
    """The top-k next tokens after the token ids [1, seq] (e.g. a traced prompt with the start
    token prepended, so the numbers match the graph's logit nodes); ``prompt`` is its text."""
    ctx = ctx or JobContext()
    if top_k < 1:
        raise CircuitDeskError(f"--top-k must be at least 1 (got {top_k}).")
    start = time.perf_counter()
    ctx.progress(0.1, "Running the model")
    with torch.inference_mode():
        logits = model.hf(input_ids=ids.to(model.device), use_cache=False).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    k = min(top_k, probs.shape[-1])
    values, indices = probs.topk(k)
    top = tuple(
        TokenProb(int(i), model.tokenizer.decode([int(i)]), float(p), float(logits[i]))
        for p, i in zip(values.tolist(), indices.tolist())
    )
    ctx.progress(1.0, "Done")
    return Prediction(prompt, token_strings(model, ids[0]), top, time.perf_counter() - start)

"""Next-token prediction: the first thing an auditor checks before tracing a prompt."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.models import LoadedModel
from core.prompt import require_prompt


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


def encode_prompt(model: LoadedModel, prompt: str) -> torch.Tensor:
    """Token ids [1, seq] for a prompt, refusing empty prompts and prompts longer than the context."""
    require_prompt(prompt)
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    limit = model.facts.context_length
    if limit and ids.shape[1] > limit:
        raise CircuitDeskError(
            f"The prompt is {ids.shape[1]} tokens long but {model.name} reads at most {limit}; shorten it."
        )
    if ids.shape[1] == 0:
        raise CircuitDeskError("The prompt produced no tokens; type some text.")
    return ids.to(model.device)


def token_strings(model: LoadedModel, ids) -> tuple[str, ...]:
    return tuple(model.tokenizer.decode([int(i)]) for i in ids)


def predict_next(model: LoadedModel, prompt: str, top_k: int = 10, ctx: JobContext | None = None) -> Prediction:
    """The model's top-k next tokens after ``prompt`` with their probabilities."""
    return predict_ids(model, encode_prompt(model, prompt), prompt, top_k, ctx)


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

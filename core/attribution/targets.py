"""Attribution targets: which output the graph explains.

Three ways to choose, as in circuit-tracer:

* the top logits, until their probabilities add up to ``desired_prob`` (at most ``max_logits``);
* one chosen token (``target``);
* a logit difference ``target − foil`` (one node whose value is the difference).

Each target is a direction ``d`` in the final-norm output space; the target's value is
``final_norm(x_last) · d`` (+ the matching unembedding bias). For single logits the direction is
demeaned over the vocabulary as in the reference, so the value is ``logit − mean(logits)``
(before any final soft-capping, which is not linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import CircuitDeskError
from core.instrument.weights import module_tensor
from core.prompt import require_utf8


@dataclass(frozen=True)
class Target:
    token_id: int
    token: str  # decoded text, e.g. " Paris" (or " Mary − John" for a difference)
    probability: float  # the model's probability of the token (the target's, for a difference)
    weight: float  # weight of this logit node in influence computations
    foil_id: int | None = None
    foil: str | None = None

    def to_json(self) -> dict:
        out = {"token_id": self.token_id, "token": self.token, "probability": round(self.probability, 6)}
        if self.foil_id is not None:
            out.update(foil_id=self.foil_id, foil=self.foil)
        return out


def resolve_token(tokenizer, text: str, what: str = "target") -> int:
    """The id of the single token ``text`` stands for, or a clear error listing what it splits into.

    ``text`` may also be ``#123`` for a raw token id.
    """
    vocab_size = len(tokenizer)
    if text.startswith("#") and text[1:].isdigit():
        tid = int(text[1:])
        if tid >= vocab_size:
            raise CircuitDeskError(f"The {what} token id {tid} is outside the vocabulary (size {vocab_size}).")
        return tid
    if text == "":
        raise CircuitDeskError(f"The {what} token is empty; give the token's text, e.g. \" Paris\".")
    require_utf8(text, f"The {what} token")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) == 1 and (unk is None or ids[0] != unk or text == tokenizer.unk_token):
        return int(ids[0])
    if not ids or (unk is not None and unk in ids):
        raise CircuitDeskError(f"The {what} {text!r} is not in the model's vocabulary.")
    pieces = ", ".join(repr(tokenizer.decode([i])) for i in ids)
    hint = ""
    if not text.startswith(" "):
        spaced = tokenizer(" " + text, add_special_tokens=False).input_ids
        if len(spaced) == 1:
            hint = f" (did you mean {' ' + text!r}, with the leading space?)"
    raise CircuitDeskError(
        f"The {what} {text!r} is {len(ids)} tokens ({pieces}), not one; choose a single token{hint}."
    )


def select_targets(
    model,
    logits: torch.Tensor,
    *,
    target: str | None = None,
    foil: str | None = None,
    desired_prob: float = 0.95,
    max_logits: int = 10,
) -> tuple[list[Target], torch.Tensor]:
    """Targets and their directions [n, d_model] for the last position's ``logits`` [vocab]."""
    if foil is not None and target is None:
        raise CircuitDeskError("A foil needs a target: give --target as well as --foil.")
    if not 0.0 < desired_prob <= 1.0:
        raise CircuitDeskError(f"The desired cumulative probability must be in (0, 1] (got {desired_prob}).")
    if max_logits < 1:
        raise CircuitDeskError(f"At least one logit target is needed (got max_logits={max_logits}).")
    tok = model.tokenizer
    logits = logits.float()
    probs = torch.softmax(logits, -1)
    W_U = unembedding(model).float()  # [vocab, d]
    vocab = min(W_U.shape[0], logits.shape[-1])
    W_U = W_U[:vocab]
    if target is not None:
        tid = resolve_token(tok, target, "target")
        if tid >= vocab:
            raise CircuitDeskError(f"The target token id {tid} is outside the model's output (size {vocab}).")
        if foil is not None:
            fid = resolve_token(tok, foil, "foil")
            if fid == tid:
                raise CircuitDeskError("The target and the foil are the same token; choose two different tokens.")
            t = Target(tid, tok.decode([tid]), float(probs[tid]), 1.0, fid, tok.decode([fid]))
            return [t], (W_U[tid] - W_U[fid])[None]
        t = Target(tid, tok.decode([tid]), float(probs[tid]), float(probs[tid]))
        return [t], (W_U[tid] - W_U.mean(0))[None]
    top_p, top_i = probs.topk(min(max_logits, vocab))
    cumulative = top_p.cumsum(0)
    n = int(torch.searchsorted(cumulative, torch.tensor(desired_prob)).item()) + 1
    n = max(1, min(n, len(top_i)))
    targets = [Target(int(i), tok.decode([int(i)]), float(p), float(p)) for p, i in zip(top_p[:n], top_i[:n])]
    return targets, W_U[top_i[:n]] - W_U.mean(0)


def unembedding(model) -> torch.Tensor:
    """The unembedding matrix [vocab, d_model] (lm_head weight; tied or not)."""
    return module_tensor(model.hf.get_submodule(model.adapter.unembed))


def unembedding_bias(model) -> torch.Tensor | None:
    return module_tensor(model.hf.get_submodule(model.adapter.unembed), "bias")


def target_bias(model, targets: list[Target]) -> torch.Tensor:
    """The constant the unembedding bias adds to each target's value (zeros without a bias)."""
    b = unembedding_bias(model)
    if b is None:
        return torch.zeros(len(targets))
    b = b.float()
    out = []
    for t in targets:
        out.append(b[t.token_id] - (b[t.foil_id] if t.foil_id is not None else b.mean()))
    return torch.stack(out).cpu()

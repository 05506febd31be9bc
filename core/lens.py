"""What the heatmaps show: logit lens, attention patterns, neuron activations, a node's direct
effect on the vocabulary. One instrumented forward pass per prompt; numpy results.

Logit lens (nostalgebraist 2020): the residual stream after each block read through the model's
own final norm and unembedding, as if the model stopped there; row 0 is the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from core.instrument.norms import norm_gain
from core.instrument.weights import module_tensor
from core.jobs import JobContext


@dataclass
class LensData:
    tokens: list[str]
    target_id: int
    target: str
    lens_prob: np.ndarray  # [L + 1, P]: probability of the target (row 0 = embeddings, row l+1 = after block l)
    lens_top: list[list[str]]  # [L + 1][P]: the lens's top token at each cell
    patterns: np.ndarray  # [L, H, P, P] attention probabilities (query × key)
    mlp_post: np.ndarray  # [L, P, d_mlp] neuron activations (input of the down projection)

    @property
    def n_layers(self) -> int:
        return self.patterns.shape[0]


def _final_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits [.., vocab] of residual-stream vectors through the final norm and unembedding."""
    a = model.adapter
    hf = model.hf
    out = hf.get_submodule(a.unembed)(hf.get_submodule(a.final_norm)(resid)).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        out = torch.tanh(out / cap) * cap
    return out


def lens(model, ids: torch.Tensor, target_id: int | None = None, ctx: JobContext | None = None,
         details: bool = True) -> LensData:
    """Heatmap data of one prompt ``ids`` [1, P] (target: the model's top next token by default).
    ``details=False``: the logit lens only (attention patterns and neuron activations left empty,
    which saves their [L, H, P, P] and [L, P, d_mlp] memory on long prompts)."""
    ctx = ctx or JobContext()
    L = model.facts.n_layers
    points = ["blocks.0.resid_pre"] + [f"blocks.{l}.resid_post" for l in range(L)]
    if details:
        points += [f"blocks.{l}.attn.pattern" for l in range(L)] + [f"blocks.{l}.mlp.post" for l in range(L)]
    ctx.progress(0.0, "Logit lens")
    with torch.no_grad():
        logits, tr = model.instrument.forward(ids.to(model.device), cache=points)
        if target_id is None:
            target_id = int(logits[0, -1].argmax())
        rows = ["blocks.0.resid_pre"] + [f"blocks.{l}.resid_post" for l in range(L)]
        prob = np.zeros((L + 1, ids.shape[1]), np.float32)
        top: list[list[str]] = []
        tok = model.tokenizer
        for r, name in enumerate(rows):
            ctx.check_cancelled()
            p = torch.softmax(_final_logits(model, tr[name][0]), -1)  # [P, vocab]
            prob[r] = p[:, target_id].cpu().numpy()
            top.append([tok.decode([int(i)]) for i in p.argmax(-1).tolist()])
            ctx.progress((r + 1) / (L + 1), "Logit lens")
        if details:
            patterns = torch.stack([tr[f"blocks.{l}.attn.pattern"][0] for l in range(L)]).float().cpu().numpy()
            mlp = torch.stack([tr[f"blocks.{l}.mlp.post"][0] for l in range(L)]).float().cpu().numpy()
        else:
            patterns, mlp = np.zeros((L, 0, 0, 0), np.float32), np.zeros((L, 0, 0), np.float32)
    tokens = [tok.decode([int(i)]) for i in ids[0].tolist()]
    return LensData(tokens, target_id, tok.decode([target_id]), prob, top, patterns, mlp)


MAX_PAIR_HEATMAPS = 64  # a circuit's pairs with their own heatmaps (a pair file may hold thousands)


def pair_lenses(model, pairs, first: LensData | None = None, limit: int = MAX_PAIR_HEATMAPS,
                ctx: JobContext | None = None) -> tuple[LensData, ...]:
    """Heatmap data of the clean prompt of each of the first ``limit`` prompt pairs
    (``core.circuits.TokenPair``; target: the pair's answer), so the heatmap pane can step through
    a circuit's pairs. ``first``: pair 0's, already computed. Neuron activations are left out:
    circuit heatmaps do not show them, and they are the bulk of the memory."""
    ctx = ctx or JobContext()
    chosen = list(pairs)[:limit]
    out = []
    for i, p in enumerate(chosen):
        ctx.check_cancelled()
        d = first if i == 0 and first is not None else lens(model, torch.tensor([p.clean]), target_id=p.answer[0])
        out.append(replace(d, mlp_post=np.zeros((d.n_layers, 0, 0), np.float32)))
        ctx.progress((i + 1) / len(chosen), "Heatmaps of each pair")
    return tuple(out)


@dataclass
class TokenEffects:
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    note: str = ""


def neuron_effects(model, layer: int, neuron: int, k: int = 10) -> TokenEffects:
    """The tokens an MLP neuron's output direction promotes and suppresses through the
    unembedding (its direct effect; the final norm's scale is left out)."""
    a = model.adapter
    down = model.hf.get_submodule(a.layers)[layer].get_submodule(a.mlp).get_submodule(a.down_proj)
    w = module_tensor(down)
    w = w.T if a.conv1d else w  # [d_model, d_mlp]
    return direction_effects(model, w[:, neuron], k)


def direction_effects(model, direction: torch.Tensor, k: int = 10) -> TokenEffects:
    """Tokens promoted / suppressed by a residual-stream direction through the unembedding."""
    a = model.adapter
    with torch.no_grad():
        unembed = module_tensor(model.hf.get_submodule(a.unembed))  # [vocab, d]
        # the final norm's elementwise weight applies to every direction alike
        gain = norm_gain(a.norm_kind, model.hf.get_submodule(a.final_norm), unembed.dtype)
        d = direction.to(device=unembed.device, dtype=unembed.dtype)
        if gain is not None:
            d = d * gain.to(unembed.device)
        scores = (unembed @ d).float()
        tok = model.tokenizer
        k = min(k, scores.numel())
        hi = scores.topk(k)
        lo = (-scores).topk(k)
    return TokenEffects(
        [(tok.decode([int(i)]), float(v)) for v, i in zip(hi.values, hi.indices)],
        [(tok.decode([int(i)]), -float(v)) for v, i in zip(lo.values, lo.indices)],
        "direct effect through the unembedding (final norm weight included, its scale left out)",
    )

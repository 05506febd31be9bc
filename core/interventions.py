"""Interventions: set, scale or zero graph nodes and see what the model does then.

Node kinds: ``neuron`` (MLP neuron, at ``blocks.{l}.mlp.post``), ``feature`` (transcoder feature:
the MLP output moves by (new − old activation) × its decoder, at every layer it writes to),
``head`` (an attention head's output before the output projection), ``mlp`` (a whole MLP's output,
what the block adds to the residual stream), ``error`` (an attribution
error node: the MLP output minus what the basis reconstructs at that layer and position).

``freeze`` chooses the model the edit runs in:

* ``none``: the real model; everything downstream reacts;
* ``attention``: attention probabilities held at the clean prompt's values;
* ``replacement``: the local replacement model (attention, norm scales and MLP multipliers held),
  which is linear in the nodes: there the change equals the graph's path-sum prediction.

The result gives the top tokens before and after, the target's logit and probability change, and
optionally a short greedy continuation with the edit applied at the prompt positions (run in the
real model: held values exist only for the prompt's positions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from core.attribution.attribute import HELD_ATTENTION, frozen_patches, frozen_points
from core.errors import CircuitDeskError
from core.jobs import JobContext

KINDS = ("neuron", "feature", "head", "mlp", "error")
MODES = ("zero", "scale", "set")
FREEZE = ("none", "attention", "replacement")


@dataclass(frozen=True)
class Intervention:
    kind: str
    layer: int
    index: int = 0  # neuron / feature / head index (unused for error nodes)
    positions: tuple[int, ...] | None = None  # None: every prompt position
    mode: str = "zero"
    value: float = 0.0  # the factor (scale) or the value (set)

    def describe(self) -> str:
        what = {"zero": "zero", "scale": f"×{self.value:g}", "set": f"= {self.value:g}"}[self.mode]
        at = "all positions" if self.positions is None else "pos " + ",".join(map(str, self.positions))
        idx = "" if self.kind in ("error", "mlp") else f" {self.index}"
        return f"{self.kind} L{self.layer}{idx} @ {at}: {what}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "layer": self.layer, "index": self.index,
                "positions": None if self.positions is None else list(self.positions),
                "mode": self.mode, "value": self.value}


@dataclass
class InterventionResult:
    interventions: list[Intervention]
    freeze: str
    target_id: int
    target: str
    logit_before: float
    logit_after: float
    prob_before: float
    prob_after: float
    top_before: list[tuple[str, float]]
    top_after: list[tuple[str, float]]
    logits_before: torch.Tensor  # [vocab] last position
    logits_after: torch.Tensor
    continuation_before: str = ""
    continuation_after: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def logit_change(self) -> float:
        return self.logit_after - self.logit_before

    def to_json(self) -> dict:
        return {
            "interventions": [i.to_json() for i in self.interventions],
            "freeze": self.freeze,
            "target": {"token_id": self.target_id, "token": self.target},
            "logit_before": self.logit_before, "logit_after": self.logit_after,
            "prob_before": self.prob_before, "prob_after": self.prob_after,
            "top_before": self.top_before, "top_after": self.top_after,
            "continuation_before": self.continuation_before, "continuation_after": self.continuation_after,
            "seconds": round(self.seconds, 4),
        }


def _check(model, iv: Intervention, P: int, transcoders) -> None:
    f = model.facts
    if iv.kind not in KINDS:
        raise CircuitDeskError(f"Unknown node kind {iv.kind!r}; use one of {', '.join(KINDS)}.")
    if iv.mode not in MODES:
        raise CircuitDeskError(f"Unknown intervention {iv.mode!r}; use zero, scale or set.")
    if not 0 <= iv.layer < f.n_layers:
        raise CircuitDeskError(f"Layer {iv.layer} does not exist; the model has layers 0–{f.n_layers - 1}.")
    limit = {"neuron": f.d_mlp, "head": f.n_heads,
             "feature": transcoders.layers[iv.layer].d_transcoder if transcoders else 0}.get(iv.kind)
    if iv.kind == "feature" and transcoders is None:
        raise CircuitDeskError("Feature interventions need the transcoders the graph was built with.")
    if limit is not None and not 0 <= iv.index < limit:
        raise CircuitDeskError(f"{iv.kind.capitalize()} {iv.index} does not exist in layer {iv.layer} (0–{limit - 1}).")
    if iv.positions is not None and any(not 0 <= p < P for p in iv.positions):
        raise CircuitDeskError(f"Positions must lie within the prompt's {P} tokens.")
    if iv.mode == "set" and iv.kind in ("head", "mlp", "error"):
        raise CircuitDeskError(f"A {iv.kind} output is a vector; zero or scale it instead of setting a value.")


def _edit(x: torch.Tensor, mode: str, value: float) -> torch.Tensor:
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "scale":
        return x * value
    return torch.full_like(x, value)


def _positions(iv: Intervention, P: int) -> list[int]:
    return list(range(P)) if iv.positions is None else list(iv.positions)


def build_patches(model, interventions: list[Intervention], P: int, live, basis_errors=None, transcoders=None,
                  write_point: str = "mlp.out") -> dict:
    """Patch functions for the interventions (positions ≥ P, i.e. generated tokens, are left alone)."""
    by_point: dict[str, list] = {}

    def add(point, fn):
        by_point.setdefault(point, []).append(fn)

    for iv in interventions:
        pos = _positions(iv, P)
        l = iv.layer
        if iv.kind in ("neuron", "head"):  # one unit along the last (neuron) or head axis
            def fn(x, iv=iv, pos=pos):
                x = x.clone()
                x[:, pos, iv.index] = _edit(x[:, pos, iv.index], iv.mode, iv.value)
                return x
            add(f"blocks.{l}.mlp.post" if iv.kind == "neuron" else f"blocks.{l}.attn.z", fn)
        elif iv.kind == "mlp":
            def fn(x, iv=iv, pos=pos):
                x = x.clone()
                x[:, pos] = _edit(x[:, pos], iv.mode, iv.value)
                return x
            add(f"blocks.{l}.mlp_out", fn)
        elif iv.kind == "error":
            if basis_errors is None:
                raise CircuitDeskError("Error-node interventions need the graph's error vectors.")
            e = basis_errors[l]  # [P, d]

            def fn(x, iv=iv, pos=pos, e=e):
                x = x.clone()
                delta = _edit(e[pos], iv.mode, iv.value) - e[pos]
                x[:, pos] = x[:, pos] + delta.to(x.dtype).to(x.device)
                return x
            add(f"blocks.{l}.{write_point}", fn)
        else:  # transcoder feature: move the MLP output along the decoder, wherever it writes
            tc = transcoders
            layer = tc.layers[l]
            in_point = f"blocks.{l}.{tc.input_point}"
            for k in range(layer.W_dec.shape[1]):
                def fn(x, iv=iv, pos=pos, k=k, layer=layer, in_point=in_point):
                    pre = tc.encode_pre(iv.layer, live.cache[in_point][:, pos])  # [b, n, d_tc]
                    a = tc.activate(iv.layer, pre)[..., iv.index]
                    new = _edit(a, iv.mode, iv.value)
                    x = x.clone()
                    x[:, pos] = x[:, pos] + ((new - a)[..., None] * layer.W_dec[iv.index, k]).to(device=x.device, dtype=x.dtype)
                    return x
                add(f"blocks.{l + k}.{tc.output_point}", fn)

    def chain(fns):
        def run(x):
            P_now = x.shape[1]
            head, tail = x[:, :P], x[:, P:]
            for f in fns:
                head = f(head)
            return torch.cat([head, tail], 1) if P_now > P else head
        return run

    return {point: chain(fns) for point, fns in by_point.items()}


def intervene(
    model,
    ids: torch.Tensor,
    interventions: list[Intervention],
    *,
    freeze: str = "none",
    target_id: int | None = None,
    top_k: int = 10,
    generate: int = 0,
    transcoders=None,
    errors: torch.Tensor | None = None,
    write_point: str = "mlp.out",
    ctx: JobContext | None = None,
) -> InterventionResult:
    """Run ``ids`` [1, P] with the interventions; compare with the clean run."""
    ctx = ctx or JobContext()
    start = time.perf_counter()
    if freeze not in FREEZE:
        raise CircuitDeskError(f"Unknown freeze mode {freeze!r}; use none, attention or replacement.")
    if not interventions:
        raise CircuitDeskError("Choose at least one node to intervene on.")
    P = ids.shape[1]
    for iv in interventions:
        _check(model, iv, P, transcoders)
    inst = model.instrument
    ids = ids.to(model.device)
    ctx.progress(0.05, "Running the clean prompt")
    with torch.no_grad():
        clean_logits, clean = inst.forward(ids, cache=frozen_points(model, P))
    frozen = frozen_patches(clean)
    if freeze == "attention":  # held by its probabilities, or by its queries and keys on long prompts
        frozen = {k: v for k, v in frozen.items() if k.endswith(HELD_ATTENTION)}
    elif freeze == "none":
        frozen = {}
    cache_points = _transcoder_inputs(model, transcoders)
    ctx.progress(0.3, "Running with the intervention")
    with torch.no_grad(), inst.session(cache=cache_points, patch=frozen) as live:
        patches = build_patches(model, interventions, P, live, errors, transcoders, write_point)
        with inst.session_patch(patches):
            after = model.hf(input_ids=ids, use_cache=False).logits[0, -1].float()
    before = clean_logits[0, -1].float()
    if target_id is None:
        target_id = int(before.argmax())
    pb, pa = torch.softmax(before, -1), torch.softmax(after, -1)
    tok = model.tokenizer

    def top(p):
        v, i = p.topk(min(top_k, p.numel()))
        return [(tok.decode([int(j)]), float(x)) for x, j in zip(v, i)]

    result = InterventionResult(
        list(interventions), freeze, target_id, tok.decode([target_id]),
        float(before[target_id]), float(after[target_id]), float(pb[target_id]), float(pa[target_id]),
        top(pb), top(pa), before.cpu(), after.cpu(),
    )
    if generate > 0:
        ctx.progress(0.6, "Generating")
        result.continuation_before = tok.decode(greedy_ids(model, ids, generate, lambda live: {}, ctx))
        result.continuation_after = tok.decode(greedy_ids(
            model, ids, generate,
            lambda live: build_patches(model, interventions, P, live, errors, transcoders, write_point),
            ctx, cache_points,
        ))
    result.seconds = time.perf_counter() - start
    ctx.progress(1.0, "Done")
    return result


def _transcoder_inputs(model, transcoders) -> list[str]:
    """The points a transcoder-feature edit reads its encoder input from (none without transcoders)."""
    return [f"blocks.{l}.{transcoders.input_point}" for l in range(model.facts.n_layers)] if transcoders else []


def greedy_ids(model, ids, n: int, make_patches, ctx=None, cache_points=()) -> list[int]:
    """The greedy continuation's ``n`` token ids; the edits (``make_patches(live)``) apply to the prompt
    positions of every step's forward pass."""
    ctx = ctx or JobContext()
    inst = model.instrument
    out = ids
    for _ in range(n):
        ctx.check_cancelled()
        with torch.no_grad(), inst.session(cache=list(cache_points)) as live:
            with inst.session_patch(make_patches(live)):
                logits = model.hf(input_ids=out, use_cache=False).logits[0, -1]
        out = torch.cat([out, logits.argmax().view(1, 1)], 1)
    return out[0, ids.shape[1]:].tolist()


def writes_answer(model, ids: list[int], answers: list[tuple[int, ...]], first: int,
                  interventions: list[Intervention] = (), transcoders=None) -> bool:
    """Whether greedy decoding after ``ids`` begins with one of ``answers`` (token-id sequences), with
    the interventions applied to the prompt positions as in ``greedy_ids``; ``first`` is the greedy next
    token in that same run (already known to the caller). Single-token answers need nothing more; a
    longer answer whose first token is ``first`` costs one teacher-forced pass (the prompt plus the
    answer but its last token), which agrees with greedy decoding exactly when every next token is
    the answer's."""
    P = len(ids)
    inst = model.instrument
    cache_points = _transcoder_inputs(model, transcoders)
    for answer in answers:
        if not answer or answer[0] != first:
            continue
        if len(answer) == 1:
            return True
        seq = torch.tensor([list(ids) + list(answer[:-1])], device=model.device)
        with torch.no_grad(), inst.session(cache=cache_points if interventions else []) as live:
            with inst.session_patch(build_patches(model, list(interventions), P, live, None, transcoders)):
                logits = model.hf(input_ids=seq, use_cache=False).logits[0, P:]
        if logits.argmax(-1).tolist() == list(answer[1:]):
            return True
    return False

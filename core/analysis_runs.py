"""The workbench's runs, as worker-thread job bodies (``fn(ctx)``, see ``core.jobs``): a
``RunRequest`` becomes an ``Analysis`` (model loaded, prediction, logit lens, then the graph or
circuit), and an ``InterventionRequest`` on the analysis on show becomes an intervention result.

Partial results are handed over as soon as each is ready (``ctx.partial``): the loaded model,
the prediction, the logit lens; the window shows them before the run ends.
"""

from __future__ import annotations

import logging

import torch

from core.analysis import (
    CIRCUIT,
    LOGIT_LENS,
    MODEL,
    PREDICT,
    PREDICTION,
    PROMPT_PAIR,
    Analysis,
    CircuitRun,
    InterventionRequest,
    RunRequest,
)
from core.attribution import attribute
from core.attribution.attribute import traced_ids
from core.attribution.targets import resolve_token
from core.circuits import ComponentRunner, find_circuit, load_pair_source
from core.errors import CircuitDeskError
from core.graph import ERROR, FEATURE
from core.interventions import Intervention, intervene
from core.lens import direction_effects, lens, neuron_effects, pair_lenses
from core.models import load_model
from core.predict import predict_ids, predict_next, prompt_text
from core.runs import chat_target
from core.view import from_attribution, from_circuit

log = logging.getLogger(__name__)


def run_request(req: RunRequest, model, ctx):
    """A run of ``req`` (``model``: already loaded as ``req.model_key`` says, else None).

    Returns the ``Analysis`` of an attribution graph or a component circuit, or for a
    next-token prediction the ``(model, prediction)`` pair."""
    share = 0.9 if model is None and req.method == PREDICT else (0.3 if model is None else 0.0)
    loaded = model or load_model(req.spec, device=req.device, dtype=req.dtype, placement=req.placement,
                                 ctx=ctx.sub(0.0, max(share, 0.01)))
    ctx.partial(MODEL, loaded)
    if req.method == PREDICT:
        return loaded, predict_next(loaded, req.traced(), req.top_k, ctx.sub(share, 1.0))
    work = circuit_prompt if req.method == CIRCUIT else trace_prompt
    traced, view, data, prediction = work(loaded, req, ctx.sub(share, 1.0))
    circuit = isinstance(traced, CircuitRun)
    return Analysis(view=view, model=loaded, trace=None if circuit else traced, circuit=traced if circuit else None,
                    lens=data, prediction=prediction, command=req.command(), effects=token_effects)


def trace_prompt(model, req: RunRequest, ctx):
    """An attribution graph: the prediction and the logit lens first (handed over at once as
    partial results), then the graph and its drawable view (pruned here, not on the GUI thread).
    The prediction reads the traced sequence — the start token the trace prepends, then the
    prompt; or a conversation as its chat template renders it — so its numbers are the graph's
    logit nodes'. A conversation ending with an assistant answer explains that answer's first token
    unless a target is given. Returns (result, view, lens, prediction)."""
    prompt = req.traced()
    ids = traced_ids(model, prompt)
    prediction = predict_ids(model, ids, prompt_text(model, prompt), req.top_k, ctx.sub(0.0, 0.02))
    ctx.partial(PREDICTION, prediction)
    settings = chat_target(model, prompt, req.attribution_settings())
    target = resolve_token(model.tokenizer, settings.target) if settings.target else prediction.top[0].token_id
    data = lens(model, ids, target_id=target, ctx=ctx.sub(0.02, 0.1))
    ctx.partial(LOGIT_LENS, data)
    result = attribute(model, prompt, settings, ctx=ctx.sub(0.1, 1.0))
    ctx.check_cancelled()
    if result.targets[0].token_id != target:  # a near tie read differently: the lens follows the graph
        data = lens(model, result.ids, target_id=result.targets[0].token_id)
    return result, from_attribution(result.graph), data, prediction


def circuit_prompt(model, req: RunRequest, ctx):
    """A component circuit: pairs, edge scores and faithfulness curve, then heatmap data and the
    prediction for the first pair's clean prompt, and heatmap data of the other pairs' clean prompts
    (the heatmap pane steps through them). Returns (CircuitRun, view, lens, prediction)."""
    # a prompt pair's default answer is the prompt's prediction
    typed = predict_next(model, req.prompt, req.top_k) if req.task == PROMPT_PAIR else None
    pairs = load_pair_source(req.pair_source(), model, typed)
    ctx.check_cancelled()
    first = pairs.pairs[0]
    ids = torch.tensor([first.clean])  # the first pair's clean prompt as the circuit reads it
    # shown at once, on the same sequence as the interventions' numbers
    prediction = predict_ids(model, ids, first.clean_text, req.top_k)
    ctx.partial(PREDICTION, prediction)
    data = lens(model, ids, target_id=first.answer[0], ctx=ctx.sub(0.0, 0.05))
    ctx.partial(LOGIT_LENS, data)
    result = find_circuit(model, pairs, req.circuit_settings(), ctx=ctx.sub(0.05, 0.95))
    outputs = ComponentRunner(model).sources(ids).outputs[:, 0, -1].float().cpu().numpy()
    per_pair = pair_lenses(model, pairs.pairs, first=data, ctx=ctx.sub(0.95, 1.0))  # the heatmaps step through them
    return CircuitRun(result, ids, outputs, first.answer[0], per_pair), from_circuit(result), data, prediction


def intervention_job(analysis: Analysis, request: InterventionRequest):
    """The job (``fn(ctx) -> InterventionResult``) of ``request`` on ``analysis``; raises
    ``CircuitDeskError`` when the edit does not apply to it."""
    model, view = analysis.model, analysis.view
    if not analysis.can_intervene or view is None:
        raise CircuitDeskError("Interventions need a traced graph; run a trace first.")
    if analysis.circuit is not None:
        run = analysis.circuit
        if request.freeze == "replacement":
            raise CircuitDeskError("The replacement model belongs to attribution graphs; "
                                   "for a circuit's head choose freeze none or attention.")
        layer, head = view.cell_of(request.node)
        iv = Intervention("head", int(layer), int(head), None, request.mode, request.value)
        return lambda ctx: intervene(model, run.ids, [iv], freeze=request.freeze, target_id=run.answer_id, ctx=ctx)
    trace, g, node = analysis.trace, view.source, request.node
    kind = "error" if int(g.kind[node]) == ERROR else ("feature" if g.meta.get("basis") != "neurons" else "neuron")
    iv = Intervention(kind, int(g.layer[node]), int(g.index[node]),
                      None if request.every_position else (int(g.pos[node]),), request.mode, request.value)
    return lambda ctx: intervene(model, trace.ids, [iv], freeze=request.freeze, target_id=trace.targets[0].token_id,
                                 transcoders=trace.transcoders, errors=trace.errors, write_point=trace.write_point,
                                 ctx=ctx)


def token_effects(analysis: Analysis, node: int):
    """Tokens a node promotes/suppresses: a neuron's output direction, a transcoder feature's
    decoder, or what a circuit's head / MLP wrote at the last prompt position, read through the
    unembedding. None where that means nothing (embeddings, errors, logits) or fails."""
    model, view = analysis.model, analysis.view
    try:
        if analysis.circuit is not None:
            out = analysis.circuit.outputs_last
            if node >= len(out):
                return None  # the logits node
            effects = direction_effects(model, torch.from_numpy(out[node]))
            effects.note = "what this component writes at the last position, through the unembedding"
            return effects
        g = view.source
        if analysis.trace is None or int(g.kind[node]) != FEATURE:
            return None
        layer, index = int(g.layer[node]), int(g.index[node])
        tc = analysis.trace.transcoders
        if tc is None:
            return neuron_effects(model, layer, index)
        effects = direction_effects(model, tc.layers[layer].W_dec[index].sum(0))
        effects.note = "the feature's decoder (summed over the layers it writes to), through the unembedding"
        return effects
    except Exception:  # the inspector still shows the node's facts
        log.warning("token effects failed", exc_info=True)
        return None

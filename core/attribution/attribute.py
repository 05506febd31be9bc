"""Attribution graphs by injected gradients on the local replacement model.

The replacement model for one prompt: attention probabilities and norm scales frozen at the
prompt's values, every MLP cut at its write point and represented by feature nodes (plus an
error node per layer and position), so node-to-node paths are linear. A *row* of the adjacency
(the direct contributions of every source node to one target node) is one backward pass of an
injected gradient: the target's linear input direction at its read point. ``batch_size`` copies
of the prompt run forward once (graph retained), so each backward pass yields ``batch_size`` rows.

Rows: the logit targets first, then features in order of their estimated influence on the
targets (circuit-tracer's partial influence over the rows computed so far), recomputed every
``update_interval`` batches, until ``max_nodes`` features have rows.

Constants are computed independently by a *bias-only* pass: the frozen model run with every
source removed (token embeddings and MLP writes set to zero, biases kept). For every row,
``value(t) = Σ_s A[t, s] + constant(t)``; its relative error is reported (completeness identity).

The start position, as circuit-tracer defines it: when the prompt starts with a special token
(BOS), its features are not nodes and its error nodes are zero; the start position's real MLP
outputs stay in the bias-only pass, i.e. in the constants. A token node is the token embedding
alone; positional embeddings (GPT-2) are constants too. One step further than the reference (by
default; ``start_token_node`` keeps the reference's node): the start token's embedding is a
constant as well, since that token is the same in every prompt and its node only measured the
attention sink. The start position then never appears as a node, and the identity stays exact.

Neuron-basis candidates: every neuron at every position would make rows dense (positions × layers
× d_mlp columns). Candidates are the neurons with the largest *total effect* on the explained
logits in the same linear replacement model (``NeuronBasis.select``); every other neuron's write
is folded into its (layer, position) error node, so rows are exact over the candidates, nothing
is truncated, and the error nodes say how much the candidates leave out.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.attribution.bases import Encoded, NeuronBasis, TranscoderBasis, body
from core.attribution.precision import precision_facts
from core.attribution.targets import Target, select_targets, target_bias
from core.attribution.transcoders import load_transcoders
from core.errors import CircuitDeskError
from core.graph import EMBEDDING, ERROR, FEATURE, LOGIT, Graph, graph_scores, prune
from core.jobs import JobContext
from core.memory import (Estimate, attention_by_qk, attribution_estimate, budget_bytes, memory_guard,
                         refuse_if_too_big)
from core.predict import encode_prompt, prompt_text, token_strings
from core.settings import AttributionSettings

log = logging.getLogger(__name__)

# The gradient pass holds batch_size copies of the prompt's activations: at most this many tokens
# in all (a 64-token prompt gets 8 rows per backward pass), so memory stays flat as prompts grow.
ROW_BATCH_TOKENS = 512


@dataclass
class AttributionResult:
    graph: Graph
    targets: list[Target]
    prompt: str
    stats: dict = field(default_factory=dict)
    ids: torch.Tensor | None = None  # [1, P] the tokens traced (with the prepended start token)
    errors: torch.Tensor | None = None  # [L, P, d] error vectors at the basis' write points
    write_point: str = "mlp.out"  # where features write (relative to a block)
    transcoders: object = None  # the TranscoderSet of a transcoder graph
    conversation: object = None  # the core.chat.Conversation of a chat-formatted prompt (``prompt``: its rendering)


class _Rows:
    """Computed rows, exact: dense over the candidate features, the error nodes and the tokens."""

    def __init__(self, n_rows: int, n_active: int, n_rest: int) -> None:
        self.n_active = n_active
        self.val = torch.zeros(n_rows, n_active)
        self.rest = torch.zeros(n_rows, n_rest)
        self.abs_total = torch.zeros(n_rows, dtype=torch.float64)
        self.sum_total = torch.zeros(n_rows, dtype=torch.float64)
        self.node = torch.zeros(n_rows, dtype=torch.int64)  # column id of the row's node
        self.n = 0

    def add(self, nodes: torch.Tensor, chunks, rest: torch.Tensor) -> None:
        B = nodes.numel()
        r = slice(self.n, self.n + B)
        dense = self.val[r]
        for start, chunk in chunks:
            dense[:, start:start + chunk.shape[1]] = chunk[:B].float().cpu()
        rest = rest[:B].float().cpu()
        self.rest[r] = rest
        self.abs_total[r] = dense.abs().sum(-1, dtype=torch.float64) + rest.abs().sum(-1, dtype=torch.float64)
        self.sum_total[r] = dense.sum(-1, dtype=torch.float64) + rest.sum(-1, dtype=torch.float64)
        self.node[r] = nodes
        self.n += B

    def feature_influence(self, logit_weights: torch.Tensor, n_logits: int) -> torch.Tensor:
        """circuit-tracer's partial influence of every candidate feature on the logit targets:
        the influence of the computed rows, propagated through the columns they read.

        Influence reaches the next row only through the columns of features that have rows, so
        the paths are followed on those columns alone ([rows × feature rows]); the influence on
        every column is then one product of the summed path weights with |rows|, in column blocks
        (no copy of the whole buffer), the same sum as propagating over every column each step."""
        n = self.n
        row_norm = self.abs_total[:n].float().clamp(min=1e-8)
        feature_row = self.node[:n] < self.n_active
        through = self.val[:n, self.node[:n][feature_row]].abs()  # [n, feature rows]
        q = torch.zeros(n)
        q[:n_logits] = logit_weights.float()  # logit rows come first
        paths = torch.zeros(n)
        for _ in range(1000):
            paths += q
            reach = (q / row_norm) @ through  # influence reaching the feature rows through one more edge
            if not reach.any():
                break
            q = torch.zeros(n)
            q[feature_row] = reach
        weight = paths / row_norm
        total = torch.empty(self.n_active)
        block = max(1, (1 << 24) // max(n, 1))
        for s in range(0, self.n_active, block):
            total[s:s + block] = weight @ self.val[:n, s:s + block].abs()
        return total


def _special_ids(model) -> set[int]:
    return set(getattr(model.tokenizer, "all_special_ids", []) or [])


def start_token(model) -> int | None:
    """The special token a prompt starts with: BOS, else PAD / EOS / UNK (None if it has none)."""
    tok = model.tokenizer
    for cand in (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        if cand is not None:
            return int(cand)
    return None


def with_bos(model, ids: torch.Tensor) -> torch.Tensor:
    """Prepend a special token (BOS, else PAD/EOS/UNK) unless the prompt starts with one.

    The first position of a transformer is an attention sink with outsized activations; the
    reference prepends a special token there and leaves its features out of the graph.
    """
    cand = start_token(model)
    if int(ids[0, 0]) in _special_ids(model) or cand is None:
        return ids
    limit = model.facts.context_length
    if limit and ids.shape[1] + 1 > limit:
        raise CircuitDeskError(f"The prompt is {ids.shape[1]} tokens long; with the start token it "
                               f"exceeds the {limit}-token context of {model.name}; shorten it.")
    return torch.cat([torch.tensor([[cand]], device=ids.device, dtype=ids.dtype), ids], 1)


def traced_ids(model, prompt, prepend_bos: bool = True) -> torch.Tensor:
    """The ids [1, P] a trace reads: a raw prompt with a start token first (``with_bos``), a chat
    conversation exactly as its template renders it (the template holds its special tokens)."""
    ids = encode_prompt(model, prompt)
    return with_bos(model, ids) if prepend_bos and isinstance(prompt, str) else ids


def _first_feature_position(model, ids: torch.Tensor) -> int:
    """1 when the prompt starts with a special token (BOS): its features are folded into errors."""
    return 1 if ids.shape[1] > 1 and int(ids[0, 0]) in _special_ids(model) else 0


HELD_ATTENTION = (".pattern", ".q_rot", ".k_rot")  # the points that hold attention (``frozen_points``)


def frozen_patches(clean) -> dict:
    """Patches that hold attention, norm scales and MLP multipliers at the clean run's values."""
    out = {}
    for name, v in clean.cache.items():
        if name.endswith((*HELD_ATTENTION, ".scale", ".mult")):
            out[name] = (lambda x, v=v: v.expand_as(x) if v.shape[0] == 1 else v)
    return out


def frozen_points(model, n_tokens: int | None = None) -> list[str]:
    """The points that hold a run's attention, norm scales and MLP multipliers at the clean run's
    values. Attention is held by its probabilities (L·H·P² numbers), or, for a prompt of ``n_tokens``
    where they are the smaller cache, by the queries and keys they are scored from (L·(H + H_kv)·P·
    d_head numbers; at 1,024 tokens on SmolLM2 94 MB instead of 1.1 GB): the same pattern is then
    computed again from them, bit for bit."""
    attention = "blocks.*.attn.[qk]_rot" if n_tokens is not None and attention_by_qk(model.facts, n_tokens) \
        else "blocks.*.attn.pattern"
    return model.instrument.match([attention, "*.scale", "blocks.*.mlp.mult"])



def make_basis(model, settings: AttributionSettings):
    if settings.transcoders:
        tc = load_transcoders(settings.transcoders, model.facts.n_layers, model.facts.d_model,
                              device=getattr(model, "transcoders_device", model.device))
        return TranscoderBasis(model, tc)
    return NeuronBasis(model)


def row_batch(settings: AttributionSettings, n_tokens: int, tokens_per_pass: int = ROW_BATCH_TOKENS) -> int:
    """Rows per backward pass: the setting, at most ``tokens_per_pass`` tokens of prompt copies."""
    return max(1, min(settings.batch_size, tokens_per_pass // n_tokens))


def gpu_tokens_per_pass(n_tokens: int, settings: AttributionSettings, fits) -> int:
    """On a GPU a larger batch is nearly free per row, so the gradient pass takes as many prompt
    copies as the budget holds (``fits(tokens_per_pass)``), up to ``batch_size`` copies; never
    fewer than the CPU's ``ROW_BATCH_TOKENS``."""
    tokens = settings.batch_size * n_tokens
    while tokens > ROW_BATCH_TOKENS and not fits(tokens):
        tokens //= 2
    return max(tokens, ROW_BATCH_TOKENS)


def memory_estimate(model, n_tokens: int, settings: AttributionSettings, basis,
                    dtype: torch.dtype | None = None, tokens_per_pass: int = ROW_BATCH_TOKENS) -> Estimate:
    """Peak memory of the attribution of an ``n_tokens`` prompt (start token included), with the
    model at its own precision or at ``dtype``."""
    width = basis.width()
    return attribution_estimate(
        model.facts, n_tokens, max_nodes=settings.max_nodes, batch=row_batch(settings, n_tokens, tokens_per_pass),
        candidates=min(settings.max_candidates, model.facts.n_layers * n_tokens * width),
        transcoder_width=width if basis.name == "transcoders" else 0,
        dtype_bytes=torch.finfo(dtype or model.dtype).bits // 8, max_logits=settings.max_logits)


def _what_fits(model, n_tokens: int, settings: AttributionSettings, basis, budget: int) -> list[str]:
    """Changes of settings under which the run fits ``budget``, most useful first."""
    fits = lambda s, p=n_tokens: memory_estimate(model, p, s, basis).total <= budget  # noqa: E731
    out = []
    nodes = settings.max_nodes // 2
    while nodes >= 10 and not fits(dataclasses.replace(settings, max_nodes=nodes)):
        nodes //= 2
    if nodes >= 10:
        out.append(f"--max-nodes {nodes}")
    if settings.max_candidates > 4096:
        cand = dataclasses.replace(settings, max_candidates=settings.max_candidates // 4)
        if fits(cand):
            out.append(f"--max-candidates {cand.max_candidates}")
    if row_batch(settings, n_tokens) > 1 and fits(dataclasses.replace(settings, batch_size=1)):
        out.append("--batch-size 1")
    half = memory_estimate(model, n_tokens, settings, basis, torch.bfloat16)
    if model.dtype == torch.float32 and half.total <= budget:
        out.append("--dtype bfloat16")
    shorter = n_tokens
    while shorter > 2 and not fits(settings, shorter):
        shorter = shorter * 3 // 4
    if 2 < shorter < n_tokens:
        out.append(f"a prompt of at most {shorter} tokens")
    return out


def attribute(model, prompt, settings: AttributionSettings | None = None,
              ctx: JobContext | None = None, basis=None) -> AttributionResult:
    """Build the attribution graph of ``prompt``, a text or a ``core.chat.Conversation`` (see the
    module docstring). A conversation's tokens are exactly its chat template's: the template holds
    its own special tokens, so no start token is prepended (its first token, a special one in the
    templates of the supported families, is then the start position).

    Refused before it starts when its estimated peak memory exceeds the budget (``memory_gb``,
    else what is free on the device); an out-of-memory error that still happens is one sentence."""
    settings = settings or AttributionSettings()
    settings.validate()
    ctx = ctx or JobContext()
    start = time.perf_counter()
    ids = traced_ids(model, prompt, settings.prepend_bos)
    basis = basis or make_basis(model, settings)
    P = ids.shape[1]
    budget, where = budget_bytes(model.device, settings.memory_gb)
    tokens_per_pass = ROW_BATCH_TOKENS
    if torch.device(model.device).type == "cuda":
        tokens_per_pass = gpu_tokens_per_pass(P, settings, lambda t: memory_estimate(
            model, P, settings, basis, tokens_per_pass=t).total <= 0.8 * budget)
    estimate = memory_estimate(model, P, settings, basis, tokens_per_pass=tokens_per_pass)
    refuse_if_too_big(estimate, budget, where, lambda: _what_fits(model, P, settings, basis, budget))
    advice = ", ".join(_what_fits(model, P, settings, basis, estimate.total // 2)) or "use a shorter prompt"
    with memory_guard(model.device, f"try {advice}", "running the prompt") as doing:
        return _attribute(model, prompt, ids, settings, ctx, basis, start, estimate, doing,
                          row_batch(settings, P, tokens_per_pass))


def _attribute(model, prompt, ids: torch.Tensor, settings: AttributionSettings, ctx: JobContext, basis,
               start: float, estimate: Estimate, doing, batch: int) -> AttributionResult:
    P = ids.shape[1]
    L = model.facts.n_layers
    inst = model.instrument
    first_pos = _first_feature_position(model, ids)
    base = body(model)

    # Phase 1: the clean run (values, frozen state, feature activations).
    ctx.progress(0.0, "Running the prompt")
    clean_points = frozen_points(model, P) + basis.clean_points() + ["blocks.0.resid_pre", "final_norm"]
    clean_points += [basis.input_point(l) for l in range(L)] + [basis.write_point(l) for l in range(L)]
    if model.adapter.pos_embed:
        clean_points.append("pos_embed")
    with torch.no_grad():
        logits, clean = inst.forward(ids, cache=sorted(set(clean_points)))
    targets, directions = select_targets(model, logits[0, -1], target=settings.target, foil=settings.foil,
                                         desired_prob=settings.desired_prob, max_logits=settings.max_logits)
    directions = directions.to(model.device)
    logit_w = torch.tensor([t.weight for t in targets])
    ctx.progress(0.01, "Choosing candidate features")
    doing.what = "choosing candidate features"
    candidates, candidate_stats = basis.select(clean, ids, directions, logit_w, first_pos, settings)
    enc: Encoded = basis.encode(clean, first_pos, candidates)
    enc.errors[:, :first_pos] = 0.0  # the start position's MLP outputs are constants
    n_logits = len(targets)
    resid0 = clean["blocks.0.resid_pre"][0].float()
    positions = clean["pos_embed"].reshape(-1, P, resid0.shape[-1])[0].float() if "pos_embed" in clean else 0.0
    token_vectors = resid0 - positions  # a token node is its token embedding alone
    if not settings.start_token_node:
        token_vectors[:first_pos] = 0.0  # the start token is the same in every prompt: a constant
    ctx.check_cancelled()

    doing.what = "running the bias-only pass"
    # Phase 2: the bias-only run (constants of every possible row): the sources removed; the
    # positional embeddings, the start position's MLP outputs (and its token, by default) kept.
    frozen = frozen_patches(clean)
    with torch.no_grad(), inst.session(
        cache=sorted(set(basis.bias_points() + [basis.input_point(l) for l in range(L)] + ["final_norm"])),
        patch={**frozen, "blocks.0.resid_pre": (resid0 - token_vectors)[None].to(resid0.dtype)},
    ) as bias_trace:
        with inst.session_patch(_keep_start(basis.bias_patches(bias_trace), clean, first_pos)):
            base(input_ids=ids, use_cache=False)
    t_bias = target_bias(model, targets)
    logit_value = (clean["final_norm"][0, -1].float().to(directions.device) @ directions.float().T).cpu() + t_bias
    logit_const = (bias_trace["final_norm"][0, -1].float().to(directions.device) @ directions.float().T).cpu() + t_bias
    feat_value = enc.value.cpu()
    feat_const = basis.values(enc, bias_trace)
    ctx.check_cancelled()

    # Phase 3: the gradient pass (batch copies, graph retained).
    n_rows_max = n_logits + min(settings.max_nodes, enc.n)
    B = min(batch, n_rows_max)
    doing.what = f"computing attribution rows ({B} per backward pass)"
    batch_ids = ids.expand(B, P)
    write_points = [basis.write_point(l) for l in range(L)]
    in_points = [basis.input_point(l) for l in range(L)]
    grad_session = inst.session(
        cache=sorted(set(in_points + ["final_norm"])), grad=["blocks.0.resid_pre"] + write_points,
        freeze_attention=True, freeze_norms=True, keep_graph=True,
        stop_grad=[f"blocks.{l}.mlp_in" for l in range(L)],
    )
    rows = _Rows(n_rows_max, enc.n, L * P + P)
    backward_passes = 0
    total_rows = n_rows_max
    ctx.progress(0.02, "Building the replacement model")
    with torch.enable_grad(), grad_session as live:
        with inst.session_patch(_keep_start(basis.grad_patches(live), clean, first_pos)):
            base(input_ids=batch_ids, use_cache=False)
        leaves = [live.leaf("blocks.0.resid_pre")] + [live.leaf(w) for w in write_points]

        def run_batch(layers: list[int], positions: list[int], vectors: torch.Tensor) -> tuple:
            nonlocal backward_passes
            outs, grads_out = [], []
            by_point: dict[str, torch.Tensor] = {}
            for b, (l, p) in enumerate(zip(layers, positions)):
                name = "final_norm" if l == L else in_points[l]
                g = by_point.get(name)
                if g is None:
                    g = by_point[name] = torch.zeros_like(live.cache[name])
                g[b, p] = vectors[b].to(device=g.device, dtype=g.dtype)
            for name, g in by_point.items():
                outs.append(live.cache[name])
                grads_out.append(g)
            grads = torch.autograd.grad(outs, leaves, grads_out, retain_graph=True, allow_unused=True)
            backward_passes += 1
            # a write point no row of the batch reads gets no gradient (None): its layer is skipped
            g0 = grads[0].float() if grads[0] is not None else torch.zeros_like(leaves[0], dtype=torch.float32)
            gw = list(grads[1:])
            emb = (g0 * token_vectors).sum(-1)  # [B, P]
            err = torch.zeros(B, L, P, device=emb.device)
            for l in range(L):
                if gw[l] is not None:
                    err[:, l] = (gw[l].float() * enc.errors[l].to(gw[l].device)).sum(-1).to(err.device)
            rest = torch.cat([err.reshape(B, L * P), emb], 1)
            return basis.contributions(enc, gw), rest

        def report():
            ctx.progress(0.03 + 0.92 * rows.n / max(total_rows, 1), f"Attribution rows {rows.n}/{total_rows}")

        # logits first
        for i in range(0, n_logits, B):
            j = torch.arange(i, min(i + B, n_logits))
            n = j.numel()
            vec = directions[j]
            chunks, rest = run_batch([L] * n, [P - 1] * n, vec)
            rows.add(enc.n + L * P + P + j, chunks, rest)
            report()

        # then features, by estimated influence
        visited = torch.zeros(enc.n, dtype=torch.bool)
        budget = min(settings.max_nodes, enc.n)
        n_visited = 0
        while n_visited < budget:
            ctx.check_cancelled()
            if budget == enc.n:
                pending = torch.arange(enc.n)
            else:
                infl = rows.feature_influence(logit_w, n_logits)
                infl[visited] = -1.0
                queue = min(settings.update_interval * B, budget - n_visited)
                order = torch.argsort(infl, descending=True)
                pending = order[:queue]
            for s in range(0, pending.numel(), B):
                idx = pending[s:s + B]
                n = idx.numel()
                vec = basis.injection(enc, idx).to(model.device)
                chunks, rest = run_batch(enc.layer[idx].tolist(), enc.pos[idx].tolist(), vec)
                rows.add(idx, chunks, rest)
                visited[idx] = True
                n_visited += n
                report()
                ctx.check_cancelled()
        del leaves
    ctx.progress(0.96, "Assembling the graph")
    doing.what = "assembling the graph"

    # Completeness identity per row.
    n = rows.n
    node = rows.node[:n]
    is_feat = node < enc.n
    value = torch.where(is_feat, feat_value[node.clamp(max=enc.n - 1)] if enc.n else torch.zeros(n),
                        logit_value[(node - enc.n - L * P - P).clamp(min=0, max=n_logits - 1)]).double()
    const = torch.where(is_feat, feat_const[node.clamp(max=enc.n - 1)] if enc.n else torch.zeros(n),
                        logit_const[(node - enc.n - L * P - P).clamp(min=0, max=n_logits - 1)]).double()
    residual = (value - rows.sum_total[:n] - const).abs()
    scale = rows.abs_total[:n] + const.abs()
    rel_err = residual / scale.clamp(min=1e-12)

    graph = _assemble(model, ids, targets, enc, rows, visited, value, const, logit_value)
    graph.meta.update(
        basis=basis.name, basis_info=basis.describe(), settings=settings.to_json(),
        target_tokens={str(int(i)): t.token for i, t in zip(graph.nodes_of(LOGIT), targets)},
    )
    pr = prune(graph, settings.node_threshold, settings.edge_threshold)
    graph.influence = pr.node_influence.astype(np.float32)
    graph.node_mask, graph.edge_mask = pr.node_mask, pr.edge_mask
    full = graph_scores(graph)
    pruned = graph_scores(graph, pr.node_mask, pr.edge_mask)
    seconds = time.perf_counter() - start
    stats = dict(
        active_features=enc.n,
        feature_rows=int(visited.sum()),
        nodes=graph.n_nodes,
        edges=graph.n_edges,
        pruned_nodes=int(pr.node_mask.sum()),
        pruned_edges=int(pr.edge_mask.sum()),
        replacement_score=full.replacement,
        completeness_score=full.completeness,
        pruned_replacement_score=pruned.replacement,
        pruned_completeness_score=pruned.completeness,
        max_completeness_error=float(rel_err.max()) if n else 0.0,
        backward_passes=backward_passes,
        batch_size=B,
        estimated_peak_bytes=estimate.total,
        **candidate_stats,
        seconds=seconds,
    )
    graph.meta["precision"] = precision_facts(model.dtype, L, stats["max_completeness_error"])
    stats["identity_tolerance"] = graph.meta["precision"]["identity_tolerance"]
    graph.meta["stats"] = stats
    graph.meta["row_check"] = {
        "value": value.tolist(), "constant": const.tolist(), "sum": rows.sum_total[:n].tolist(),
        "node": node.tolist(),
    }
    ctx.progress(1.0, "Done")
    return AttributionResult(graph, targets, prompt_text(model, prompt), stats, ids=ids.cpu(), errors=enc.errors.cpu(),
                             write_point=basis.write_point(0).split(".", 2)[2],
                             transcoders=getattr(basis, "tc", None),
                             conversation=None if isinstance(prompt, str) else prompt)


def _keep_start(patches: dict, clean, first_pos: int) -> dict:
    """Write patches with the start position's writes held at their clean values, constants of
    every pass (no gradient flows through them, e.g. along a transcoder's skip path)."""
    if not first_pos:
        return patches

    def keep(fn, name):
        def patch(x):
            out = fn(x)
            start = clean[name][:, :first_pos].to(out.dtype).expand(out.shape[0], -1, -1)
            return torch.cat([start, out[:, first_pos:]], 1)
        return patch

    return {name: keep(fn, name) for name, fn in patches.items()}


def _assemble(model, ids, targets, enc: Encoded, rows: _Rows, visited, value, const, logit_value) -> Graph:
    """Nodes [selected features, errors (layer-major), embeddings, logits] and their edges."""
    L = model.facts.n_layers
    P = ids.shape[1]
    sel = torch.nonzero(visited).flatten()  # sorted: (layer, pos, index) order
    n_sel, n_logits = sel.numel(), len(targets)
    N = n_sel + L * P + P + n_logits
    col_to_node = torch.full((enc.n + L * P + P + n_logits,), -1, dtype=torch.int64)
    col_to_node[sel] = torch.arange(n_sel)
    col_to_node[enc.n:] = torch.arange(n_sel, N)

    n = rows.n
    dst_node = col_to_node[rows.node[:n]]
    sel_val = rows.val[:n][:, sel]  # [n, n_sel]: the edges from the selected features
    fkeep = sel_val != 0
    src_f = torch.arange(n_sel)[None].expand(n, -1)[fkeep]
    dst_f = dst_node[:, None].expand(n, n_sel)[fkeep]
    w_f = sel_val[fkeep]
    rest_cols = torch.arange(L * P + P) + n_sel
    rkeep = rows.rest[:n] != 0
    src_r = rest_cols[None].expand(n, -1)[rkeep]
    dst_r = dst_node[:, None].expand(n, L * P + P)[rkeep]
    w_r = rows.rest[:n][rkeep]
    src = torch.cat([src_f, src_r]).numpy().astype(np.int32)
    dst = torch.cat([dst_f, dst_r]).numpy().astype(np.int32)
    w = torch.cat([w_f, w_r]).numpy().astype(np.float32)
    order = np.lexsort((src, dst))

    kind = np.concatenate([np.full(n_sel, FEATURE), np.full(L * P, ERROR), np.full(P, EMBEDDING), np.full(n_logits, LOGIT)]).astype(np.int8)
    layer = np.concatenate([enc.layer[sel].numpy(), np.repeat(np.arange(L), P), np.full(P, -1), np.full(n_logits, L)]).astype(np.int32)
    pos = np.concatenate([enc.pos[sel].numpy(), np.tile(np.arange(P), L), np.arange(P), np.full(n_logits, P - 1)]).astype(np.int32)
    token_ids = ids[0].tolist()
    index = np.concatenate([enc.index[sel].numpy(), np.zeros(L * P), np.array(token_ids), [t.token_id for t in targets]]).astype(np.int64)
    err_norm = enc.errors.float().norm(dim=-1).reshape(-1).cpu().numpy()
    activation = np.concatenate([enc.activation[sel].numpy(), err_norm, np.zeros(P), [t.probability for t in targets]]).astype(np.float32)
    val = np.full(N, np.nan, dtype=np.float32)
    val[:n_sel] = enc.value[sel].numpy()
    val[N - n_logits:] = logit_value.numpy()
    logit_weight = np.zeros(N, dtype=np.float32)
    logit_weight[N - n_logits:] = [t.weight for t in targets]
    g = Graph(kind=kind, layer=layer, pos=pos, index=index, activation=activation, value=val,
              src=src[order], dst=dst[order], weight=w[order], logit_weight=logit_weight,
              tokens=list(token_strings(model, ids[0])), token_ids=token_ids, n_layers=L)
    g.validate()
    return g

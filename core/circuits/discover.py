"""Component-circuit discovery: score every edge, choose a circuit, measure its faithfulness.

Methods (``METHODS``):

* ``eap`` (Syed et al. 2023): score = (corrupted − clean source output) · ∂metric/∂(destination
  input) on the clean run: 2 forward passes + 1 forward/backward pass per batch of pairs.
* ``eap-ig`` (Hanna et al. 2024): the same with the gradient averaged over ``steps`` runs whose
  input embeddings are interpolated from corrupted to clean, α = k/steps for k = 0..steps−1 (the
  reference implementation's convention).
* ``exact``: patch one edge at a time and measure the metric change; the reference, slow.
* ``random``: random scores, the baseline any method must beat.

Faithfulness (MIB, Mueller et al. 2025): a circuit C runs with every edge outside it carrying the
corrupted run's source output; f = (m(C) − m(∅)) / (m(N) − m(∅)), where N is the full model and ∅
the empty circuit. The curve takes the top {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}% of edges by
|score| (pruned of dangling edges); CPR is the area under f and CMD the area under |1 − f|
(trapezoids over log(fraction of edges), MIB's log-scale areas, divided by the log range so a
perfect curve has CPR 1 and CMD 0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.circuits.engine import METRICS, ComponentRunner
from core.circuits.graph import ComponentGraph
from core.circuits.tasks import PairSet
from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.memory import memory_guard
from core.settings import METHODS, CircuitSettings  # declared with every other setting; re-exported here

CURVE_SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
IG_ACCUMULATE_BYTES = 2 * 2**30  # EAP-IG's per-batch gradient sum, [n_destinations, b, s, d], when it fits


@dataclass
class FaithfulnessCurve:
    sizes: tuple[float, ...]  # fraction of all edges requested
    edges: tuple[int, ...]  # edges in the pruned circuit at each size
    faithfulness: tuple[float, ...]
    cpr: float
    cmd: float

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes), "edges": list(self.edges), "faithfulness": list(self.faithfulness),
                "cpr": self.cpr, "cmd": self.cmd}


def area_under(sizes, values) -> float:
    """Trapezoid area over log(size), as MIB's log-scale evaluation, divided by the log range so
    that a curve at 1 everywhere has area 1 (small circuits count as much as large ones)."""
    x, y = np.log(np.asarray(sizes, float)), np.asarray(values, float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


@dataclass
class CircuitResult:
    graph: ComponentGraph
    scores: np.ndarray  # [n_sources, n_destinations] float32 (0 where no edge)
    circuit: np.ndarray  # bool, the chosen (pruned) circuit
    circuit_faithfulness: float
    curve: FaithfulnessCurve | None
    metric_clean: float  # m(N): the full model on the clean prompts (mean over pairs)
    metric_corrupted: float  # the full model on the corrupted prompts
    metric_empty: float  # m(∅): every edge patched (equals metric_corrupted up to float error)
    task: dict
    pairs: list[dict]
    settings: dict
    stats: dict = field(default_factory=dict)

    def top_edges(self, k: int = 20) -> list[dict]:
        g = self.graph
        flat = np.where(g.edge_mask, np.abs(self.scores), -1.0).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        out = []
        for i in order:
            s, d = divmod(int(i), g.n_destinations)
            out.append({"edge": g.edge_name(s, d), "score": float(self.scores[s, d]),
                        "in_circuit": bool(self.circuit[s, d])})
        return out

    def top_nodes(self, k: int = 20) -> list[dict]:
        g = self.graph
        ns = g.node_scores(self.scores)
        inside = g.nodes_in(self.circuit)
        order = np.argsort(-np.abs(ns[:-1]), kind="stable")[:k]
        return [{"node": g.node_names[i], "score": float(ns[i]), "in_circuit": bool(inside[i])} for i in order]

    # -- session file -----------------------------------------------------------------------------
    def header(self) -> dict:
        return {
            "n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads,
            "circuit_faithfulness": self.circuit_faithfulness,
            "curve": self.curve.to_json() if self.curve else None,
            "metric_clean": self.metric_clean, "metric_corrupted": self.metric_corrupted,
            "metric_empty": self.metric_empty, "task": self.task, "pairs": self.pairs,
            "settings": self.settings, "stats": self.stats,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"edge_scores": self.scores.astype(np.float32), "circuit": self.circuit.astype(bool)}

    @classmethod
    def from_parts(cls, header: dict, arrays: dict[str, np.ndarray]) -> "CircuitResult":
        """The circuit of a session file (``header`` validated by ``core.manifest``), its arrays
        checked for shape, type, finiteness and agreement with the header."""
        g = ComponentGraph(int(header["n_layers"]), int(header["n_heads"]))
        if set(arrays) != {"edge_scores", "circuit"}:
            raise ValueError(f"a circuit holds the arrays edge_scores and circuit, not {', '.join(sorted(arrays))}")
        scores, circuit = arrays["edge_scores"], arrays["circuit"]
        shape = (g.n_sources, g.n_destinations)
        if scores.shape != shape or circuit.shape != shape:
            raise ValueError(f"edge arrays have shape {scores.shape} / {circuit.shape}, expected {shape}")
        if scores.dtype != np.float32 or circuit.dtype != bool:
            raise ValueError("edge arrays have the wrong types")
        if not np.isfinite(scores).all():
            raise ValueError("edge scores hold numbers that are not finite")
        if (circuit & ~g.edge_mask).any():
            raise ValueError("the circuit holds edges that do not exist")
        for p in header["pairs"]:
            if not (len(p["clean_ids"]) == len(p["corrupted_ids"]) == p["tokens"]) or not p["answer"] \
                    or not p["counterfactual"]:
                raise ValueError(f"pair {p.get('label', '')[:40]!r} has inconsistent token ids")
        c = header.get("curve")
        if c and not (1 < len(c["sizes"]) == len(c["edges"]) == len(c["faithfulness"])
                      and all(0 < x <= 1 for x in c["sizes"])):
            raise ValueError("the faithfulness curve's lists differ in length or hold impossible sizes")
        curve = FaithfulnessCurve(tuple(c["sizes"]), tuple(c["edges"]), tuple(c["faithfulness"]),
                                  float(c["cpr"]), float(c["cmd"])) if c else None
        return cls(g, scores, circuit, float(header["circuit_faithfulness"]), curve,
                   float(header["metric_clean"]), float(header["metric_corrupted"]), float(header["metric_empty"]),
                   dict(header.get("task", {})), list(header["pairs"]), dict(header["settings"]),
                   dict(header.get("stats", {})))


# ---------------------------------------------------------------------------------------------------
def _check_pairs(model, pairs: PairSet) -> None:
    if len(pairs) == 0:
        raise CircuitDeskError("There are no prompt pairs to run.")
    vocab = model.facts.vocab_size
    for p in pairs.pairs:
        if max(p.clean + p.corrupted + p.answer + p.counterfactual) >= vocab:
            raise CircuitDeskError(f"{p.label}: a token id is outside {model.name}'s vocabulary ({vocab}).")


def score_edges(runner: ComponentRunner, pairs: PairSet, settings: CircuitSettings,
                ctx: JobContext | None = None, accumulate_bytes: int = IG_ACCUMULATE_BYTES) -> tuple[np.ndarray, dict]:
    """Edge scores [n_sources, n_destinations] (mean over pairs) and counts of passes run.

    EAP-IG sums a batch's per-step destination gradients in one buffer when it fits in
    ``accumulate_bytes`` (one score GEMM per batch), else scores every step on its own."""
    ctx = ctx or JobContext()
    g = runner.graph
    dev = runner.model.device
    metric = METRICS[settings.metric]
    if settings.method == "random":
        rng = np.random.default_rng(settings.seed)
        return np.where(g.edge_mask, rng.standard_normal(g.edge_mask.shape), 0).astype(np.float32), {}
    batches = [b.to(dev) for b in pairs.batches(settings.batch_size)]
    scores = torch.zeros(g.n_sources, g.n_destinations, device=dev)
    fwd = bwd = 0
    exact_edges = [tuple(e) for e in np.argwhere(g.edge_mask)] if settings.method == "exact" else []
    per_batch = {"eap": 1, "eap-ig": settings.steps, "exact": max(1, len(exact_edges))}[settings.method]
    total, done = len(batches) * (per_batch + 2), 0
    for bi, batch in enumerate(batches):
        clean_run = runner.sources(batch.clean)
        clean, clean_logits = clean_run.outputs, clean_run.logits
        if settings.method == "eap":
            diff = runner.sources(batch.corrupted).outputs.sub_(clean)
            s, _ = runner.edge_gradient_scores(batch, diff, metric)
            scores += s
            fwd, bwd, done = fwd + 3, bwd + 1, done + 3
        elif settings.method == "eap-ig":
            # α = k/steps, k = 0…steps−1. The score is linear in the gradient: the steps' gradients
            # are summed and multiplied by diff once. Step 0 runs the corrupted input itself, so
            # that pass also records the corrupted sources.
            numel = g.n_destinations * clean[0].numel() * clean.element_size()
            grads = torch.zeros(g.n_destinations, *clean.shape[1:], device=dev, dtype=clean.dtype) \
                if numel <= accumulate_bytes else None
            ctx.progress(done / total, f"EAP-IG step 1/{settings.steps}, batch {bi + 1}/{len(batches)}")
            g0, _, corrupted = runner.destination_gradients(batch, metric, out=grads, ids=batch.corrupted,
                                                            record_sources=True)
            diff = corrupted.outputs.sub_(clean)
            del corrupted
            if grads is None:
                scores += runner.edge_scores(diff, g0) / settings.steps
            del g0
            fwd, bwd, done = fwd + 2, bwd + 1, done + 3
            x_clean, x_corr = clean[0], clean[0] + diff[0]
            dtype = runner.model.dtype
            for k in range(1, settings.steps):
                ctx.progress(done / total, f"EAP-IG step {k + 1}/{settings.steps}, batch {bi + 1}/{len(batches)}")
                x = (x_corr + (k / settings.steps) * (x_clean - x_corr)).to(dtype)
                if grads is not None:
                    runner.destination_gradients(batch, metric, input_value=x, out=grads)
                else:
                    scores += runner.edge_gradient_scores(batch, diff, metric, input_value=x)[0] / settings.steps
                fwd, bwd, done = fwd + 1, bwd + 1, done + 1
            if grads is not None:
                scores += runner.edge_scores(diff, grads) / settings.steps
            del grads
        else:  # exact
            diff = runner.sources(batch.corrupted).outputs.sub_(clean)
            fwd, done = fwd + 2, done + 2
            base = float(metric(clean_logits, batch).sum())
            copies = max(1, 64 // len(batch))
            for k in range(0, len(exact_edges), copies):
                ctx.progress(done / total, f"Exact patching: edge {k + 1}/{len(exact_edges)}, batch {bi + 1}/{len(batches)}")
                chunk = exact_edges[k:k + copies]
                m = runner.single_edge_metrics(batch, diff, chunk, metric)
                src, dst = zip(*chunk)
                scores[list(src), list(dst)] += (m - base).to(scores.device)
                fwd += 1
                done += len(chunk)
        del clean_run, clean
        ctx.progress(done / total, f"Scored batch {bi + 1}/{len(batches)}")
    scores /= len(pairs)
    return scores.cpu().numpy().astype(np.float32), {"forward_passes": fwd, "backward_passes": bwd}


def evaluate_circuits(runner: ComponentRunner, pairs: PairSet, circuits: list[np.ndarray], settings: CircuitSettings,
                      ctx: JobContext | None = None) -> tuple[list[float], float, float]:
    """Mean metric with each circuit's outside edges patched; also the clean and corrupted means."""
    ctx = ctx or JobContext()
    g = runner.graph
    dev = runner.model.device
    metric = METRICS[settings.metric]
    sums = [0.0] * len(circuits)
    clean_sum = corr_sum = 0.0
    drops = [torch.from_numpy(g.edge_mask & ~c) for c in circuits]
    batches = [b.to(dev) for b in pairs.batches(settings.batch_size)]
    total, done = len(batches) * (len(circuits) + 1), 0
    for bi, batch in enumerate(batches):
        corrupted = runner.sources(batch.corrupted)
        corr_sum += float(metric(corrupted.logits, batch).sum())
        with torch.no_grad():
            clean_sum += float(metric(runner.last_logits(batch.clean), batch).sum())
        done += 1
        for i, drop in enumerate(drops):
            ctx.progress(done / total, f"Faithfulness: circuit {i + 1}/{len(drops)}, batch {bi + 1}/{len(batches)}")
            sums[i] += float(metric(runner.patched(batch.clean, corrupted, drop), batch).sum())
            done += 1
        del corrupted
    n = len(pairs)
    return [s / n for s in sums], clean_sum / n, corr_sum / n


def choose_circuit(graph: ComponentGraph, scores: np.ndarray, *, top_n: int | None = None,
                   threshold: float | None = None) -> np.ndarray:
    """Top-n edges by |score| (or those above a threshold), pruned of dangling edges."""
    if threshold is not None:
        raw = graph.above_threshold(scores, threshold)
    else:
        raw = graph.top_n(scores, top_n if top_n is not None else graph.n_edges)
    return graph.prune(raw)


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    denom = m_full - m_empty
    if abs(denom) < 1e-12:
        return float("nan")
    return (m_circuit - m_empty) / denom


def find_circuit(model, pairs: PairSet, settings: CircuitSettings | None = None,
                 ctx: JobContext | None = None) -> CircuitResult:
    """Score every edge with ``settings.method``, build the faithfulness curve, choose the circuit."""
    settings = settings or CircuitSettings()
    settings.validate()
    ctx = ctx or JobContext()
    _check_pairs(model, pairs)
    smaller = max(1, settings.batch_size // 4)
    advice = (f"try --batch-size {smaller}" if settings.batch_size > 1 else "try fewer or shorter prompt pairs") + (
        ", --dtype bfloat16" if model.dtype == torch.float32 else "") + " or --offload"
    with memory_guard(model.device, advice, f"scoring edges with {settings.method}"):
        return _find_circuit(model, pairs, settings, ctx)


def _find_circuit(model, pairs: PairSet, settings: CircuitSettings, ctx: JobContext) -> CircuitResult:
    start = time.perf_counter()
    runner = ComponentRunner(model)
    g = runner.graph
    scoring_share = 0.9 if settings.method == "exact" else 0.6
    ctx.progress(0.0, f"Scoring {g.n_edges:,} edges with {settings.method}")
    scores, passes = score_edges(runner, pairs, settings, ctx.sub(0.0, scoring_share))
    scored_at = time.perf_counter()

    circuits = [np.zeros_like(g.edge_mask)]  # the empty circuit: m(∅)
    requested: list[int] = []
    if settings.curve:
        for size in CURVE_SIZES:
            requested.append(int(size * g.n_edges))
            circuits.append(choose_circuit(g, scores, top_n=requested[-1]))
    chosen = None
    if settings.top_n is not None or settings.threshold is not None:
        chosen = choose_circuit(g, scores, top_n=settings.top_n, threshold=settings.threshold)
        circuits.append(chosen)
    values, m_clean, m_corr = evaluate_circuits(runner, pairs, circuits, settings, ctx.sub(scoring_share, 1.0))
    m_empty = values[0]
    f_values = [faithfulness(v, m_clean, m_empty) for v in values]
    curve = None
    if settings.curve:
        fs = f_values[1:1 + len(CURVE_SIZES)]
        curve = FaithfulnessCurve(CURVE_SIZES, tuple(int(c.sum()) for c in circuits[1:1 + len(CURVE_SIZES)]),
                                  tuple(fs), area_under(CURVE_SIZES, fs),
                                  area_under(CURVE_SIZES, [abs(1 - f) for f in fs]))
    if chosen is not None:
        chosen_f = f_values[-1]
    else:  # the smallest curve circuit reaching the target faithfulness (else the full graph)
        idx = next((i for i, f in enumerate(curve.faithfulness) if f >= settings.target_faithfulness),
                   len(CURVE_SIZES) - 1)
        chosen, chosen_f = circuits[1 + idx], curve.faithfulness[idx]
    ctx.progress(1.0, "Circuit ready")
    end = time.perf_counter()
    stats = {
        "seconds": end - start, "scoring_seconds": scored_at - start, "curve_seconds": end - scored_at,
        "edges_total": g.n_edges, "circuit_edges": int(chosen.sum()),
        "circuit_nodes": int(g.nodes_in(chosen).sum()), "n_pairs": len(pairs),
        "evaluations": len(circuits), **passes,
    }
    return CircuitResult(g, scores, chosen, float(chosen_f), curve, m_clean, m_corr, m_empty, pairs.summary(),
                         [p.to_json(model.tokenizer) for p in pairs.pairs], settings.to_json(), stats)

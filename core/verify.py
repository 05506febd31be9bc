"""Re-run a session and compare: does this model, with these settings, give this session?

``verify_session`` first names every member of the file whose bytes differ from the sha256 the
manifest recorded when it was saved (an edit of anything, labels and findings included). Then it
checks the model's fingerprint against the one recorded (file by file), recomputes the analysis
with the stored settings (circuits: from the stored token ids of every pair) on the recorded
device and dtype, and compares every array and number it can recompute:

* attribution graphs: nodes, edge weights, activations, node values, logit weights and
  probabilities, influence, both pruning masks, the graph scores, the logit lens;
* component circuits: edge scores, the chosen circuit, the metrics on the full, empty and chosen
  circuits, the faithfulness curve with CPR/CMD, the logit lens.

Numbers match when the largest |recomputed − stored| is at most ``TOLERANCE`` times the larger of
1 and the largest |stored| value of that array (a bound on the array's own scale: per-entry ratios
of near-zero values say nothing); masks and counts must be equal. Each comparison names its worst
entry.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from core.attribution import AttributionSettings, attribute
from core.chat import parse_messages
from core.circuits import CircuitSettings, find_circuit
from core.circuits.tasks import pairs_from_json
from core.errors import CircuitDeskError
from core.graph import graph_scores
from core.jobs import JobContext
from core.lens import lens
from core.manifest import current_settings
from core.models import load_model

TOLERANCE = 1e-4


@dataclass
class Check:
    """One compared array or number."""

    name: str
    compared: int
    max_abs_deviation: float
    max_rel_deviation: float  # max |Δ| / max(1, max |stored|); for masks and counts, entries that differ
    worst: str  # the entry with the largest deviation
    ok: bool


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)  # one sentence each; empty when ok
    fingerprint_ok: bool = False
    edited: list[str] | None = field(default_factory=list)  # members changed since saving (None: not recorded)
    checks: list[Check] = field(default_factory=list)
    compared: int = 0  # edges compared
    max_abs_deviation: float | None = None  # of the edge weights (attribution) or edge scores (circuits)
    max_rel_deviation: float | None = None  # max |Δ| / max |stored weight|
    worst_edge: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    # -- comparisons ----------------------------------------------------------------------------------
    def numbers(self, name: str, stored, new, entry=str, nan_ok: bool = False, scale: float | None = None) -> Check:
        """Compare two float arrays (``entry(i)`` names entry i; ``scale``: what deviations are relative to,
        by default the larger of 1 and the largest |stored|); with ``nan_ok``, NaN must sit in the same places."""
        a, b = np.asarray(stored, np.float64).ravel(), np.asarray(new, np.float64).ravel()
        if a.shape != b.shape:
            return self._add(Check(name, int(a.size), float("inf"), float("inf"), "shape", False),
                             f"{name}: {b.size} values recomputed, {a.size} stored.")
        if nan_ok:
            where_nan = np.isnan(a) != np.isnan(b)
            if where_nan.any():
                i = int(np.flatnonzero(where_nan)[0])
                return self._add(Check(name, int(a.size), float("inf"), float("inf"), entry(i), False),
                                 f"{name} differs at {entry(i)} (a value where none was stored, or none where one was).")
            a, b = np.nan_to_num(a), np.nan_to_num(b)
        diff = np.abs(a - b)
        if scale is None:
            scale = max(1.0, float(np.abs(a).max())) if a.size else 1.0
        scale = max(scale, 1e-30)
        worst = int(diff.argmax()) if diff.size else 0
        dev = float(diff.max()) if diff.size else 0.0
        check = Check(name, int(a.size), dev, dev / scale, entry(worst) if diff.size else "", dev / scale <= TOLERANCE)
        return self._add(check, f"{name} differ by up to {dev:.3g} ({dev / scale:.2e} of their scale; allowed "
                                f"{TOLERANCE:g}), worst at {check.worst}.")

    def equal(self, name: str, stored, new, entry=str) -> Check:
        """Compare masks, ids or counts: every entry must be equal."""
        a, b = np.asarray(stored).ravel(), np.asarray(new).ravel()
        if a.shape != b.shape:
            return self._add(Check(name, int(a.size), float("inf"), float("inf"), "shape", False),
                             f"{name}: {b.size} entries recomputed, {a.size} stored.")
        differ = np.flatnonzero(a != b)
        worst = entry(int(differ[0])) if differ.size else ""
        return self._add(Check(name, int(a.size), float(differ.size), float(differ.size), worst, not differ.size),
                         f"{name} differs in {differ.size} of {a.size} entries, first at {worst}.")

    def _add(self, check: Check, problem: str) -> Check:
        self.checks.append(check)
        if not check.ok:
            self.problems.append(problem)
        return check


def compare_fingerprints(recorded: dict, files_now: dict) -> list[str]:
    """Sentences naming the weight/config files that differ from the recorded ones."""
    was = recorded.get("files", {}) if isinstance(recorded.get("files"), dict) else {}
    problems = []
    for name in sorted(set(was) | set(files_now)):
        if name not in files_now:
            problems.append(f"{name} was part of the model but is missing now.")
        elif name not in was:
            problems.append(f"{name} is new: the model had no such file when the session was made.")
        elif was[name] != files_now[name]:
            problems.append(f"{name} changed (sha256 {files_now[name][:12]}…, recorded {was[name][:12]}…).")
    return problems


def verify_session(session, model_spec: str | None = None, device: str | None = None,
                   ctx: JobContext | None = None) -> VerifyReport:
    """Recompute ``session`` and compare (see the module docstring)."""
    ctx = ctx or JobContext()
    start = time.perf_counter()
    report = VerifyReport(ok=False, edited=None if session.edited is None else list(session.edited))
    for name in session.edited or ():
        report.problems.append(f"{name} was edited after the session was saved (its sha256 differs from the "
                               "one the manifest recorded).")
    recorded = session.manifest.get("model", {})
    spec = model_spec or recorded.get("spec") or recorded.get("source")
    if not spec:
        raise CircuitDeskError("The session does not say which model made it; give --model.")
    model = load_model(spec, device=device or recorded.get("device", "cpu"),
                       dtype=recorded.get("dtype", "float32"), ctx=ctx.sub(0.0, 0.1))
    fingerprint = compare_fingerprints(recorded, model.fingerprint.files)
    if model.fingerprint.sha256 != recorded.get("sha256") and not fingerprint:
        fingerprint.append("The model's fingerprint differs from the recorded one.")
    report.problems += fingerprint
    report.fingerprint_ok = not fingerprint
    if report.fingerprint_ok:
        if session.graph is not None:
            _compare_attribution(session, model, report, ctx.sub(0.1, 1.0))
        else:
            _compare_circuit(session, model, report, ctx.sub(0.1, 1.0))
    report.ok = not report.problems
    report.seconds = time.perf_counter() - start
    return report


def _edges(report: VerifyReport, name: str, stored, new, entry) -> None:
    """The headline comparison: every edge, relative to the largest stored |weight| (or score)."""
    scale = float(np.abs(stored).max()) if np.size(stored) else 0.0
    check = report.numbers(name, stored, new, entry, scale=scale if scale > 0 else 1.0)
    report.compared, report.worst_edge = check.compared, check.worst
    report.max_abs_deviation, report.max_rel_deviation = check.max_abs_deviation, check.max_rel_deviation


def _compare_attribution(session, model, report: VerifyReport, ctx: JobContext) -> None:
    stored = session.graph
    m = session.manifest
    stored_settings = m.get("settings", {})
    settings = AttributionSettings(**current_settings(stored_settings, AttributionSettings))  # validated at load
    if set(stored_settings) - set(current_settings(stored_settings, AttributionSettings)):
        report.problems.append("This session was traced by an earlier version (start-token error nodes, dense neuron "
                            "rows); today's graph follows circuit-tracer's start-token convention, so nodes and "
                            "edges may differ.")
    chat = m.get("chat")  # a chat-formatted prompt is rendered again by the model's template
    prompt = parse_messages(chat["messages"], "the session's conversation") if chat else m.get("prompt", "")
    res = attribute(model, prompt, settings, ctx=ctx.sub(0.0, 0.9))
    new = res.graph
    if new.token_ids != stored.token_ids:
        report.problems.append("The prompt tokenizes to other tokens than the session stores"
                               + (" (the chat template renders the conversation otherwise)." if chat else "."))
        return
    same_nodes = all(np.array_equal(getattr(stored, k), getattr(new, k)) for k in ("kind", "layer", "pos", "index"))
    if not same_nodes:
        report.problems.append(f"The recomputed graph has different nodes ({new.n_nodes} vs {stored.n_nodes} stored).")
        return
    node = stored.label
    n = stored.n_nodes
    keys_s = stored.src.astype(np.int64) * n + stored.dst
    keys_n = new.src.astype(np.int64) * n + new.dst
    keys = np.union1d(keys_s, keys_n)  # same nodes, edges possibly another set: compare on the union, absent = 0
    a, b = np.zeros(len(keys)), np.zeros(len(keys))
    a[np.searchsorted(keys, keys_s)] = stored.weight
    b[np.searchsorted(keys, keys_n)] = new.weight
    edge = lambda i: f"{node(int(keys[i] // n))} → {node(int(keys[i] % n))}"  # noqa: E731
    _edges(report, "Edge weights", a, b, edge)
    for name, title in (("activation", "Activations"), ("logit_weight", "Logit weights")):
        report.numbers(title, getattr(stored, name), getattr(new, name), node)
    report.numbers("Node values", stored.value, new.value, node, nan_ok=True)
    if stored.influence is not None:
        report.numbers("Influence", stored.influence, new.influence, node)
    if stored.node_mask is not None:
        report.equal("Pruned nodes", stored.node_mask, new.node_mask, node)
    if stored.edge_mask is not None:
        ma, mb = np.zeros(len(keys), bool), np.zeros(len(keys), bool)
        ma[np.searchsorted(keys, keys_s)] = stored.edge_mask
        mb[np.searchsorted(keys, keys_n)] = new.edge_mask
        report.equal("Pruned edges", ma, mb, edge)
    targets = m.get("targets") or []
    if targets:
        report.equal("Logit targets", [t["token_id"] for t in targets], [t.token_id for t in res.targets],
                     lambda i: repr(targets[i]["token"]))
        report.numbers("Logit probabilities", [t["probability"] for t in targets],
                       [round(t.probability, 6) for t in res.targets], lambda i: repr(targets[i]["token"]))
    stats = m.get("stats") or stored.meta.get("stats") or {}
    full, pruned = graph_scores(new), graph_scores(new, new.node_mask, new.edge_mask)
    scores = {"replacement_score": full.replacement, "completeness_score": full.completeness,
              "pruned_replacement_score": pruned.replacement, "pruned_completeness_score": pruned.completeness}
    names = [k for k in scores if isinstance(stats.get(k), (int, float))]
    if names:
        report.numbers("Graph scores", [stats[k] for k in names], [scores[k] for k in names], lambda i: names[i])
    _compare_lens(session, model, report, res.ids)


def _compare_circuit(session, model, report: VerifyReport, ctx: JobContext) -> None:
    stored = session.circuit
    pairs = pairs_from_json(stored.pairs, str(stored.task.get("task") or "stored"))
    settings = CircuitSettings(**stored.settings)  # validated when the session was loaded
    if (model.facts.n_layers, model.facts.n_heads) != (stored.graph.n_layers, stored.graph.n_heads):
        report.problems.append("The model's layers/heads differ from the stored circuit's.")
        return
    new = find_circuit(model, pairs, settings, ctx=ctx.sub(0.0, 0.9))
    g = stored.graph
    src, dst = np.nonzero(g.edge_mask)
    edge = lambda i: g.edge_name(int(src[i]), int(dst[i]))  # noqa: E731
    _edges(report, "Edge scores", stored.scores[g.edge_mask], new.scores[g.edge_mask], edge)
    report.equal("Circuit edges", stored.circuit[g.edge_mask], new.circuit[g.edge_mask], edge)
    metrics = ("metric_clean", "metric_corrupted", "metric_empty", "circuit_faithfulness")
    report.numbers("Metrics", [getattr(stored, k) for k in metrics], [getattr(new, k) for k in metrics],
                   lambda i: metrics[i])
    if stored.curve is not None:
        sizes = stored.curve.sizes
        at = lambda i: f"{sizes[i]:g} of the edges" if i < len(sizes) else ("CPR", "CMD")[i - len(sizes)]  # noqa: E731
        if new.curve is None or tuple(new.curve.sizes) != tuple(sizes):
            report.problems.append("The recomputed faithfulness curve has other circuit sizes than the stored one.")
        else:
            report.equal("Faithfulness curve edges", stored.curve.edges, new.curve.edges, at)
            report.numbers("Faithfulness curve", [*stored.curve.faithfulness, stored.curve.cpr, stored.curve.cmd],
                           [*new.curve.faithfulness, new.curve.cpr, new.curve.cmd], at)
    first = pairs.pairs[0]
    _compare_lens(session, model, report, torch.tensor([first.clean]))


def _compare_lens(session, model, report: VerifyReport, ids) -> None:
    info = session.manifest.get("logit_lens")
    if session.logit_lens is None or info is None:
        return
    data = lens(model, ids, target_id=int(info["target_id"]), details=False)
    tokens = info["tokens"]
    cols = session.logit_lens.shape[1]
    where = lambda i: f"layer row {i // cols}, token {i % cols} {tokens[i % cols]!r}"  # noqa: E731
    report.numbers("Logit lens", session.logit_lens, data.lens_prob, where)

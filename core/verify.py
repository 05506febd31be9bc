"""Re-run a session and compare: does this model, with these settings, give this graph?

``verify_session`` checks the model's fingerprint against the one recorded (file by file), then
recomputes the attribution graph or the circuit's edge scores with the stored settings (and, for
circuits, the stored token ids of every pair) on the recorded device and dtype, and compares.

Edge weights match when the largest |recomputed − stored| is at most ``TOLERANCE`` times the
largest |stored| weight (a relative bound on the graph's own scale: per-edge ratios of
near-zero weights say nothing). The graph's nodes must be the same nodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from core.errors import CircuitDeskError
from core.jobs import JobContext

TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)  # one sentence each; empty when ok
    fingerprint_ok: bool = False
    compared: int = 0  # edges compared
    max_abs_deviation: float | None = None
    max_rel_deviation: float | None = None  # max |Δ| / max |stored weight|
    worst_edge: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


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
    from core.models import load_model

    ctx = ctx or JobContext()
    start = time.perf_counter()
    recorded = session.manifest.get("model", {})
    spec = model_spec or recorded.get("spec") or recorded.get("source")
    if not spec:
        raise CircuitDeskError("The session does not say which model made it; give --model.")
    model = load_model(spec, device=device or recorded.get("device", "cpu"),
                       dtype=recorded.get("dtype", "float32"), ctx=ctx.sub(0.0, 0.1))
    report = VerifyReport(ok=False)
    report.problems = compare_fingerprints(recorded, model.fingerprint.files)
    if model.fingerprint.sha256 != recorded.get("sha256") and not report.problems:
        report.problems.append("The model's fingerprint differs from the recorded one.")
    report.fingerprint_ok = not report.problems
    if report.fingerprint_ok:
        if session.graph is not None:
            _compare_attribution(session, model, report, ctx.sub(0.1, 1.0))
        else:
            _compare_circuit(session, model, report, ctx.sub(0.1, 1.0))
    report.ok = not report.problems
    report.seconds = time.perf_counter() - start
    return report


def _deviation(report: VerifyReport, stored: np.ndarray, new: np.ndarray, names) -> None:
    diff = np.abs(new.astype(np.float64) - stored.astype(np.float64))
    scale = float(np.abs(stored).max()) if stored.size else 0.0
    report.compared = int(stored.size)
    report.max_abs_deviation = float(diff.max()) if diff.size else 0.0
    report.max_rel_deviation = report.max_abs_deviation / scale if scale > 0 else report.max_abs_deviation
    if diff.size:
        report.worst_edge = names(int(diff.argmax()))
    if report.max_rel_deviation > TOLERANCE:
        report.problems.append(
            f"Edge weights differ by up to {report.max_abs_deviation:.3g} ({report.max_rel_deviation:.2e} of the "
            f"largest weight; allowed {TOLERANCE:g}), worst at {report.worst_edge}.")


def _compare_attribution(session, model, report: VerifyReport, ctx: JobContext) -> None:
    from core.attribution import AttributionSettings, attribute

    stored = session.graph
    try:
        settings = AttributionSettings(**session.manifest.get("settings", {}))
    except TypeError as e:
        raise CircuitDeskError(f"The session's settings are not attribution settings ({e}).") from None
    new = attribute(model, session.manifest.get("prompt", ""), settings, ctx=ctx).graph
    same_nodes = all(np.array_equal(getattr(stored, k), getattr(new, k)) for k in ("kind", "layer", "pos", "index"))
    if not same_nodes:
        report.problems.append(f"The recomputed graph has different nodes ({new.n_nodes} vs {stored.n_nodes} stored).")
        return
    if not (np.array_equal(stored.src, new.src) and np.array_equal(stored.dst, new.dst)):
        # same nodes, edges in another order or another set: compare on the union, absent = 0
        n = stored.n_nodes
        keys = np.union1d(stored.src.astype(np.int64) * n + stored.dst, new.src.astype(np.int64) * n + new.dst)
        a, b = np.zeros(len(keys)), np.zeros(len(keys))
        a[np.searchsorted(keys, stored.src.astype(np.int64) * n + stored.dst)] = stored.weight
        b[np.searchsorted(keys, new.src.astype(np.int64) * n + new.dst)] = new.weight
        _deviation(report, a, b, lambda i: f"{stored.label(int(keys[i] // n))} → {stored.label(int(keys[i] % n))}")
        return
    _deviation(report, stored.weight, new.weight,
               lambda e: f"{stored.label(int(stored.src[e]))} → {stored.label(int(stored.dst[e]))}")


def _compare_circuit(session, model, report: VerifyReport, ctx: JobContext) -> None:
    from core.circuits import CircuitSettings, ComponentRunner, score_edges
    from core.circuits.tasks import pairs_from_json

    stored = session.circuit
    pairs = pairs_from_json(stored.pairs, str(stored.task.get("task", "stored")))
    try:
        settings = CircuitSettings(**stored.settings)
    except TypeError as e:
        raise CircuitDeskError(f"The session's settings are not circuit settings ({e}).") from None
    runner = ComponentRunner(model)
    if (runner.graph.n_layers, runner.graph.n_heads) != (stored.graph.n_layers, stored.graph.n_heads):
        report.problems.append("The model's layers/heads differ from the stored circuit's.")
        return
    scores, _ = score_edges(runner, pairs, settings, ctx)
    mask = stored.graph.edge_mask
    src, dst = np.nonzero(mask)
    _deviation(report, stored.scores[mask], scores[mask],
               lambda i: stored.graph.edge_name(int(src[i]), int(dst[i])))

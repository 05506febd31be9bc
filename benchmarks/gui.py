"""Workbench responsiveness (prints figures; asserts nothing).

1. Event-loop stalls during a real trace of the default model: a 10 ms QTimer heartbeat runs while
   the trace runs on the worker thread; the longest gap between beats minus 10 ms is the stall.
   Target: longest stall <= 50 ms.
2. Paint time of a synthetic 5,000-node / 50,000-edge graph in the graph pane (offscreen): the pane
   is rendered into an image after each small pan and each small zoom; median and max per frame.
   Target: median <= 16 ms. Also the one full redraw once a zoom has settled (the pane draws only
   the strongest edges while the view moves).
Run: QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/gui.py [--skip-trace]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def synthetic_view(n_nodes: int = 5000, n_edges: int = 50000, seed: int = 0):
    import numpy as np

    from core.graph import EMBEDDING, FEATURE, LOGIT, Graph
    from core.view import from_attribution

    rng = np.random.default_rng(seed)
    L, P = 30, 40
    kind = np.full(n_nodes, FEATURE, np.int8)
    kind[:P] = EMBEDDING
    kind[-5:] = LOGIT
    layer = rng.integers(0, L, n_nodes).astype(np.int32)
    layer[:P], layer[-5:] = -1, L
    pos = rng.integers(0, P, n_nodes).astype(np.int32)
    pos[:P] = np.arange(P)
    src = rng.integers(0, n_nodes - 5, 4 * n_edges)
    dst = rng.integers(P, n_nodes, 4 * n_edges)
    upward = layer[src] < layer[dst]  # acyclic, as attribution graphs are
    src, dst = src[upward][:n_edges].astype(np.int32), dst[upward][:n_edges].astype(np.int32)
    g = Graph(kind=kind, layer=layer, pos=pos, index=np.arange(n_nodes), activation=rng.random(n_nodes).astype(np.float32),
              value=np.full(n_nodes, np.nan, np.float32), src=src, dst=dst,
              weight=rng.standard_normal(n_edges).astype(np.float32),
              logit_weight=np.where(kind == LOGIT, 0.2, 0).astype(np.float32),
              tokens=[f"t{i}" for i in range(P)], token_ids=list(range(P)), n_layers=L, meta={})
    view = from_attribution(g, threshold=1.0)
    view.node_mask[:] = True
    view.edge_mask[:] = True  # draw everything: the worst case
    return view


def heartbeat_during_run(app, w) -> dict:
    """Longest gaps of a 10 ms QTimer while the window runs its prompt on the worker thread."""
    from PySide6.QtCore import QElapsedTimer, QTimer

    clock = QElapsedTimer()
    beat = QTimer()
    beat.setInterval(10)
    stalls: list[tuple[int, int]] = []  # (gap - 10 ms, when: ms since the run started)
    last = [0]

    def tick():
        now = clock.elapsed()
        stalls.append((now - last[0] - 10, now))
        last[0] = now

    beat.timeout.connect(tick)
    messages: list[tuple[int, str]] = []  # (ms since start, progress message): where stalls happen
    w.runner.submitted.connect(lambda h: h.progress.connect(lambda p: messages.append((clock.elapsed(), p.message))))
    done = []
    w.status.job_finished.connect(lambda: done.append(1))
    clock.start()
    beat.start()
    t0 = time.perf_counter()
    w.actions["run.run"].trigger()
    while not done:
        app.processEvents()
        time.sleep(0.001)
    end = time.perf_counter() + 0.5  # the beat goes on a little: the result lands in the panes
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    beat.stop()
    w.status.job_finished.disconnect()
    w.runner.submitted.disconnect()

    def during(at: int) -> str:
        before = [m for t, m in messages if t <= at]
        return before[-1] if before else "starting"

    gaps = sorted(g for g, _ in stalls)
    return {
        "seconds": round(time.perf_counter() - t0, 2), "error": w.status.last_error, "heartbeats": len(stalls),
        "longest_stall_ms": gaps[-1], "p99_stall_ms": gaps[int(0.99 * (len(gaps) - 1))],
        "worst_stalls": [f"{g} ms at {at} ms ({during(at - g)})" for g, at in sorted(stalls, reverse=True)[:5]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-trace", action="store_true")
    args = ap.parse_args()
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from desktop.app import MainWindow

    app = QApplication.instance() or QApplication([])
    out: dict = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "circuitdesk-bench.ini"
    w = MainWindow(settings=QSettings(str(tmp), QSettings.Format.IniFormat))
    w.resize(1400, 900)
    w.show()
    app.processEvents()

    if not args.skip_trace:
        w.panel.prompt_edit.setPlainText("The capital of France is")
        out["first_run"] = heartbeat_during_run(app, w)  # loads the model (imports torch, reads weights)
        out["second_run"] = heartbeat_during_run(app, w)  # the model is loaded: the trace itself

    view = synthetic_view()
    t0 = time.perf_counter()
    w.state.show(view)
    app.processEvents()
    out["show_5k_50k_seconds"] = round(time.perf_counter() - t0, 3)
    graph = w.graph_pane
    pane = graph.plot

    def frames(move, n: int = 20, settle: bool = False) -> list[float]:
        """Time (ms) from each `move` of the view to its frame painted (range update + paint)."""
        times = []
        for _ in range(n):
            app.processEvents()
            t = time.perf_counter()
            move()
            if settle:  # the settle timer fires: the full edge set is drawn again
                graph.settle()
            pane.viewport().repaint()  # synchronous: the frame the user would see
            times.append((time.perf_counter() - t) * 1000)
        return times

    box = pane.getViewBox()
    pan = frames(lambda: box.translateBy(x=0.01))
    zoom = frames(lambda: box.scaleBy((1.01, 1.01)))
    graph.settle()
    still = frames(lambda: None)  # e.g. a hover highlight: the edges come from the cache
    settled = frames(lambda: box.scaleBy((1 / 1.01, 1 / 1.01)), n=5, settle=True)
    out["drawn_edges"] = int(min(len(view.visible_edges()), 3000))
    out["paint_ms_median_pan"] = round(statistics.median(pan), 1)
    out["paint_ms_max_pan"] = round(max(pan), 1)
    out["paint_ms_median_zoom"] = round(statistics.median(zoom), 1)
    out["paint_ms_max_zoom"] = round(max(zoom), 1)
    out["paint_ms_median_still"] = round(statistics.median(still), 1)
    out["paint_ms_full_redraw_after_zoom"] = round(statistics.median(settled), 1)
    t = time.perf_counter()
    w.state.set_threshold(0.5)
    app.processEvents()
    out["rethreshold_5k_50k_ms"] = round((time.perf_counter() - t) * 1000, 1)
    w.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

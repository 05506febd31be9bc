"""The graph pane as a person uses it: a capped drawing with its caption, labels on the canvas,
a click on a node bringing it and its edges forward (Esc or a click on empty canvas to leave),
the edge under the pointer named, pinned and selected nodes told apart, and the graph's scores."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, Qt

from core.graph import LOGIT
from core.view import CATEGORIES, nearest_segment
from desktop.graph_pane import DIM_ALPHA, FOCUS_EDGES, PINNED_PEN, SELECTED_PEN


def widget_point(pane, x: float, y: float):
    """Where the view point (x, y) is on the plot's viewport, in pixels."""
    return pane.plot.mapFromScene(pane.plot.getViewBox().mapViewToScene(QPointF(x, y)))


def loneliest_node(pane, candidates) -> int:
    """Of the drawn nodes ``candidates``, the one farthest (on screen) from any other drawn node."""
    d = pane.drawn
    pts = {int(n): widget_point(pane, float(x), float(y)) for n, x, y in zip(d.nodes, d.x, d.y)}
    def room(n):
        return min(np.hypot(pts[n].x() - p.x(), pts[n].y() - p.y()) for m, p in pts.items() if m != n)
    return max(candidates, key=room)


def click(qtbot, pane, x: float, y: float, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.mouseClick(pane.plot.viewport(), Qt.MouseButton.LeftButton, modifier, widget_point(pane, x, y))


def alphas(pane) -> dict[int, int]:
    """The fill alpha of each drawn node, by node id."""
    return {int(p.data()): p.brush().color().alpha() for p in pane.nodes.points()}


def test_the_drawing_is_capped_and_the_caption_says_how_much_is_drawn(workbench):
    w = workbench.graph()
    pane, v = w.graph_pane, w.state.view
    assert pane.max_nodes_spin.value() == v.max_nodes == 150 and pane.edges_spin.value() == v.edges_per_node == 6
    logits = {int(i) for i in np.flatnonzero(v.category == CATEGORIES.index("logit"))}
    cap = len(logits) + len(v.x_labels) + 4  # the logits and embeddings count: room for four more
    pane.max_nodes_spin.setValue(cap)  # the arrows / typing + Enter: one change
    pane.edges_spin.setValue(2)
    assert (v.max_nodes, v.edges_per_node) == (cap, 2)
    shown = {int(i) for i in pane.nodes.data["data"]}
    assert shown == set(v.visible_nodes().tolist()) and len(shown) <= cap and logits <= shown
    inner = {i for i in shown if CATEGORIES[v.category[i]] in ("feature", "error")}
    assert 0 < len(inner) <= 4
    edges = v.visible_edges()
    assert np.bincount(v.dst[edges], minlength=v.n_nodes).max() <= 2
    assert sum(item.path().elementCount() for item in pane.edge_items) // 2 == len(edges)
    assert pane.caption.text() == (f"Drawn: {len(shown)} of {len(v.pruned_nodes())} nodes, {len(edges):,} of "
                                   f"{len(v.pruned_edges()):,} edges")
    pane.max_nodes_spin.setValue(0)  # "all"
    pane.edges_spin.setValue(0)
    assert pane.max_nodes_spin.text() == "all" and v.max_nodes is None
    assert len(pane.nodes.data) == len(v.pruned_nodes())


def test_every_logit_and_the_most_influential_nodes_are_labelled_on_the_canvas(workbench):
    w = workbench.graph()
    pane, v = w.graph_pane, w.state.view
    g = v.source
    logits = [int(i) for i in g.nodes_of(LOGIT)]
    texts = pane.drawn_labels()
    for i in logits:
        token = g.meta["target_tokens"][str(i)]
        assert f"{token!r} p={g.activation[i]:.2f}" in texts
    # the logits line up left of the most probable, over the top row, their labels above them
    by_prob = sorted(logits, key=lambda i: -g.activation[i])
    assert [v.x[i] for i in by_prob] == sorted((v.x[i] for i in logits), reverse=True)
    tops = [t for t in pane.node_labels if t.isVisible() and t.toPlainText() in
            {f"{g.meta['target_tokens'][str(i)]!r} p={g.activation[i]:.2f}" for i in logits}]
    assert all(t.pos().y() > v.y[logits[0]] for t in tops)
    # labels do not overlap one another on screen
    boxes = [t.textItem.mapRectToScene(t.textItem.boundingRect()) for t in pane.node_labels if t.isVisible()]
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            assert not boxes[a].adjusted(1, 1, -1, -1).intersects(boxes[b].adjusted(1, 1, -1, -1))
    # your label replaces the default one
    features = [int(i) for i in pane.drawn.nodes if v.category[i] == CATEGORIES.index("feature")]
    top = max(features, key=lambda i: v.size[i])
    w.state.set_note(top, "subject mover")
    assert "subject mover" in pane.drawn_labels()


def test_a_click_on_a_node_focuses_it_esc_and_empty_canvas_restore_the_view(workbench):
    w = workbench.graph()
    pane, v, qtbot = w.graph_pane, w.state.view, workbench.qtbot
    d = pane.drawn
    assert pane.focus is None and set(alphas(pane).values()) == {255}
    linked = [int(n) for n in d.nodes if np.any(d.link_src == n) and np.any(d.link_dst == n)]
    node = loneliest_node(pane, linked)
    click(qtbot, pane, float(v.x[node]), float(v.y[node]))
    assert w.state.selected == (node,)
    # exactly the node's edges among the drawn nodes are brought forward (its strongest, each way)
    links = [(int(s), int(t), float(x)) for s, t, x in zip(d.link_src, d.link_dst, d.link_weight)]
    into = sorted((e for e in links if e[1] == node), key=lambda e: -abs(e[2]))[:FOCUS_EDGES]
    out = sorted((e for e in links if e[0] == node), key=lambda e: -abs(e[2]))[:FOCUS_EDGES]
    f = pane.focus
    assert {(int(d.link_src[i]), int(d.link_dst[i])) for i in f.incoming} == {(s, t) for s, t, _ in into}
    assert {(int(d.link_src[i]), int(d.link_dst[i])) for i in f.outgoing} == {(s, t) for s, t, _ in out}
    drawn_segments = sum(item.path().elementCount() for item in pane.focus_items.values() if item.isVisible()) // 2
    assert drawn_segments == len(into) + len(out)
    near = {node} | {s for s, _, _ in into} | {t for _, t, _ in out}
    assert {n for n, a in alphas(pane).items() if a == 255} == near  # every other node is dimmed
    assert {n for n, a in alphas(pane).items() if a == DIM_ALPHA} == set(d.nodes.tolist()) - near
    assert all(item.opacity() < 1 for item in pane.edge_items)
    # the selection is ringed dark; a pinned node has an amber outline
    assert pane.rings.points()[0].pen().color().name() == SELECTED_PEN[0]
    w.actions["graph.pin"].trigger()
    pen = {int(p.data()): p.pen() for p in pane.nodes.points()}[node]
    assert pen.color().name() == PINNED_PEN[0] and pen.widthF() == PINNED_PEN[1]
    # Esc leaves the focus
    pane.plot.setFocus()
    qtbot.keyClick(pane.plot, Qt.Key.Key_Escape)
    assert w.state.selected == () and pane.focus is None
    assert set(alphas(pane).values()) == {255} and all(item.opacity() == 1 for item in pane.edge_items)
    # ... and so does a click on empty canvas
    click(qtbot, pane, float(v.x[node]), float(v.y[node]))
    assert pane.focus is not None
    (x0, x1), (y0, y1) = pane.plot.getViewBox().viewRange()
    click(qtbot, pane, x0 + 0.02 * (x1 - x0), y0 + 0.02 * (y1 - y0))  # a corner with no node
    assert w.state.selected == () and pane.focus is None


def test_the_edge_under_the_pointer_is_named_with_its_weight(workbench):
    w = workbench.graph()
    pane, v, qtbot = w.graph_pane, w.state.view, workbench.qtbot
    d = pane.drawn
    edges = pane._edges_shown
    a = np.searchsorted(d.nodes, d.src[edges])
    b = np.searchsorted(d.nodes, d.dst[edges])
    p0 = [widget_point(pane, float(d.x[i]), float(d.y[i])) for i in a]
    p1 = [widget_point(pane, float(d.x[i]), float(d.y[i])) for i in b]
    x0, y0 = np.array([p.x() for p in p0]), np.array([p.y() for p in p0])
    x1, y1 = np.array([p.x() for p in p1]), np.array([p.y() for p in p1])
    node_px = np.array([[widget_point(pane, float(x), float(y)).x(), widget_point(pane, float(x), float(y)).y()]
                        for x, y in zip(d.x, d.y)])

    def clearance(k):  # how far the edge's midpoint is from every other edge and every node
        mx, my = (x0[k] + x1[k]) / 2, (y0[k] + y1[k]) / 2
        others = np.arange(len(edges)) != k
        _, other = nearest_segment(mx, my, x0[others], y0[others], x1[others], y1[others])
        return min(other, np.hypot(node_px[:, 0] - mx, node_px[:, 1] - my).min() - 12)

    k = max(range(len(edges)), key=clearance)
    assert clearance(k) > 0
    mid = QPointF((x0[k] + x1[k]) / 2, (y0[k] + y1[k]) / 2).toPoint()
    qtbot.mouseMove(pane.plot.viewport(), mid)
    s, t, weight = int(d.src[edges[k]]), int(d.dst[edges[k]]), float(d.weight[edges[k]])
    expected = f"Edge {v.labels[s]} → {v.labels[t]}: weight {weight:+.4g}"
    qtbot.waitUntil(lambda: pane.caption.text() == expected, timeout=2_000)
    assert pane.plot.getViewBox().toolTip() == expected
    qtbot.wait(20)  # the scene takes at most one pointer move per 10 ms
    (vx0, vx1), (vy0, vy1) = pane.plot.getViewBox().viewRange()
    qtbot.mouseMove(pane.plot.viewport(), widget_point(pane, vx0 + 0.02 * (vx1 - vx0), vy0 + 0.02 * (vy1 - vy0)))
    qtbot.waitUntil(lambda: pane.caption.text().startswith("Drawn:"), timeout=2_000)


def test_the_scores_line_shows_the_graphs_scores(workbench):
    w = workbench.graph()
    stats = w.state.view.source.meta["stats"]
    text = w.graph_pane.scores_label.text()
    assert w.graph_pane.scores_label.isVisible()
    for key in ("replacement_score", "completeness_score", "pruned_replacement_score", "pruned_completeness_score"):
        assert f"{stats[key]:.3f}" in text
    w.graph_pane.slider.setValue(50)  # another threshold: the pruned graph's scores are recomputed
    assert "(pruned at 0.50)" in w.graph_pane.scores_label.text()


def test_a_circuit_shows_its_faithfulness_and_is_not_capped(workbench):
    w = workbench.circuit("prompt")
    pane, res = w.graph_pane, w.state.view.source
    assert not pane.max_nodes_spin.isEnabled() and not pane.edges_spin.isEnabled()
    text = pane.scores_label.text()
    assert f"Circuit faithfulness {res.circuit_faithfulness:.3f}" in text
    if res.curve is not None:
        assert f"CPR {res.curve.cpr:.3f}" in text and f"CMD {res.curve.cmd:.3f}" in text
    assert pane.caption.text().startswith(f"{len(w.state.view.visible_nodes())} nodes")


def test_hovering_a_node_focuses_it_until_the_pointer_leaves(workbench):
    w = workbench.graph()
    pane, v, qtbot = w.graph_pane, w.state.view, workbench.qtbot
    d = pane.drawn
    node = loneliest_node(pane, [int(n) for n in d.nodes if np.any(d.link_src == n)])
    qtbot.mouseMove(pane.plot.viewport(), widget_point(pane, float(v.x[node]), float(v.y[node])))
    qtbot.waitUntil(lambda: pane.focus is not None, timeout=2_000)
    assert pane.focus.nodes.tolist() == [node] and w.state.selected == ()  # hovering selects nothing
    assert DIM_ALPHA in alphas(pane).values()
    qtbot.wait(20)  # the scene takes at most one pointer move per 10 ms
    (x0, x1), (y0, y1) = pane.plot.getViewBox().viewRange()
    qtbot.mouseMove(pane.plot.viewport(), widget_point(pane, x0 + 0.02 * (x1 - x0), y0 + 0.02 * (y1 - y0)))
    qtbot.waitUntil(lambda: pane.focus is None, timeout=2_000)
    assert set(alphas(pane).values()) == {255}

"""What the graph pane draws, decided in core: the drawing cap (nodes drawn, incoming edges per
node), canvas labels, the focus of a selected node, label placement, edge picking and the scores
line. Hand-built graphs whose influence is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from test_workbench_state import toy_graph

from core.circuits import ComponentGraph
from core.circuits.discover import CircuitResult
from core.graph import EMBEDDING, ERROR, FEATURE, LOGIT, Graph, graph_scores
from core.selection import THRESHOLD, WorkbenchState
from core.view import from_attribution, from_circuit, nearest_segment, place_labels


NAMES = ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4", "E", "E2", "T"]


def star_graph() -> Graph:
    """One logit T (p = 1); layer 2: A1..A4 each with one edge into T, |w| 4, 3, 2, 1 (influence
    0.4, 0.3, 0.2, 0.1); layer 1: B1..B4 each with one edge into A1, |w| 4, 3, 2, 1 (influence
    0.4 · 0.4 = 0.16, 0.12, 0.08, 0.04); an embedding E feeding every B and one E2 feeding A2..A4
    (weight 1: a feature without inputs would be pruned).

    Influence order of the inner nodes: A1 .4, A2 .3, A3 .2, B1 .16, B2 .12, A4 .1, B3 .08, B4 .04;
    of the embeddings: E2 .6, E .4."""
    names = NAMES
    kind = np.array([FEATURE] * 8 + [EMBEDDING, EMBEDDING, LOGIT], np.int8)
    layer = np.array([2] * 4 + [1] * 4 + [-1, -1, 3], np.int32)
    pos = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1], np.int32)
    at = {n: i for i, n in enumerate(names)}
    edges = [("A1", "T", 4.0), ("A2", "T", -3.0), ("A3", "T", 2.0), ("A4", "T", 1.0),
             ("B1", "A1", 4.0), ("B2", "A1", 3.0), ("B3", "A1", -2.0), ("B4", "A1", 1.0)]
    edges += [("E", b, 1.0) for b in ("B1", "B2", "B3", "B4")] + [("E2", a, 1.0) for a in ("A2", "A3", "A4")]
    src = np.array([at[s] for s, _, _ in edges], np.int32)
    dst = np.array([at[d] for _, d, _ in edges], np.int32)
    w = np.array([x for _, _, x in edges], np.float32)
    n = len(names)
    g = Graph(kind=kind, layer=layer, pos=pos, index=np.arange(n, dtype=np.int64) + 100,
              activation=np.where(kind == LOGIT, 0.9, 1.0).astype(np.float32),
              value=np.where((kind == FEATURE) | (kind == LOGIT), 1.0, np.nan).astype(np.float32),
              src=src, dst=dst, weight=w, logit_weight=np.where(kind == LOGIT, 1.0, 0.0).astype(np.float32),
              tokens=["a", " b"], token_ids=[1, 2], n_layers=3,
              meta={"basis": "neurons", "settings": {"node_threshold": 1.0, "edge_threshold": 1.0},
                    "target_tokens": {str(at["T"]): " Paris"}})
    g.validate()
    return g


def ids(*names: str) -> set[int]:
    return {NAMES.index(n) for n in names}


def drawn(v) -> set[int]:
    return set(v.visible_nodes().tolist())


def test_the_star_graph_has_the_influence_worked_out_by_hand():
    v = from_attribution(star_graph())
    expected = [0.4, 0.3, 0.2, 0.1, 0.16, 0.12, 0.08, 0.04]
    assert v._influence[:10] == pytest.approx(expected + [0.4, 0.6])
    assert len(v.pruned_nodes()) == 11 and len(v.pruned_edges()) == 15  # threshold 1: everything


def test_the_cap_draws_the_most_influential_nodes_and_always_the_logits():
    v = from_attribution(star_graph())
    v.set_cap(8, None)  # T, E and E2 count: five inner nodes, the five most influential
    assert drawn(v) == ids("A1", "A2", "A3", "B1", "B2", "E", "E2", "T")
    v.set_cap(6, None)  # three inner nodes; E is drawn only while an edge drawn leaves it
    assert drawn(v) == ids("A1", "A2", "A3", "E2", "T")
    for cap in range(1, 12):
        v.set_cap(cap, None)
        assert len(drawn(v)) <= max(cap, 1) and ids("T") <= drawn(v)
        edges = v.visible_edges()
        assert set(v.src[edges]) | set(v.dst[edges]) <= drawn(v)
    v.set_cap(None, None)
    assert drawn(v) == set(range(11)) and len(v.visible_edges()) == 15


def test_pinned_nodes_are_always_drawn_and_count_against_the_cap():
    v = from_attribution(star_graph())
    v.pinned = ids("B4")  # the least influential node
    v.set_cap(6, None)  # T, B4, E and E2 leave room for two: A1 and A2
    assert drawn(v) == ids("T", "B4", "A1", "A2", "E", "E2")
    assert {(int(s), int(d)) for s, d in zip(v.src[v.visible_edges()], v.dst[v.visible_edges()])} == {
        (NAMES.index(s), NAMES.index(d)) for s, d in (("A1", "T"), ("A2", "T"), ("B4", "A1"), ("E", "B4"),
                                                      ("E2", "A2"))}


def test_each_node_keeps_its_strongest_incoming_edges_and_a_way_up():
    v = from_attribution(star_graph())
    v.set_cap(None, 2)
    edges = v.visible_edges()
    kept = {(NAMES[s], NAMES[d]) for s, d in zip(v.src[edges], v.dst[edges])}
    # T keeps A1 (4) and A2 (-3), A1 keeps B1 (4) and B2 (3); A3, A4, B3, B4 would dangle: not drawn
    assert kept == {("A1", "T"), ("A2", "T"), ("B1", "A1"), ("B2", "A1"), ("E", "B1"), ("E", "B2"), ("E2", "A2")}
    assert drawn(v) == ids("A1", "A2", "B1", "B2", "E", "E2", "T")


def test_the_cap_holds_on_a_random_graph():
    for seed in range(4):
        g = toy_graph(seed, L=4, P=5, per_cell=4)
        v = from_attribution(g, threshold=1.0)
        logits = set(g.nodes_of(LOGIT).tolist())
        pinned = int(np.argmin(v._influence + np.where(g.kind == FEATURE, 0, 9)))  # a weak feature
        v.pinned = {pinned}
        for n_cap, k in ((10, 2), (20, 3), (40, 6), (None, 1)):
            v.set_cap(n_cap, k)
            nodes, edges = drawn(v), v.visible_edges()
            assert n_cap is None or len(nodes) <= n_cap
            assert logits | {pinned} <= nodes
            assert np.bincount(v.dst[edges], minlength=v.n_nodes).max() <= k
            assert set(v.src[edges]) | set(v.dst[edges]) <= nodes
            assert set(edges) <= set(v.pruned_edges())
            inner = [i for i in nodes if g.kind[i] in (FEATURE, ERROR) and i != pinned]
            assert all(np.any(v.src[edges] == i) for i in inner)  # nothing dangles
            emb = [i for i in nodes if g.kind[i] == EMBEDDING]
            assert all(np.any(v.src[edges] == i) for i in emb)  # embeddings drawn only when connected


def test_a_circuit_is_not_capped():
    cg = ComponentGraph(2, 2)
    scores = np.where(cg.edge_mask, np.random.default_rng(0).standard_normal(cg.edge_mask.shape), 0).astype(np.float32)
    result = CircuitResult(cg, scores, cg.edge_mask.copy(), 0.9, None, 1.0, 0.0, 0.0, {}, [], {})
    v = from_circuit(result, threshold=1.0)
    v.set_cap(2, 1)
    assert not v.capped
    assert np.array_equal(v.visible_nodes(), v.pruned_nodes()) and np.array_equal(v.visible_edges(), v.pruned_edges())


def test_the_state_keeps_the_cap_for_the_next_analysis():
    state = WorkbenchState()
    seen = []
    state.subscribe(lambda c: seen.append(c.what))
    state.show(from_attribution(star_graph()))
    assert state.set_cap(7, 2, source="graph") and seen[-1] == THRESHOLD
    assert (state.view.max_nodes, state.view.edges_per_node) == (7, 2)
    assert state.set_cap(7, 2) is False  # no change, no event
    assert ids("B1") <= drawn(state.view)
    state.select(list(ids("B1")))
    state.set_cap(5, 2)  # room for A1 and A2 only: B1 is no longer drawn, no longer selected
    assert state.selected == ()
    state.show(from_attribution(star_graph()))
    assert (state.view.max_nodes, state.view.edges_per_node) == (5, 2)


# -- labels, focus, scores ----------------------------------------------------------------------------
def test_canvas_labels_name_every_logit_the_top_nodes_and_your_labels():
    v = from_attribution(star_graph())
    d = v.drawing()
    labels = v.canvas_labels(d, {NAMES.index("B4"): "my neuron"}, k=3)
    assert labels[0] == (NAMES.index("T"), "' Paris' p=0.90", "logit")
    assert labels[1][0] == NAMES.index("E2") and {n for n, _, _ in labels[2:4]} == ids("A1", "E")  # .6, .4, .4
    assert (NAMES.index("A1"), "L2 N100 @1 ' b'", "node") in labels  # layer, neuron, position, token
    assert (NAMES.index("B4"), "my neuron", "node") in labels  # a labelled node is always named
    focus = d.focus(ids("B1"))
    roles = {NAMES[n]: role for n, _, role in v.canvas_labels(d, k=2, focus=focus)}
    assert roles == {"T": "logit", "B1": "focus", "A1": "neighbour", "E": "neighbour", "E2": "node"}


def test_focus_is_the_nodes_edges_in_and_out_and_their_other_ends():
    v = from_attribution(star_graph())
    v.set_cap(None, 1)  # the drawing keeps one edge into A1, the focus shows all of A1's links
    d = v.drawing()
    a1 = NAMES.index("A1")
    f = d.focus([a1])
    pairs = lambda idx: {(NAMES[d.link_src[i]], NAMES[d.link_dst[i]]) for i in idx}  # noqa: E731
    assert pairs(f.outgoing) == {("A1", "T")}
    assert pairs(f.incoming) == {("B1", "A1")}  # B2..B4 dangle under a cap of one edge: not drawn
    v.set_cap(None, None)
    d = v.drawing()
    f = d.focus([a1])
    assert pairs(f.incoming) == {("B1", "A1"), ("B2", "A1"), ("B3", "A1"), ("B4", "A1")}
    assert set(f.neighbours.tolist()) == ids("A1", "B1", "B2", "B3", "B4", "T")
    strongest = d.focus([a1], limit=2)
    assert pairs(strongest.incoming) == {("B1", "A1"), ("B2", "A1")}
    assert len(d.focus([]).nodes) == 0


def test_scores_line_reads_the_runs_stats_and_recomputes_at_another_threshold():
    g = star_graph()
    g.meta["stats"] = {"replacement_score": 0.612, "completeness_score": 0.871,
                       "pruned_replacement_score": 0.555, "pruned_completeness_score": 0.777}
    v = from_attribution(g)
    assert dict(v.scores()) == {"replacement": 0.612, "completeness": 0.871,
                                "pruned replacement": 0.555, "pruned completeness": 0.777}
    assert "Replacement 0.612 · completeness 0.871" in v.scores_text() and "0.555 · 0.777" in v.scores_text()
    v.set_threshold(0.5)
    expected = graph_scores(g, v.node_mask, v.edge_mask)
    assert dict(v.scores())["pruned replacement"] == pytest.approx(expected.replacement)
    assert f"{expected.completeness:.3f} (pruned at 0.50)" in v.scores_text()


# -- geometry -----------------------------------------------------------------------------------------
def test_labels_are_placed_without_overlap_inside_the_bounds():
    x, y = np.array([0.0, 10.0, 20.0]), np.array([50.0, 50.0, 50.0])
    w, h = np.full(3, 30.0), np.full(3, 10.0)
    above = [[(0, -10), (0, -20), (0, -30)]] * 3
    assert place_labels(x, y, w, h, above, np.array([True, True, True])) == [0, 1, 2]
    # only two rows fit in the bounds: the third optional label is left out, a required one overlaps
    bounds = (0, 25, 100, 100)
    assert place_labels(x, y, w, h, above, np.array([True, True, False]), bounds) == [0, 1, -1]
    assert place_labels(x, y, w, h, above, np.array([True, True, True]), bounds) == [0, 1, 0]


def test_nearest_segment_measures_to_the_segment_not_the_line():
    x0, y0, x1, y1 = np.array([0.0, 0.0]), np.array([0.0, 10.0]), np.array([10.0, 10.0]), np.array([0.0, 10.0])
    assert nearest_segment(5.0, 2.0, x0, y0, x1, y1) == (0, 2.0)
    assert nearest_segment(5.0, 9.0, x0, y0, x1, y1) == (1, 1.0)
    i, dist = nearest_segment(13.0, 4.0, x0, y0, x1, y1)  # past the end: distance to the end point
    assert i == 0 and dist == pytest.approx(5.0)
    assert nearest_segment(0.0, 0.0, x0[:0], y0[:0], x1[:0], y1[:0]) == (-1, float("inf"))


def test_an_unlikely_targets_probability_is_never_printed_as_zero():
    from core.view import probability_text

    assert probability_text(0.41) == "0.41" and probability_text(0.005) == "0.01"
    assert probability_text(0.0042) == "4e-03" and probability_text(3.2e-7) == "3e-07"
    assert probability_text(0.0) == "0"

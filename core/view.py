"""Graphs as the workbench draws them: node positions, categories, sizes and a live threshold.

Numpy only. A ``GraphView`` is built from an attribution graph (``from_attribution``) or a
component circuit (``from_circuit``); both give the same drawable shape, so one pane draws both:

* attribution graph: x = token position (nodes of one (layer, position) cell spread across the
  column, most influential in the middle), y = layer; embeddings at the bottom, logits on top;
* component circuit: x = head index (the MLP in the last column), y = layer; the input at the
  bottom, the logits on top.

``set_threshold`` re-prunes: for attribution graphs circuit-tracer's node threshold (nodes that
cover that fraction of the influence on the logits); for circuits, the top edges that cover that
fraction of the total |score|, dangling nodes pruned. Pinned nodes stay visible at any threshold.

An attribution graph's pruned graph still holds hundreds of nodes and tens of thousands of edges,
so what is *drawn* is capped as well (``set_cap``, ``cap_drawn``): at most ``max_nodes`` nodes
(the most influential ones that connect to the logits, plus every logit, pinned node and the
embeddings that still connect) and at most ``edges_per_node`` strongest incoming edges per drawn
node. ``visible_nodes`` / ``visible_edges`` are what is drawn; ``pruned_nodes`` /
``pruned_edges`` the pruned graph behind it. Core decides what is visible; a pane only draws it
(``drawing``, ``canvas_labels``, ``Drawing.focus``, ``place_labels``, ``nearest_segment``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from core.graph import (
    EMBEDDING,
    ERROR,
    FEATURE,
    LOGIT,
    Graph,
    compute_node_influence,
    find_threshold,
    graph_scores,
    prune,
)

CATEGORIES = ("embedding", "feature", "error", "logit", "input", "head", "mlp")
CATEGORY_COLOURS = {  # node colour by category: the graph pane and the report's figure
    "embedding": "#7f8c8d", "feature": "#3b78c2", "error": "#c0392b", "logit": "#27ae60",
    "input": "#7f8c8d", "head": "#8e44ad", "mlp": "#e67e22",
}
GROUP_COLOUR = "#0f766e"  # supernodes: teal squares
POSITIVE, NEGATIVE = (37, 99, 235), (220, 38, 38)  # edge colours by sign (RGB)
DEFAULT_MAX_NODES = 150  # attribution graphs: nodes drawn at most (None: every pruned node)
DEFAULT_EDGES_PER_NODE = 6  # strongest incoming edges drawn per node (None: every pruned edge)
LABELLED_NODES = 10  # besides the logits, the most influential drawn nodes labelled on the canvas


@dataclass
class GraphView:
    kind: str  # "attribution" | "circuit"
    x: np.ndarray  # [N] float
    y: np.ndarray  # [N] float
    category: np.ndarray  # [N] int8, index into CATEGORIES
    size: np.ndarray  # [N] float in [0, 1]: influence / |node score| relative to the largest
    layer: np.ndarray  # [N] int: heatmap row (attribution: -1 embeddings, L logits)
    column: np.ndarray  # [N] int: heatmap column (attribution: token position; circuit: head, H = MLP)
    labels: list[str]
    src: np.ndarray  # [E] int
    dst: np.ndarray  # [E] int
    weight: np.ndarray  # [E] float (signed)
    x_labels: list[str]  # tick labels along x (tokens, or h0…, MLP)
    n_layers: int
    threshold: float
    node_mask: np.ndarray = None  # [N] bool: visible at the current threshold
    edge_mask: np.ndarray = None  # [E] bool
    pinned: set[int] = field(default_factory=set)
    values: np.ndarray | None = None  # [N] activation (attribution) or node score (circuit)
    source: object = None  # the Graph or CircuitResult it came from
    max_nodes: int | None = DEFAULT_MAX_NODES  # the drawing cap (attribution graphs only; None: no cap)
    edges_per_node: int | None = DEFAULT_EDGES_PER_NODE
    _cells: dict = field(default_factory=dict, repr=False)
    _influence: np.ndarray | None = field(default=None, repr=False)  # the full graph's, kept across thresholds
    _shown: tuple | None = field(default=None, repr=False)  # (pinned, pruned mask, drawn nodes, drawn edges)
    _scores: dict = field(default_factory=dict, repr=False)  # pruned graph scores by threshold

    @property
    def capped(self) -> bool:
        """Whether the drawing cap applies (attribution graphs; a circuit is small enough)."""
        return self.kind == "attribution"

    @property
    def n_nodes(self) -> int:
        return len(self.x)

    @property
    def n_edges(self) -> int:
        return len(self.src)

    # -- thresholds ---------------------------------------------------------------------------------
    def set_threshold(self, value: float) -> None:
        self.threshold = float(value)
        if self.kind == "attribution":
            g: Graph = self.source
            edge_t = float(g.meta.get("settings", {}).get("edge_threshold", 0.98))
            pr = prune(g, node_threshold=self.threshold, edge_threshold=edge_t, influence=self._influence)
            self.node_mask, self.edge_mask, self._influence = pr.node_mask, pr.edge_mask, pr.node_influence
        else:
            self.node_mask, self.edge_mask = _circuit_masks(self, self.threshold)
        self._shown = None

    def set_cap(self, max_nodes: int | None, edges_per_node: int | None) -> None:
        """Draw at most ``max_nodes`` nodes and ``edges_per_node`` incoming edges per node (None:
        no limit). Attribution graphs only; a circuit ignores it."""
        for name, v in (("max_nodes", max_nodes), ("edges_per_node", edges_per_node)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be at least 1 (got {v})")
        self.max_nodes = None if max_nodes is None else int(max_nodes)
        self.edges_per_node = None if edges_per_node is None else int(edges_per_node)
        self._shown = None

    def pruned_nodes(self) -> np.ndarray:
        """The pruned graph's nodes (and the pinned ones), before the drawing cap."""
        return np.flatnonzero(self._pruned_mask())

    def pruned_edges(self) -> np.ndarray:
        mask = self._pruned_mask()
        return np.flatnonzero(self.edge_mask & mask[self.src] & mask[self.dst])

    def _pruned_mask(self) -> np.ndarray:
        mask = self.node_mask.copy()
        if self.pinned:
            mask[list(self.pinned)] = True
        return mask

    def visible_nodes(self) -> np.ndarray:
        """The nodes drawn: the pruned graph (and pinned nodes), capped for attribution graphs."""
        return np.flatnonzero(self._drawn_masks()[0])

    def visible_edges(self) -> np.ndarray:
        return np.flatnonzero(self._drawn_masks()[1])

    def _drawn_masks(self) -> tuple[np.ndarray, np.ndarray]:
        pinned = frozenset(self.pinned)
        base = self._pruned_mask()
        if self._shown is not None and self._shown[0] == pinned and np.array_equal(self._shown[1], base):
            return self._shown[2], self._shown[3]
        if not self.capped or (self.max_nodes is None and self.edges_per_node is None):
            nodes, edges = base, self.edge_mask & base[self.src] & base[self.dst]
        else:
            anchors = np.zeros(self.n_nodes, bool)
            anchors[self.category == CATEGORIES.index("logit")] = True
            if pinned:
                anchors[list(pinned)] = True
            sources = base & (self.category == CATEGORIES.index("embedding")) & ~anchors
            influence = self._influence if self._influence is not None else self.size
            nodes, edges = cap_drawn(self.src, self.dst, self.weight, self.edge_mask, base, influence, anchors & base,
                                     sources, self.max_nodes, self.edges_per_node)
        self._shown = (pinned, base, nodes, edges)
        return nodes, edges

    # -- cells (heatmap <-> graph) -------------------------------------------------------------------
    def cell_of(self, node: int) -> tuple[int, int]:
        return int(self.layer[node]), int(self.column[node])

    def nodes_at(self, layer: int, column: int) -> list[int]:
        """Visible nodes in a heatmap cell, most influential first."""
        if not self._cells:
            for i in np.argsort(-self.size, kind="stable"):
                self._cells.setdefault((int(self.layer[i]), int(self.column[i])), []).append(int(i))
        vis = set(self.visible_nodes().tolist())
        return [i for i in self._cells.get((layer, column), []) if i in vis]

    # -- edges of a node --------------------------------------------------------------------------------
    def incoming(self, node: int, k: int = 10, visible_only: bool = False) -> list[tuple[int, float]]:
        """The k strongest edges into ``node``: (source node, weight)."""
        return self._strongest(self.dst == node, self.src, k, visible_only)

    def outgoing(self, node: int, k: int = 10, visible_only: bool = False) -> list[tuple[int, float]]:
        """The k strongest edges out of ``node``: (destination node, weight)."""
        return self._strongest(self.src == node, self.dst, k, visible_only)

    def _strongest(self, sel: np.ndarray, other_end: np.ndarray, k: int, visible_only: bool) -> list[tuple[int, float]]:
        if visible_only:
            sel &= self.edge_mask
        idx = np.flatnonzero(sel)
        idx = idx[np.argsort(-np.abs(self.weight[idx]), kind="stable")[:k]]
        return [(int(other_end[i]), float(self.weight[i])) for i in idx]

    # -- what the pane draws -------------------------------------------------------------------------
    def drawing(self, groups=(), only=None) -> "Drawing":
        """The visible graph with each group collapsed into one supernode.

        A supernode stands at its members' centroid, is named by its first member, and carries
        the summed weight of its members' edges to each other drawn node (edges inside a group
        vanish). ``only``: a set of nodes (the pinned subgraph) drawn with every edge among them,
        whatever the threshold."""
        n = self.n_nodes
        if only is not None:
            members = np.zeros(n, bool)
            members[list(only)] = True
            nodes = np.flatnonzero(members)
            edges = links = np.flatnonzero(members[self.src] & members[self.dst])
        else:
            nodes, edges = self.visible_nodes(), self.visible_edges()
            drawn = np.zeros(n, bool)
            drawn[nodes] = True
            # every pruned edge among the drawn nodes: a focused node shows all of its own
            links = np.flatnonzero(self.edge_mask & drawn[self.src] & drawn[self.dst]) if self.capped else edges
        rep = np.arange(n)
        x, y, size = self.x.astype(float).copy(), self.y.astype(float).copy(), self.size.astype(float).copy()
        names: dict[int, str] = {}
        for g in groups:
            idx = np.asarray(sorted(g.nodes), dtype=int)
            head = int(idx[0])
            rep[idx] = head
            x[head], y[head] = self.x[idx].mean(), self.y[idx].mean()
            size[head] = min(1.0, float(self.size[idx].sum()))
            names[head] = g.label
        drawn = np.unique(rep[nodes])

        def collapse(edges):
            s, d = rep[self.src[edges]], rep[self.dst[edges]]
            keep = (s != d) & np.isin(s, drawn) & np.isin(d, drawn)
            pair, inverse = np.unique(s[keep] * n + d[keep], return_inverse=True)
            weight = np.bincount(inverse.ravel(), weights=self.weight[edges][keep], minlength=len(pair))
            return (pair // n).astype(int), (pair % n).astype(int), weight

        src, dst, weight = collapse(edges)
        link_src, link_dst, link_weight = (src, dst, weight) if links is edges else collapse(links)
        return Drawing(drawn, x[drawn], y[drawn], size[drawn], self.category[drawn],
                       np.array([int(i) in names for i in drawn], bool), names, src, dst, weight, rep,
                       link_src, link_dst, link_weight)

    def find(self, text: str, atlas=None) -> list[int]:
        """Nodes whose label contains ``text`` (case-insensitive), visible ones first; with an
        ``atlas`` (``core.atlas.store.Atlas``), also the feature nodes whose atlas label or example
        text contains it."""
        text = text.strip().lower()
        if not text:
            return []
        hits = {i for i, lab in enumerate(self.labels) if text in lab.lower()}
        if atlas is not None:
            nodes_of: dict[tuple[int, int], list[int]] = {}
            for i in self.feature_nodes():
                nodes_of.setdefault(self.feature_of(i), []).append(i)
            for f in atlas.search(text, nodes_of):
                hits.update(nodes_of[f])
        vis = self.node_mask
        return sorted(hits, key=lambda i: (not vis[i], -self.size[i], i))

    # -- features and the atlas that describes them ------------------------------------------------------
    def feature_nodes(self) -> list[int]:
        """An attribution graph's feature nodes (neurons or transcoder features)."""
        g = self.source
        if self.kind != "attribution" or not isinstance(g, Graph):
            return []
        return np.flatnonzero(g.kind == FEATURE).tolist()

    def feature_of(self, node: int) -> tuple[int, int] | None:
        """(layer, index) of a feature node of an attribution graph (None for any other node)."""
        g = self.source
        if self.kind != "attribution" or not isinstance(g, Graph) or int(g.kind[node]) != FEATURE:
            return None
        return int(g.layer[node]), int(g.index[node])

    def feature_sign(self, node: int) -> int:
        """-1 where the node's activation on this prompt is negative, else 1 (the side of a signed
        neuron that its atlas label and examples describe)."""
        return -1 if self.values is not None and float(self.values[node]) < 0 else 1

    def atlas_label(self, node: int, atlas) -> str:
        """The atlas's automatic label of a feature node ("" without an atlas or a label)."""
        f = self.feature_of(node)
        if atlas is None or f is None:
            return ""
        return atlas.label(*f, self.feature_sign(node))

    def atlas_name(self, node: int, atlas) -> str:
        """A feature node's name on the canvas from its atlas label, e.g. ``L12/N345: Paris · France``
        ("" where the atlas has no label for it)."""
        label = self.atlas_label(node, atlas)
        if not label:
            return ""
        layer, index = self.feature_of(node)
        return f"L{layer}/{self.source.feature_unit}{index}: {label}"

    def node_title(self, node: int, notes: dict[int, str] | None = None, atlas=None) -> str:
        """A node's first tooltip line: its label, then the user's label in quotes, or else its
        atlas label (the user's own label always wins)."""
        note = (notes or {}).get(node)
        if note:
            return f"{self.labels[node]}  “{note}”"
        label = self.atlas_label(node, atlas)
        return f"{self.labels[node]}  — atlas: {label}" if label else self.labels[node]

    # -- canvas labels and scores ----------------------------------------------------------------------
    def short_label(self, node: int) -> str:
        """A node's label on the canvas: a logit's token and probability (``' Paris' p=0.41``),
        else its label (``L12 N345 @5 ' France'``, ``a3.h1``)."""
        g = self.source
        if self.kind == "attribution" and CATEGORIES[self.category[node]] == "logit" and isinstance(g, Graph):
            token = g.meta.get("target_tokens", {}).get(str(node))
            if token is not None:
                return f"{token!r} p={probability_text(float(g.activation[node]))}"
        return self.labels[node]

    def canvas_labels(self, d: "Drawing", notes: dict[int, str] | None = None, k: int = LABELLED_NODES,
                      focus: "Focus | None" = None, atlas=None) -> list[tuple[int, str, str]]:
        """The labels drawn on the canvas, most important first, as (node, text, role): every drawn
        logit (role "logit", most probable first); with a ``focus``, the focused nodes ("focus") and their
        ``k`` most strongly linked neighbours ("neighbour"); then the ``k`` most influential other
        drawn nodes and every drawn node the user labelled ("node"). The user's label replaces the
        default text; else a feature's ``atlas`` label does (``atlas_name``). Supernodes carry their
        own label and are left out."""
        notes = notes or {}
        single = d.nodes[~d.is_group]
        logit = CATEGORIES.index("logit")
        logits = single[self.category[single] == logit]
        logits = logits[np.argsort(-self.size[logits], kind="stable")]  # a logit's size: its probability
        out: list[tuple[int, str, str]] = []
        seen: set[int] = set()

        def add(nodes, role):
            for i in nodes:
                i = int(i)
                if i not in seen and i in single_set:
                    seen.add(i)
                    out.append((i, notes.get(i) or self.atlas_name(i, atlas) or self.short_label(i), role))

        single_set = set(single.tolist())
        add(logits, "logit")
        if focus is not None and len(focus.nodes):
            add(focus.nodes, "focus")
            links = np.concatenate([focus.incoming, focus.outgoing])
            ends = np.concatenate([d.link_src[focus.incoming], d.link_dst[focus.outgoing]])
            strongest = ends[np.argsort(-np.abs(d.link_weight[links]), kind="stable")]
            add([i for i in dict.fromkeys(strongest.tolist()) if i in single_set and i not in seen][:k], "neighbour")
        others = single[self.category[single] != logit]
        add(others[np.argsort(-self.size[others], kind="stable")[:k]], "node")
        add([i for i in others if int(i) in notes], "node")
        return out

    def scores(self) -> list[tuple[str, float | None]]:
        """The graph's scores as (name, value), as the report states them: an attribution graph's
        replacement and completeness scores of the full graph and of the pruned graph at the
        current threshold (the run's stats at its own threshold, else computed); a circuit's
        faithfulness, CPR and CMD."""
        src = self.source
        if self.kind == "attribution" and isinstance(src, Graph):
            stats = src.meta.get("stats") or {}
            full = (stats.get("replacement_score"), stats.get("completeness_score"))
            if None in full:
                full = tuple(graph_scores(src))
            run_threshold = float(src.meta.get("settings", {}).get("node_threshold", 0.8))
            pruned = (stats.get("pruned_replacement_score"), stats.get("pruned_completeness_score"))
            if abs(self.threshold - run_threshold) > 1e-9 or None in pruned:
                if self.threshold not in self._scores:
                    self._scores[self.threshold] = tuple(graph_scores(src, self.node_mask, self.edge_mask))
                pruned = self._scores[self.threshold]
            return [("replacement", _num(full[0])), ("completeness", _num(full[1])),
                    ("pruned replacement", _num(pruned[0])), ("pruned completeness", _num(pruned[1]))]
        if self.kind == "circuit" and src is not None:
            curve = getattr(src, "curve", None)
            return [("faithfulness", _num(getattr(src, "circuit_faithfulness", None))),
                    ("CPR", _num(curve.cpr) if curve else None), ("CMD", _num(curve.cmd) if curve else None)]
        return []

    def scores_text(self) -> str:
        """The scores in one line, for a caption above the graph ("" when there are none)."""
        s = dict(self.scores())
        f = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        if self.kind == "attribution" and s:
            return (f"Replacement {f(s['replacement'])} · completeness {f(s['completeness'])} (full graph); "
                    f"{f(s['pruned replacement'])} · {f(s['pruned completeness'])} (pruned at {self.threshold:.2f})")
        if self.kind == "circuit" and s:
            return f"Circuit faithfulness {f(s['faithfulness'])} · CPR {f(s['CPR'])} · CMD {f(s['CMD'])}"
        return ""


def _num(x) -> float | None:
    return None if x is None else float(x)


def cap_drawn(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, edge_mask: np.ndarray, node_mask: np.ndarray,
              influence: np.ndarray, anchors: np.ndarray, sources: np.ndarray, max_nodes: int | None,
              edges_per_node: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The nodes and edges drawn from a pruned graph (``node_mask``, ``edge_mask``), as masks.

    ``anchors`` (logits, pinned nodes) are always drawn; ``sources`` (token embeddings) are drawn
    when an edge drawn leaves them. The other nodes are taken by influence, most influential first,
    each once one of its pruned edges leads to a node already taken (so every node drawn connects
    up towards the logits), until ``max_nodes`` nodes (anchors and every source counted) are drawn.
    Each drawn node keeps at most ``edges_per_node`` incoming edges from drawn nodes (see
    ``_cap_incoming``: first one way up for every node, then the strongest); a node left with no
    outgoing edge is dropped and its place refilled, until none dangles. None: no limit."""
    n = len(node_mask)
    live = np.flatnonzero(edge_mask & node_mask[src] & node_mask[dst])
    e_src, e_dst, e_abs = src[live], dst[live], np.abs(weight[live])
    by_dst = np.argsort(e_dst, kind="stable")
    starts = np.searchsorted(e_dst[by_dst], np.arange(n + 1))
    inner = node_mask & ~anchors & ~sources
    budget = None if max_nodes is None else max(0, int(max_nodes) - int(anchors.sum()) - int(sources.sum()))
    excluded = np.zeros(n, bool)
    while True:
        if budget is None:
            chosen = anchors | (inner & ~excluded)
        else:
            chosen = anchors.copy()
            reach = np.zeros(n, bool)
            reach[e_src[chosen[e_dst]]] = True
            score = np.where(inner & ~excluded, influence.astype(float), -np.inf)
            for _ in range(budget):
                c = int(np.argmax(np.where(reach & ~chosen, score, -np.inf)))
                if not (reach[c] and not chosen[c] and np.isfinite(score[c])):
                    break
                chosen[c] = True
                reach[e_src[by_dst[starts[c]:starts[c + 1]]]] = True
        idx = _cap_incoming(np.flatnonzero(chosen[e_dst] & (chosen | sources)[e_src]), e_src, e_dst, e_abs,
                            influence, edges_per_node)
        has_out = np.zeros(n, bool)
        has_out[e_src[idx]] = True
        dangling = chosen & inner & ~has_out
        if not dangling.any():
            break
        excluded |= dangling
    edges = np.zeros(len(src), bool)
    edges[live[idx]] = True
    return chosen | (sources & has_out), edges


def _cap_incoming(idx: np.ndarray, e_src: np.ndarray, e_dst: np.ndarray, e_abs: np.ndarray,
                  influence: np.ndarray, k: int | None) -> np.ndarray:
    """Of the candidate edges ``idx``, at most ``k`` into each node: first, node by node (most
    influential first), the strongest edge out of it into a node with room left, so every node that
    can keeps a way up to the logits; then each node's room is filled with its strongest remaining
    incoming edges (by |weight|, ties to the lower index)."""
    if k is None or not len(idx):
        return idx
    room = np.full(len(influence), int(k))
    taken = np.zeros(len(idx), bool)
    order = np.lexsort((-e_abs[idx], e_src[idx]))  # by source, strongest first
    by_src = e_src[idx[order]]
    sources = np.unique(by_src)
    for s in sources[np.argsort(-influence[sources], kind="stable")]:
        lo, hi = np.searchsorted(by_src, [s, s + 1])
        for j in order[lo:hi]:
            if room[e_dst[idx[j]]] > 0:
                room[e_dst[idx[j]]] -= 1
                taken[j] = True
                break
    rest = np.flatnonzero(~taken)
    rest = rest[np.lexsort((-e_abs[idx[rest]], e_dst[idx[rest]]))]
    d = e_dst[idx[rest]]
    rank = np.arange(len(rest)) - np.searchsorted(d, d)
    taken[rest[rank < room[d]]] = True
    return idx[taken]


def place_labels(x: np.ndarray, y: np.ndarray, width: np.ndarray, height: np.ndarray,
                 offsets: list[list[tuple[float, float]]], required: np.ndarray,
                 bounds: tuple[float, float, float, float] | None = None) -> list[int]:
    """Greedy label placement in pixels (y down): each label, in order, takes the first of its
    candidate ``offsets`` (top-left corner relative to its point) whose box overlaps no label placed
    before and lies inside ``bounds`` (x0, y0, x1, y1). A ``required`` label that fits nowhere takes
    its first offset; another is left out (-1). Returns the chosen offset's index per label."""
    placed: list[tuple[float, float, float, float]] = []
    chosen = []
    for i in range(len(x)):
        pick = -1
        for j, (dx, dy) in enumerate(offsets[i]):
            box = (x[i] + dx, y[i] + dy, x[i] + dx + width[i], y[i] + dy + height[i])
            outside = bounds is not None and (box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2]
                                              or box[3] > bounds[3])
            if outside:
                continue
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                pick = j
                break
        if pick < 0 and required[i] and offsets[i]:
            pick = 0
        if pick >= 0:
            dx, dy = offsets[i][pick]
            placed.append((x[i] + dx, y[i] + dy, x[i] + dx + width[i], y[i] + dy + height[i]))
        chosen.append(pick)
    return chosen


def nearest_segment(px: float, py: float, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray,
                    y1: np.ndarray) -> tuple[int, float]:
    """The segment (x0, y0)-(x1, y1) nearest to the point (px, py) and its distance (-1, inf when
    there is none). Coordinates in one unit (pixels), so the distance means what the eye sees."""
    if not len(x0):
        return -1, float("inf")
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    dist = np.hypot(x0 + t * dx - px, y0 + t * dy - py)
    i = int(np.argmin(dist))
    return i, float(dist[i])


@dataclass
class Drawing:
    """The nodes and edges a pane draws (see ``GraphView.drawing``); edges name nodes by id."""

    nodes: np.ndarray  # [n] node ids drawn (a supernode by its first member)
    x: np.ndarray  # [n]
    y: np.ndarray
    size: np.ndarray  # [n] in [0, 1]
    category: np.ndarray  # [n]
    is_group: np.ndarray  # [n] bool
    group_labels: dict[int, str]  # supernode id -> label
    src: np.ndarray  # [e] node ids (drawn ones)
    dst: np.ndarray
    weight: np.ndarray  # [e] summed over collapsed edges
    rep: np.ndarray  # [N] the drawn node standing for each node of the view
    link_src: np.ndarray  # [l] every pruned edge among the drawn nodes (a superset of src/dst)
    link_dst: np.ndarray
    link_weight: np.ndarray

    def position(self, node_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, size where the given nodes of the view are drawn."""
        at = np.searchsorted(self.nodes, self.rep[np.asarray(node_ids, dtype=int)])
        return self.x[at], self.y[at], self.size[at]

    def focus(self, node_ids, limit: int | None = None) -> "Focus":
        """What a selected (or hovered) node brings forward: its edges to drawn nodes, in and out
        (every pruned one, not only those under the drawing cap; the ``limit`` strongest each way),
        and the nodes at their other ends."""
        ids = np.asarray(list(node_ids), dtype=int)
        at = np.unique(self.rep[ids]) if len(ids) else ids
        at = at[np.isin(at, self.nodes)]

        def strongest(sel: np.ndarray) -> np.ndarray:
            idx = np.flatnonzero(sel)
            if limit is not None:
                idx = np.sort(idx[np.argsort(-np.abs(self.link_weight[idx]), kind="stable")[:limit]])
            return idx

        incoming = strongest(np.isin(self.link_dst, at))
        outgoing = strongest(np.isin(self.link_src, at) & ~np.isin(self.link_dst, at))
        near = np.union1d(at, np.union1d(self.link_src[incoming], self.link_dst[outgoing]))
        return Focus(at, near.astype(int), incoming, outgoing)


@dataclass(frozen=True)
class Focus:
    """A node's neighbourhood in a ``Drawing`` (ids are drawn node ids; edges index ``link_*``)."""

    nodes: np.ndarray  # the focused nodes as drawn
    neighbours: np.ndarray  # the focused nodes and every node joined to them by a link
    incoming: np.ndarray  # links into the focused nodes
    outgoing: np.ndarray  # links out of them (to nodes outside the focus)


# -- attribution graphs ------------------------------------------------------------------------------
def from_attribution(g: Graph, threshold: float | None = None) -> GraphView:
    """The drawable view of an attribution graph (influence computed if the graph lacks it)."""
    influence = g.influence if g.influence is not None else compute_node_influence(g)
    n = g.n_nodes
    L = g.n_layers
    kind = g.kind.astype(int)
    row = np.where(kind == EMBEDDING, -1, np.where(kind == LOGIT, L, g.layer)).astype(int)
    category = np.select([kind == EMBEDDING, kind == FEATURE, kind == ERROR], [0, 1, 2], 3).astype(np.int8)
    strength = np.where(kind == LOGIT, g.logit_weight, influence).astype(float)
    top = strength.max() if n and strength.max() > 0 else 1.0
    size = np.clip(strength / top, 0.0, 1.0)
    col = g.pos.astype(int)
    x = col.astype(float).copy()
    y = (row + 1).astype(float)
    # spread each cell's nodes across its column: most influential in the middle
    order = np.lexsort((-size, col, row))
    cells: dict[tuple[int, int], list[int]] = {}
    for i in order:
        cells.setdefault((int(row[i]), int(col[i])), []).append(int(i))
    for members in cells.values():
        k = len(members)
        if k == 1:
            continue
        width = min(0.8, 0.12 * (k - 1))
        offsets = np.linspace(-width / 2, width / 2, k)
        # centre-out: 0, +1, -1, +2, ...
        centre_out = sorted(range(k), key=lambda j: abs(j - (k - 1) / 2))
        for rank, j in enumerate(centre_out):
            x[members[rank]] += offsets[j]
    # the logits spread over the top row: the most probable above the last token (its edges run
    # straight up), the others leftwards in order of probability, a column apart at most
    logits = np.flatnonzero(kind == LOGIT)
    logits = logits[np.argsort(-g.activation[logits], kind="stable")]
    last = max(len(g.tokens) - 1, 0)
    step = min(1.0, max(last, 0.8) / (len(logits) - 1)) if len(logits) > 1 else 0.0
    x[logits] = last - np.arange(len(logits)) * step
    labels = [g.label(i) for i in range(n)]
    settings = g.meta.get("settings", {})
    if threshold is None:
        threshold = float(settings.get("node_threshold", 0.8))
    view = GraphView(
        kind="attribution", x=x, y=y, category=category, size=size, layer=row, column=col, labels=labels,
        src=g.src.astype(int), dst=g.dst.astype(int), weight=g.weight.astype(float),
        x_labels=[f"{t!s}" for t in g.tokens], n_layers=L, threshold=threshold,
        values=g.activation.astype(float), source=g,
    )
    view.set_threshold(threshold)
    return view


# -- component circuits --------------------------------------------------------------------------------
def from_circuit(result, threshold: float | None = None) -> GraphView:
    """The drawable view of a component circuit: node = input / head / MLP / logits; an edge per
    (source node, destination node) with the q, k and v paths of a head summed. The default
    threshold is the share of |score| that the chosen circuit's edges hold."""
    cg = result.graph
    L, H = cg.n_layers, cg.n_heads
    names = list(cg.node_names)  # input, a0.h0…, m0, …, logits
    n = len(names)
    x = np.zeros(n)
    y = np.zeros(n)
    layer = np.zeros(n, int)
    column = np.zeros(n, int)
    category = np.zeros(n, np.int8)
    for i, name in enumerate(names):
        if name == "input":
            x[i], y[i], layer[i], column[i], category[i] = H / 2, 0, -1, H // 2, 4
        elif name == "logits":
            x[i], y[i], layer[i], column[i], category[i] = H / 2, L + 1, L, H // 2, 3
        elif name.startswith("a"):
            l, h = (int(p[1:]) for p in name.split("."))
            x[i], y[i], layer[i], column[i], category[i] = h, l + 1, l, h, 5
        else:
            l = int(name[1:])
            x[i], y[i], layer[i], column[i], category[i] = H + 0.5, l + 1.5, l, H, 6
    # collapse paths: source index s -> node s; destination -> its node
    src_idx, dst_idx = np.nonzero(cg.edge_mask)
    dst_node = cg.destination_node
    score = result.scores[src_idx, dst_idx].astype(float)
    pair = src_idx.astype(np.int64) * n + dst_node[dst_idx]
    uniq, inv = np.unique(pair, return_inverse=True)
    weight = np.bincount(inv, weights=score, minlength=len(uniq))
    src, dst = (uniq // n).astype(int), (uniq % n).astype(int)
    if threshold is None:
        chosen = np.bincount(inv, weights=result.circuit[src_idx, dst_idx].astype(float), minlength=len(uniq)) > 0
        total = np.abs(weight).sum()
        threshold = float(np.abs(weight[chosen]).sum() / total) if total > 0 else 1.0
    ns = np.zeros(n)
    np.add.at(ns, src, np.abs(weight))
    ns[-1] = np.abs(weight[dst == n - 1]).sum()
    size = ns / ns.max() if ns.max() > 0 else ns
    view = GraphView(
        kind="circuit", x=x, y=y, category=category, size=size, layer=layer, column=column, labels=names,
        src=src, dst=dst, weight=weight, x_labels=[f"h{h}" for h in range(H)] + ["MLP"], n_layers=L,
        threshold=threshold, values=cg.node_scores(result.scores).astype(float), source=result,
    )
    view.set_threshold(threshold)
    return view


def _circuit_masks(view: GraphView, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges covering ``threshold`` of the total |score|, then dangling nodes pruned
    (every kept node must reach the logits and be reached from the input)."""
    a = np.abs(view.weight)
    edge_mask = a >= find_threshold(a, threshold) if len(a) and threshold > 0 else np.zeros(len(a), bool)
    n = view.n_nodes
    src, dst = view.src, view.dst
    while True:
        alive = np.zeros(n, bool)
        alive[src[edge_mask]] = True
        alive[dst[edge_mask]] = True
        has_out = np.zeros(n, bool)
        has_out[src[edge_mask]] = True
        has_in = np.zeros(n, bool)
        has_in[dst[edge_mask]] = True
        inner = (view.category == 5) | (view.category == 6)
        ok = ~inner | (has_in & has_out)
        new = edge_mask & ok[src] & ok[dst]
        if np.array_equal(new, edge_mask):
            break
        edge_mask = new
    node_mask = np.zeros(n, bool)
    node_mask[src[edge_mask]] = True
    node_mask[dst[edge_mask]] = True
    node_mask[0] = node_mask[-1] = True  # input and logits always shown
    return node_mask, edge_mask


# A special token's shape (``<|im_start|>``, ``<bos>``, ``<start_of_turn>``): chat templates are full of them.
_SPECIAL_SHAPE = re.compile(r"^<\|?[^\s<>|]+\|?>$")
SPECIAL_LABEL = 12  # a special token this long or shorter is shown whole


def short_token(token: str, n: int) -> str:
    """A token as a short axis label: newlines and tabs shown (⏎, ⇥), a long token cut to ``n``
    characters with "…"; a special token (``<|im_start|>``) whole up to ``SPECIAL_LABEL``
    characters, or cut inside its brackets (``<|start_he…|>``), so it still reads as one."""
    t = token.replace("\n", "⏎").replace("\t", "⇥")
    if _SPECIAL_SHAPE.match(t):
        room = max(n, SPECIAL_LABEL)
        if len(t) <= room:
            return t
        close = "|>" if t.endswith("|>") else ">"
        return t[: room - len(close) - 1] + "…" + close
    return t if len(t) <= n else t[: n - 1] + "…"


def probability_text(p: float) -> str:
    """A probability in two decimals, or its order of magnitude when it would read as 0
    (``0.41``, ``4e-03``): a chosen target the model finds unlikely is never shown as "p=0.00"."""
    if p >= 0.005:
        return f"{p:.2f}"
    return f"{p:.0e}" if p > 0 else "0"

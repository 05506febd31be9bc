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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.graph import EMBEDDING, ERROR, FEATURE, LOGIT, Graph, compute_node_influence, find_threshold, prune

CATEGORIES = ("embedding", "feature", "error", "logit", "input", "head", "mlp")
CATEGORY_COLOURS = {  # node colour by category: the graph pane and the report's figure
    "embedding": "#7f8c8d", "feature": "#3b78c2", "error": "#c0392b", "logit": "#27ae60",
    "input": "#7f8c8d", "head": "#8e44ad", "mlp": "#e67e22",
}
GROUP_COLOUR = "#0f766e"  # supernodes: teal squares
POSITIVE, NEGATIVE = (37, 99, 235), (220, 38, 38)  # edge colours by sign (RGB)


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
    _cells: dict = field(default_factory=dict, repr=False)
    _influence: np.ndarray | None = field(default=None, repr=False)  # the full graph's, kept across thresholds

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

    def visible_nodes(self) -> np.ndarray:
        mask = self.node_mask.copy()
        if self.pinned:
            mask[list(self.pinned)] = True
        return np.flatnonzero(mask)

    def visible_edges(self) -> np.ndarray:
        mask = self.node_mask.copy()
        if self.pinned:
            mask[list(self.pinned)] = True
        return np.flatnonzero(self.edge_mask & mask[self.src] & mask[self.dst])

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
            edges = np.flatnonzero(members[self.src] & members[self.dst])
        else:
            nodes, edges = self.visible_nodes(), self.visible_edges()
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
        s, d = rep[self.src[edges]], rep[self.dst[edges]]
        keep = (s != d) & np.isin(s, drawn) & np.isin(d, drawn)
        pair, inverse = np.unique(s[keep] * n + d[keep], return_inverse=True)
        weight = np.bincount(inverse.ravel(), weights=self.weight[edges][keep], minlength=len(pair))
        return Drawing(drawn, x[drawn], y[drawn], size[drawn], self.category[drawn],
                       np.array([int(i) in names for i in drawn], bool), names,
                       (pair // n).astype(int), (pair % n).astype(int), weight, rep)

    def find(self, text: str) -> list[int]:
        """Nodes whose label contains ``text`` (case-insensitive), visible ones first."""
        text = text.strip().lower()
        if not text:
            return []
        hits = [i for i, lab in enumerate(self.labels) if text in lab.lower()]
        vis = self.node_mask
        return sorted(hits, key=lambda i: (not vis[i], -self.size[i]))


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

    def position(self, node_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, size where the given nodes of the view are drawn."""
        at = np.searchsorted(self.nodes, self.rep[np.asarray(node_ids, dtype=int)])
        return self.x[at], self.y[at], self.size[at]


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

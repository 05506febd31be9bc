"""Suggested supernodes for an attribution graph: nodes that do the same job, offered for grouping.

Numpy only (no torch, no Qt). An auditor reading an attribution graph groups nodes into
supernodes by hand (Ameisen et al. 2025, §"Supernodes"; circuit-tracer issue #20 asks for this to
be automatic): several features at one token, a few layers apart, that read from the same nodes
and write to the same nodes. ``suggest_groups`` proposes such groups; accepting one makes it an
ordinary ``core.annotations.Group``.

The criterion, as the auditor applies it, made exact:

* **Candidates** are the visible feature and error nodes (what is drawn, pinned nodes
  included) not already in a group. Only nodes of one kind at one token position are grouped,
  and a group spans at most ``layer_window`` layers (highest minus lowest layer). Features are
  never grouped with error nodes: a supernode that looks interpretable must not hide the part
  of the computation the basis failed to explain.
* **Edge profile** of a node: its incoming edge weights (one entry per other node of the
  pruned graph) and its outgoing edge weights (another entry per such node), signed. Edges
  among the pruned graph's nodes count, not only the few a capped drawing keeps per node: they
  are what a supernode's edges sum (``core.view.GraphView.drawing``); the edge threshold is not
  applied, so a weak edge that one of two twins happened to lose to pruning does not set them
  apart. Pruned nodes are left out: their edges are, by construction, the ones that barely matter.
* **Similarity** of two nodes = the mean, over the sides (incoming, outgoing) on which either
  has at least ``MIN_SIDE_EDGES`` edges, of the cosine similarity of their weights on that side;
  a side on which only one of them has edges counts 0. A side with one or two edges says next to
  nothing: a layer-0 node reads little but its token's embedding, so any two at one token agree
  there whatever they do (on the demo graph two such neurons whose outputs agree at 0.66 scored
  0.83); and error nodes have no incoming edges, so two of them compare on what they write.
  Cosine, not distance: attribution edges scale with the source's activation, so two nodes doing
  the same thing at different strengths have proportional profiles. Signed: a node that excites
  a target and one that inhibits it are opposite, not alike.
* **Merging** is average-linkage agglomerative clustering (merge the two clusters whose mean
  cross-pair similarity is highest, while it is at least ``threshold``). Unlike connected
  components above a threshold (single linkage), it does not chain A~B, B~C into a group with
  A≁C: every merge keeps the mean pairwise similarity of the members, the ``score``, at least
  ``threshold``. Ties go to the lowest (layer, node id), so the result is deterministic.

The cost is one small dense product per token position (its candidates × the visible nodes they
touch): no N×N matrix of the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.annotations import Group, cap_label
from core.graph import ERROR, FEATURE, LOGIT, Graph

THRESHOLD = 0.8  # default: mean pairwise similarity of a suggested group's members
LAYER_WINDOW = 3  # default: a group spans at most this many layers (highest minus lowest)
MIN_SIDE_EDGES = 3  # a side (incoming, outgoing) is compared when one of the two has this many edges there


@dataclass(frozen=True)
class Suggestion:
    """A proposed supernode: its members (node ids, ascending), a label to accept it under, and why."""

    label: str
    nodes: tuple[int, ...]
    score: float  # mean pairwise similarity of the members' edge profiles (≥ the threshold used)
    position: int  # the token position all members share
    layers: tuple[int, int]  # lowest and highest layer of the members
    target: int | None = None  # the node outside the group that the members' summed edges reach most strongly
    target_weight: float = 0.0  # that summed edge weight (signed)

    def group(self, label: str | None = None) -> Group:
        return Group(cap_label((label if label is not None else self.label).strip()), self.nodes)


def suggest_groups(graph_or_view, groups=(), threshold: float = THRESHOLD,
                   layer_window: int = LAYER_WINDOW) -> list[Suggestion]:
    """Supernodes to suggest among the visible feature / error nodes of an attribution graph.

    ``graph_or_view``: a ``core.graph.Graph`` (its ``node_mask`` if pruned, else every node) or an
    attribution ``core.view.GraphView`` (its visible nodes, pinned ones included). ``groups``: the
    groups already made (``Group``s): their nodes are left out and their labels are not reused.
    Returns the suggestions ordered by position, then layer; each node in at most one.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"The similarity threshold must be between 0 and 1 (got {threshold}).")
    if int(layer_window) != layer_window or layer_window < 0:
        raise ValueError(f"The layer window must be a whole number of layers, 0 or more (got {layer_window}).")
    g, visible, context = _graph_and_visible(graph_or_view)
    n = g.n_nodes
    grouped = np.zeros(n, bool)
    for grp in groups:
        grouped[[i for i in grp.nodes if 0 <= i < n]] = True
    candidate = visible & ((g.kind == FEATURE) | (g.kind == ERROR)) & ~grouped

    live = context[g.src] & context[g.dst]
    src, dst, w = g.src[live].astype(np.int64), g.dst[live].astype(np.int64), g.weight[live].astype(np.float64)
    # profile entries (row = candidate node, column = other node: incoming c, outgoing n + c)
    into, out = candidate[dst], candidate[src]
    rows = np.concatenate([dst[into], src[out]])
    cols = np.concatenate([src[into], n + dst[out]])
    vals = np.concatenate([w[into], w[out]])
    by_pos = np.argsort(g.pos[rows], kind="stable")
    rows, cols, vals = rows[by_pos], cols[by_pos], vals[by_pos]
    row_pos = g.pos[rows]

    found: list[tuple[np.ndarray, float]] = []
    cands = np.flatnonzero(candidate)
    for p in np.unique(g.pos[cands]):
        members = cands[g.pos[cands] == p]
        if len(members) < 2:
            continue
        members = members[np.lexsort((members, g.layer[members], g.kind[members]))]
        lo, hi = np.searchsorted(row_pos, p, "left"), np.searchsorted(row_pos, p, "right")
        sim = _similarity(members, rows[lo:hi], cols[lo:hi], vals[lo:hi], n)
        for cluster in _average_linkage(sim, g.layer[members].astype(int), g.kind[members].astype(int),
                                        float(threshold), int(layer_window)):
            pairs = np.triu_indices(len(cluster), 1)
            score = float(sim[np.ix_(cluster, cluster)][pairs].mean())
            found.append((np.sort(members[cluster]), score))

    suggestions = [_describe(g, nodes, score, src, dst, w) for nodes, score in found]
    suggestions.sort(key=lambda s: (s.position, s.layers, s.nodes))
    return _distinct_labels(g, suggestions, {grp.label for grp in groups})


# -- the pieces -------------------------------------------------------------------------------------
def _graph_and_visible(graph_or_view) -> tuple[Graph, np.ndarray, np.ndarray]:
    """The graph, the nodes that may be grouped (visible: drawn), and the nodes whose edges make
    the profiles (the pruned graph behind a capped drawing, so a drawn node's profile is not cut
    down to the few edges the drawing keeps)."""
    if isinstance(graph_or_view, Graph):
        g = graph_or_view
        visible = np.ones(g.n_nodes, bool) if g.node_mask is None else g.node_mask.astype(bool).copy()
        return g, visible, visible
    view = graph_or_view
    if getattr(view, "kind", None) != "attribution" or not isinstance(getattr(view, "source", None), Graph):
        raise ValueError("Groups are suggested for attribution graphs only; a component circuit has no "
                         "features to group.")
    visible = np.zeros(view.n_nodes, bool)
    visible[view.visible_nodes()] = True
    context = np.zeros(view.n_nodes, bool)
    context[view.pruned_nodes()] = True  # the drawn nodes are among them
    return view.source, visible, context


def _similarity(members: np.ndarray, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> np.ndarray:
    """[m, m] similarity of the members' edge profiles (module docstring): mean, over the sides
    (incoming, outgoing) where either has ``MIN_SIDE_EDGES`` edges, of the cosine of the signed
    weights (0 for a pair with no such side)."""
    m = len(members)
    local = np.full(n, -1, np.int64)
    local[members] = np.arange(m)
    r = local[rows]
    keep = r >= 0
    r, c, v = r[keep], cols[keep], vals[keep]
    ucols, ci = np.unique(c, return_inverse=True)
    profile = np.bincount(r * len(ucols) + ci.ravel(), weights=v, minlength=m * len(ucols)).reshape(m, len(ucols))
    split = int(np.searchsorted(ucols, n))  # columns below n are incoming edges, the rest outgoing
    total = np.zeros((m, m))
    sides = np.zeros((m, m))
    for side in (profile[:, :split], profile[:, split:]):
        norm = np.linalg.norm(side, axis=1)
        unit = side / np.where(norm > 0, norm, 1.0)[:, None]
        enough = np.count_nonzero(side, axis=1) >= MIN_SIDE_EDGES
        compared = enough[:, None] | enough[None, :]
        total += np.where(compared, unit @ unit.T, 0.0)
        sides += compared
    return np.clip(np.where(sides > 0, total / np.maximum(sides, 1.0), 0.0), -1.0, 1.0)


def _average_linkage(sim: np.ndarray, layer: np.ndarray, kind: np.ndarray, threshold: float,
                     window: int) -> list[np.ndarray]:
    """Clusters (index arrays into ``sim``, at least two members) made by average linkage: merge
    the pair of clusters of one kind, spanning at most ``window`` layers together, with the highest
    mean cross-pair similarity, while that is at least ``threshold`` (Lance–Williams update)."""
    m = len(sim)
    link = sim.astype(np.float64).copy()  # mean similarity between clusters (rows of live clusters)
    size = np.ones(m)
    lo, hi = layer.copy(), layer.copy()
    live = np.ones(m, bool)
    members = [[i] for i in range(m)]
    same_kind = kind[:, None] == kind[None, :]

    def allowed(i: int) -> np.ndarray:
        ok = live & same_kind[i] & (np.maximum(hi, hi[i]) - np.minimum(lo, lo[i]) <= window)
        ok[i] = False
        return ok

    best = np.full((m, m), -np.inf)
    for i in range(m):
        best[i] = np.where(allowed(i), link[i], -np.inf)
    while m > 1:
        flat = int(np.argmax(best))  # ties: the first in (kind, layer, node id) order
        i, j = divmod(flat, m)
        if not best[i, j] >= threshold:
            break
        i, j = min(i, j), max(i, j)
        merged = (size[i] * link[i] + size[j] * link[j]) / (size[i] + size[j])
        link[i], link[:, i] = merged, merged
        size[i] += size[j]
        lo[i], hi[i] = min(lo[i], lo[j]), max(hi[i], hi[j])
        members[i] += members[j]
        live[j] = False
        best[j], best[:, j] = -np.inf, -np.inf
        row = np.where(allowed(i), link[i], -np.inf)
        best[i], best[:, i] = row, row
    return [np.array(sorted(members[i])) for i in range(m) if live[i] and len(members[i]) >= 2]


def _describe(g: Graph, nodes: np.ndarray, score: float, src, dst, w) -> Suggestion:
    inside = np.zeros(g.n_nodes, bool)
    inside[nodes] = True
    out = inside[src] & ~inside[dst]
    summed = np.bincount(dst[out], weights=w[out], minlength=g.n_nodes)
    target = int(np.argmax(np.abs(summed))) if out.any() else None
    layers = (int(g.layer[nodes].min()), int(g.layer[nodes].max()))
    p = int(g.pos[nodes[0]])
    token = repr(g.tokens[p]) if 0 <= p < len(g.tokens) else f"@{p}"
    span = f"L{layers[0]}" if layers[0] == layers[1] else f"L{layers[0]}–{layers[1]}"
    errors = "errors " if g.kind[nodes[0]] == ERROR else ""
    return Suggestion(cap_label(f"{token} {errors}{span}"), tuple(int(i) for i in nodes), score, p, layers, target,
                      float(summed[target]) if target is not None else 0.0)


def target_name(g: Graph, node: int) -> str:
    """A short name of a node a group writes to: the token of a logit, else its layer and unit."""
    if g.kind[node] == LOGIT:
        return repr(g.meta.get("target_tokens", {}).get(str(node), f"#{int(g.index[node])}"))
    if g.kind[node] == ERROR:
        return f"Err L{int(g.layer[node])}@{int(g.pos[node])}"
    if g.kind[node] == FEATURE:
        return f"L{int(g.layer[node])} {g.feature_unit}{int(g.index[node])}@{int(g.pos[node])}"
    return g.label(node)


def _distinct_labels(g: Graph, suggestions: list[Suggestion], taken: set[str]) -> list[Suggestion]:
    """Labels name groups (ungrouping goes by label), so no two may be equal: a label shared with
    another suggestion or an existing group gains its strongest target ("→ ' Paris'"), then a number."""
    counts: dict[str, int] = {}
    for s in suggestions:
        counts[s.label] = counts.get(s.label, 0) + 1
    used = set(taken)
    out = []
    for s in suggestions:
        label = s.label
        if (counts[label] > 1 or label in used) and s.target is not None:
            label = cap_label(f"{label} → {target_name(g, s.target)}")
        base, k = label, 2
        while label in used:
            label = cap_label(f"{base} #{k}")
            k += 1
        used.add(label)
        out.append(Suggestion(label, s.nodes, s.score, s.position, s.layers, s.target, s.target_weight))
    return out

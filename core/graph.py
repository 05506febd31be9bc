"""The graph data model shared by every method: nodes, sparse weighted edges, metadata.

Numpy only (no torch, no Qt), so the desktop, the session file and the report read graphs
without loading a model. Edges are stored sparsely (``src``, ``dst``, ``weight``): no N×N
matrix is ever built. An edge ``s → t`` with weight ``w`` means node s contributes ``w`` to
node t's (linear) value.

Attribution-graph node order follows circuit-tracer: features, error nodes (layer-major),
token embeddings, logits. Influence, pruning and the two graph scores follow the reference
definitions (Ameisen et al. 2025; circuit-tracer ``graph.py``), computed on sparse edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

EMBEDDING, FEATURE, ERROR, LOGIT = 0, 1, 2, 3
KIND_NAMES = {EMBEDDING: "embedding", FEATURE: "feature", ERROR: "error", LOGIT: "logit"}


@dataclass
class Graph:
    kind: np.ndarray  # [N] int8
    layer: np.ndarray  # [N] int32 (embeddings -1, logits n_layers)
    pos: np.ndarray  # [N] int32
    index: np.ndarray  # [N] int64: feature/neuron index; token id for embeddings and logits
    activation: np.ndarray  # [N] float32: feature activation, ‖error‖, 0 (embeddings), logit prob
    value: np.ndarray  # [N] float32: the node's linear value (features, logits), else nan
    src: np.ndarray  # [E] int32
    dst: np.ndarray  # [E] int32
    weight: np.ndarray  # [E] float32
    logit_weight: np.ndarray  # [N] float32: influence weight of logit nodes (their probability)
    tokens: list[str] = field(default_factory=list)  # prompt tokens, decoded
    token_ids: list[int] = field(default_factory=list)
    n_layers: int = 0
    meta: dict = field(default_factory=dict)
    influence: np.ndarray | None = None  # [N] filled by ``compute_node_influence``
    node_mask: np.ndarray | None = None  # pruning result
    edge_mask: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        return int(self.kind.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.src.shape[0])

    def nodes_of(self, kind: int) -> np.ndarray:
        return np.flatnonzero(self.kind == kind)

    @property
    def feature_unit(self) -> str:
        """How a feature is named: "N" (an MLP neuron) or "F" (a transcoder feature)."""
        return "N" if self.meta.get("basis", "neurons") == "neurons" else "F"

    def label(self, i: int) -> str:
        k, l, p, idx = int(self.kind[i]), int(self.layer[i]), int(self.pos[i]), int(self.index[i])
        tok = self.tokens[p] if 0 <= p < len(self.tokens) else "?"
        if k == EMBEDDING:
            return f"Emb {tok!r}@{p}"
        if k == FEATURE:
            return f"L{l} {self.feature_unit}{idx} @{p} {tok!r}"
        if k == ERROR:
            return f"Err L{l} @{p} {tok!r}"
        return f"Logit {self.meta.get('target_tokens', {}).get(str(i), '#' + str(idx))!r}"

    def node_id(self, i: int) -> str:
        """A stable id: ``{layer}_{index}_{pos}`` for features (Neuronpedia style), else kind-based."""
        k = int(self.kind[i])
        if k == FEATURE:
            return f"{int(self.layer[i])}_{int(self.index[i])}_{int(self.pos[i])}"
        if k == ERROR:
            return f"E{int(self.layer[i])}_{int(self.pos[i])}"
        if k == EMBEDDING:
            return f"T_{int(self.index[i])}_{int(self.pos[i])}"
        return f"L_{int(self.index[i])}_{int(self.pos[i])}"

    # -- arrays (session files) ------------------------------------------------------------------
    ARRAYS = ("kind", "layer", "pos", "index", "activation", "value", "src", "dst", "weight", "logit_weight",
              "influence", "node_mask", "edge_mask")

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None}

    def header(self) -> dict:
        return {"tokens": self.tokens, "token_ids": self.token_ids, "n_layers": self.n_layers, "meta": self.meta}

    @classmethod
    def from_parts(cls, header: dict, arrays: dict[str, np.ndarray]) -> "Graph":
        """The graph of a session file (``header`` validated by ``core.manifest``); ``validate``d."""
        missing = [k for k in cls.ARRAYS[:10] if k not in arrays]
        if missing:
            raise ValueError(f"the array {missing[0]} is missing")
        unknown = sorted(set(arrays) - set(cls.ARRAYS))
        if unknown:
            raise ValueError(f"an attribution graph has no array {unknown[0]!r}")
        g = cls(**{k: arrays[k] for k in cls.ARRAYS[:10]},
                tokens=list(header.get("tokens", [])), token_ids=list(header.get("token_ids", [])),
                n_layers=int(header.get("n_layers", 0)), meta=dict(header.get("meta", {})))
        g.influence = arrays.get("influence")
        g.node_mask = arrays.get("node_mask")
        g.edge_mask = arrays.get("edge_mask")
        g.validate()
        return g

    _DTYPE_KINDS = {"kind": "i", "layer": "i", "pos": "i", "index": "i", "activation": "f", "value": "f",
                    "src": "i", "dst": "i", "weight": "f", "logit_weight": "f", "influence": "f",
                    "node_mask": "b", "edge_mask": "b"}

    def validate(self) -> None:
        """Refuse arrays no attribution run writes (a session may come from anyone): wrong dtypes or
        lengths, unknown kinds, layers or positions out of range, numbers that are not finite, edges
        outside the node list or not from an earlier layer to a later one (so no cycle)."""
        n, e = self.n_nodes, self.n_edges
        for name, dtype_kind in self._DTYPE_KINDS.items():
            arr = getattr(self, name)
            if arr is not None and (arr.ndim != 1 or arr.dtype.kind != dtype_kind):
                raise ValueError(f"graph array {name} has the wrong type ({arr.dtype}, {arr.ndim} dimensions)")
        for name in ("layer", "pos", "index", "activation", "value", "logit_weight", "influence", "node_mask"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (n,):
                raise ValueError(f"graph array {name} has the wrong length")
        for name in ("dst", "weight", "edge_mask"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (e,):
                raise ValueError(f"graph array {name} differs in length from the edge list")
        if len(self.token_ids) != len(self.tokens):
            raise ValueError("the graph's tokens and token ids differ in number")
        if not n:
            return
        if self.kind.min() < EMBEDDING or self.kind.max() > LOGIT:
            raise ValueError("a node has an unknown kind")
        inner = (self.kind == FEATURE) | (self.kind == ERROR)
        expected = np.where(self.kind == EMBEDDING, -1, np.where(self.kind == LOGIT, self.n_layers, self.layer))
        if (self.layer != expected).any() or (inner & ((self.layer < 0) | (self.layer >= self.n_layers))).any():
            raise ValueError("a node's layer is outside the model's layers")
        if self.pos.min() < 0 or self.pos.max() >= max(len(self.tokens), 1):
            raise ValueError(f"a node's position is outside the prompt's {len(self.tokens)} tokens")
        if self.index.min() < 0:
            raise ValueError("a node has a negative index")
        for name in ("activation", "weight", "logit_weight", "influence"):
            arr = getattr(self, name)
            if arr is not None and not np.isfinite(arr).all():
                raise ValueError(f"graph array {name} holds numbers that are not finite")
        valued = (self.kind == FEATURE) | (self.kind == LOGIT)
        if not np.isfinite(self.value[valued]).all() or np.isinf(self.value).any():
            raise ValueError("graph array value holds numbers that are not finite")
        if (self.logit_weight < 0).any():
            raise ValueError("a logit weight is negative")
        if e:
            if min(self.src.min(), self.dst.min()) < 0 or max(self.src.max(), self.dst.max()) >= n:
                raise ValueError("graph edges point outside the node list")
            if (self.layer[self.src] >= self.layer[self.dst]).any():
                raise ValueError("an edge does not run from an earlier layer to a later one (the graph would have a cycle)")


# -- influence ---------------------------------------------------------------------------------------
def normalized_weights(n_nodes: int, dst: np.ndarray, weight: np.ndarray, row_abs: np.ndarray | None = None) -> np.ndarray:
    """|w| divided by the L1 norm of its target's row (rows: incoming edges of a node)."""
    a = np.abs(weight).astype(np.float64)
    if row_abs is None:
        row_abs = np.bincount(dst, weights=a, minlength=n_nodes)
    return a / np.maximum(row_abs[dst], 1e-10)


def propagate(n_nodes: int, src: np.ndarray, dst: np.ndarray, nw: np.ndarray, start: np.ndarray,
              max_iter: int = 1000) -> np.ndarray:
    """Σ_{k≥1} start·Aᵏ for A[t, s] = nw on edges s→t (influence flows from targets to sources)."""
    total = np.zeros(n_nodes)
    cur = start.astype(np.float64)
    for _ in range(max_iter):
        cur = np.bincount(src, weights=cur[dst] * nw, minlength=n_nodes)
        if not cur.any():
            return total
        total += cur
    raise RuntimeError("influence did not converge: the graph has a cycle")


def compute_node_influence(g: Graph, edge_mask: np.ndarray | None = None, node_mask: np.ndarray | None = None) -> np.ndarray:
    src, dst, w = _masked(g, edge_mask, node_mask)
    nw = normalized_weights(g.n_nodes, dst, w)
    return propagate(g.n_nodes, src, dst, nw, g.logit_weight)


def _masked(g: Graph, edge_mask=None, node_mask=None):
    keep = np.ones(g.n_edges, bool) if edge_mask is None else edge_mask.copy()
    if node_mask is not None:
        keep &= node_mask[g.src] & node_mask[g.dst]
    return g.src[keep], g.dst[keep], g.weight[keep]


def find_threshold(scores: np.ndarray, threshold: float) -> float:
    """The score above which the largest scores cover ``threshold`` of the total (reference rule)."""
    if scores.size == 0:
        return 0.0
    s = np.sort(scores)[::-1]
    total = s.sum()
    if total <= 0:
        return float(s[-1])
    cum = np.cumsum(s) / total
    i = min(int(np.searchsorted(cum, threshold)), len(s) - 1)
    return float(s[i])


class PruneResult(NamedTuple):
    node_mask: np.ndarray
    edge_mask: np.ndarray
    node_influence: np.ndarray  # influence in the full graph
    cumulative: np.ndarray  # per node: fraction of total influence covered by nodes at least as influential


def prune(g: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          influence: np.ndarray | None = None) -> PruneResult:
    """circuit-tracer's pruning: keep nodes covering ``node_threshold`` of the influence on the
    logits, then edges covering ``edge_threshold`` of the edge influence; embeddings and logits are
    always kept; features/errors left without outgoing edges (and features without incoming ones)
    are dropped until nothing changes. ``influence``: ``compute_node_influence(g)`` if already
    known (it does not depend on the thresholds; a live threshold slider reuses it)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (got {v})")
    n = g.n_nodes
    always = (g.kind == EMBEDDING) | (g.kind == LOGIT)
    inner = ~always  # features and errors
    if influence is None:
        influence = compute_node_influence(g)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask |= always

    src, dst, w = g.src, g.dst, g.weight
    live = node_mask[src] & node_mask[dst]
    nw = np.where(live, normalized_weights(n, dst, np.where(live, w, 0.0)), 0.0)
    pruned_infl = propagate(n, src, dst, nw, g.logit_weight) + g.logit_weight
    edge_scores = nw * pruned_infl[dst]
    edge_mask = live & (edge_scores >= find_threshold(edge_scores, edge_threshold))

    while True:
        old = node_mask.copy()
        em = edge_mask & node_mask[src] & node_mask[dst]
        has_out = np.zeros(n, bool)
        has_out[src[em]] = True
        has_in = np.zeros(n, bool)
        has_in[dst[em]] = True
        node_mask &= always | has_out
        node_mask &= (g.kind != FEATURE) | has_in
        edge_mask = em
        if np.array_equal(node_mask, old):
            break
    edge_mask &= node_mask[src] & node_mask[dst]

    return PruneResult(node_mask, edge_mask, influence, cumulative_share(influence))


def cumulative_share(influence: np.ndarray) -> np.ndarray:
    """Per node: the share of total influence covered by the nodes at least as influential
    (circuit-tracer's ``cumulative_scores``; smaller = more important)."""
    order = np.argsort(-influence, kind="stable")
    total = influence.sum()
    out = np.zeros(len(influence))
    if total > 0:
        out[order] = np.cumsum(influence[order]) / total
    return out


class Scores(NamedTuple):
    replacement: float
    completeness: float


def graph_scores(g: Graph, node_mask: np.ndarray | None = None, edge_mask: np.ndarray | None = None) -> Scores:
    """Replacement and completeness scores (reference definitions) of the full graph, or of a pruned
    one. For a pruned graph, the full graph's row norms and output influence are the yardstick
    and pruned edges count as unexplained, so a pruned graph never scores above the full one."""
    n = g.n_nodes
    nw_full = normalized_weights(n, g.dst, g.weight)
    infl_full = propagate(n, g.src, g.dst, nw_full, g.logit_weight)
    err = g.kind[g.src] == ERROR
    tok_nodes = g.kind == EMBEDDING
    err_nodes = g.kind == ERROR
    output_influence = infl_full + g.logit_weight
    if node_mask is None and edge_mask is None:
        nw, infl = nw_full, infl_full
        explained = np.bincount(g.dst[~err], weights=nw[~err], minlength=n)
        has_row = np.bincount(g.dst, minlength=n) > 0
        non_error = np.where(has_row, explained, 1.0)  # rows without inputs have nothing unexplained
        tok, e = infl[tok_nodes].sum(), infl[err_nodes].sum()
        replacement = tok / (tok + e) if tok + e > 0 else 0.0
    else:
        keep = np.ones(g.n_edges, bool) if edge_mask is None else edge_mask.copy()
        if node_mask is not None:
            keep &= node_mask[g.src] & node_mask[g.dst]
        nw = np.where(keep, nw_full, 0.0)
        infl = propagate(n, g.src, g.dst, nw, g.logit_weight)
        ok = keep & ~err
        explained = np.bincount(g.dst[ok], weights=nw[ok], minlength=n)
        has_row = np.bincount(g.dst, minlength=n) > 0
        non_error = np.where(has_row, explained, 1.0)
        if node_mask is not None:
            non_error = np.where(node_mask, non_error, 0.0)
        tok = infl[tok_nodes].sum()
        full_tok, full_err = infl_full[tok_nodes].sum(), infl_full[err_nodes].sum()
        replacement = tok / (full_tok + full_err) if full_tok + full_err > 0 else 0.0
    completeness = float((non_error * output_influence).sum() / output_influence.sum()) if output_influence.sum() > 0 else 0.0
    clip = lambda x: float(min(1.0, max(0.0, x)))  # noqa: E731 (float sums can overshoot by an ulp)
    return Scores(clip(replacement), clip(completeness))

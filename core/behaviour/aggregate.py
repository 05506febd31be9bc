"""The behaviour graph: many cases' graphs (or circuits) merged on their keys (``core.behaviour.profile``).

For every key: how many cases have it in their pruned graph or circuit (``count``; ``recurrence`` is
the share), and the mean and spread of its value over all cases (0 where a case lacks it). Edges are
merged the same way and kept where they recur in at least ``min_recurrence`` of the cases, so the
merged graph shows the pathway the cases share rather than the union of their hairballs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.behaviour.profile import CaseProfile, key_layer
from core.errors import CircuitDeskError

MIN_RECURRENCE = 0.25  # default share of cases an edge (and a drawn node) must recur in


@dataclass
class BehaviourGraph:
    method: str  # attribution | circuit
    basis: str
    n_layers: int
    cases: tuple[str, ...]
    keys: tuple[str, ...]  # every key present in at least one case, by layer, then by mean value
    values: np.ndarray  # [cases × keys] float64, 0 where a case lacks the key
    present: np.ndarray  # [cases × keys] bool: in the case's pruned graph / circuit
    edges: tuple[tuple[str, str], ...]  # the edges that recur in at least ``min_recurrence`` of the cases
    edge_values: np.ndarray  # [cases × edges] float64
    edge_present: np.ndarray  # [cases × edges] bool
    min_recurrence: float = MIN_RECURRENCE

    @property
    def count(self) -> np.ndarray:
        return self.present.sum(0)

    @property
    def recurrence(self) -> np.ndarray:
        return self.present.mean(0) if len(self.cases) else np.zeros(len(self.keys))

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(0)

    @property
    def sd(self) -> np.ndarray:
        return self.values.std(0, ddof=1) if len(self.cases) > 1 else np.zeros(len(self.keys))

    def layer_of(self, key: str) -> int:
        return key_layer(key, self.n_layers)

    def drawn(self) -> np.ndarray:
        """Key indices of the merged graph's nodes: those recurring in ``min_recurrence`` of the
        cases, plus every endpoint of a kept edge."""
        keep = self.recurrence >= self.min_recurrence
        index = {k: i for i, k in enumerate(self.keys)}
        for s, d in self.edges:
            keep[index[s]] = keep[index[node_of(d)]] = True
        return np.flatnonzero(keep)

    def node_rows(self, idx=None) -> list[dict]:
        idx = range(len(self.keys)) if idx is None else idx
        rec, mean, sd, count = self.recurrence, self.mean, self.sd, self.count
        return [{"key": self.keys[i], "layer": self.layer_of(self.keys[i]), "count": int(count[i]),
                 "recurrence": float(rec[i]), "mean": float(mean[i]), "sd": float(sd[i])} for i in idx]

    def edge_rows(self) -> list[dict]:
        rec = self.edge_present.mean(0) if len(self.cases) else np.zeros(len(self.edges))
        mean = self.edge_values.mean(0) if len(self.cases) else np.zeros(len(self.edges))
        return [{"src": s, "dst": d, "count": int(c), "recurrence": float(r), "mean": float(m)}
                for (s, d), c, r, m in zip(self.edges, self.edge_present.sum(0), rec, mean)]


def node_of(key: str) -> str:
    """The node an edge's endpoint belongs to: a head's q/k/v input (``a3.h1<q>``) is the head."""
    return key.split("<", 1)[0]


def aggregate(profiles: list[CaseProfile], n_layers: int, min_recurrence: float = MIN_RECURRENCE) -> BehaviourGraph:
    """Merge the profiles of one method and basis into a behaviour graph."""
    if not profiles:
        raise CircuitDeskError("No case succeeded, so there is nothing to aggregate.")
    kinds = {(p.method, p.basis) for p in profiles}
    if len(kinds) > 1:
        raise CircuitDeskError("The cases mix methods or feature bases; aggregate each kind on its own.")
    if not 0.0 < min_recurrence <= 1.0:
        raise CircuitDeskError(f"The minimum recurrence must be in (0, 1] (got {min_recurrence}).")
    method, basis = kinds.pop()
    # attribution: the keys some case's pruned graph holds; circuits: every node (each case scores them all)
    seen = sorted(set().union(*(p.present for p in profiles)) if method == "attribution" else profiles[0].nodes)
    values = np.array([[p.nodes.get(k, 0.0) for k in seen] for p in profiles], dtype=np.float64).reshape(len(profiles), -1)
    order = sorted(range(len(seen)), key=lambda i: (key_layer(seen[i], n_layers), -abs(values[:, i].mean()), seen[i]))
    keys = tuple(seen[i] for i in order)
    values = values[:, order]
    present = np.array([[k in p.present for k in keys] for p in profiles], dtype=bool).reshape(len(profiles), -1)
    counts: dict[tuple[str, str], int] = {}
    for p in profiles:
        for e in p.present_edges:
            counts[e] = counts.get(e, 0) + 1
    need = min_recurrence * len(profiles)
    edges = tuple(sorted((e for e, c in counts.items() if c >= need - 1e-9),
                         key=lambda e: (key_layer(e[0], n_layers), e)))
    edge_values = np.array([[p.edges.get(e, 0.0) for e in edges] for p in profiles], dtype=np.float64)
    edge_present = np.array([[e in p.present_edges for e in edges] for p in profiles], dtype=bool)
    return BehaviourGraph(method, basis, n_layers, tuple(p.name for p in profiles), keys, values, present, edges,
                          edge_values.reshape(len(profiles), -1), edge_present.reshape(len(profiles), -1),
                          min_recurrence)

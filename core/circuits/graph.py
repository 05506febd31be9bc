"""The component graph of EAP / EAP-IG / MIB: nodes, edges, circuit selection, pruning.

Sources (write to the residual stream): ``input`` (embeddings), ``a{l}.h{h}`` (one attention head's
output), ``m{l}`` (an MLP's output). Destinations (read from it): the ``q``, ``k`` and ``v`` path of
every query head ``a{l}.h{h}<q>``, every MLP ``m{l}``, and ``logits``. An edge joins a source to
every later destination: with L layers and H heads there are ``1 + L(H+1)`` sources and
``L(3H+1) + 1`` destinations (GPT-2 small: 32,491 edges).

Scores and circuits are dense ``[n_sources, n_destinations]`` arrays (``edge_mask`` marks the real
edges), like the reference implementation's score matrix; numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

PATHS = ("q", "k", "v")


@dataclass(frozen=True)
class ComponentGraph:
    n_layers: int
    n_heads: int

    # -- indices ----------------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_destinations(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_source(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def head_destination(self, layer: int, head: int, path: str) -> int:
        return layer * (3 * self.n_heads + 1) + PATHS.index(path) * self.n_heads + head

    def path_destinations(self, layer: int, path: str) -> slice:
        start = layer * (3 * self.n_heads + 1) + PATHS.index(path) * self.n_heads
        return slice(start, start + self.n_heads)

    def mlp_destination(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_destination(self) -> int:
        return self.n_destinations - 1

    def attn_upstream(self, layer: int) -> int:
        """Sources that the attention of ``layer`` reads (they are the first ones in order)."""
        return 1 + layer * (self.n_heads + 1)

    def mlp_upstream(self, layer: int) -> int:
        return self.attn_upstream(layer) + self.n_heads

    # -- names ------------------------------------------------------------------------------------
    @cached_property
    def source_names(self) -> tuple[str, ...]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"a{l}.h{h}" for h in range(self.n_heads)] + [f"m{l}"]
        return tuple(names)

    @cached_property
    def destination_names(self) -> tuple[str, ...]:
        names = []
        for l in range(self.n_layers):
            for p in PATHS:
                names += [f"a{l}.h{h}<{p}>" for h in range(self.n_heads)]
            names.append(f"m{l}")
        return tuple(names + ["logits"])

    @property
    def node_names(self) -> tuple[str, ...]:
        """Nodes: every source, then ``logits``."""
        return self.source_names + ("logits",)

    @cached_property
    def destination_node(self) -> np.ndarray:
        """Node index (into ``node_names``) that each destination belongs to."""
        out = np.empty(self.n_destinations, dtype=np.int64)
        for l in range(self.n_layers):
            for p in PATHS:
                out[self.path_destinations(l, p)] = [self.head_source(l, h) for h in range(self.n_heads)]
            out[self.mlp_destination(l)] = self.mlp_source(l)
        out[-1] = self.n_sources
        return out

    @cached_property
    def upstream(self) -> np.ndarray:
        """Number of sources each destination reads."""
        out = np.empty(self.n_destinations, dtype=np.int64)
        for l in range(self.n_layers):
            out[l * (3 * self.n_heads + 1): self.mlp_destination(l)] = self.attn_upstream(l)
            out[self.mlp_destination(l)] = self.mlp_upstream(l)
        out[-1] = self.n_sources
        return out

    @cached_property
    def edge_mask(self) -> np.ndarray:
        """[n_sources, n_destinations] bool: True where an edge exists."""
        return np.arange(self.n_sources)[:, None] < self.upstream[None, :]

    @property
    def n_edges(self) -> int:
        L, H = self.n_layers, self.n_heads
        return sum(3 * H * self.attn_upstream(l) + self.mlp_upstream(l) for l in range(L)) + self.n_sources

    def edge_name(self, src: int, dst: int) -> str:
        return f"{self.source_names[src]}->{self.destination_names[dst]}"

    def parse_edge(self, name: str) -> tuple[int, int]:
        src, _, dst = name.partition("->")
        return self.source_names.index(src), self.destination_names.index(dst)

    # -- circuits ---------------------------------------------------------------------------------
    def top_n(self, scores: np.ndarray, n: int, absolute: bool = True) -> np.ndarray:
        """The ``n`` highest-scoring edges (by |score| unless ``absolute=False``)."""
        mask = self.edge_mask
        flat = np.where(mask, np.abs(scores) if absolute else scores, -np.inf).ravel()
        n = int(max(0, min(n, self.n_edges)))
        out = np.zeros(flat.shape, dtype=bool)
        if n:
            # stable order: ties broken by position (earlier sources, then earlier destinations)
            order = np.argsort(-flat, kind="stable")[:n]
            out[order] = True
        return out.reshape(mask.shape)

    def above_threshold(self, scores: np.ndarray, threshold: float, absolute: bool = True) -> np.ndarray:
        vals = np.abs(scores) if absolute else scores
        return self.edge_mask & (vals >= threshold)

    def prune(self, circuit: np.ndarray) -> np.ndarray:
        """Drop dangling edges: keep an edge only if its source is reachable from ``input`` and its
        destination's node reaches ``logits`` through circuit edges (MIB's pruning)."""
        circuit = circuit & self.edge_mask
        n_nodes = self.n_sources + 1
        dst_node = self.destination_node
        # forward: nodes reached from input, in topological (layer) order
        fwd = np.zeros(n_nodes, dtype=bool)
        fwd[0] = True
        for l in range(self.n_layers):
            for p in PATHS:
                sl = self.path_destinations(l, p)
                hit = (circuit[:, sl] & fwd[: self.n_sources, None]).any(0)
                fwd[dst_node[sl]] |= hit
            d = self.mlp_destination(l)
            fwd[dst_node[d]] = (circuit[:, d] & fwd[: self.n_sources]).any()
        fwd[-1] = (circuit[:, -1] & fwd[: self.n_sources]).any()
        # backward: nodes that reach logits, in reverse order (an MLP before its layer's heads)
        bwd = np.zeros(n_nodes, dtype=bool)
        bwd[-1] = True
        for l in reversed(range(self.n_layers)):
            m = self.mlp_source(l)
            bwd[m] = (circuit[m] & bwd[dst_node]).any()
            heads = [self.head_source(l, h) for h in range(self.n_heads)]
            bwd[heads] = (circuit[heads] & bwd[dst_node][None, :]).any(1)
        bwd[0] = (circuit[0] & bwd[dst_node]).any()
        return circuit & fwd[: self.n_sources, None] & bwd[dst_node][None, :]

    def node_scores(self, scores: np.ndarray) -> np.ndarray:
        """Node-level view: a source's score is the sum of its outgoing edges' scores (for EAP this
        is the node's own attribution, since its output feeds every later destination); ``logits``
        gets the sum of its incoming edges."""
        s = np.where(self.edge_mask, scores, 0.0)
        return np.concatenate([s.sum(1), [s[:, -1].sum()]])

    def nodes_in(self, circuit: np.ndarray) -> np.ndarray:
        """Bool per node: touched by at least one circuit edge."""
        out = np.zeros(self.n_sources + 1, dtype=bool)
        out[: self.n_sources] |= circuit.any(1)
        np.logical_or.at(out, self.destination_node, circuit.any(0))
        return out

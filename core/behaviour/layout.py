"""Where the behaviour graph's nodes go in a drawing (the workbench's view and the PDF report share it).

Layers bottom to top (tokens / the input below layer 0, logits on top); within a layer, nodes side by
side, the most influential in the middle so the main pathway reads as a column. A node's colour comes
from a contrast: its effect size (signed, group A minus group B, or model A minus model B).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.behaviour.aggregate import node_of


@dataclass(frozen=True)
class DrawnNode:
    key: str
    x: float  # layer-relative: -(n-1)/2 … (n-1)/2 within its layer
    y: float  # the layer: -1 tokens/input, n_layers logits
    mean: float  # mean value over the cases (influence / node score)
    recurrence: float  # share of cases holding it
    effect: float | None  # effect size in the chosen contrast (None: not compared)
    significant: bool


@dataclass(frozen=True)
class DrawnEdge:
    src: int  # index into the nodes
    dst: int
    mean: float  # mean weight / score over the cases
    recurrence: float


def behaviour_layout(section: dict, version: str = "a", contrast: dict | None = None,
                     max_per_layer: int = 12) -> tuple[list[DrawnNode], list[DrawnEdge]]:
    """Nodes and edges of a comparison section's behaviour graph (``version`` "a" or "b"), at most
    ``max_per_layer`` nodes a layer (the most influential, plus every significant one), coloured by
    ``contrast`` (one of the section's contrasts, or None). Places come from every version's graph in
    the section, so a node stands in the same place in model A's drawing and in model B's."""
    graphs = section["behaviour"]
    graph = graphs[version]
    rows = {r["key"]: r for r in (contrast or {}).get("rows", [])}
    strongest: dict[str, dict] = {}  # key -> its row in the version where it matters most
    for g in graphs.values():
        for n in g["nodes"]:
            if n["key"] not in strongest or abs(n["mean"]) > abs(strongest[n["key"]]["mean"]):
                strongest[n["key"]] = n
    by_layer: dict[int, list[dict]] = {}
    for n in strongest.values():
        by_layer.setdefault(int(n["layer"]), []).append(n)
    place: dict[str, tuple[float, float]] = {}
    for layer, row in by_layer.items():
        row = sorted(row, key=lambda n: (-abs(n["mean"]), n["key"]))
        keep = row[:max_per_layer] + [n for n in row[max_per_layer:] if rows.get(n["key"], {}).get("significant")]
        for i, n in enumerate(keep):  # the most influential in the middle: 0, 1, -1, 2, -2, …
            place[n["key"]] = (float((i + 1) // 2 * (1 if i % 2 else -1)), float(layer))
    nodes: list[DrawnNode] = []
    for n in sorted((n for n in graph["nodes"] if n["key"] in place), key=lambda n: (place[n["key"]][1],
                                                                                   place[n["key"]][0])):
        r = rows.get(n["key"])
        x, y = place[n["key"]]
        nodes.append(DrawnNode(n["key"], x, y, float(n["mean"]), float(n["recurrence"]),
                               None if r is None or r.get("effect_size") is None else float(r["effect_size"]),
                               bool(r and r.get("significant"))))
    index = {n.key: i for i, n in enumerate(nodes)}
    edges = [DrawnEdge(index[e["src"]], index[node_of(e["dst"])], float(e["mean"]), float(e["recurrence"]))
             for e in graph["edges"] if e["src"] in index and node_of(e["dst"]) in index]
    return nodes, edges

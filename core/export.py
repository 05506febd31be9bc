"""Session exports for other tools: Neuronpedia graph JSON, GraphML (Gephi, yEd), CSV tables.

* ``neuronpedia``: the attribution-graph JSON of circuit-tracer / Neuronpedia (``metadata``,
  ``qParams``, ``nodes`` with node_id, layer, ctx_idx, feature_type, activation, influence;
  ``links`` with source, target, weight), holding the pruned graph stored in the session;
  groups become ``qParams.supernodes`` and pinned nodes ``qParams.pinnedIds``. The format has no
  place for component circuits, so those are refused with a pointer to the other formats.
* ``graphml``: every node and edge with its attributes, through networkx.
* ``csv``: ``<name>.nodes.csv`` and ``<name>.edges.csv`` next to the ``--out`` path.

Node tables are built once (``tables``) and every format writes them. Writes are atomic.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import networkx as nx
import numpy as np

from core.errors import CircuitDeskError
from core.graph import EMBEDDING, ERROR, FEATURE, KIND_NAMES, LOGIT, compute_node_influence, cumulative_share
from core.paths import atomic_write, atomic_write_all

FORMATS = ("neuronpedia", "graphml", "csv")
NEURONPEDIA_SCHEMA_VERSION = 1
_FEATURE_TYPE = {EMBEDDING: "embedding", FEATURE: "cross layer transcoder", ERROR: "mlp reconstruction error",
                 LOGIT: "logit"}


def export_session(session, fmt: str, out: str | Path) -> list[Path]:
    """Write ``session`` as ``fmt`` to ``out``; returns the files written."""
    if fmt not in FORMATS:
        raise CircuitDeskError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = Path(out).expanduser()
    if fmt == "neuronpedia":
        text = json.dumps(neuronpedia_graph(session), separators=(",", ":"))
        return [atomic_write(out, lambda fh: fh.write(text.encode("utf-8")))]
    nodes, edges = tables(session)
    if fmt == "graphml":
        return [_write_graphml(out, nodes, edges, session)]
    stem = out.with_suffix("") if out.suffix == ".csv" else out
    # the pair is written together: a failure on either leaves the old pair as it was
    return atomic_write_all({Path(f"{stem}.nodes.csv"): _csv_writer(nodes),
                             Path(f"{stem}.edges.csv"): _csv_writer(edges)})


# -- one table of nodes and one of edges, for every kind of session ------------------------------
def tables(session) -> tuple[list[dict], list[dict]]:
    """(nodes, edges) as rows of plain values; node ``id`` strings are what edges refer to."""
    if session.graph is not None:
        return _attribution_tables(session.graph)
    return _circuit_tables(session.circuit)


def _attribution_tables(g) -> tuple[list[dict], list[dict]]:
    node_mask = g.node_mask if g.node_mask is not None else np.ones(g.n_nodes, bool)
    edge_mask = g.edge_mask if g.edge_mask is not None else np.ones(g.n_edges, bool)
    influence = g.influence if g.influence is not None else np.full(g.n_nodes, np.nan)
    ids = [g.node_id(i) for i in range(g.n_nodes)]
    nodes = []
    for i in range(g.n_nodes):
        p = int(g.pos[i])
        nodes.append({
            "id": ids[i], "label": g.label(i), "kind": KIND_NAMES[int(g.kind[i])], "layer": int(g.layer[i]),
            "position": p, "index": int(g.index[i]), "token": g.tokens[p] if 0 <= p < len(g.tokens) else "",
            "activation": float(g.activation[i]), "influence": _num(influence[i]), "in_pruned_graph": bool(node_mask[i]),
        })
    edges = [{"source": ids[s], "target": ids[t], "weight": float(w), "in_pruned_graph": bool(k)}
             for s, t, w, k in zip(g.src.tolist(), g.dst.tolist(), g.weight.tolist(), edge_mask.tolist())]
    return nodes, edges


def _circuit_tables(c) -> tuple[list[dict], list[dict]]:
    cg = c.graph
    names = list(cg.node_names)
    node_scores = cg.node_scores(c.scores)
    inside = cg.nodes_in(c.circuit)
    nodes = [{"id": n, "label": n, "kind": _component_kind(n), "layer": _component_layer(n, cg.n_layers),
              "score": float(node_scores[i]), "in_circuit": bool(inside[i])} for i, n in enumerate(names)]
    src, dst = np.nonzero(cg.edge_mask)
    dst_node = cg.destination_node
    dest_names = cg.destination_names
    edges = []
    for s, d in zip(src.tolist(), dst.tolist()):
        path = dest_names[d].partition("<")[2].rstrip(">")  # q / k / v into a head, "" otherwise
        edges.append({"source": names[s], "target": names[int(dst_node[d])], "path": path,
                      "weight": float(c.scores[s, d]), "in_circuit": bool(c.circuit[s, d])})
    return nodes, edges


def _component_kind(name: str) -> str:
    return {"i": "input", "l": "logits", "a": "head", "m": "mlp"}[name[0]]


def _component_layer(name: str, n_layers: int) -> int:
    if name == "input":
        return -1
    if name == "logits":
        return n_layers
    return int(name[1:].split(".")[0])


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


# -- Neuronpedia ---------------------------------------------------------------------------------
def neuronpedia_graph(session) -> dict:
    """The pruned attribution graph in the circuit-tracer / Neuronpedia graph JSON."""
    g = session.graph
    if g is None:
        raise CircuitDeskError("Neuronpedia's graph format holds attribution graphs; export a component "
                               "circuit as graphml or csv.")
    keep = g.node_mask if g.node_mask is not None else np.ones(g.n_nodes, bool)
    edge_keep = g.edge_mask if g.edge_mask is not None else np.ones(g.n_edges, bool)
    edge_keep = edge_keep & keep[g.src] & keep[g.dst]
    cumulative = _cumulative_influence(g)
    P = len(g.tokens)
    ids: dict[int, str] = {}
    nodes = []
    targets = g.meta.get("target_tokens", {})
    labels = session.annotations.labels
    for i in np.flatnonzero(keep).tolist():
        k, layer, pos, idx = int(g.kind[i]), int(g.layer[i]), int(g.pos[i]), int(g.index[i])
        if k == FEATURE:
            node_id, js, feature, lay = f"{layer}_{idx}_{pos}", f"{layer}_{idx}-0", _cantor(layer, idx), str(layer)
        elif k == ERROR:
            node_id, js, feature, lay = f"{layer}_-1_{pos}", f"{layer}_-1-{pos}", -1, str(layer)
        elif k == EMBEDDING:
            node_id, js, feature, lay = f"E_{idx}_{pos}", f"E_{idx}-{pos}", pos, "E"
        else:
            lay = str(g.n_layers + 1)
            node_id, js, feature = f"{lay}_{idx}_{pos}", f"L_{idx}-{pos}", idx
        node = {"node_id": node_id, "feature": feature, "layer": lay, "ctx_idx": pos,
                "feature_type": _FEATURE_TYPE[k], "token_prob": 0.0, "is_target_logit": False,
                "run_idx": 0, "reverse_ctx_idx": P - 1 - pos, "jsNodeId": js, "clerp": "",
                "influence": _num(cumulative[i]), "activation": _num(g.activation[i]) if k != LOGIT else None}
        if k == LOGIT:
            prob = float(g.activation[i])
            token = targets.get(str(i), f"#{idx}")
            node.update(token_prob=prob, is_target_logit=bool(g.logit_weight[i] > 0),
                        clerp=f'Output "{token}" (p={prob:.3f})')
        label = labels.get(i)
        if label:
            node["clerp"] = label  # the auditor's label for the node
        ids[i] = node_id
        nodes.append(node)
    links = [{"source": ids[s], "target": ids[t], "weight": float(w)}
             for s, t, w in zip(g.src[edge_keep].tolist(), g.dst[edge_keep].tolist(), g.weight[edge_keep].tolist())]
    notes = session.annotations
    supernodes = [[grp.label, *[ids[n] for n in grp.nodes if n in ids]] for grp in notes.groups]
    pinned = [ids[n] for n in notes.pinned if n in ids]
    model = session.manifest.get("model", {})
    basis = g.meta.get("basis_info", {})
    return {
        "metadata": {
            "slug": _slug(session.manifest.get("prompt", "graph")),
            "scan": str(model.get("name", "")),
            "transcoder_list": [str(f) for f in basis.get("files", [])] if isinstance(basis, dict) else [],
            "prompt_tokens": list(g.tokens),
            "prompt": session.manifest.get("prompt", ""),
            "node_threshold": g.meta.get("settings", {}).get("node_threshold"),
            "schema_version": NEURONPEDIA_SCHEMA_VERSION,
            "info": {"generator": {"name": "Circuit Desk", "version": session.manifest.get("tool_version", "")},
                     "model_sha256": model.get("sha256", ""), "basis": g.meta.get("basis", "")},
        },
        "qParams": {"pinnedIds": pinned, "supernodes": supernodes, "linkType": "both",
                    "clickedId": pinned[0] if pinned else "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def _cumulative_influence(g) -> np.ndarray:
    """circuit-tracer's node ``influence`` (see ``core.graph.cumulative_share``)."""
    return cumulative_share(g.influence if g.influence is not None else compute_node_influence(g))


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _slug(text: str) -> str:
    s = "".join(c.lower() if c.isalnum() else "-" for c in text)[:60].strip("-")
    return "-".join(p for p in s.split("-") if p) or "graph"


# -- writers -------------------------------------------------------------------------------------
def _write_graphml(out: Path, nodes: list[dict], edges: list[dict], session) -> Path:
    G = nx.MultiDiGraph(kind=session.manifest.get("kind", ""), prompt=session.manifest.get("prompt", ""),
                        model=str(session.manifest.get("model", {}).get("name", "")))
    for n in nodes:
        G.add_node(n["id"], **{k: _graphml_value(v) for k, v in n.items() if k != "id"})
    for e in edges:
        G.add_edge(e["source"], e["target"], **{k: _graphml_value(v) for k, v in e.items()
                                                 if k not in ("source", "target")})
    return atomic_write(out, lambda fh: nx.write_graphml(G, fh))


def _graphml_value(v):
    return "" if v is None else v  # GraphML has no null


def _csv_writer(rows: list[dict]):
    """``write(binary_file)`` for ``atomic_write_all``: the rows as a CSV table with a header."""

    def write(fh):
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        w = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["id"])
        w.writeheader()
        w.writerows(rows)
        text.flush()
        text.detach()

    return write

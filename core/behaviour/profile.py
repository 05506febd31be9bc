"""What one case of a suite says about a behaviour: its nodes' values under keys that mean the same
thing in every case, so that many cases (and two model versions) can be laid side by side.

Keys (``node_key``):

* attribution graphs: a feature is ``L{layer}/N{neuron}`` (neuron basis) or ``L{layer}/F{feature}``
  (transcoders), whatever the position it fired at; an error node is ``L{layer}/error``; every token
  embedding is ``tokens``; the logits are ``logits``. A key's value is the sum of its nodes'
  influence on the logits (circuit-tracer's influence in the full graph, the one pruning ranks by);
  it is *present* in a case when one of its nodes survives pruning.
* component circuits: the circuit's own node names (``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``); a
  node's value is the magnitude of its node score (the sum of its outgoing edge scores), present when
  a circuit edge touches it. Edges keep their names (``a3.h1->m5``): value the edge score's magnitude,
  present in the circuit. Magnitudes, because a score's sign follows the pair (which answer the
  corruption favours) while how much a component matters is what cases share; a head that matters
  four times as much in one version then differs consistently, whichever way each pair pushes.

Edges of attribution graphs are summed over positions by (source key, destination key), from the
pruned graph only (the full graph holds millions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.graph import EMBEDDING, ERROR, FEATURE

TOKENS, LOGITS = "tokens", "logits"
FIXED_KEYS = (TOKENS, LOGITS, "input")  # the graph's endpoints: always there, never compared


@dataclass
class CaseProfile:
    """One case's keyed values (``nodes``), the keys present in its pruned graph or circuit, its
    keyed edges, and what the model answered."""

    name: str
    method: str  # attribution | circuit
    nodes: dict[str, float]
    present: frozenset[str]
    edges: dict[tuple[str, str], float] = field(default_factory=dict)
    present_edges: frozenset[tuple[str, str]] = frozenset()
    prediction: str = ""  # the model's top next token on the case's prompt
    probability: float = 0.0  # its probability
    target: str = ""  # what the graph explains (attribution) / the answer of the first pair (circuit)
    basis: str = ""  # attribution: "neurons" or the transcoder set's name; circuit: ""
    n_layers: int = 0
    # what the checks by intervention run: (token ids, target id, foil id or None) per prompt (a circuit
    # case: its first pairs, clean prompt, answer, counterfactual), and the graph's transcoders folder
    prompts: tuple[tuple[tuple[int, ...], int, int | None], ...] = ()
    transcoders: str | None = None


CHECK_PAIRS = 8  # pairs of a circuit case the checks run on

def node_key(layer: int, kind: int, index: int, unit: str) -> str:
    """The key of an attribution-graph node, the same for that neuron/feature at every position."""
    if kind == FEATURE:
        return f"L{layer}/{unit}{index}"
    if kind == ERROR:
        return f"L{layer}/error"
    return TOKENS if kind == EMBEDDING else LOGITS


def key_layer(key: str, n_layers: int) -> int:
    """The layer a key lives on: -1 for tokens/input, ``n_layers`` for logits."""
    if key in (TOKENS, "input"):
        return -1
    if key == LOGITS:
        return n_layers
    if key.startswith("L"):
        return int(key[1:key.index("/")])
    return int(key[1:].split(".")[0])  # a3.h1, m5


def attribution_profile(session, name: str = "", prediction: tuple[str, float] = ("", 0.0)) -> CaseProfile:
    """The profile of an attribution-graph session."""
    g = session.graph
    unit = g.feature_unit
    keys = np.array([node_key(int(l), int(k), int(i), unit) for l, k, i in zip(g.layer, g.kind, g.index)], dtype=object)
    influence = g.influence if g.influence is not None else np.zeros(g.n_nodes, np.float32)
    nodes: dict[str, float] = {}
    for k, v in zip(keys, influence.astype(np.float64)):
        nodes[k] = nodes.get(k, 0.0) + float(v)
    mask = g.node_mask if g.node_mask is not None else np.ones(g.n_nodes, bool)
    present = frozenset(keys[mask].tolist())
    emask = g.edge_mask if g.edge_mask is not None else np.zeros(g.n_edges, bool)
    edges: dict[tuple[str, str], float] = {}
    for s, d, w in zip(keys[g.src[emask]], keys[g.dst[emask]], g.weight[emask].astype(np.float64)):
        edges[(s, d)] = edges.get((s, d), 0.0) + float(w)
    targets = session.manifest.get("targets") or [{}]
    basis = g.meta.get("basis", "neurons")
    prompts = ((tuple(g.token_ids), int(targets[0].get("token_id", -1)), None),)
    return CaseProfile(name, "attribution", nodes, present, edges, frozenset(edges), prediction[0],
                       float(prediction[1]), str(targets[0].get("token", "")), str(basis), g.n_layers, prompts,
                       session.manifest.get("settings", {}).get("transcoders"))


def circuit_profile(session, name: str = "", prediction: tuple[str, float] = ("", 0.0)) -> CaseProfile:
    """The profile of a component-circuit session (every edge kept: at most a few hundred thousand)."""
    r = session.circuit
    g = r.graph
    names = g.node_names
    scores = g.node_scores(r.scores)
    inside = g.nodes_in(r.circuit)
    nodes = {n: abs(float(s)) for n, s in zip(names, scores.astype(np.float64))}
    present = frozenset(n for n, i in zip(names, inside) if i)
    src, dst = np.nonzero(g.edge_mask)
    dst_names = g.destination_names
    src_names = g.source_names
    edges = {(src_names[s], dst_names[d]): abs(float(r.scores[s, d])) for s, d in zip(src, dst)}
    present_edges = frozenset((src_names[s], dst_names[d]) for s, d in zip(*np.nonzero(r.circuit)))
    answer = (r.pairs[0].get("answer_text") or [""])[0] if r.pairs else ""
    prompts = tuple((tuple(p["clean_ids"]), int(p["answer"][0]), int(p["counterfactual"][0]))
                    for p in r.pairs[:CHECK_PAIRS])
    return CaseProfile(name, "circuit", nodes, present, edges, present_edges, prediction[0], float(prediction[1]),
                       str(answer), "", g.n_layers, prompts)


def profile_of(session, name: str = "", prediction: tuple[str, float] = ("", 0.0)) -> CaseProfile:
    """The profile of a session of either kind."""
    if session.graph is not None:
        return attribution_profile(session, name, prediction)
    return circuit_profile(session, name, prediction)


def check_description(scale: float) -> str:
    """What a study's checks do to a node (``--check-scale``), in words."""
    what = "zero-ablation" if scale == 0 else f"scaling by {scale:g}"
    return f"{what} at every position but the start token"


def check_verb(check: dict) -> str:
    """"ablating" or "scaling ×2": a check (of comparison.json) as a verb."""
    what = str(check.get("intervention") or "zero-ablation")
    return "ablating" if what.startswith("zero") else "scaling ×" + what.split("scaling by ", 1)[-1].split(" ")[0]

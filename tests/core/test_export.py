"""Exports of sessions for other tools: Neuronpedia JSON (schema-checked), GraphML, CSV."""

import csv
import json

import networkx as nx
import numpy as np
import pytest

from core.attribution import AttributionSettings, attribute
from core.errors import CircuitDeskError
from core.export import export_session, neuronpedia_graph
from core.graph import FEATURE, LOGIT
from core.paths import resources_dir
from core.annotations import Annotations
from core.session import Session, new_manifest


@pytest.fixture(scope="module")
def session(tiny_model):
    m = tiny_model("llama")
    res = attribute(m, "when mary and john went to the store", AttributionSettings(max_nodes=40))
    manifest = new_manifest("attribution", m.summary(), res.prompt, AttributionSettings().to_json())
    g = res.graph
    feats = [int(i) for i in np.flatnonzero(g.node_mask & (g.kind == FEATURE))[:3]]
    notes = {"groups": [{"label": "names", "nodes": feats[:2]}], "pinned": feats, "labels": {str(feats[2]): "a name"}}
    return Session(manifest, g, Annotations.from_json(notes, g.n_nodes))


def test_neuronpedia_json_follows_the_schema_and_holds_the_pruned_graph(session, tmp_path):
    import jsonschema

    out = export_session(session, "neuronpedia", tmp_path / "g.json")[0]
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads((resources_dir() / "neuronpedia_graph.schema.json").read_text()))
    g = session.graph
    keep = g.node_mask
    edges = g.edge_mask & keep[g.src] & keep[g.dst]
    assert len(doc["nodes"]) == int(keep.sum()) and len(doc["links"]) == int(edges.sum())
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(set(ids)) == len(ids) and {l["source"] for l in doc["links"]} <= set(ids)
    # a link is the stored edge weight between the nodes it names (upstream -> downstream)
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    e = int(np.flatnonzero(edges)[0])
    s, t = int(g.src[e]), int(g.dst[e])
    link = next(l for l in doc["links"] if by_id[l["source"]]["ctx_idx"] == g.pos[s] and
                by_id[l["target"]]["ctx_idx"] == g.pos[t] and l["weight"] == pytest.approx(float(g.weight[e])))
    assert link is not None
    logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == len(g.nodes_of(LOGIT)) and sum(n["is_target_logit"] for n in logits) >= 1
    assert doc["qParams"]["supernodes"][0][0] == "names" and len(doc["qParams"]["supernodes"][0]) == 3
    assert len(doc["qParams"]["pinnedIds"]) == 3
    assert [n["clerp"] for n in doc["nodes"] if n["node_id"] == g.node_id(session.annotations.pinned[2])] == ["a name"]
    assert doc["metadata"]["prompt_tokens"] == g.tokens


def test_graphml_and_csv_load_back_with_the_same_counts(session, tmp_path):
    g = session.graph
    out = export_session(session, "graphml", tmp_path / "g.graphml")[0]
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not mkstemp's 0600
    G = nx.read_graphml(out)
    assert G.number_of_nodes() == g.n_nodes and G.number_of_edges() == g.n_edges
    total = sum(d["weight"] for _, _, d in G.edges(data=True))
    assert total == pytest.approx(float(g.weight.sum()), rel=1e-5, abs=1e-5)
    nodes_csv, edges_csv = export_session(session, "csv", tmp_path / "g.csv")
    assert nodes_csv.name == "g.nodes.csv" and edges_csv.name == "g.edges.csv"
    with open(nodes_csv) as fh:
        assert len(list(csv.DictReader(fh))) == g.n_nodes
    with open(edges_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == g.n_edges and sum(r["in_pruned_graph"] == "True" for r in rows) == int(g.edge_mask.sum())


def test_circuit_sessions_export_as_graphml_not_neuronpedia(tiny_model, tmp_path):
    from core.circuits import CircuitSettings, find_circuit, make_task

    m = tiny_model("gpt2")
    res = find_circuit(m, make_task(m, "induction", n_pairs=2), CircuitSettings(method="eap", top_n=5))
    s = Session(new_manifest("circuit", m.summary(), "", res.settings), circuit=res)
    with pytest.raises(CircuitDeskError, match="graphml or csv"):
        neuronpedia_graph(s)
    G = nx.read_graphml(export_session(s, "graphml", tmp_path / "c.graphml")[0])
    assert G.number_of_nodes() == len(res.graph.node_names)
    assert G.number_of_edges() == res.graph.n_edges
    assert sum(d["in_circuit"] for _, _, d in G.edges(data=True)) == int(res.circuit.sum())


def test_bad_outputs_fail_clearly(session, tmp_path):
    with pytest.raises(CircuitDeskError, match="does not exist"):
        export_session(session, "csv", tmp_path / "missing" / "g.csv")
    with pytest.raises(CircuitDeskError, match="Unknown export format"):
        export_session(session, "xlsx", tmp_path / "g.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_csv_pair_is_written_all_or_nothing(session, tmp_path, monkeypatch):
    """The disk fills while the second table is written: the old pair stays as it was, byte for
    byte, and no temporary file is left (before, the nodes table was already replaced)."""
    import errno

    old = {tmp_path / "g.nodes.csv": b"id\nold-node\n", tmp_path / "g.edges.csv": b"source,target\nold,edge\n"}
    for path, data in old.items():
        path.write_bytes(data)
    real, calls = csv.DictWriter.writerows, []

    def disk_full_on_second_table(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            real(self, rows[:1])  # part of it reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rows)

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full_on_second_table)
    with pytest.raises(CircuitDeskError, match=r"Cannot write .*g\.edges\.csv: No space left on device\."):
        export_session(session, "csv", tmp_path / "g.csv")
    assert len(calls) == 2
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == old
    monkeypatch.undo()
    written = export_session(session, "csv", tmp_path / "g.csv")  # and with room, both are replaced
    assert sorted(written) == sorted(old) and all(p.read_bytes() != old[p] for p in old)
    assert sorted(tmp_path.iterdir()) == sorted(old)

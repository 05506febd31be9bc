"""verify: an untouched session re-computes to the same graph; a changed model or array does not."""

import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from core.attribution import AttributionSettings, attribute
from core.models import load_model
from core.session import Session, load_session, new_manifest, save_session
from core.verify import TOLERANCE, verify_session


@pytest.fixture
def model_copy(tiny_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder("llama"), folder)
    return folder


def _attribution_session(folder, path):
    m = load_model(folder, device="cpu")
    settings = AttributionSettings(max_nodes=30)
    res = attribute(m, "when mary and john went to the store", settings)
    save_session(path, Session(new_manifest("attribution", m.summary(), res.prompt, settings.to_json()), res.graph))
    return load_session(path)


def test_untouched_session_verifies_and_tampering_is_caught(model_copy, tmp_path):
    s = _attribution_session(model_copy, tmp_path / "a.cdesk")
    report = verify_session(s)
    assert report.ok and report.fingerprint_ok and report.problems == []
    assert report.compared == s.graph.n_edges and report.max_rel_deviation <= TOLERANCE

    # a stored weight altered (as if someone edited the array): caught, and named
    e = int(np.argmax(np.abs(s.graph.weight)))
    s.graph.weight[e] *= 1.01
    report = verify_session(s)
    assert not report.ok and report.fingerprint_ok
    assert report.max_rel_deviation == pytest.approx(0.01 * abs(s.graph.weight[e]) / 1.01
                                                     / np.abs(s.graph.weight).max(), rel=1e-3)
    assert s.graph.label(int(s.graph.src[e])) in report.worst_edge
    assert "differ by up to" in report.problems[0]

    # the model file changed on disk: the fingerprint says which file, nothing is recomputed
    weights = next(model_copy.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] * 1.001
    save_file(tensors, str(weights), metadata={"format": "pt"})
    report = verify_session(load_session(tmp_path / "a.cdesk"))
    assert not report.ok and not report.fingerprint_ok and report.compared == 0
    assert any(weights.name in p and "changed" in p for p in report.problems)


def test_circuit_session_verifies_from_its_stored_token_ids(tiny_folder, tmp_path):
    from core.circuits import CircuitSettings, find_circuit, make_task

    m = load_model(tiny_folder("gpt2"), device="cpu")
    res = find_circuit(m, make_task(m, "induction", n_pairs=3), CircuitSettings(method="eap", top_n=5))
    path = save_session(tmp_path / "c.cdesk", Session(new_manifest("circuit", m.summary(), "", res.settings),
                                                      circuit=res))
    s = load_session(path)
    report = verify_session(s)
    assert report.ok, report.problems
    assert report.compared == res.graph.n_edges
    s.circuit.scores[res.graph.edge_mask] *= 1.5
    assert not verify_session(s).ok

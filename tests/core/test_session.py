"""The .cdesk session file: round trip, atomic writes, and refusing untrusted content."""

import io
import json
import zipfile

import numpy as np
import pytest

from core.annotations import Annotations
from core.attribution import AttributionSettings, attribute
from core.errors import CircuitDeskError
from core.session import Session, load_session, new_manifest, save_session


@pytest.fixture(scope="module")
def session(tiny_model):
    m = tiny_model("gpt2")
    res = attribute(m, "when mary and john went to the store", AttributionSettings(max_nodes=30))
    manifest = new_manifest("attribution", m.summary(), res.prompt, AttributionSettings().to_json(),
                            stats=res.stats, targets=[t.to_json() for t in res.targets])
    return Session(manifest, res.graph, Annotations(findings="first look"))


def test_round_trip_is_identical(session, tmp_path):
    path = save_session(tmp_path / "a.cdesk", session)
    back = load_session(path)
    for name, arr in session.graph.arrays().items():
        assert np.array_equal(getattr(back.graph, name), arr, equal_nan=arr.dtype.kind == "f"), name
    assert back.graph.tokens == session.graph.tokens and back.graph.meta["stats"] == session.graph.meta["stats"]
    assert back.annotations == Annotations(findings="first look") and back.edited == ()
    assert back.manifest["model"]["sha256"] == session.manifest["model"]["sha256"]


def test_logit_lens_is_stored_and_checked(tiny_model, tmp_path):
    """attribution_session stores the logit lens; its last layer at the last position is the model's
    own probability of the target (reading the final residual stream is the forward pass)."""
    from core.runs import attribution_session

    m = tiny_model("llama")
    s, res = attribution_session(m, "tiny", "when mary and john went to the store", AttributionSettings(max_nodes=20))
    lens = s.logit_lens
    assert lens.shape == (m.facts.n_layers + 1, len(res.graph.tokens))
    assert lens[-1, -1] == pytest.approx(res.targets[0].probability, abs=1e-5)
    assert s.manifest["logit_lens"]["target_id"] == res.targets[0].token_id
    path = save_session(tmp_path / "l.cdesk", s)
    back = load_session(path)
    assert np.array_equal(back.logit_lens, lens) and back.manifest["logit_lens"]["tokens"] == res.graph.tokens
    # a lens of the wrong shape is refused like any other inconsistency
    s.logit_lens = lens[:-1]
    save_session(path, s)
    with pytest.raises(CircuitDeskError, match="inconsistent logit lens"):
        load_session(path)


def test_failed_write_leaves_nothing(session, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt  # as a cancel in the middle of writing

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_session(tmp_path / "b.cdesk", session)
    assert list(tmp_path.iterdir()) == []


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        members = {n: zin.read(n) for n in zin.namelist()}
        for name, data in edit(members).items():
            zout.writestr(name, data)


def test_untrusted_files_are_refused_clearly(session, tmp_path):
    good = save_session(tmp_path / "good.cdesk", session)
    bad = tmp_path / "bad.cdesk"

    def pickled(members):
        buf = io.BytesIO()
        np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
        return {**members, "arrays/weight.npy": buf.getvalue()}

    cases = {
        "unexpected entry": lambda m: {**m, "../evil.txt": b"x"},
        "damaged": pickled,
        "not valid JSON": lambda m: {**m, "manifest.json": b"{"},
        "newer Circuit Desk": lambda m: {**m, "manifest.json": json.dumps({**json.loads(m["manifest.json"]), "format_version": 99}).encode()},
        "inconsistent graph": lambda m: {k: v for k, v in m.items() if k != "arrays/dst.npy"},
    }
    for message, edit in cases.items():
        _rewrite(good, bad, edit)
        with pytest.raises(CircuitDeskError, match=message):
            load_session(bad)
    bad.write_bytes(b"plain text")
    with pytest.raises(CircuitDeskError, match="not a zip"):
        load_session(bad)
    with pytest.raises(CircuitDeskError, match="does not exist"):
        load_session(tmp_path / "absent.cdesk")


def test_circuit_session_round_trip_and_tampering(tiny_model, tmp_path):
    from core.circuits import CircuitSettings, find_circuit
    from core.circuits.tasks import PairSet, TokenPair

    model = tiny_model("gpt2")
    pairs = PairSet("t", [TokenPair((1, 5, 9, 12), (1, 5, 10, 12), (7,), (8,), "p", "", "")])
    res = find_circuit(model, pairs, CircuitSettings(method="eap"))
    manifest = new_manifest("circuit", model.summary(), "", CircuitSettings().to_json())
    path = save_session(tmp_path / "c.cdesk", Session(manifest, circuit=res))
    back = load_session(path).circuit
    assert np.array_equal(back.scores, res.scores) and np.array_equal(back.circuit, res.circuit)
    assert back.curve == res.curve and back.pairs == res.pairs and back.metric_clean == res.metric_clean

    def bad_circuit(members):
        buf = io.BytesIO()
        c = np.ones_like(res.circuit)  # edges that cannot exist
        np.save(buf, c)
        return {**members, "arrays/circuit.npy": buf.getvalue()}

    _rewrite(path, tmp_path / "bad.cdesk", bad_circuit)
    with pytest.raises(CircuitDeskError, match="inconsistent circuit"):
        load_session(tmp_path / "bad.cdesk")


def test_fuzzed_manifests_never_crash_the_loader(session, tmp_path_factory):
    """Any JSON in manifest.json (also mutations of a real one) gives a CircuitDeskError at worst."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = tmp_path_factory.mktemp("fuzz")
    good = save_session(folder / "good.cdesk", session)
    with zipfile.ZipFile(good) as z:
        real = json.loads(z.read("manifest.json"))
    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=20)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)
    mutated = st.fixed_dictionaries({}, optional={k: values for k in real}).map(lambda edits: {**real, **edits})
    bad = folder / "bad.cdesk"

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(manifest=values | mutated)
    def check(manifest):
        _rewrite(good, bad, lambda m: {**m, "manifest.json": json.dumps(manifest).encode()})
        try:
            load_session(bad)
        except CircuitDeskError:
            pass

    check()

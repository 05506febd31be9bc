"""Untrusted sessions in the window and in every command: a failed open changes nothing (so Ctrl+S
cannot overwrite the good file), and whatever the loader accepts, report, export, verify and the
window's File → Open all work on."""

import io
import json
import zipfile

import numpy as np
import pytest
from PySide6.QtWidgets import QFileDialog

from core.annotations import Annotations
from core.attribution import AttributionSettings
from core.errors import CircuitDeskError
from core.export import export_session
from core.report import build_report
from core.runs import attribution_session
from core.session import load_session, save_session
from core.verify import verify_session
from desktop.app import MainWindow
from desktop.report_pdf import write_pdf

PROMPT = "when mary and john went to the store"


@pytest.fixture(scope="module")
def good(tiny_folder, tmp_path_factory):
    from core.models import load_model

    folder = tiny_folder("llama")
    s, _ = attribution_session(load_model(folder, device="cpu"), str(folder), PROMPT, AttributionSettings(max_nodes=30))
    feats = [int(i) for i in np.flatnonzero(s.graph.kind == 1)[:3]]
    s.annotations = Annotations.from_json({"groups": [{"label": "pair", "nodes": feats[:2]}], "pinned": feats[2:],
                                           "labels": {str(feats[0]): "a name"}, "findings": "It copies the name.",
                                           "threshold": 0.7}, s.graph.n_nodes)
    return save_session(tmp_path_factory.mktemp("good") / "good.cdesk", s)


def _open_via_menu(w, monkeypatch, path) -> None:
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(path), "")))
    w.actions["file.open_session"].trigger()


def test_a_failed_open_changes_nothing_and_save_keeps_the_good_session(qtbot, good, tmp_path, monkeypatch):
    path = tmp_path / "good.cdesk"
    path.write_bytes(good.read_bytes())
    before = path.read_bytes()
    with zipfile.ZipFile(good) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    notes = json.loads(parts["annotations.json"])
    bad = tmp_path / "damaged.cdesk"
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in {**parts, "annotations.json": json.dumps({**notes, "groups": 5}).encode(),
                     "manifest.json": parts["manifest.json"].replace(PROMPT.encode(), b"another prompt")}.items():
            z.writestr(n, d)

    w = MainWindow()
    qtbot.addWidget(w)
    _open_via_menu(w, monkeypatch, path)
    view, title, findings, groups = w.state.view, w.windowTitle(), w.state.findings, list(w.state.groups)
    assert w.documents.session_path == str(path) and findings == "It copies the name." and len(groups) == 1

    _open_via_menu(w, monkeypatch, bad)
    assert "groups" in w.status.last_error and "damaged.cdesk" in w.status.last_error
    assert w.state.view is view and w.windowTitle() == title and w.documents.session_path == str(path)
    assert w.state.findings == findings and list(w.state.groups) == groups and w.state.analysis.opened.manifest["prompt"] == PROMPT

    w.state.set_note(int(w.state.view.visible_nodes()[0]), "checked")  # an edit, then Ctrl+S
    w.actions["file.save"].trigger()
    s = load_session(path)
    assert path.read_bytes() != before and s.manifest["prompt"] == PROMPT and s.edited == ()
    assert s.annotations.findings == "It copies the name." and [g.label for g in s.annotations.groups] == ["pair"]
    assert "checked" in s.annotations.labels.values()


def test_an_edited_session_opens_with_a_warning(qtbot, good, tmp_path, monkeypatch):
    with zipfile.ZipFile(good) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    edited = tmp_path / "edited.cdesk"
    with zipfile.ZipFile(edited, "w") as z:
        for n, d in {**parts, "annotations.json": parts["annotations.json"].replace(b"copies", b"forges")}.items():
            z.writestr(n, d)
    w = MainWindow()
    qtbot.addWidget(w)
    _open_via_menu(w, monkeypatch, edited)
    assert w.state.findings == "It forges the name."
    assert "annotations.json" in w.status.last_error and "changed after it was saved" in w.status.last_error


# -- hostile but well-formed content -----------------------------------------------------------------
def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_fuzzed_session_contents_are_refused_or_work_everywhere(qtbot, good, tmp_path_factory, monkeypatch):
    """Schema-valid but hostile content (extreme numbers, empty or huge strings, nodes out of range,
    arrays of other values, dtypes and lengths): the loader refuses it with one sentence, or report,
    export (every format), verify and the window's File → Open all work on what it accepted."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with zipfile.ZipFile(good) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    manifest, notes = json.loads(parts["manifest.json"]), json.loads(parts["annotations.json"])
    arrays = {n: np.load(io.BytesIO(d)) for n, d in parts.items() if n.startswith("arrays/")}
    folder = tmp_path_factory.mktemp("fuzz")
    w = MainWindow()
    qtbot.addWidget(w)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(folder / "f.cdesk"), "")))

    numbers = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False, width=32),
                        st.sampled_from([0, -1, 1, 2**31, 1e30, -1e-30]))
    texts = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\u202e", "x" * 5000, "a\nb", "<b>&"]))
    manifest_edits = st.dictionaries(
        st.sampled_from(["prompt", "command", "created", "tool_version", "model.name", "model.n_layers",
                         "model.vocab_size", "settings.max_nodes", "settings.node_threshold", "graph.n_layers",
                         "stats.replacement_score", "stats.nodes", "logit_lens.target"]),
        st.one_of(numbers, texts), max_size=3)
    note_edits = st.fixed_dictionaries({}, optional={
        "pinned": st.lists(st.integers(-3, 120), max_size=5), "threshold": st.floats(-1, 2, allow_nan=False),
        "labels": st.dictionaries(st.integers(-2, 120).map(str), texts, max_size=3), "findings": texts,
        "groups": st.lists(st.fixed_dictionaries({"label": texts, "nodes": st.lists(st.integers(-2, 120), max_size=4)}),
                           max_size=3)})
    array_edits = st.dictionaries(
        st.sampled_from(sorted(arrays)),
        st.tuples(st.sampled_from(["scale", "shift", "truncate", "int", "zero", "negate", "huge"]), numbers), max_size=2)

    def edit_array(a, how, x):
        if how == "truncate":
            return a[: max(0, len(a) - 1)] if a.ndim == 1 else a[:-1]
        if a.dtype == bool:
            return ~a if how == "negate" else a
        if how == "int":
            return a.astype(np.int64) if a.dtype.kind == "f" else a.astype(np.float32)
        if how == "zero":
            return np.zeros_like(a)
        if how == "huge":
            return np.full_like(a, np.iinfo(a.dtype).max if a.dtype.kind == "i" else 3e38)
        if how == "negate":
            return -a
        b = np.asarray(a, np.float64)
        return (b * x if how == "scale" else b + x).astype(a.dtype)  # wraps around in small integer types

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(me=manifest_edits, ne=note_edits, ae=array_edits)
    def check(me, ne, ae):
        m = json.loads(json.dumps(manifest))
        for key, value in me.items():
            doc = m
            *head, last = key.split(".")
            for k in head:
                doc = doc.setdefault(k, {}) if isinstance(doc, dict) else {}
            doc[last] = value
        files = {"manifest.json": json.dumps(m).encode(), "annotations.json": json.dumps({**notes, **ne}).encode()}
        for n, a in arrays.items():
            with np.errstate(all="ignore"):
                files[n] = _npy(edit_array(a, *ae[n]) if n in ae else a)
        path = folder / "f.cdesk"
        with zipfile.ZipFile(path, "w") as z:
            for n, d in files.items():
                z.writestr(n, d)
        try:
            s = load_session(path)
        except CircuitDeskError as err:
            assert "\n" not in str(err) and len(str(err)) < 600
            return
        write_pdf(build_report(s, path), folder / "f.pdf")
        for fmt, out in (("neuronpedia", "f.json"), ("graphml", "f.graphml"), ("csv", "f")):
            export_session(s, fmt, folder / out)
        try:
            verify_session(s)  # may disagree; must not crash
        except CircuitDeskError as err:  # e.g. an edited prompt the tokenizer cannot take
            assert "\n" not in str(err)
        accepted.append(path)
        w.status.last_error = None
        w.actions["file.open_session"].trigger()
        assert w.documents.session_path == str(path), w.status.last_error

    accepted = []
    check()
    assert accepted, "no example was accepted: the fuzzing only exercised refusals"

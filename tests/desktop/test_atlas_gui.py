"""The feature atlas in the workbench, driven as a person drives it, on real atlases of the tiny
llama model (built with ``build_atlas`` from a corpus of its vocabulary): found for the graph on
show, opened from the Tools menu (another model's atlas refused with one sentence), built from the
Tools menu's dialog (cancelled mid-build, then resumed to the identical atlas), shown in the
inspector (top examples with every token shaded by its activation), on the canvas (the atlas label
unless the user labelled the node) and by Find (example text)."""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from core.analysis import model_key
from core.atlas import build as atlas_build
from core.atlas.build import build_atlas
from core.atlas.store import Example
from core.settings import AtlasSettings
from desktop.atlas import FOLDERS_KEY, NO_ATLAS
from desktop.feature_card import AFTER, BEFORE, COOL, EXAMPLES, MAX_ALPHA, WARM, example_html
from tiny_models import WORDS

SETTINGS = AtlasSettings(context=8, top_k=12)  # 12 examples per side: the inspector shows 10


def write_corpus(path: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """Random sentences of the tiny vocabulary, one document per line of a .jsonl file."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n_docs)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def atlases(tmp_path_factory, tiny_model):
    """A folder of two atlases: the tiny llama's and the tiny gpt2's (another model)."""
    root = tmp_path_factory.mktemp("atlases")
    corpus = write_corpus(root / "corpus.jsonl")
    llama = build_atlas(tiny_model("llama"), root / "named" / "llama", SETTINGS, corpus=[str(corpus)]).path
    gpt2 = build_atlas(tiny_model("gpt2"), root / "other" / "gpt2", SETTINGS, corpus=[str(corpus)]).path
    return {"llama": llama, "gpt2": gpt2, "corpus": corpus, "named": root / "named"}


def with_atlas(workbench, qtbot, atlases, folders=None):
    """A window whose settings name the folder of atlases, after a trace of the tiny llama: the
    atlas is found and used by itself."""
    w = workbench.window()
    w.settings.setValue(FOLDERS_KEY, [str(f) for f in (folders or [atlases["named"]])])
    workbench.run(w)
    qtbot.waitUntil(lambda: w.state.atlas is not None, timeout=30_000)
    return w


def feature_nodes(w) -> list[int]:
    v = w.state.view
    return [int(i) for i in v.visible_nodes() if v.feature_of(int(i)) is not None]


def token_spans(label_html: str) -> list[tuple[str, str | None, bool]]:
    """(token text, background or None, bold) of each token span of an example's rich text."""
    out = []
    for m in re.finditer(r'(<b>)?<span(?: style="background-color:([^"]*)")?>(.*?)</span>', label_html):
        out.append((html.unescape(m.group(3)), m.group(2), bool(m.group(1))))
    return out


def rgba(style: str) -> tuple[tuple[int, int, int], float]:
    r, g, b, a = re.fullmatch(r"rgba\((\d+),(\d+),(\d+),([\d.]+)\)", style).groups()
    return (int(r), int(g), int(b)), float(a)


# ---------------------------------------------------------------------------------------------
def test_the_atlas_of_the_graphs_model_is_found_and_another_models_never_used(workbench, qtbot, atlases, tmp_path):
    # the user named two folders: one holds the gpt2 atlas only, the other the llama one
    w = with_atlas(workbench, qtbot, atlases, folders=[atlases["gpt2"].parent, atlases["named"]])
    sha = w.runs.model.fingerprint.sha256
    assert w.state.atlas.path == atlases["llama"].resolve() and w.state.atlas.model_sha256 == sha
    assert w.state.atlas_note.startswith("Feature atlas llama: 1 file (corpus.jsonl)")
    assert w.atlas.note_label.isVisible() and w.atlas.note == w.state.atlas_note

    # with only the gpt2 atlas named, the llama graph gets none, and the status line says how to build one
    other = workbench.window("other.ini")
    other.settings.setValue(FOLDERS_KEY, [str(atlases["gpt2"].parent)])
    workbench.run(other)
    qtbot.waitUntil(lambda: other.state.atlas_note == NO_ATLAS, timeout=30_000)
    assert other.state.atlas is None and other.atlas.note == NO_ATLAS

    # a session saved from the first window, opened in a window that knows the llama atlas's folder
    session = tmp_path / "traced.cdesk"
    assert w.documents.save(str(session))
    reader = workbench.window("reader.ini")
    reader.settings.setValue(FOLDERS_KEY, [str(atlases["named"])])
    assert reader.documents.open(str(session))
    qtbot.waitUntil(lambda: reader.state.atlas is not None, timeout=30_000)
    assert reader.state.atlas.path == atlases["llama"].resolve()


def test_open_feature_atlas_refuses_another_models_or_a_damaged_atlas_in_one_sentence(workbench, qtbot, atlases,
                                                                                     monkeypatch, tmp_path):
    w = workbench.graph()
    qtbot.waitUntil(lambda: w.state.atlas_note == NO_ATLAS, timeout=30_000)
    notes, labels = dict(w.state.notes), w.graph_pane.drawn_labels()
    answer = {"folder": str(atlases["gpt2"])}
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: answer["folder"])
    w.actions["tools.open_atlas"].trigger()
    qtbot.waitUntil(lambda: w.status.error_box is not None, timeout=30_000)
    message = w.status.error_box.text()
    assert "built for another model" in message and message.count(". ") == 0 and message.endswith(".")
    assert w.state.atlas is None and w.state.atlas_note == NO_ATLAS  # nothing else changed
    assert w.state.notes == notes and w.graph_pane.drawn_labels() == labels
    assert not w.settings.value(FOLDERS_KEY)
    w.status.error_box.close()

    # a damaged copy of the right atlas (one byte of its features flipped): refused in one sentence too
    damaged = tmp_path / "damaged"
    shutil.copytree(atlases["llama"], damaged)
    features = damaged / "features.safetensors"
    data = bytearray(features.read_bytes())
    data[-1] ^= 0xFF
    features.write_bytes(bytes(data))
    answer["folder"] = str(damaged)
    w.actions["tools.open_atlas"].trigger()
    qtbot.waitUntil(lambda: w.status.error_box is not None, timeout=30_000)
    assert w.status.error_box.text() == (f"The atlas {damaged} is damaged: features.safetensors does not match its "
                                         f"recorded sha256; build it again.")
    assert w.state.atlas is None and w.state.atlas_note == NO_ATLAS
    w.status.error_box.close()

    answer["folder"] = str(atlases["llama"])  # the right one: used, and its folder remembered
    w.actions["tools.open_atlas"].trigger()
    qtbot.waitUntil(lambda: w.state.atlas is not None, timeout=30_000)
    assert w.state.atlas.path == atlases["llama"].resolve()
    assert w.settings.value(FOLDERS_KEY) in ([str(atlases["llama"].resolve())], str(atlases["llama"].resolve()))


def test_build_dialog_builds_cancel_then_build_again_resumes(workbench, qtbot, atlases, monkeypatch, tmp_path):
    w = workbench.graph()
    out = tmp_path / "built"
    corpus = atlases["corpus"]
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: ([str(corpus)], ""))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(out))
    # the scan waits after its first batch until the test has pressed Cancel
    real_update, gate, scanning = atlas_build._LayerStats.update, threading.Event(), threading.Event()

    def held(self, *args):
        real_update(self, *args)
        scanning.set()
        gate.wait(60)

    monkeypatch.setattr(atlas_build._LayerStats, "update", held)
    w.actions["tools.build_atlas"].trigger()
    d = w.atlas.dialog
    qtbot.waitUntil(d.isVisible)
    assert "text sampled from the model itself (fixed seed) and the bundled prompts" in d.corpus_note.text()
    assert d.spins["sample_tokens"].isEnabled()
    context = d.spins["context"]  # the window: typed as a person types it
    context.setFocus()
    context.selectAll()
    qtbot.keyClicks(context, "8")
    top_k = d.spins["top_k"]
    top_k.selectAll()
    qtbot.keyClicks(top_k, "12")
    qtbot.mouseClick(d.add_files_button, Qt.MouseButton.LeftButton)
    assert d.corpus_paths() == [str(corpus)] and not d.spins["sample_tokens"].isEnabled()
    qtbot.mouseClick(d.browse_button, Qt.MouseButton.LeftButton)
    assert d.out_edit.text() == str(out) and d.build_button.isEnabled()
    qtbot.mouseClick(d.build_button, Qt.MouseButton.LeftButton)
    assert not d.isVisible() and w.runner.busy
    qtbot.waitUntil(scanning.is_set, timeout=60_000)
    qtbot.waitUntil(lambda: w.atlas.note.startswith("Building a feature atlas of about "), timeout=10_000)
    assert "MB from " in w.atlas.note and " tokens (" in w.atlas.note  # the size estimate, as it arrived
    with qtbot.waitSignal(w.status.job_finished, timeout=60_000):
        qtbot.mouseClick(w.status.cancel_button, Qt.MouseButton.LeftButton)
        gate.set()
    assert w.jobs.states()[0] == "cancelled"
    assert w.status.label.text() == ("Atlas build cancelled; Tools → Build Feature Atlas… into the same folder "
                                     "resumes it.")
    assert (out / "build").is_dir() and not (out / "atlas.json").exists() and w.state.atlas is None

    monkeypatch.setattr(atlas_build._LayerStats, "update", real_update)
    w.actions["tools.build_atlas"].trigger()  # the dialog offers the cancelled build again
    d = w.atlas.dialog
    qtbot.waitUntil(d.isVisible)
    assert d.out_edit.text() == str(out) and d.corpus_paths() == [str(corpus)]
    assert d.spins["context"].value() == 8 and d.spins["top_k"].value() == 12
    assert "unfinished build" in d.out_note.text()
    with qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        qtbot.keyClick(d.focusWidget() or d, Qt.Key.Key_Return)  # Build is the default button
    assert w.status.last_error is None, w.status.last_error
    assert w.status.label.text() == f"Atlas written to {out}, resumed after {SETTINGS.batch_size} windows."
    assert w.jobs.states()[0] == "done"
    # the resumed atlas is the atlas of one uninterrupted build
    built = json.loads((out / "atlas.json").read_text())
    whole = json.loads((atlases["llama"] / "atlas.json").read_text())
    assert built["features_sha256"] == whole["features_sha256"]
    qtbot.waitUntil(lambda: w.state.atlas is not None, timeout=30_000)  # it describes the graph on show
    assert w.state.atlas.path == out.resolve()


def test_inspector_shows_the_features_top_examples_shaded_by_activation(workbench, qtbot, atlases):
    w = with_atlas(workbench, qtbot, atlases)
    v, atlas = w.state.view, w.state.atlas
    node = next(n for n in feature_nodes(w) if v.values[n] < 0)  # a SwiGLU neuron negative here
    w.graph_pane.click_node(node)
    card_view = w.inspector.card
    layer, index = v.feature_of(node)
    card = atlas.card(layer, index)
    assert card.signed and card_view.sign == -1 and card_view.side.isVisible()

    def check(examples, sign):
        assert len(card_view.examples) == min(EXAMPLES, len(examples)) > 0
        for lab, e in zip(card_view.examples, examples):
            spans = token_spans(lab.text())
            assert [t for t, _, _ in spans] == list(e.tokens)  # every token, in order (8-token windows: none elided)
            assert [b for _, _, b in spans] == [i == e.at for i in range(len(e.tokens))]  # the peak is bold
            peak = abs(e.activations[e.at])
            for (_, style, _), a in zip(spans, e.activations):
                if style is None:
                    assert abs(a) < 0.05 * peak
                    continue
                colour, alpha = rgba(style)
                assert colour == (WARM if a > 0 else COOL)
                assert alpha == pytest.approx(MAX_ALPHA * min(1.0, abs(a) / abs(e.value)), abs=1e-3)
            assert rgba(spans[e.at][1]) == ((WARM if sign > 0 else COOL), pytest.approx(MAX_ALPHA, abs=1e-3))
            assert e.where in lab.toolTip()

    check(card.bottom, -1)  # the node's own side first: its most negative windows
    assert f"Atlas label: <b>{html.escape(card.label_negative)}</b>" in card_view.summary.text()
    assert v.atlas_label(node, atlas) == card.label_negative
    assert (card_view.histogram.counts == card.hist_negative).all()
    card_view.side.setFocus()
    qtbot.keyClick(card_view.side, Qt.Key.Key_Up)  # the user switches to the positive side
    assert card_view.sign == 1
    check(card.top, 1)
    assert (card_view.histogram.counts == card.hist_positive).all()
    assert w.inspector.tokens.rowCount() == 10  # today's token effects stay

    # a window without an atlas: one line saying how to build one
    bare = workbench.graph("bare.ini")
    qtbot.waitUntil(lambda: bare.state.atlas_note == NO_ATLAS, timeout=30_000)
    bare.graph_pane.click_node(node)
    assert bare.inspector.card.isVisible() and bare.inspector.card.summary.text() == html.escape(NO_ATLAS)
    assert bare.inspector.card.examples == []


def test_canvas_label_is_the_atlas_label_unless_the_user_labelled_the_node(workbench, qtbot, atlases):
    w = with_atlas(workbench, qtbot, atlases)
    v, atlas, pane = w.state.view, w.state.atlas, w.graph_pane
    specs = [(n, text) for n, text, role in pane._label_specs if role == "node" and v.feature_of(n) is not None]
    node, text = next((n, t) for n, t in specs if v.atlas_label(n, atlas))
    layer, index = v.feature_of(node)
    expected = f"L{layer}/N{index}: {atlas.label(layer, index, -1 if v.values[node] < 0 else 1)}"
    assert text == expected and expected in pane.drawn_labels()
    assert f"— atlas: {expected.split(': ', 1)[1]}" in pane._tip(0, 0, node)
    pane.click_node(node)
    note = w.inspector.note_edit
    note.setFocus()
    qtbot.keyClicks(note, "capital detector")
    qtbot.keyClick(note, Qt.Key.Key_Return)
    assert w.state.notes[node] == "capital detector"
    assert "capital detector" in pane.drawn_labels() and expected not in pane.drawn_labels()
    assert "“capital detector”" in pane._tip(0, 0, node) and "atlas:" not in pane._tip(0, 0, node)
    assert w.inspector.facts.text().startswith("<b>capital detector</b>")


def test_find_matches_example_text_and_selects_the_nodes(workbench, qtbot, atlases):
    w = with_atlas(workbench, qtbot, atlases)
    v, atlas = w.state.view, w.state.atlas
    word = next(x for x in ("capital", "london", "lasted", "france") if not any(x in lab.lower() for lab in v.labels))
    # every feature node whose top or bottom examples hold the word (read from its card, not searched)
    expected = set()
    for n in v.feature_nodes():
        card = atlas.card(*v.feature_of(n))
        if any(word in e.text.lower() for e in card.top + card.bottom) or word in (card.label + card.label_negative):
            expected.add(n)
    assert expected
    find = w.graph_pane.find_edit
    find.setFocus()
    qtbot.keyClicks(find, word)
    seen = []
    for _ in range(len(expected)):
        qtbot.keyClick(find, Qt.Key.Key_Return)
        assert len(w.state.selected) == 1
        seen.append(w.state.selected[0])
    assert set(seen) == expected and len(seen) == len(set(seen))
    qtbot.keyClick(find, Qt.Key.Key_Return)  # round again
    assert w.state.selected == (seen[0],)


def test_long_examples_are_elided_around_the_peak():
    """A 400-token window: the peak token and the tokens that fit around it are shown, in order,
    with "…" for what is left out on either side."""
    tokens = tuple(f" w{i}" for i in range(400))
    acts = np.zeros(400, np.float32)
    acts[250], acts[249], acts[251] = 4.0, 2.0, -1.0
    e = Example(tokens, acts, 4.0, 250, "notes.txt", 0, 0)
    text = example_html(e)
    shown = token_spans(text)
    words = [t for t, _, _ in shown]
    first, last = tokens.index(words[0]), tokens.index(words[-1])
    assert words == list(tokens[first:last + 1]) and first < 250 < last
    assert sum(map(len, tokens[first:250])) <= BEFORE < sum(map(len, tokens[first - 1:250]))
    assert sum(map(len, tokens[251:last + 1])) <= AFTER < sum(map(len, tokens[251:last + 2]))
    assert text.startswith("…") and text.endswith("…")
    (peak,) = [(t, style) for t, style, bold in shown if bold]
    assert peak[0] == " w250" and rgba(peak[1]) == (WARM, pytest.approx(MAX_ALPHA))
    assert [rgba(style)[0] if style else None for t, style, _ in shown if t in (" w249", " w251", " w252")] == [
        WARM, COOL, None]  # half the peak: warm; negative: cool; zero: unshaded


def test_a_build_loads_the_panels_model_when_none_is_loaded(workbench, qtbot, atlases, monkeypatch, tmp_path):
    w = workbench.window()
    w.runs.model, w.runs.model_key = None, None  # nothing run yet: the build loads the panel's model itself
    out = tmp_path / "fresh"
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: ([str(atlases["corpus"])], ""))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(out))
    w.actions["tools.build_atlas"].trigger()
    d = w.atlas.dialog
    qtbot.waitUntil(d.isVisible)
    assert d.out_edit.text().endswith(f"{Path(workbench.spec).name}-neurons")  # the default: model and basis
    d.spins["context"].setValue(8)
    d.spins["top_k"].setValue(12)
    qtbot.mouseClick(d.add_files_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(d.browse_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        qtbot.mouseClick(d.build_button, Qt.MouseButton.LeftButton)
    assert w.status.last_error is None, w.status.last_error
    assert w.status.label.text() == f"Atlas written to {out}."
    assert w.runs.model_key == model_key(workbench.spec, "cpu")  # kept for the next run
    assert w.runs.model.fingerprint.sha256[:16] in w.panel.model_info.text()
    built = json.loads((out / "atlas.json").read_text())
    assert built["features_sha256"] == json.loads((atlases["llama"] / "atlas.json").read_text())["features_sha256"]
    assert w.settings.value(FOLDERS_KEY) in ([str(out.resolve())], str(out.resolve()))  # found from now on

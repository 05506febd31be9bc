"""The feature atlas in the PDF audit report: the most influential feature nodes with their labels
and top examples (read back from the atlas itself), the atlas' provenance, the sentence when there
is none, and an atlas of another model or basis refused, from ``build_report`` and the command line."""

import json
import random
import shutil
import subprocess

import numpy as np
import pytest
from pypdf import PdfReader

from core.atlas.build import build_atlas
from core.atlas.store import Atlas, Example
from core.attribution import AttributionSettings, attribute
from core.annotations import Annotations
from core.errors import CircuitDeskError
from core.graph import ERROR, FEATURE
from core.paths import file_sha256
from core.report import (ATLAS_EXAMPLES, ATLAS_NODES, SNIPPET_TOKENS, FeatureExamples, Heading, Paragraph,
                         Table, build_report, report_atlas, snippet)
from core.session import Session, load_session, new_manifest, save_session
from core.settings import AtlasSettings
from desktop.report_pdf import flow, write_pdf
from test_cli import run
from tiny_models import WORDS

PROMPT = "when mary and john went to the store"
USER_LABEL = "shopping destination"
CONTEXT = 48  # windows longer than a report's snippet, so that examples are elided


def squash(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def traced(tiny_model, tmp_path_factory):
    """A small atlas of the tiny llama model (a corpus of random sentences of its vocabulary) and a
    saved session of a trace, the most influential feature node labelled by the auditor."""
    root = tmp_path_factory.mktemp("report_atlas")
    m = tiny_model("llama")
    rng = random.Random(3)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) for _ in range(12)]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    built = build_atlas(m, root / "atlas", AtlasSettings(context=CONTEXT, top_k=4, batch_size=4), corpus=[str(corpus)])
    settings = AttributionSettings(max_nodes=40)
    res = attribute(m, PROMPT, settings)
    g = res.graph
    first = expected_nodes(g)[0]
    manifest = new_manifest("attribution", m.summary(), PROMPT, settings.to_json(),
                            targets=[t.to_json() for t in res.targets], stats=res.stats, command="circuitdesk trace")
    notes = Annotations.from_json({"labels": {str(first): USER_LABEL}}, g.n_nodes)
    path = save_session(root / "t.cdesk", Session(manifest, g, notes))
    return path, Atlas.open(built.path), corpus, m


def expected_nodes(g) -> list[int]:
    """The reference: feature nodes by influence, the first node of each (layer, index), ATLAS_NODES of them."""
    ranked = sorted((i for i in range(g.n_nodes) if g.kind[i] == FEATURE), key=lambda i: (-g.influence[i], i))
    out, seen = [], set()
    for i in ranked:
        if (g.layer[i], g.index[i]) not in seen and len(out) < ATLAS_NODES:
            seen.add((g.layer[i], g.index[i]))
            out.append(i)
    return out


def section(report) -> list:
    """The blocks of the section "What the top nodes respond to"."""
    heads = [k for k, b in enumerate(report.blocks) if isinstance(b, Heading) and b.level == 1]
    start = next(k for k in heads if report.blocks[k].text == "What the top nodes respond to")
    end = next(k for k in heads if k > start)
    return report.blocks[start + 1:end]


def test_section_shows_the_most_influential_nodes_with_their_atlas_examples(traced):
    path, atlas, _, _ = traced
    session = load_session(path)
    g = session.graph
    report = build_report(session, path, atlas=atlas)
    titles = [h.text for h in report.headings() if h.level == 1]
    at = titles.index("What the top nodes respond to")
    assert titles[at - 1] == "Graph scores" and titles[at + 1] == "Interventions"
    shown = [b for b in section(report) if isinstance(b, FeatureExamples)]
    nodes = expected_nodes(g)
    assert [b.node for b in shown] == [g.label(i) for i in nodes]
    signs = set()
    for b, i in zip(shown, nodes):
        layer, index = int(g.layer[i]), int(g.index[i])
        card = atlas.card(layer, index)
        negative = bool(g.activation[i] < 0)  # SwiGLU neurons: the atlas keeps both signs
        signs.add(negative)
        assert b.sign == (-1 if negative else 1) and b.feature == f"L{layer}/N{index}"
        examples = card.bottom if negative else card.top
        assert b.atlas_label == (card.label_negative if negative else card.label) != ""
        assert b.label == (USER_LABEL if i == nodes[0] else "")
        assert b.influence == pytest.approx(g.influence[i]) and b.activation == pytest.approx(g.activation[i])
        assert len(b.examples) == min(ATLAS_EXAMPLES, len(examples)) > 0
        for s, e in zip(b.examples, examples):  # same examples, same order
            start = e.at - s.peak  # where the snippet begins in the window
            assert 0 <= start and len(s.tokens) <= SNIPPET_TOKENS
            assert s.tokens == e.tokens[start:start + len(s.tokens)]
            np.testing.assert_array_equal(s.activations, e.activations[start:start + len(s.tokens)])
            assert s.value == e.value and s.where == e.where
            assert s.activations[s.peak] * b.sign == max(a * b.sign for a in s.activations)
            assert (s.cut_before, s.cut_after) == (start > 0, start + len(s.tokens) < len(e.tokens))
        extreme = card.min if negative else card.max
        assert f"{extreme:.3g}" in b.stats
    assert signs == {True, False}  # both sides were exercised
    assert any(s.cut_before or s.cut_after for b in shown for s in b.examples)  # and the elision


def test_top_nodes_table_labels_the_user_first_then_the_atlas(traced):
    path, atlas, _, _ = traced
    session = load_session(path)
    g = session.graph
    table = next(b for b in build_report(session, path, atlas=atlas).blocks
                 if isinstance(b, Table) and b.columns[:3] == ("#", "Node", "Label"))
    feats = np.flatnonzero((g.kind == FEATURE) | (g.kind == ERROR))
    order = sorted(feats, key=lambda i: (-g.influence[i], i))[:len(table.rows)]
    automatic = set()
    for r, (row, i) in enumerate(zip(table.rows, order)):
        assert row[1] == g.label(int(i))
        if i == expected_nodes(g)[0]:
            assert row[2] == USER_LABEL
        elif g.kind[i] == ERROR:
            assert row[2] == ""
        else:
            side = -1 if g.activation[i] < 0 else 1
            assert row[2] == atlas.label(int(g.layer[i]), int(g.index[i]), side) != ""
            automatic.add((r, 2))
    assert table.muted == automatic  # automatic labels are set apart from the auditor's
    # without an atlas only the auditor's label is there
    plain = next(b for b in build_report(session, path).blocks
                 if isinstance(b, Table) and b.columns[:3] == ("#", "Node", "Label"))
    assert [row[2] for row in plain.rows if row[2]] == [USER_LABEL] and not plain.muted


def test_appendix_records_the_atlas_and_its_corpus(traced):
    path, atlas, corpus, _ = traced
    session = load_session(path)
    blocks = build_report(session, path, atlas=atlas).blocks
    k = next(k for k, b in enumerate(blocks) if isinstance(b, Heading) and b.text == "Feature atlas")
    facts = dict(blocks[k + 1].rows)
    assert facts["Folder"] == str(atlas.path) and facts["Created"] == atlas.meta["created"]
    assert facts["Features file sha256"] == file_sha256(atlas.path / "features.safetensors")
    assert "context 48" in facts["Settings"] and "top_k 4" in facts["Settings"]
    assert facts["Corpus"] == f"1 file (corpus.jsonl), {atlas.meta['tokens_seen']:,} tokens"
    sources = blocks[k + 2]
    assert isinstance(sources, Table) and sources.rows == (
        ("corpus.jsonl", f"{corpus.stat().st_size:,}", f"{atlas.meta['tokens_seen']:,}", file_sha256(corpus)),)


def test_without_an_atlas_one_sentence_says_how_to_build_one(traced):
    path, _, _, m = traced
    session = load_session(path)
    report = build_report(session, path)
    body = section(report)
    assert len(body) == 1 and isinstance(body[0], Paragraph)
    assert body[0].text.startswith("No feature atlas of this model and basis was used")
    assert f"circuitdesk atlas build --model {m.spec} --out " in body[0].text
    assert not any(isinstance(b, FeatureExamples) for b in report.blocks)
    k = next(k for k, b in enumerate(report.blocks) if isinstance(b, Heading) and b.text == "Feature atlas")
    assert report.blocks[k + 1].text == "No feature atlas was used for this report."


@pytest.mark.parametrize("edit, reason", [
    (lambda meta: meta["model"].update(sha256="0" * 64), "was built for another model"),
    (lambda meta: meta["basis"].update(key="transcoders:" + "1" * 64), "describes the transcoders basis"),
])
def test_an_atlas_of_another_model_or_basis_is_refused(traced, tmp_path, monkeypatch, edit, reason):
    path, atlas, _, _ = traced
    session = load_session(path)
    foreign = tmp_path / "foreign"
    shutil.copytree(atlas.path, foreign)
    meta = json.loads((foreign / "atlas.json").read_text())
    edit(meta)
    (foreign / "atlas.json").write_text(json.dumps(meta))
    other = Atlas.open(foreign)
    with pytest.raises(CircuitDeskError, match=reason):
        build_report(session, path, atlas=other)
    with pytest.raises(CircuitDeskError, match=reason):
        report_atlas(session, foreign)
    # automatic discovery passes it over (and says so)
    monkeypatch.setenv("CIRCUITDESK_DATA_DIR", str(tmp_path / "data"))
    found, note = report_atlas(session, folders=[foreign])
    assert found is None and "no atlas found for this model and basis (1 other passed over)" in note


def test_pdf_shows_labels_examples_and_atlas_provenance(traced, tmp_path):
    path, atlas, corpus, _ = traced
    session = load_session(path)
    report = build_report(session, path, atlas=atlas)
    out = write_pdf(report, tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
    flat = squash(text)
    assert "Whatthetopnodesrespondto" in flat and squash(USER_LABEL) in flat
    shown = [b for b in report.blocks if isinstance(b, FeatureExamples)]
    for b in shown:
        assert squash(b.node) in flat and squash(b.atlas_label) in flat and squash(b.examples[0].where) in flat
        peak = b.examples[0]
        assert squash("".join(peak.tokens[peak.peak:peak.peak + 3])) in flat  # the example's text, in order
    assert file_sha256(corpus) in flat and atlas.meta["features_sha256"] in flat
    pages = PdfReader(out).pages
    assert all(f"Page {k} of {len(pages)}" in p.extract_text().replace("\t", " ") for k, p in enumerate(pages, 1))


def test_tokens_flow_within_the_line():
    rng = np.random.default_rng(0)
    widths = list(rng.uniform(1, 60, 300)) + [100.0, 100.0]  # two runs as wide as a line
    placed = flow(widths, 100.0, gap=2.0)
    assert [w for _, _, w in placed] == widths
    assert all(x + w <= 100.0 for _, x, w in placed)  # nothing crosses the right edge
    assert all(b[0] in (a[0], a[0] + 1) for a, b in zip(placed, placed[1:]))  # in reading order
    for a, b in zip(placed, placed[1:]):
        if a[0] == b[0]:
            assert b[1] == pytest.approx(a[1] + a[2] + 2.0)  # side by side, a gap apart
        else:
            assert b[1] == 0 and a[1] + a[2] + 2.0 + b[2] > 100.0  # a new line only when needed


def test_snippet_keeps_forty_tokens_around_the_peak():
    def example(n, at):
        acts = np.zeros(n, np.float32)
        acts[at] = 5.0
        return Example(tuple(f"t{k}" for k in range(n)), acts, 5.0, at, "c.txt", 0, 0)

    late = snippet(example(64, 50))
    assert late.tokens == tuple(f"t{k}" for k in range(19, 59))  # 8 after the peak, 31 before
    assert (late.peak, late.cut_before, late.cut_after) == (31, True, True)
    early = snippet(example(64, 3))
    assert early.tokens == tuple(f"t{k}" for k in range(40)) and (early.peak, early.cut_before) == (3, False)
    short = snippet(example(12, 11))
    assert len(short.tokens) == 12 and short.peak == 11 and not (short.cut_before or short.cut_after)


def test_command_line_finds_the_atlas_and_refuses_a_foreign_one(traced, tmp_path):
    path, atlas, _, _ = traced
    data = tmp_path / "data"
    env = {"CIRCUITDESK_DATA_DIR": str(data)}
    # no atlas in the atlas folder: the report says so, and how to build one
    out = run("report", str(path), "--out", str(tmp_path / "none.pdf"), env=env)
    assert out.returncode == 0, out.stderr
    assert "atlas: no atlas found for this model and basis; build one with: circuitdesk atlas build" in out.stderr
    # one there: found automatically, and said which
    shutil.copytree(atlas.path, data / "atlases" / "tiny-neurons")
    out = run("report", str(path), "--out", str(tmp_path / "auto.pdf"), env=env)
    assert out.returncode == 0, out.stderr
    assert f"atlas: using the atlas {data / 'atlases' / 'tiny-neurons'}" in out.stderr
    flat = squash("".join(p.extract_text() for p in PdfReader(tmp_path / "auto.pdf").pages))
    assert "Whatthetopnodesrespondto" in flat and atlas.meta["features_sha256"] in flat
    g = load_session(path).graph
    second = expected_nodes(g)[1]  # the first one has the auditor's label
    label = atlas.label(int(g.layer[second]), int(g.index[second]), -1 if g.activation[second] < 0 else 1)
    assert squash(label) in flat and squash(USER_LABEL) in flat
    # --no-atlas leaves it out
    out = run("report", str(path), "--out", str(tmp_path / "off.pdf"), "--no-atlas", env=env)
    assert out.returncode == 0 and "atlas:" not in out.stderr
    assert "Nofeatureatlasofthismodelandbasiswasused" in squash(
        "".join(p.extract_text() for p in PdfReader(tmp_path / "off.pdf").pages))
    # another model's atlas, or a damaged one, named with --atlas: one sentence, exit 1, no report
    foreign = tmp_path / "foreign"
    shutil.copytree(atlas.path, foreign)
    meta = json.loads((foreign / "atlas.json").read_text())
    meta["model"]["sha256"] = "0" * 64
    (foreign / "atlas.json").write_text(json.dumps(meta))
    damaged = tmp_path / "damaged"
    shutil.copytree(atlas.path, damaged)
    with open(damaged / "features.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    for folder, expect in ((foreign, "was built for another model"), (damaged, "is damaged")):
        out = run("report", str(path), "--out", str(tmp_path / "x.pdf"), "--atlas", str(folder), env=env)
        lines = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
        assert out.returncode == 1 and len(lines) == 1 and expect in lines[0], out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "x.pdf").exists()



def test_audit_reports_find_the_atlas(traced, tiny_folder, tmp_path, monkeypatch):
    from core.audit import load_suite, run_suite

    _, atlas, _, _ = traced
    monkeypatch.setenv("CIRCUITDESK_DATA_DIR", str(tmp_path / "data"))
    shutil.copytree(atlas.path, tmp_path / "data" / "atlases" / "tiny-neurons")
    suite = tmp_path / "suite.toml"
    suite.write_text(f'model = "{tiny_folder("llama")}"\ndevice = "cpu"\n[[cases]]\nname = "a"\nprompt = "{PROMPT}"\n'
                     'max_nodes = 30\n[[cases]]\nname = "b"\nprompt = "john went to"\nmax_nodes = 30\n')
    reports = []
    summary = run_suite(load_suite(suite), tmp_path / "out", render=lambda r: reports.append(r) or b"%PDF-1.4")
    assert summary["cases_ok"] == 2 and len(reports) == 3  # two cases and the summary
    for report in reports[:2]:
        shown = [b for b in report.blocks if isinstance(b, FeatureExamples)]
        assert len(shown) == ATLAS_NODES and all(b.examples for b in shown)
        k = next(k for k, b in enumerate(report.blocks) if isinstance(b, Heading) and b.text == "Feature atlas")
        assert dict(report.blocks[k + 1].rows)["Folder"] == str(tmp_path / "data" / "atlases" / "tiny-neurons")


def test_the_window_reports_with_its_atlas(workbench, traced, monkeypatch, tmp_path):
    """File → Export Report uses the atlas the window shows the graph with."""
    from PySide6.QtWidgets import QFileDialog

    _, atlas, _, _ = traced
    w = workbench.graph()
    w.state.set_atlas(atlas, f"Feature atlas: {atlas.path}", source="test")
    assert w.documents.save(str(tmp_path / "w.cdesk"))
    pdf = tmp_path / "w.pdf"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(pdf), ""))
    with workbench.qtbot.waitSignal(w.exports.report_written, timeout=60_000):
        w.actions["file.report"].trigger()
    workbench.qtbot.waitUntil(lambda: not w.runner.busy)
    g = load_session(tmp_path / "w.cdesk").graph
    flat = squash("".join(p.extract_text() for p in PdfReader(pdf).pages))
    assert atlas.meta["features_sha256"] in flat
    for i in expected_nodes(g)[:3]:
        label = atlas.label(int(g.layer[i]), int(g.index[i]), -1 if g.activation[i] < 0 else 1)
        assert squash(label) in flat

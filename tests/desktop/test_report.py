"""The PDF audit report: what an auditor and a reviewer must find in it, read back from the PDF."""

import re

import numpy as np
import pytest
from pypdf import PdfReader

from core.attribution import AttributionSettings, attribute
from core.errors import CircuitDeskError
from core.graph import FEATURE, LOGIT
from core.paths import file_sha256
from core.report import GraphFigure, Heading, Heatmap, build_report, build_summary, compact_json
from core.runs import add_logit_lens
from core.annotations import Annotations
from core.session import Session, load_session, new_manifest, save_session
from desktop.report_pdf import write_pdf

PROMPT = "when mary and john went to the store"
FINDING = "Names route through layer one"


def page_text(page) -> str:
    return page.extract_text().replace("\t", " ")  # pypdf separates words with tabs


def squash(text: str) -> str:
    """PDF text without any whitespace (lines wrap wherever the layout put them)."""
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def traced(tiny_model, tmp_path_factory):
    from core.interventions import Intervention, intervene

    m = tiny_model("llama")
    settings = AttributionSettings(max_nodes=40)
    res = attribute(m, PROMPT, settings)
    g = res.graph
    feats = [int(i) for i in np.flatnonzero(g.node_mask & (g.kind == FEATURE))[:3]]
    logit = int(np.flatnonzero(g.kind == LOGIT)[0])
    iv = Intervention("neuron", int(g.layer[feats[0]]), int(g.index[feats[0]]), None, "zero")
    effect = intervene(m, res.ids, [iv], freeze="replacement", target_id=int(g.index[logit]))
    command = f"circuitdesk trace --model tiny --prompt '{PROMPT}' --max-nodes 40 --out t.cdesk"
    manifest = new_manifest("attribution", m.summary(), PROMPT, settings.to_json(),
                            targets=[t.to_json() for t in res.targets], stats=res.stats, command=command)
    notes = {"groups": [{"label": "name movers", "nodes": feats[:2]}], "pinned": feats[2:],
             "labels": {str(feats[2]): "store detector"}, "findings": FINDING,
             "interventions": [effect.to_json()]}
    session = Session(manifest, g, Annotations.from_json(notes, g.n_nodes))
    add_logit_lens(session, m, res.ids, res.targets[0].token_id)
    path = save_session(tmp_path_factory.mktemp("report") / "t.cdesk", session)
    return path, res, effect, m


def test_report_pdf_holds_provenance_scores_and_command(traced, tmp_path):
    path, res, effect, m = traced
    session = load_session(path)
    out = write_pdf(build_report(session, path, auditor="R. Reviewer"), tmp_path / "report.pdf")
    pdf = PdfReader(out)
    assert len(pdf.pages) >= 4
    text = "\n".join(page_text(p) for p in pdf.pages)
    flat = squash(text)
    assert m.fingerprint.sha256 in flat  # the model's weights
    assert file_sha256(path) in flat  # the session file the report was made from
    assert squash(PROMPT) in flat and "R.Reviewer" in flat
    assert "circuit-tracermethod" in flat  # the method
    lens = next(b for b in build_report(session, path).blocks if isinstance(b, Heatmap))
    assert lens.title.startswith("Logit lens") and np.array_equal(lens.values, session.logit_lens)
    assert "Logitlens:P(" in flat
    stats = res.stats
    for key in ("replacement_score", "completeness_score", "pruned_replacement_score", "pruned_completeness_score"):
        assert f"{stats[key]:.3f}" in flat, key
    # how the start token and the candidate neurons were treated, with this run's figures
    assert squash(f"the {stats['candidates']:,} of {stats['candidate_pool']:,} active neurons") in flat
    assert squash(f"carrying {stats['candidate_effect_share']:.1%} of that effect") in flat
    assert "thestarttoken'sownembeddingisaconstanttoo" in flat
    assert squash(session.manifest["command"]) in flat
    assert "circuitdeskverifyt.cdesk" in flat
    assert squash(FINDING) in flat and "storedetector" in flat and "namemovers" in flat
    # the intervention's measured effect is reported
    assert f"{effect.logit_before:.3f}→{effect.logit_after:.3f}" in flat
    assert squash(effect.interventions[0].describe()) in flat
    # contents with page numbers, a running header and "Page i of N" on every page
    assert "Contents" in text and f"Page {len(pdf.pages)} of {len(pdf.pages)}" in text
    assert all(f"Page {k} of {len(pdf.pages)}" in page_text(p) for k, p in enumerate(pdf.pages, 1))


def test_graph_page_is_vector_paths_not_an_image(traced, tmp_path):
    path, *_ = traced
    report = build_report(load_session(path), path)
    figure = next(b for b in report.blocks if isinstance(b, GraphFigure))
    pdf = PdfReader(write_pdf(report, tmp_path / "r.pdf"))
    page = next(p for p in pdf.pages if "Circuitgraph" in squash(page_text(p))[:200])
    xobjects = page["/Resources"].get("/XObject") or {}
    assert not [k for k, v in xobjects.items() if v.get_object().get("/Subtype") == "/Image"]
    ops = page.get_contents().get_data()
    # one moveto + lineto per drawn edge, and the nodes' curves
    assert len(re.findall(rb" l\n", ops)) >= len(figure.weight)
    assert len(re.findall(rb" c\n", ops)) >= 4 * int((~figure.square).sum())  # a circle is 4 Béziers
    # the figure draws the session's pruned graph with the group collapsed into one square
    assert figure.square.sum() == 1 and "name movers" in figure.labels.values()


def test_component_circuit_report(tiny_model, tmp_path):
    from core.circuits import CircuitSettings, find_circuit, make_task

    m = tiny_model("llama")
    res = find_circuit(m, make_task(m, "induction", n_pairs=3), CircuitSettings(method="eap", top_n=5))
    path = save_session(tmp_path / "c.cdesk", Session(new_manifest("circuit", m.summary(), "", res.settings,
                                                                   task=res.task, stats=res.stats), circuit=res))
    report = build_report(load_session(path), path)
    titles = [h.text for h in report.headings()]
    assert titles[:4] == ["Prompt and prediction", "Method and settings", "Circuit graph", "Activation heatmaps"]
    pdf = PdfReader(write_pdf(report, tmp_path / "c.pdf"))
    flat = squash("".join(page_text(p) for p in pdf.pages))
    assert f"{res.circuit_faithfulness:.3f}" in flat and f"{res.curve.cpr:.3f}" in flat
    assert "EAP(edgeattributionpatching)" in flat
    # no regenerate command for this session: the report says so instead of printing an empty one
    assert "Nosinglecommandregeneratesthisrun" in flat


def test_bad_output_gets_one_sentence_and_no_file(traced, tmp_path):
    path, *_ = traced
    report = build_report(load_session(path), path)
    with pytest.raises(CircuitDeskError, match="end in .pdf"):
        write_pdf(report, tmp_path / "r.txt")
    with pytest.raises(CircuitDeskError, match="does not exist"):
        write_pdf(report, tmp_path / "absent" / "r.pdf")
    assert list(tmp_path.iterdir()) == []


def test_compact_settings_json_round_trips():
    import json

    doc = {"a": [1, 2.5, None], "b": {"c": "x" * 150, "d": [{"e": k} for k in range(40)]}, "f": {}}
    assert json.loads(compact_json(doc)) == doc
    assert max(len(line) for line in compact_json(doc).splitlines() if "x" * 10 not in line) <= 100


def test_summary_report_lists_cases_and_failures(tmp_path):
    summary = {"suite": "demo", "model": {"name": "tiny", "sha256": "ab" * 32}, "seconds": 3.0,
               "cases": [{"name": "ok-case", "method": "attribution", "status": "ok", "seconds": 1.0,
                          "result": {"target": "' x'", "target_probability": 0.5, "pruned_replacement_score": 0.25,
                                     "pruned_completeness_score": 0.75}, "session": "ok-case.cdesk",
                          "report": "ok-case.pdf"},
                         {"name": "bad-case", "method": "attribution", "status": "failed", "seconds": 0.1,
                          "error": "The prompt is empty."}]}
    report = build_summary(summary)
    assert [h.text for h in report.headings() if isinstance(h, Heading)] == ["Cases", "Failures", "Files"]
    flat = squash("".join(page_text(p) for p in PdfReader(write_pdf(report, tmp_path / "s.pdf")).pages))
    assert "bad-case" in flat and "Thepromptisempty." in flat and "repl0.250/compl0.750" in flat and "'x'" in flat


def test_report_shows_a_chat_conversation_not_only_its_rendering(chat_folder, tmp_path):
    import json

    from core.models import load_model
    from core.runs import attribution_session
    from core.settings import ChatSettings
    from tiny_models import CHAT_TEMPLATE

    m = load_model(chat_folder(CHAT_TEMPLATE), device="cpu")
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"role": "user", "content": "the capital of france is"},
                                {"role": "assistant", "content": "london city"}]), encoding="utf-8")
    session, res = attribution_session(m, "tiny", None, AttributionSettings(max_nodes=20),
                                       chat=ChatSettings(messages=str(conv), system="the cat"))
    path = save_session(tmp_path / "chat.cdesk", session)
    out = write_pdf(build_report(load_session(path), path), tmp_path / "chat.pdf")
    flat = squash("\n".join(page_text(p) for p in PdfReader(out).pages))
    assert "chatconversation" in flat and "Role" in flat and "Message" in flat
    for role, content in (("system", "the cat"), ("user", "the capital of france is"),
                          ("assistant(answerexplained)", "london city")):
        assert squash(role + content) in flat, role  # each message on its row, its role first
    assert squash(repr(res.prompt)) in flat  # and what the model read, the template's tokens included
    assert "<bos>system:thecat<eos>" in flat

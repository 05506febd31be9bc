"""The comparison report of a behaviour study (issue 20): what an auditor and a reviewer must find in it,
read back from the PDF; a study of two groups of attribution cases and one of two model versions of
circuit cases, both run here on tiny models."""

import copy
import dataclasses
import io
import math
import re
import shlex

import numpy as np
import pytest
from pypdf import PdfReader

from core.audit import load_suite
from core.behaviour.study import load_comparison, run_study
from core.paths import file_sha256
from core.report import Contents, Heading, Table, build_comparison_report
from core.report_comparison import EFFECT_SCALE, BehaviourFigure, effect_colour, fmt_p, regenerate_command
from core.settings import CompareSettings
from core.view import NEGATIVE, POSITIVE
from desktop.report_pdf import render_pdf
from tiny_models import make_tiny_model

WORDS = ["cat", "dog", "red", "blue", "green", "one", "two", "three"]
FAILING = "badcase"  # a case whose target is not one token: it fails, the study goes on


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def pdf_text(report) -> str:
    reader = PdfReader(io.BytesIO(render_pdf(report)))
    return "\n".join(page.extract_text().replace("\t", " ") for page in reader.pages)  # pypdf: tabs between words


@pytest.fixture(scope="module")
def group_study(tiny_folder, tmp_path_factory):
    """Eight attribution cases in groups x / y and one failing case, on the tiny Llama."""
    root = tmp_path_factory.mktemp("group-study")
    lines = ['name = "groups"', f'model = "{tiny_folder("llama")}"', "[defaults]", "max_nodes = 40",
             "[compare]", "permutations = 200", "checks = 1"]
    for i, w in enumerate(WORDS):
        lines += ["[[cases]]", f'name = "c{i}"', f'prompt = "the {w} and the {WORDS[(i + 3) % 8]} is"',
                  f'group = "{"x" if i % 2 else "y"}"']
    lines += ["[[cases]]", f'name = "{FAILING}"', 'prompt = "the cat is"', 'target = " not one token at all"',
              'group = "x"']
    suite = root / "groups.toml"
    suite.write_text("\n".join(lines) + "\n")
    run_study(load_suite(suite), root / "out")
    return load_comparison(root / "out")


@pytest.fixture(scope="module")
def versions_study(tiny_folder, tmp_path_factory):
    """Four circuit cases on two versions of the tiny Llama (B: other random weights)."""
    root = tmp_path_factory.mktemp("versions-study")
    model_b = make_tiny_model("llama", root / "llama_b", seed=1)
    lines = ['name = "versions"', f'model = "{tiny_folder("llama")}"']
    for i in range(4):
        a, b, c = WORDS[i], WORDS[i + 1], WORDS[i + 2]
        lines += ["[[cases]]", f'name = "p{i}"', 'method = "circuit"', f'prompt = "the {a} and the {b} is"',
                  f'corrupted = "the {a} and the {c} is"', f'answer = "{b}"', f'counterfactual = "{c}"',
                  'scoring = "eap"', "top_n = 20"]
    suite = root / "versions.toml"
    suite.write_text("\n".join(lines) + "\n")
    settings = CompareSettings(model_b=str(model_b), permutations=200, checks=1)
    run_study(load_suite(suite), root / "out", settings)
    return load_comparison(root / "out")


def _headings(report) -> list[str]:
    return [b.text for b in report.blocks if isinstance(b, Heading)]


def _tables(report, first_column: str) -> list[Table]:
    return [b for b in report.blocks if isinstance(b, Table) and b.columns[:2] == ("#", first_column)]


def test_group_report_has_every_part_and_the_pdf_names_every_case(group_study):
    c = group_study
    report = build_comparison_report(c, auditor="R. Reviewer")
    heads = _headings(report)
    for want in ("Findings", "Setup", "Method", "Attribution graphs (MLP neurons)", "Intervention checks", "Cases",
                 "Failed cases", "Session files", "Provenance", "Model A", "Regenerate"):
        assert want in heads, want
    section = c["sections"][0]
    contrast = section["contrasts"][0]
    top = contrast["rows"][0]
    # the ranked table is the study's ranking, row for row, with its numbers
    (table,) = _tables(report, "Node")
    assert [r[1] for r in table.rows] == [r["key"] for r in contrast["rows"][:len(table.rows)]]
    assert table.rows[0][8] == fmt_p(top["p_adjusted"]) and len(table.rows) == min(25, len(contrast["rows"]))
    # the behaviour graph: one node per drawn key, coloured by the contrast's effect size
    (fig,) = [b for b in report.blocks if isinstance(b, BehaviourFigure)]
    rows = {r["key"]: r for r in contrast["rows"]}
    named = {fig.labels[k]: k for k in fig.labels}
    assert top["key"] in named
    for key, k in named.items():
        assert fig.colour[k] == effect_colour(rows[key]["effect_size"] / EFFECT_SCALE)
        assert bool(fig.outline[k]) == rows[key]["significant"]

    text = pdf_text(report)
    flat = squash(text)
    assert "Behaviour comparison" in text and "R. Reviewer" in text
    assert top["key"] in text
    assert c["models"]["a"]["sha256"] in flat
    for case in c["cases"]:
        assert case["name"] in text
    # the failing case: its reason, and no session file
    failed = next(x for x in c["cases"] if x["name"] == FAILING)
    assert failed["runs"]["a"]["status"] == "failed"
    assert squash(failed["runs"]["a"]["error"]) in flat
    # every session file's sha256, read from the comparison's folder
    for case in c["cases"]:
        session = case["runs"]["a"]["session"]
        if session:
            assert file_sha256(f"{c['folder']}/{session}") in flat
    assert c["suite_sha256"] in flat and "groups.toml" in text


def test_versions_report_shows_both_models_edge_changes_and_both_graphs(versions_study):
    c = versions_study
    report = build_comparison_report(c)
    heads = _headings(report)
    assert "Component circuits" in heads and "Circuit edges gained, lost and changed" in heads
    assert "Model B" in heads
    figures = [b for b in report.blocks if isinstance(b, BehaviourFigure)]
    assert [f.title.split(" (")[0] for f in figures] == ["Model A", "Model B"]
    section = c["sections"][0]
    (edges,) = _tables(report, "Edge")
    assert [r[1] for r in edges.rows] == [e["edge"] for e in section["edge_changes"][:len(edges.rows)]]
    assert {r[2] for r in edges.rows} <= {"gained", "lost", "changed"}
    text = pdf_text(report)
    flat = squash(text)
    top = section["contrasts"][0]["rows"][0]["key"]
    assert top in text
    sha_a, sha_b = c["models"]["a"]["sha256"], c["models"]["b"]["sha256"]
    assert sha_a != sha_b and sha_a[:16] in flat and sha_b[:16] in flat
    for case in c["cases"]:
        assert case["name"] in text
        for v in ("a", "b"):
            assert file_sha256(f"{c['folder']}/{case['runs'][v]['session']}") in flat


def _spoil(obj, value):
    """Every number of the study's results replaced by ``value`` (None, or NaN: a number the study
    could not give), the shape kept."""
    if isinstance(obj, dict):
        return {k: (v if k in ("layer", "n_a", "n_b", "permutations", "keys_compared", "significant", "cases",
                                "format_version", "n_layers") and not isinstance(v, float)
                    else _spoil(v, value)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_spoil(v, value) for v in obj]
    if isinstance(obj, float):
        return value
    return obj


@pytest.mark.parametrize("missing", [None, math.nan])
def test_numbers_the_study_could_not_give_print_n_a(group_study, versions_study, missing):
    for study in (group_study, versions_study):
        c = _spoil(copy.deepcopy(study), missing)
        c["models"]["a"]["n_params"] = missing
        text = pdf_text(build_comparison_report(c))
        assert "n/a" in text and not re.search(r"\b(nan|NaN|inf|Infinity|None)\b", text)


def test_a_significant_node_is_named_in_the_findings_and_outlined(group_study):
    c = copy.deepcopy(group_study)
    contrast = c["sections"][0]["contrasts"][0]
    row = contrast["rows"][0]
    row["significant"], row["p_adjusted"] = True, 0.01
    contrast["significant"] = 1
    report = build_comparison_report(c)
    front = report.blocks[:next(i for i, b in enumerate(report.blocks) if isinstance(b, Contents))]
    findings = " ".join(b.text for b in front if hasattr(b, "text"))
    assert f"1 of {contrast['keys_compared']} nodes differ significantly" in findings and row["key"] in findings
    (fig,) = [b for b in report.blocks if isinstance(b, BehaviourFigure)]
    outlined = [fig.labels.get(k) for k in np.flatnonzero(fig.outline)]
    assert outlined == [row["key"]]
    assert next(iter(fig.labels.values())) == row["key"]  # named first


def test_a_missing_session_file_is_said(group_study):
    c = copy.deepcopy(group_study)
    c["cases"][0]["runs"]["a"]["session"] = "a/gone.cdesk"
    text = pdf_text(build_comparison_report(c))
    assert "MISSING" in text


def test_the_regenerate_command_gives_the_study_settings_back(group_study, versions_study):
    from desktop.cli import build_parser

    for c in (group_study, versions_study):
        command = regenerate_command(c)
        argv = shlex.split(command)
        assert argv[:3] == ["circuitdesk", "compare", c["suite_file"]] and "--correction" not in argv
        args = build_parser().parse_args(argv[1:])
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(CompareSettings)
                 if getattr(args, f.name) is not None}
        assert dataclasses.asdict(dataclasses.replace(CompareSettings(), **given)) == c["settings"]
        assert args.out == c["folder"]


def test_effect_colours_run_from_red_through_white_to_blue():
    hex_of = lambda rgb: "#" + "".join(f"{v:02x}" for v in rgb)  # noqa: E731
    assert effect_colour(1.0) == hex_of(POSITIVE) and effect_colour(5.0) == hex_of(POSITIVE)
    assert effect_colour(-1.0) == hex_of(NEGATIVE) and effect_colour(0.0) == "#ffffff"


def test_cli_compare_writes_the_pdf(tiny_folder, tmp_path):
    from desktop.cli import main

    lines = [f'model = "{tiny_folder("llama")}"', "[defaults]", "max_nodes = 30", "[compare]", "permutations = 100",
             "checks = 1"]
    for i in range(4):
        lines += ["[[cases]]", f'name = "k{i}"', f'prompt = "the {WORDS[i]} and the {WORDS[i + 4]} is"',
                  f'group = "{"x" if i % 2 else "y"}"']
    suite = tmp_path / "cli.toml"
    suite.write_text("\n".join(lines) + "\n")
    assert main(["compare", str(suite), "--out", str(tmp_path / "out")]) == 0
    pdf = tmp_path / "out" / "comparison.pdf"
    text = "\n".join(p.extract_text().replace("\t", " ") for p in PdfReader(pdf).pages)
    assert "Behaviour comparison" in text and all(f"k{i}" in text for i in range(4))
    assert "circuitdesk compare" in text and "cli.toml" in text


def test_the_figure_keeps_the_most_recurrent_edges(group_study, monkeypatch):
    import core.report_comparison as rc

    (full,) = [b for b in build_comparison_report(group_study).blocks if isinstance(b, BehaviourFigure)]
    assert len(full.src) > 10
    monkeypatch.setattr(rc, "FIGURE_EDGES", 10)
    (capped,) = [b for b in build_comparison_report(group_study).blocks if isinstance(b, BehaviourFigure)]
    assert len(capped.src) == 10
    assert capped.recurrence.min() >= np.sort(full.recurrence)[-10]
    assert "the 10 most recurrent of the" in capped.caption

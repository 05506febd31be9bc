"""Browsing a comparison without Qt: the shared state delivers one change per user action and refuses
writes made while a change is delivered; a comparison file from anyone is refused with one sentence
naming the field; a case's session is found inside the comparison's folder, or one sentence says why not."""

from __future__ import annotations

import copy
import os

import pytest

from core.behaviour.browse import (
    COMPARISON,
    CONTRAST,
    SECTION,
    SELECTION,
    VERSION,
    ComparisonState,
    case_rows,
    check_browsable,
    checks_lines,
    header_lines,
    session_file,
)
from core.errors import CircuitDeskError


def row(key, effect, p=0.5, significant=False, tested=True):
    return {"key": key, "mean_a": 1.0, "mean_b": 0.5, "difference": 0.5, "effect_size": effect, "p_adjusted": p,
            "tested": tested, "significant": significant}


def graph(keys):
    nodes = [{"key": k, "layer": -1 if k in ("tokens", "input") else 2 if k == "logits" else int(k[1]), "mean": 0.1,
              "recurrence": 1.0} for k in keys]
    return {"cases": ["c0", "c1", "c2", "c3"], "min_recurrence": 0.25, "nodes": nodes,
            "edges": [{"src": "tokens", "dst": keys[1], "mean": 0.2, "recurrence": 0.5}]}


def contrast(what, rows):
    return {"what": what, "label_a": "x" if what == "groups" else "model A", "label_b": "y" if what == "groups" else "model B",
            "n_a": 2, "n_b": 2, "permutations": 6, "exact": True, "correction": "maxt", "alpha": 0.05,
            "keys_compared": len(rows), "significant": sum(r["significant"] for r in rows), "rows": rows}


def check(key, what, model):
    return {"key": key, "contrast": what, "model": model, "significant": False, "p_adjusted": 0.4,
            "intervention": "zero-ablation at every position but the start token",
            "groups": {"all cases": {"cases": 4, "answer_changed": 0.25, "metric": "probability", "mean_delta": -0.01,
                                     "sd_delta": 0.02, "correct_to_wrong": 0.0, "wrong_to_correct": 0.0}}}


def run(name, version, status="ok"):
    ok = status == "ok"
    return {"status": status, "error": "" if ok else "out of memory", "prediction": " Paris" if ok else "",
            "probability": 0.5 if ok else 0.0, "correct": True if version == "a" else None,
            "session": f"{version}/{name}.cdesk" if status == "ok" else None}


@pytest.fixture
def comparison(tmp_path):
    """Two sections (attribution with both contrasts and model B's graph; circuit with none), four cases."""
    keys = ["tokens", "L0/N1", "L1/N2", "logits"]
    doc = {
        "format": "circuitdesk-comparison", "format_version": 1, "suite": "s", "created": "2026-01-01T10:00:00",
        "cases_ok": 4, "cases_failed": 0,
        "models": {"a": {"spec": "/m/a", "name": "a", "n_params": 1000, "n_layers": 2, "sha256": "ab" * 32},
                   "b": {"spec": "/m/b", "name": "b"}},
        "settings": {"permutations": 200, "correction": "maxt", "alpha": 0.05, "checks": 1, "min_recurrence": 0.25},
        "groups": {"key": "group", "a": "x", "b": "y"},
        "cases": [{"name": f"c{i}", "labels": {"group": "xy"[i % 2]}, "group": "ab"[i % 2],
                   "runs": {"a": run(f"c{i}", "a"), "b": run(f"c{i}", "b")}} for i in range(4)],
        "sections": [
            {"method": "attribution", "basis": "neurons", "n_layers": 2, "cases": ["c0", "c1", "c2", "c3"],
             "behaviour": {"a": graph(keys), "b": graph(keys)},
             "contrasts": [contrast("groups", [row("L1/N2", 1.2), row("L0/N1", -0.3)]),
                           contrast("versions", [row("L0/N1", 0.9)])],
             "checks": [check("L1/N2", "versions", "b"), check("L1/N2", "groups", "a")], "edge_changes": []},
            {"method": "circuit", "basis": "", "n_layers": 2, "cases": ["c0", "c1"],
             "behaviour": {"a": graph(["input", "a0.h1", "logits"])}, "contrasts": [], "checks": [],
             "edge_changes": [], "note": "Groups 'x' and 'y' have 1 and 1 cases of this kind; a contrast needs at "
                                         "least 2 in each."},
        ],
        "folder": str(tmp_path),
    }
    for v in ("a", "b"):
        (tmp_path / v).mkdir()
        for i in range(4):
            (tmp_path / v / f"c{i}.cdesk").write_bytes(b"PK")
    return doc


def test_one_change_per_action_and_none_when_nothing_changes(comparison):
    state, seen = ComparisonState(), []
    state.subscribe(lambda c: seen.append((c.what, c.source)))
    state.show(comparison, source="window")
    assert (state.section, state.contrast, state.version, state.selected) == (0, 0, "a", None)
    assert state.select("L1/N2", source="table") and not state.select("L1/N2", source="graph")
    assert state.choose_contrast(1, source="window") and state.selected == "L1/N2"  # a node is the same key
    assert state.choose_version("b") and not state.choose_version("b") and not state.choose_version("c")
    assert not state.choose_contrast(2) and not state.choose_section(7)
    assert state.choose_section(1)
    assert (state.contrast, state.version, state.selected, state.versions) == (None, "a", None, ("a",))
    assert not state.choose_version("b")  # the circuit section has model A's graph only
    assert seen == [(COMPARISON, "window"), (SELECTION, "table"), (CONTRAST, "window"), (VERSION, ""), (SECTION, "")]


def test_writes_while_a_change_is_delivered_are_refused(comparison):
    """A view reacting to a change cannot bounce it back (nor start another)."""
    state, seen = ComparisonState(), []
    state.show(comparison)

    def table(change):
        seen.append(("table", change.what))
        if change.what == SELECTION:
            assert not state.select("L0/N1", source="table") and not state.choose_contrast(1)

    state.subscribe(table)
    state.subscribe(lambda c: seen.append(("graph", c.what)))
    assert state.select("L1/N2", source="graph")
    assert state.selected == "L1/N2" and state.contrast == 0
    assert seen == [("table", SELECTION), ("graph", SELECTION)]


def test_rows_and_checks_of_a_node(comparison):
    state = ComparisonState()
    state.show(comparison)
    assert state.row("L0/N1")["effect_size"] == -0.3 and state.row("tokens") is None
    # the chosen contrast's checks first
    assert [(c["contrast"], c["model"]) for c in state.checks("L1/N2")] == [("groups", "a"), ("versions", "b")]
    state.choose_contrast(1)
    assert [(c["contrast"], c["model"]) for c in state.checks("L1/N2")] == [("versions", "b"), ("groups", "a")]
    lines = checks_lines(state, "L1/N2")
    assert lines[0] == ("Zero-ablation at every position but the start token on model B (versions contrast; one of its "
                        "top-ranked differences, not significant, corrected p 0.4):")
    assert "all cases — 4 cases: answer changed in 25%, mean Δp(target) -0.010 (sd 0.020)" in lines[1]
    assert checks_lines(state, "L0/N1")[0].startswith("L0/N1 was not checked by intervention (the study checks the top 1")


def test_header_and_cases(comparison):
    title, models, settings = header_lines(comparison)
    assert title.startswith("s — 4 cases ok, 0 failed")
    assert models == ("model A: a (1,000 parameters, 2 layers, sha256 abababababab…) · model B: b")
    assert settings.startswith("Groups by label 'group': A = x (2 cases), B = y (2 cases) · 200 permutations, "
                               "Westfall–Young max-T correction, α = 0.05")
    comparison["cases"][1]["runs"]["b"] = run("c1", "b", status="failed")
    rows = case_rows(comparison)
    assert [(r.name, r.group, r.correct) for r in rows[:2]] == [("c0", "x", "✓"), ("c1", "y", "✓")]
    assert rows[1].predictions == ("' Paris' (0.50)", "—") and rows[1].status == "A ok · B failed: out of memory"
    assert rows[1].sessions == ("a/c1.cdesk", None)


def test_a_case_session_is_found_or_one_sentence_says_why_not(comparison, tmp_path):
    assert session_file(comparison, "c2", "b") == (tmp_path / "b" / "c2.cdesk").resolve()
    (tmp_path / "a" / "c2.cdesk").unlink()
    with pytest.raises(CircuitDeskError, match=r"The session of case 'c2' on model A is missing: .*c2\.cdesk does not "
                                               r"exist; run circuitdesk compare again to write it\."):
        session_file(comparison, "c2", "a")
    comparison["cases"][3]["runs"]["a"] = run("c3", "a", status="failed")
    with pytest.raises(CircuitDeskError, match=r"case 'c3' on model A failed \(out of memory\), so it has no session"):
        session_file(comparison, "c3", "a")
    with pytest.raises(CircuitDeskError, match="has no run of case 'nope'"):
        session_file(comparison, "nope", "a")
    # a session inside the folder that leads out of it (a link) is refused too
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.cdesk"
    outside.write_bytes(b"PK")
    (tmp_path / "a" / "c0.cdesk").unlink()
    os.symlink(outside, tmp_path / "a" / "c0.cdesk")
    with pytest.raises(CircuitDeskError, match="is not inside the comparison's folder"):
        session_file(comparison, "c0", "a")


@pytest.mark.parametrize("damage, field", [
    (lambda d: d.pop("suite"), "suite"),
    (lambda d: d["models"].update(b=[]), "models.b"),
    (lambda d: d["cases"][0]["runs"]["a"].pop("status"), "cases.runs.a.status"),
    (lambda d: d["sections"][0]["contrasts"][0]["rows"][0].update(effect_size="big"), "sections.contrasts.rows.effect_size"),
    (lambda d: d["sections"][0]["contrasts"][0]["rows"][0].update(significant=1), "sections.contrasts.rows.significant"),
    (lambda d: d["sections"][0]["contrasts"][0].update(n_a=True), "sections.contrasts.n_a"),
    (lambda d: d["sections"][0]["behaviour"]["a"]["nodes"][0].update(recurrence="all"),
     "sections.behaviour.a.nodes.recurrence"),
    (lambda d: d["sections"][0]["checks"][0]["groups"]["all cases"].pop("mean_delta"),
     "sections.checks.groups.all cases.mean_delta"),
    (lambda d: d["sections"][1].update(contrasts={}), "sections.contrasts"),
    (lambda d: d.update(groups={"key": "group", "a": 1, "b": "y"}), "groups.a"),
])
def test_a_file_missing_what_the_window_reads_is_one_sentence(comparison, damage, field):
    assert check_browsable(copy.deepcopy(comparison)) is not None
    bad = copy.deepcopy(comparison)
    damage(bad)
    with pytest.raises(CircuitDeskError) as err:
        check_browsable(bad, "comparison.json")
    assert str(err.value) == (f"comparison.json: {field} is missing or has the wrong type; write the file again "
                              "with circuitdesk compare.")


def test_a_section_without_model_a_is_refused(comparison):
    comparison["sections"][1]["behaviour"] = {"b": comparison["sections"][1]["behaviour"]["a"]}
    with pytest.raises(CircuitDeskError, match="a section has no behaviour graph of model A"):
        check_browsable(comparison)


def test_a_node_keeps_its_place_in_model_a_and_model_b_drawings():
    from core.behaviour.layout import behaviour_layout

    def graph(means):
        return {"nodes": [{"key": k, "layer": int(k[1]), "mean": m, "recurrence": 1.0} for k, m in means.items()],
                "edges": []}

    section = {"behaviour": {"a": graph({"a0.h0": 3.0, "a0.h1": 1.0, "m0": 0.5}),
                             "b": graph({"a0.h1": 4.0, "m0": 0.5, "a0.h2": 0.1})}}
    a, _ = behaviour_layout(section, "a")
    b, _ = behaviour_layout(section, "b")
    place_a, place_b = {n.key: (n.x, n.y) for n in a}, {n.key: (n.x, n.y) for n in b}
    assert set(place_a) == {"a0.h0", "a0.h1", "m0"} and set(place_b) == {"a0.h1", "m0", "a0.h2"}
    assert all(place_a[k] == place_b[k] for k in place_a.keys() & place_b.keys())
    assert place_b["a0.h1"] == (0.0, 0.0)  # the node that matters most (in either version) in the middle
    assert len({p for p in {**place_a, **place_b}.values()}) == 4  # no two nodes on one spot

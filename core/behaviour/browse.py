"""Browsing a comparison (``comparison.json``): what the workbench's comparison window shows, without Qt.

``ComparisonState`` is the window's shared state (the comparison, the section and contrast chosen, the
model version drawn, the selected node key), observed by the window's views as ``WorkbenchState`` is by
the workbench's panes: one user action is one ``Change`` delivered once to each observer, and writes made
while a change is being delivered are refused, so the table and the drawing never bounce a selection
back and forth.

The rest are pure functions from the comparison dict to what is shown: the header line, the titles of
sections and contrasts, the cases list, the intervention checks of a node, and the session file of a
case. ``check_browsable`` checks the fields they read (``load_comparison`` runs it), so a file from
anyone is refused with one sentence instead of failing half drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import CircuitDeskError
from core.observable import Observable

# what a change is about
COMPARISON = "comparison"  # a comparison was opened: everything else reset
SECTION = "section"  # another kind of case (method and basis): contrast, version and selection reset
CONTRAST = "contrast"  # another contrast of the section (the differences and the colours change)
VERSION = "version"  # the behaviour graph of the other model version is drawn
SELECTION = "selection"  # the selected node key changed
VERSION_NAMES = {"a": "model A", "b": "model B"}


@dataclass
class ComparisonState(Observable):
    """What the comparison window's views share. Read fields freely; change them through methods."""

    comparison: dict | None = None
    section: int = 0
    contrast: int | None = None  # index into the section's contrasts; None: the section has none
    version: str = "a"  # the behaviour graph drawn: "a", or "b" where the section has model B's
    selected: str | None = None  # the selected node key

    # -- what is on show --------------------------------------------------------------------------
    @property
    def sections(self) -> list[dict]:
        return [] if self.comparison is None else self.comparison["sections"]

    @property
    def section_data(self) -> dict | None:
        return self.sections[self.section] if self.sections else None

    @property
    def contrast_data(self) -> dict | None:
        s = self.section_data
        return None if s is None or self.contrast is None else s["contrasts"][self.contrast]

    @property
    def versions(self) -> tuple[str, ...]:
        """The model versions whose behaviour graph the section holds ("a", or "a" and "b")."""
        s = self.section_data
        return () if s is None else tuple(v for v in ("a", "b") if v in s["behaviour"])

    def row(self, key: str | None) -> dict | None:
        """The chosen contrast's row of ``key`` (None: not among its ranked differences)."""
        c = self.contrast_data
        return None if c is None or key is None else next((r for r in c["rows"] if r["key"] == key), None)

    def checks(self, key: str | None) -> list[dict]:
        """The section's intervention checks of ``key`` (the chosen contrast's first)."""
        s = self.section_data
        if s is None or key is None:
            return []
        what = (self.contrast_data or {}).get("what")
        return sorted((c for c in s["checks"] if c["key"] == key), key=lambda c: (c["contrast"] != what, c["model"]))

    # -- actions ----------------------------------------------------------------------------------
    def show(self, comparison: dict | None, source: str = "") -> None:
        """Show a comparison (checked by ``check_browsable``): its first section and contrast, model A."""
        if not self._writable():
            return
        self.comparison = comparison
        self._reset(0)
        self._emit(COMPARISON, source)

    def _reset(self, section: int) -> None:
        self.section, self.version, self.selected = section, "a", None
        s = self.section_data
        self.contrast = 0 if s is not None and s["contrasts"] else None

    def choose_section(self, index: int, source: str = "") -> bool:
        if not self._writable() or index == self.section or not 0 <= index < len(self.sections):
            return False
        self._reset(index)
        self._emit(SECTION, source)
        return True

    def choose_contrast(self, index: int, source: str = "") -> bool:
        s = self.section_data
        if not self._writable() or s is None or index == self.contrast or not 0 <= index < len(s["contrasts"]):
            return False
        self.contrast = index
        self._emit(CONTRAST, source)
        return True

    def choose_version(self, version: str, source: str = "") -> bool:
        if not self._writable() or version == self.version or version not in self.versions:
            return False
        self.version = version
        self._emit(VERSION, source)
        return True

    def select(self, key: str | None, source: str = "") -> bool:
        """Select a node key (None: nothing). False (and nobody told) when nothing changed."""
        if not self._writable() or key == self.selected:
            return False
        self.selected = key
        self._emit(SELECTION, source)
        return True


# -- what is shown, as text -------------------------------------------------------------------------
def fmt(x, spec: str = ".3g") -> str:
    """A number as shown in the window ("—" where the file has none: not finite, not computed, or not
    a number at all in a file from elsewhere)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "—"
    return format(x, spec)


def group_counts(comparison: dict) -> dict[str, int]:
    """Cases in group A and in group B (all sections together)."""
    return {g: sum(c.get("group") == g for c in comparison["cases"]) for g in ("a", "b")}


def _model_line(version: str, m: dict) -> str:
    name = m.get("name") or Path(str(m.get("spec", "?"))).name
    facts = [f"{m['n_params']:,} parameters" if isinstance(m.get("n_params"), int) else "",
             f"{m['n_layers']} layers" if isinstance(m.get("n_layers"), int) else "",
             f"sha256 {m['sha256'][:12]}…" if isinstance(m.get("sha256"), str) else ""]
    facts = [f for f in facts if f]
    return f"{VERSION_NAMES.get(version, version)}: {name}" + (f" ({', '.join(facts)})" if facts else "")


def header_lines(comparison: dict) -> tuple[str, str, str]:
    """(title, models, groups and settings): the comparison in three lines."""
    c = comparison
    suite = c["suite"] if len(c["suite"]) <= MAX_NAME else c["suite"][:MAX_NAME] + "…"
    title = (f"{suite} — {c['cases_ok']} cases ok, {c['cases_failed']} failed"
             + (f" · {c['created'][:16].replace('T', ' ')}" if isinstance(c.get("created"), str) else ""))
    models = " · ".join(_model_line(v, m) for v, m in sorted(c["models"].items()))
    g = c.get("groups")
    parts = []
    if g is not None:
        n = group_counts(c)
        by = "the model's answer (correct or not)" if g["key"] == "correct" else f"label {g['key']!r}"
        parts.append(f"Groups by {by}: A = {g['a']} ({n['a']} cases), B = {g['b']} ({n['b']} cases)")
    else:
        parts.append("No groups")
    s = c["settings"]
    parts.append(f"{s.get('permutations', '?')} permutations, {CORRECTION_NAMES.get(s.get('correction'), s.get('correction'))} "
                 f"correction, α = {fmt(s.get('alpha'), 'g')}, top {s.get('checks', 0)} checked by ablation, "
                 f"edges kept recurring in ≥ {fmt(s.get('min_recurrence'), '.0%')} of cases")
    return title, models, " · ".join(parts)


CORRECTION_NAMES = {"maxt": "Westfall–Young max-T", "holm": "Holm", "bh": "Benjamini–Hochberg"}


def section_title(section: dict) -> str:
    kind = section["method"] + (f" · {section['basis']}" if section.get("basis") else "")
    return f"{kind} ({len(section['cases'])} cases)"


def contrast_title(contrast: dict) -> str:
    if contrast["what"] == "versions":
        return f"model A vs model B ({contrast['n_a']} cases, paired)"
    return f"groups: {contrast['label_a']} ({contrast['n_a']}) vs {contrast['label_b']} ({contrast['n_b']})"


def contrast_note(contrast: dict | None, section: dict) -> str:
    """How the chosen contrast was tested, in one line (or why the section has none)."""
    if contrast is None:
        return section.get("note") or "This section has no contrast: its cases have no groups and there is one model."
    how = (f"exact ({contrast['permutations']:,} relabellings)" if contrast.get("exact")
           else f"{contrast['permutations']:,} random relabellings")
    test = "paired permutation test" if contrast["what"] == "versions" else "permutation test"
    return (f"{contrast['significant']} of {contrast['keys_compared']} nodes differ (corrected p ≤ "
            f"{fmt(contrast['alpha'], 'g')}) · {test}, {how}, {CORRECTION_NAMES.get(contrast['correction'], contrast['correction'])}"
            + (f" · {section['note']}" if section.get("note") else ""))


def checks_lines(state: ComparisonState, key: str | None) -> list[str]:
    """The intervention checks of ``key``, a line per check and per group (or why there is none)."""
    if key is None:
        return ["Select a node to see its intervention checks."]
    found = state.checks(key)
    if not found:
        n = (state.comparison or {}).get("settings", {}).get("checks", 0)
        return [f"{key} was not checked by intervention (the study checks the top {n} differences of each "
                "contrast; circuitdesk compare --checks sets how many)."]
    out = []
    for chk in found:
        p = f" {fmt(chk['p_adjusted'])}" if isinstance(chk.get("p_adjusted"), (int, float)) else ""
        why = f"{'significant' if chk['significant'] else 'not significant'}, corrected p{p or ' —'}"
        out.append(f"{chk['intervention'].capitalize()} on {VERSION_NAMES.get(chk['model'], chk['model'])} "
                   f"({chk['contrast']} contrast; one of its top-ranked differences, {why}):")
        for group, v in chk["groups"].items():
            metric = "Δp(target)" if v.get("metric") == "probability" else "Δ logit difference"
            line = (f"    {group} — {v['cases']} cases: answer changed in {fmt(v['answer_changed'], '.0%')}, "
                    f"mean {metric} {fmt(v['mean_delta'], '+.3f')} (sd {fmt(v['sd_delta'], '.3f')})")
            if v.get("correct_to_wrong") or v.get("wrong_to_correct"):
                line += (f", correct → wrong {fmt(v['correct_to_wrong'], '.0%')}, "
                         f"wrong → correct {fmt(v['wrong_to_correct'], '.0%')}")
            out.append(line)
    return out


@dataclass(frozen=True)
class CaseRow:
    name: str
    group: str  # the case's group label ("" outside both groups, or without groups)
    predictions: tuple[str, ...]  # per version: "token (p)"
    correct: str  # ✓, ✗ or — (no answers given)
    status: str  # "ok", or "failed: …" (per version where there are two)
    sessions: tuple[str | None, ...]  # per version: the session path relative to the folder


def case_rows(comparison: dict) -> list[CaseRow]:
    versions = sorted(comparison["models"])
    g = comparison.get("groups")
    rows = []
    for c in comparison["cases"]:
        runs = c["runs"]
        label = c.get("labels", {}).get(g["key"], "") if g else ""
        preds, statuses = [], []
        for v in versions:
            run = runs.get(v, {})
            p = run.get("prediction")
            preds.append(f"{p!r} ({fmt(run.get('probability'), '.2f')})" if isinstance(p, str) and p else "—")
            ok = run.get("status") == "ok"
            s = "ok" if ok else f"failed: {run.get('error') or 'no result'}"
            statuses.append(s if len(versions) == 1 else f"{v.upper()} {s}")
        correct = runs.get("a", {}).get("correct")
        rows.append(CaseRow(c["name"], str(label), tuple(preds), "—" if correct is None else "✓" if correct else "✗",
                            " · ".join(statuses), tuple(runs.get(v, {}).get("session") for v in versions)))
    return rows


def session_file(comparison: dict, case: str, version: str = "a") -> Path:
    """The session file of a case (as run on ``version``), which must exist inside the comparison's folder."""
    folder = Path(comparison["folder"])
    c = next((c for c in comparison["cases"] if c["name"] == case), None)
    run = None if c is None else c["runs"].get(version)
    who = f"case {case!r}" + (f" on {VERSION_NAMES[version]}" if len(comparison["models"]) > 1 else "")
    if run is None:
        raise CircuitDeskError(f"The comparison has no run of {who}.")
    if run.get("status") != "ok" or not run.get("session"):
        raise CircuitDeskError(f"The {who} failed ({run.get('error') or 'no result'}), so it has no session to open.")
    path = (folder / run["session"]).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise CircuitDeskError(f"The session of {who} is not inside the comparison's folder {folder}.")
    if not path.is_file():
        raise CircuitDeskError(f"The session of {who} is missing: {path} does not exist; run circuitdesk compare "
                               "again to write it.")
    return path


# -- checking a file from anyone ------------------------------------------------------------------
NUM = (int, float, type(None))  # JSON numbers; null where a value was not finite
_ROW = {"key": str, "mean_a": NUM, "mean_b": NUM, "difference": NUM, "effect_size": NUM, "p_adjusted": NUM,
        "tested": bool, "significant": bool}
_GROUP_CHECK = {"cases": int, "answer_changed": NUM, "mean_delta": NUM, "sd_delta": NUM}
_NODE = {"key": str, "layer": int, "mean": NUM, "recurrence": NUM}
_EDGE = {"src": str, "dst": str, "mean": NUM, "recurrence": NUM}
_RUN = {"status": str}
_EDGE_CHANGE = {"edge": str, "change": str, "in_circuit_a": NUM, "in_circuit_b": NUM, "mean_a": NUM, "mean_b": NUM,
                "difference": NUM, "p_adjusted": NUM, "significant": bool}
MAX_LAYERS = 10_000  # more than any model has: a file claiming more is not one circuitdesk compare wrote
MAX_NAME = 200  # a suite name shown longer than this is cut
SCHEMA = {
    "suite": str, "cases_ok": int, "cases_failed": int, "models": {str: dict}, "settings": dict,
    "groups": (dict, type(None)),
    "cases": [{"name": str, "labels": {str: str}, "runs": {str: _RUN}}],
    "sections": [{"method": str, "cases": [str], "n_layers": int,
                  "behaviour": {str: {"nodes": [_NODE], "edges": [_EDGE]}}, "edge_changes": [_EDGE_CHANGE],
                  "contrasts": [{"what": str, "label_a": str, "label_b": str, "n_a": int, "n_b": int,
                                 "permutations": int, "correction": str, "alpha": NUM, "keys_compared": int,
                                 "significant": int, "rows": [_ROW]}],
                  "checks": [{"key": str, "contrast": str, "model": str, "significant": bool, "intervention": str,
                              "groups": {str: _GROUP_CHECK}}]}],
}


def check_browsable(doc: dict, where: str = "comparison.json") -> dict:
    """``doc`` (from ``load_comparison``) when it holds every field the comparison window reads, with
    its type; else one sentence naming the field."""
    _check(doc, SCHEMA, where, "")
    if doc["groups"] is not None:
        _check(doc["groups"], {"key": str, "a": str, "b": str}, where, "groups.")
    for s in doc["sections"]:
        if "a" not in s["behaviour"]:
            raise CircuitDeskError(f"{where}: a section has no behaviour graph of model A.")
        layers = [s["n_layers"]] + [n["layer"] for g in s["behaviour"].values() for n in g["nodes"]]
        if not 0 < s["n_layers"] <= MAX_LAYERS or not all(-1 <= x <= s["n_layers"] for x in layers):
            raise CircuitDeskError(f"{where}: a section's layers are out of range (n_layers {s['n_layers']}); write "
                                   "the file again with circuitdesk compare.")
    return doc


def _check(obj, schema, where: str, at: str) -> None:
    def bad(what: str) -> CircuitDeskError:
        return CircuitDeskError(f"{where}: {what} is missing or has the wrong type; write the file again with "
                                "circuitdesk compare.")

    if isinstance(schema, list):
        if not isinstance(obj, list):
            raise bad(at.rstrip(".") or "the file")
        for item in obj:
            _check(item, schema[0], where, at)
    elif isinstance(schema, dict) and set(schema) == {str}:  # a table of named entries
        if not isinstance(obj, dict):
            raise bad(at.rstrip("."))
        for name, item in obj.items():
            _check(item, schema[str], where, f"{at}{name}.")
    elif isinstance(schema, dict):
        if not isinstance(obj, dict):
            raise bad(at.rstrip(".") or "the file")
        for key, sub in schema.items():
            if key not in obj:
                raise bad(f"{at}{key}")
            _check(obj[key], sub, where, f"{at}{key}.")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if not isinstance(obj, types) or (isinstance(obj, bool) and bool not in types):
            raise bad(at.rstrip("."))

"""The comparison report of a behaviour study as data (``core.report``'s blocks), for the PDF renderer.

``build_comparison_report(comparison)`` turns what ``core.behaviour.study.run_study`` returned (or
``load_comparison`` read back from ``comparison.json``) into a ``Report``: a cover with both models'
fingerprints, the findings in brief, the setup (groups or versions, test, correction, settings), one
section per kind of case (the behaviour graph coloured by the contrast's effect size, the ranked
differences with their statistics, circuit edges gained and lost between versions, the intervention
checks), every case with its session file's sha256, and the provenance with the command that runs the
study again. Session files are read from ``comparison["folder"]`` (where ``comparison.json`` lies).

A number the study could not give (``None`` in the file, NaN or infinite in memory) prints "n/a".
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import core
from core.behaviour.layout import behaviour_layout
from core.behaviour.profile import FIXED_KEYS, check_verb
from core.paths import file_sha256
from core.report_blocks import Contents, Facts, Heading, PageBreak, Paragraph, Report, Table, compact_json
from core.settings import CompareSettings, command_args
from core.view import NEGATIVE, POSITIVE

TOP_DIFFERENCES = 25  # rows of a ranked-differences table
TOP_EDGE_CHANGES = 25  # rows of the circuit edge-changes table
EFFECT_SCALE = 2.0  # |effect size| at which a node's colour saturates (Cohen: 0.8 is already "large")
ENDPOINT_COLOUR = "#52606d"  # tokens / input / logits: always there, never compared
UNCOMPARED_COLOUR = "#d9dee3"  # a node with no effect size (untested, or outside the ranked rows kept)
SHORT_LABEL = 12  # a group label this short names a table's columns ("Mean wrong"); longer ones are A / B
SECTION_NAMES = 40  # case names listed at the top of a section (all of them are under Cases)
LABELS_PER_FIGURE = 40  # node names offered to the renderer (it skips one that would cover another)
FIGURE_EDGES = 200  # edges drawn in a behaviour graph: the most recurrent (a real model's graph holds thousands)

CORRECTION_TEXT = {
    "maxt": ("Westfall–Young single-step max-T", "the family-wise error rate (the chance of any false positive "
                                                 "among the nodes compared), under any dependence between nodes"),
    "holm": ("Holm–Bonferroni", "the family-wise error rate (the chance of any false positive among the nodes "
                                "compared)"),
    "bh": ("Benjamini–Hochberg", "the false discovery rate (the expected share of false positives among the nodes "
                                 "called significant)"),
}


@dataclass(frozen=True)
class BehaviourFigure:
    """A behaviour graph as drawn (``core.behaviour.layout``): y = layer, x = slot within the layer."""

    x: np.ndarray  # [n]
    y: np.ndarray  # [n] layer: -1 tokens / input, n_layers logits
    size: np.ndarray  # [n] in [0, 1]: mean |influence| (node score) relative to the largest drawn
    colour: tuple[str, ...]  # [n] "#rrggbb" from the effect size
    outline: np.ndarray  # [n] bool: significant (corrected p <= alpha)
    square: np.ndarray  # [n] bool: the graph's endpoints (tokens / input, logits)
    labels: dict  # node index -> text, in priority order
    src: np.ndarray  # [e] indices into the nodes
    dst: np.ndarray
    recurrence: np.ndarray  # [e] share of cases holding the edge
    y_ticks: tuple[tuple[float, str], ...]
    title: str  # above the plot, e.g. "Model A (llama)"
    scale: tuple[tuple[float, str], ...] = ()  # legend colour stops (effect size, colour); () = not coloured
    scale_low: str = ""  # what the negative end means ("higher in y")
    scale_high: str = ""
    alpha: float = 0.05
    caption: str = ""


# -- numbers --------------------------------------------------------------------------------------------
def number(x) -> float | None:
    """``x`` as a finite float, or None (None, NaN, infinite, not a number)."""
    if x is None or isinstance(x, (bool, np.bool_)):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(x, spec: str = ".3g") -> str:
    v = number(x)
    return "n/a" if v is None else format(v, spec)


def fmt_p(x) -> str:
    """A p-value: three decimals, or two significant digits below 0.001."""
    v = number(x)
    if v is None:
        return "n/a"
    return f"{v:.1e}" if 0 < v < 0.001 else f"{v:.3f}"


def pct(x) -> str:
    v = number(x)
    return "n/a" if v is None else f"{v:.0%}"


def params(n) -> str:
    v = number(n)
    if v is None:
        return "n/a"
    return f"{v / 1e9:.2f} B" if v >= 1e9 else f"{v / 1e6:.1f} M" if v >= 1e6 else f"{int(v):,}"


def effect_colour(t: float) -> str:
    """The colour of an effect size relative to ``EFFECT_SCALE`` (−1 … +1): red (higher in B) through
    white to blue (higher in A), the graph's edge colours."""
    t = min(max(float(t), -1.0), 1.0)
    rgb = POSITIVE if t >= 0 else NEGATIVE
    f = abs(t)
    return "#" + "".join(f"{round(255 + (c - 255) * f):02x}" for c in rgb)


# -- building -------------------------------------------------------------------------------------------
def build_comparison_report(comparison: dict, auditor: str = "", now: float | None = None) -> Report:
    """The PDF report of a behaviour study (see the module docstring)."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(now if now is not None else time.time()))
    folder = Path(comparison["folder"]) if comparison.get("folder") else None
    auditor = auditor or comparison.get("auditor") or ""
    blocks: list = [_cover(comparison, auditor, when), *_findings(comparison), Contents(), PageBreak()]
    blocks += _setup(comparison)
    for section in comparison.get("sections", []):
        blocks += _section(section, comparison)
    blocks += _cases(comparison, folder)
    blocks += _provenance(comparison, folder)
    suite = comparison.get("suite", "")
    digest = _file_digest(folder, "comparison.json") if folder else None
    return Report(title="Behaviour comparison", subtitle=f"{suite}: {_what(comparison)}",
                  header=f"{suite} · behaviour comparison · {when}",
                  footer="comparison.json" + (f" · sha256 {digest[:12]}…" if digest else ""), blocks=blocks)


def _what(c: dict) -> str:
    """What the study compares, in a phrase."""
    parts = []
    g = c.get("groups")
    if g:
        parts.append(f"{g['a']} vs {g['b']} (cases grouped by {_key_phrase(g['key'])})")
    if "b" in c.get("models", {}):
        parts.append(f"model A ({_model_name(c, 'a')}) vs model B ({_model_name(c, 'b')})")
    return "; ".join(parts) or "one model, no contrast (the behaviour graph only)"


def _key_phrase(key: str) -> str:
    return "whether the model's answer is correct" if key == "correct" else f"the label {key!r}"


def _model_name(c: dict, v: str) -> str:
    m = c.get("models", {}).get(v, {})
    return str(m.get("name") or m.get("spec") or "?")


def _counts(c: dict) -> tuple[int, int]:
    cases = c.get("cases", [])
    failed = sum(any(r.get("status") != "ok" for r in case.get("runs", {}).values()) or not case.get("runs")
                 for case in cases)
    return len(cases), failed


def _cover(c: dict, auditor: str, when: str) -> Facts:
    n, failed = _counts(c)
    rows = [("Suite", str(c.get("suite", "?"))), ("Compared", _what(c))]
    for v, m in sorted(c.get("models", {}).items()):
        name = f"Model {v.upper()}"
        rows += [(name, str(m.get("name") or m.get("spec") or "?")),
                 (f"{name} family, parameters", f"{m.get('family') or 'n/a'}, {params(m.get('n_params'))}"),
                 (f"{name} weights sha256", str(m.get("sha256") or "not recorded (no case of this model succeeded)"))]
    tool = core.__version__
    if c.get("tool_version") and c["tool_version"] != tool:
        tool += f" (study run by {c['tool_version']})"
    rows += [("Cases", f"{n} ({failed} failed)"), ("Study run", str(c.get("created") or c.get("started") or "?")),
             ("Report generated", when), ("Circuit Desk", tool), ("Auditor", auditor or "(not set)")]
    return Facts(tuple(rows))


# -- findings -------------------------------------------------------------------------------------------
def _findings(c: dict) -> list:
    out: list = [Heading("Findings")]
    sections = c.get("sections", [])
    if not sections:
        out.append(Paragraph("No case succeeded, so nothing was aggregated or compared; the Cases section lists "
                             "the reasons."))
    for s in sections:
        out.append(Paragraph(_section_finding(s)))
    n, failed = _counts(c)
    if failed:
        out.append(Paragraph(f"{failed} of {n} cases failed (reasons under Cases); a failed case is in no contrast.",
                             "note"))
    out.append(Paragraph("A significant difference is a correlation between a node and the group (or version); the "
                         "intervention checks say whether removing the node changes the behaviour.", "note"))
    return out


def _section_finding(s: dict) -> str:
    text = f"{_kind_title(s)}, {len(s.get('cases', []))} cases. "
    if not s.get("contrasts"):
        text += s.get("note") or "No contrast: the cases form no two groups and no second model was given."
        return text
    for con in s["contrasts"]:
        text += _contrast_sentence(con) + " "
    changes = s.get("edge_changes") or []
    if changes:
        kinds = {k: sum(e.get("change") == k for e in changes) for k in ("gained", "lost", "changed")}
        sig = sum(bool(e.get("significant")) for e in changes)
        text += (f"Of the {len(changes)} circuit edges listed between the versions, {kinds['gained']} were gained, "
                 f"{kinds['lost']} lost and {kinds['changed']} changed in score ({sig} significantly). ")
    for chk in s.get("checks", []):
        text += _check_sentence(chk) + " "
    if s.get("note"):
        text += s["note"]
    return text.strip()


def _contrast_title(con: dict) -> str:
    if con.get("what") == "groups":
        return f"Groups {con['label_a']} ({con['n_a']}) vs {con['label_b']} ({con['n_b']})"
    return f"Model A vs model B on {con['n_a']} cases"


def _contrast_sentence(con: dict) -> str:
    rows = con.get("rows", [])
    sig = [r for r in rows if r.get("significant")]
    name = CORRECTION_TEXT.get(con.get("correction"), (con.get("correction"),))[0]
    text = (f"{_contrast_title(con)}: {con.get('significant', len(sig))} of {con.get('keys_compared', '?')} nodes "
            "differ significantly "
            f"(corrected p ≤ {fmt(con.get('alpha'), 'g')}, {name})")
    if sig:
        text += ": " + ", ".join(f"{r['key']} ({_direction(r, con)}, effect {fmt(r.get('effect_size'), '+.2f')}, "
                                 f"p = {fmt_p(r.get('p_adjusted'))})" for r in sig[:5])
        if len(sig) > 5:
            text += f" and {len(sig) - 5} more"
        return text + "."
    tested = [r for r in rows if r.get("tested")]
    if tested:
        r = tested[0]
        return (text + f"; the largest difference is {r['key']} ({_direction(r, con)}, effect "
                       f"{fmt(r.get('effect_size'), '+.2f')}, corrected p = {fmt_p(r.get('p_adjusted'))}), "
                       "which is not significant.")
    return text + "; no node varied, so nothing was tested."


def _direction(row: dict, con: dict) -> str:
    d = number(row.get("difference"))
    if d is None or d == 0:
        return "no difference in mean"
    return f"higher in {con['label_a'] if d > 0 else con['label_b']}"


def _check_sentence(chk: dict) -> str:
    """What ablating one node did, group by group, in a sentence."""
    groups = chk.get("groups", {})
    if not groups:
        return f"{check_verb(chk).capitalize()} {chk.get('key', '?')} was checked in no case."
    where = {g: "the cases" if g == "all cases" else f"{g} cases" for g in groups}
    changed = " and in ".join(f"{pct(v.get('answer_changed'))} of {where[g]}" for g, v in groups.items())
    metric = _metric(next(iter(groups.values())))
    moved = " and ".join(f"{fmt(v.get('mean_delta'), '+.3f')}" + ("" if g == "all cases" else f" in {g}")
                         for g, v in groups.items())
    which = "" if chk.get("significant") else " (top ranked, not significant)"
    return (f"{check_verb(chk).capitalize()} {chk.get('key', '?')}{which} in model {str(chk.get('model', 'a')).upper()} changed the top "
            f"answer in {changed}; {metric} moved by {moved} on average.")


def _metric(v: dict) -> str:
    return "the target's probability" if v.get("metric") == "probability" else "the logit difference"


# -- setup ----------------------------------------------------------------------------------------------
def _setup(c: dict) -> list:
    s = c.get("settings", {})
    g = c.get("groups")
    cases = c.get("cases", [])
    out: list = [Heading("Setup")]
    if g:
        members = {side: [x["name"] for x in cases if x.get("group") == side] for side in ("a", "b")}
        rest = [x["name"] for x in cases if x.get("group") not in ("a", "b")]
        out.append(Paragraph(f"Cases are grouped by {_key_phrase(g['key'])}"
                             + (" (the model, decoding greedily, writes one of the case's answers, or not)"
                                if g["key"] == "correct" else "")
                             + f": group A is {g['a']!r}, group B is {g['b']!r}."))
        rows = [("A", str(g["a"]), str(len(members["a"])), ", ".join(members["a"])),
                ("B", str(g["b"]), str(len(members["b"])), ", ".join(members["b"]))]
        if rest:
            rows.append(("—", "in neither group", str(len(rest)), ", ".join(rest)))
        out.append(Table(("Group", "Label", "Cases", "Case names"), tuple(rows), widths=(0.8, 1.5, 0.8, 6),
                         numeric=(False, False, True, False),
                         caption="Cases by group as the suite (or the rule) assigned them; a failed case takes part "
                                 "in no contrast."))
    if "b" in c.get("models", {}):
        out.append(Paragraph(f"The same {len(cases)} cases ran on two versions of the model: A "
                             f"({_model_name(c, 'a')}) and B ({_model_name(c, 'b')}); each case is compared with "
                             "itself across the versions."))
    if not g and "b" not in c.get("models", {}):
        out.append(Paragraph("The cases form no two groups and no second model was given: the report shows the "
                             "behaviour graph of the suite, with no contrast."))
    corr = s.get("correction", "maxt")
    name, controls = CORRECTION_TEXT.get(corr, (corr, "?"))
    facts = [
        ("Groups by", "(none)" if not g else f"{g['key']}: A = {g['a']!r}, B = {g['b']!r}"),
        ("Model B", str(s.get("model_b") or "(none)")),
        ("Permutations", f"{_int(s.get('permutations'))} random relabellings, seeded; a contrast with no more "
                         "possible relabellings than that enumerates all of them (an exact p-value)"),
        ("Permutation seed", str(s.get("permutation_seed", "?"))),
        ("Correction", f"{corr}: {name}, which controls {controls}"),
        ("Alpha", f"{fmt(s.get('alpha'), 'g')}: a difference is significant when its corrected p-value is at most "
                  "this"),
        ("Checks", f"{s.get('checks', '?')}: the top-ranked nodes that one unit carries (neurons, features, "
                   "heads, MLPs; not error nodes), significant or not, zero-ablated in every case"),
        ("Minimum recurrence", f"{fmt(s.get('min_recurrence'), 'g')}: the behaviour graph keeps edges (and draws "
                               "nodes) that recur in at least this share of the cases"),
        ("Executor", str(s.get("executor", "local")) + (f" ({s['address']})" if s.get("address") else "")),
    ]
    out += [Facts(tuple(facts)), Heading("Method", 2), Paragraph(METHOD_TEXT)]
    return out


METHOD_TEXT = (
    "Every case is traced on its own (an attribution graph, or a component circuit), and its nodes are keyed so "
    "that a key means the same unit in every case: a neuron or feature L{layer}/N{index} whatever the position it "
    "fired at, an error node L{layer}/error, a head a{layer}.h{head}, an MLP m{layer}. A key's value in a case is "
    "its influence on the logits (attribution graphs) or its node score (circuits), 0 when the case lacks it. "
    "Between two groups of cases each key is compared with Welch's t; its p-value comes from a permutation test "
    "that reassigns the group labels at random (or in every possible way, when there are few) and counts the "
    "relabellings whose |t| is at least as large. The effect size is Hedges' g (the difference of the means over "
    "the pooled standard deviation, corrected for small samples). Between two model versions on the same cases "
    "the paired t of the per-case differences is used, with random sign flips of the differences, and the effect "
    "size d_z (mean difference over its standard deviation). The p-values are corrected for the number of keys "
    "compared. A key with no variation carries no evidence and is not tested (a model compared with itself tests "
    "nothing). The graph's endpoints (tokens or input, logits) are never compared.")


def _int(x) -> str:
    v = number(x)
    return "n/a" if v is None else f"{int(v):,}"


# -- one kind of case -----------------------------------------------------------------------------------
def _kind_title(s: dict) -> str:
    if s.get("method") == "circuit":
        return "Component circuits"
    basis = s.get("basis") or "neurons"
    return f"Attribution graphs ({'MLP neurons' if basis == 'neurons' else basis})"


def _section(s: dict, c: dict) -> list:
    out: list = [Heading(_kind_title(s))]
    n_nodes = {v: len(g.get("nodes", [])) for v, g in s.get("behaviour", {}).items()}
    names = s.get("cases", [])
    more = f" and {len(names) - SECTION_NAMES} more" if len(names) > SECTION_NAMES else ""
    out.append(Paragraph(f"{len(names)} cases of this kind: {', '.join(names[:SECTION_NAMES])}{more}."))
    if s.get("note"):
        out.append(Paragraph(s["note"], "note"))
    alpha = number(c.get("settings", {}).get("alpha")) or 0.05
    contrasts = s.get("contrasts", [])
    if not contrasts:
        out += [Heading("Behaviour graph", 2)] + _figure_blocks(s, "a", None, c, alpha, n_nodes)
    for con in contrasts:
        # headings stay short (a group's label is the user's text): the contrast is named below them
        what = "Groups" if con.get("what") == "groups" else "Versions"
        versions = ["a", "b"] if con.get("what") == "versions" and "b" in s.get("behaviour", {}) else ["a"]
        out += [Heading(f"{what}: behaviour graph{'s' if len(versions) > 1 else ''}", 2),
                Paragraph(f"{_contrast_title(con)}: the behaviour graph{'s' if len(versions) > 1 else ''} coloured "
                          "by this contrast's effect sizes.")]
        for v in versions:
            out += _figure_blocks(s, v, con, c, alpha, n_nodes)
        out += [Heading(f"{what}: ranked differences", 2), *_differences(con, s.get("method", ""))]
    if s.get("edge_changes"):
        out += [Heading("Circuit edges gained, lost and changed", 2), *_edge_changes(s["edge_changes"])]
    if s.get("checks"):
        out += [Heading("Intervention checks", 2), *_checks(s, c)]
    elif contrasts and number(c.get("settings", {}).get("checks")):
        out += [Heading("Intervention checks", 2),
                Paragraph("No node could be checked: none of the tested nodes is a single unit (a neuron, feature, "
                          "head or MLP) that an ablation can remove.", "note")]
    return out


def _figure_blocks(s: dict, version: str, con: dict | None, c: dict, alpha: float, n_nodes: dict) -> list:
    graph = s.get("behaviour", {}).get(version)
    if graph is None:
        return []
    nodes, all_edges = _layout(s["behaviour"], version, con)
    # the most recurrent edges (then the strongest): a real model's behaviour graph holds thousands
    edges = sorted(all_edges, key=lambda e: (-e.recurrence, -abs(e.mean)))[:FIGURE_EDGES]
    who = f"Model {version.upper()} ({_model_name(c, version)})"
    if not nodes:
        return [Paragraph(f"{who}: the behaviour graph has no node.", "note")]
    fixed = np.array([n.key in FIXED_KEYS for n in nodes])
    mean = np.array([abs(n.mean) for n in nodes])
    top = float(mean[~fixed].max()) if (~fixed).any() else 0.0
    size = np.where(fixed, 0.6, np.sqrt(mean / top) if top > 0 else 0.3)
    colour = tuple(ENDPOINT_COLOUR if f else UNCOMPARED_COLOUR if n.effect is None
                   else effect_colour(n.effect / EFFECT_SCALE) for n, f in zip(nodes, fixed))
    # names in priority order: significant nodes, the largest effects, the most influential (the endpoints
    # are named by the axis)
    order = sorted((i for i in range(len(nodes)) if not fixed[i]),
                   key=lambda i: (not nodes[i].significant, -abs(nodes[i].effect or 0.0), -mean[i]))
    labels = {i: nodes[i].key for i in order[:LABELS_PER_FIGURE]}
    n_layers = int(s.get("n_layers", 0))
    bottom = "input" if s.get("method") == "circuit" else "tokens"
    ticks = ((-1.0, bottom),) + tuple((float(l), f"L{l}") for l in range(n_layers)) + ((float(n_layers), "logits"),)
    scale = ()
    low = high = ""
    if con is not None:
        scale = tuple((EFFECT_SCALE * t, effect_colour(t)) for t in np.linspace(-1, 1, 21))
        low, high = f"higher in {con['label_b']}", f"higher in {con['label_a']}"
    drawn = sum(not f for f in fixed)
    sig = sum(n.significant for n in nodes)
    effect = "Hedges' g" if (con or {}).get("what") == "groups" else "d_z"
    caption = (f"{who}: the behaviour graph of {len(graph.get('cases', []))} cases, {drawn} nodes drawn (at most 12 "
               f"a layer: the most influential, and every significant one) of the {n_nodes.get(version, 0)} that "
               f"recur in at least {fmt(graph.get('min_recurrence'), '.0%')} of the cases or end a recurring edge; "
               + (f"{len(edges)} edges" if len(edges) == len(all_edges) else
                  f"the {len(edges)} most recurrent of the {len(all_edges):,} edges between the nodes drawn")
               + ". Node size: mean |influence| over the cases; edges: darker and wider the more "
               "cases hold them; squares: the graph's endpoints (never compared).")
    if con is not None:
        caption += (f" Colour: the contrast's effect size ({effect}), blue where the node is higher in "
                    f"{con['label_a']}, red where higher in {con['label_b']}, saturated at ±{EFFECT_SCALE:g}; pale "
                    f"grey: not tested. Outlined: significant ({sig} drawn).")
    fig = BehaviourFigure(
        x=np.array([n.x for n in nodes]), y=np.array([n.y for n in nodes]), size=size, colour=colour,
        outline=np.array([n.significant for n in nodes]), square=fixed, labels=labels,
        src=np.array([e.src for e in edges], dtype=int), dst=np.array([e.dst for e in edges], dtype=int),
        recurrence=np.array([e.recurrence for e in edges]), y_ticks=ticks, title=who, scale=scale,
        scale_low=low, scale_high=high, alpha=alpha, caption=caption)
    return [fig]


def _layout(graphs: dict, version: str, con: dict | None):
    """``behaviour_layout`` of a section's graphs (every version's, so a node keeps its place in both
    drawings) whose numbers may be missing (None, NaN): those count as 0 (a mean or recurrence) or as
    not compared (an effect size)."""
    def zero(x) -> float:
        v = number(x)
        return 0.0 if v is None else v

    def clean(graph: dict) -> dict:
        return {**graph, "nodes": [{**n, "mean": zero(n.get("mean")), "recurrence": zero(n.get("recurrence"))}
                                   for n in graph.get("nodes", [])],
                "edges": [{**e, "mean": zero(e.get("mean")), "recurrence": zero(e.get("recurrence"))}
                          for e in graph.get("edges", [])]}

    rows = None if con is None else {"rows": [{**r, "effect_size": number(r.get("effect_size"))}
                                              for r in con.get("rows", [])]}
    return behaviour_layout({"behaviour": {v: clean(g) for v, g in graphs.items()}}, version, rows)


def _differences(con: dict, method: str) -> list:
    # the columns name the groups by their labels when those are short, else as A and B
    short = con.get("what") == "groups" and all(len(str(con[k])) <= SHORT_LABEL for k in ("label_a", "label_b"))
    a, b = (con["label_a"], con["label_b"]) if short else ("A", "B")
    paired = con.get("what") == "versions"
    rows = con.get("rows", [])
    shown = rows[:TOP_DIFFERENCES]
    how = ("paired t of the per-case differences, random sign flips" if paired else
           "Welch's t, random relabellings of the groups")
    perm = (f"exact: all {_int(con.get('permutations'))} {'sign vectors' if paired else 'relabellings'}"
            if con.get("exact") else f"{_int(con.get('permutations'))} seeded random "
                                     f"{'sign flips' if paired else 'relabellings'}")
    name = CORRECTION_TEXT.get(con.get("correction"), (con.get("correction"),))[0]
    named = "" if short or con.get("what") != "groups" else f" (A: {con['label_a']}; B: {con['label_b']})"
    text = (f"{_contrast_title(con)}{named}: {how} ({perm}); p corrected by {name} over the "
            f"{con.get('keys_compared', '?')} "
            f"keys tested; {con.get('significant', 0)} significant at {fmt(con.get('alpha'), 'g')}. Ranked by "
            "corrected p, then by the size of the effect.")
    table = Table(
        ("#", "Node", f"Mean {a}", f"Mean {b}", f"Present {a} / {b}", "Difference", "Effect size", "p",
         "Corrected p", "Signif."),
        tuple((str(k + 1), r["key"], fmt(r.get("mean_a"), ".4g"), fmt(r.get("mean_b"), ".4g"),
               f"{pct(r.get('present_a'))} / {pct(r.get('present_b'))}", fmt(r.get("difference"), "+.3g"),
               fmt(r.get("effect_size"), "+.2f"), fmt_p(r.get("p_value")), fmt_p(r.get("p_adjusted")),
               ("yes" if r.get("significant") else "no") if r.get("tested", True) else "untested")
              for k, r in enumerate(shown)),
        widths=(0.45, 1.35, 1.05, 1.05, 1.3, 1.05, 0.9, 0.8, 0.95, 0.85),
        numeric=(True, False, True, True, True, True, True, True, True, False),
        caption=(f"The top {len(shown)} of the {len(rows)} ranked keys kept in comparison.json. Mean: the key's mean "
                 f"value over the cases ({'node score' if method == 'circuit' else 'influence on the logits'}"
                 "; 0 where a case lacks it); present: the share of cases whose pruned graph or circuit holds it; "
                 f"difference: mean {a} − mean {b}; effect size: "
                 + ("d_z, the mean per-case difference over its standard deviation" if paired else
                    "Hedges' g, the difference over the pooled standard deviation")
                 + "; p: the raw permutation p-value."))
    return [Paragraph(text), table]


def _edge_changes(changes: list) -> list:
    shown = changes[:TOP_EDGE_CHANGES]
    kinds = {k: sum(e.get("change") == k for e in changes) for k in ("gained", "lost", "changed")}
    text = (f"Edges in either version's circuit in at least one case, ranked by the paired test of their scores "
            f"(model A − model B): {kinds['gained']} gained (in at least half of B's circuits, in fewer than half "
            f"of A's), {kinds['lost']} lost (the other way round), {kinds['changed']} changed in score.")
    table = Table(
        ("#", "Edge", "Change", "In circuit A", "In circuit B", "Mean A", "Mean B", "Difference", "Corrected p",
         "Signif."),
        tuple((str(k + 1), e.get("edge", "?"), e.get("change", "?"), pct(e.get("in_circuit_a")),
               pct(e.get("in_circuit_b")), fmt(e.get("mean_a"), ".4g"), fmt(e.get("mean_b"), ".4g"),
               fmt(e.get("difference"), "+.3g"), fmt_p(e.get("p_adjusted")), "yes" if e.get("significant") else "no")
              for k, e in enumerate(shown)),
        widths=(0.45, 2.0, 0.9, 0.85, 0.85, 0.95, 0.95, 1.0, 0.95, 0.75),
        numeric=(True, False, False, True, True, True, True, True, True, False),
        caption=f"The top {len(shown)} of {len(changes)} edges. In circuit: the share of cases whose circuit holds "
                "the edge; mean: its mean score over the cases.")
    return [Paragraph(text), table]


def _checks(s: dict, c: dict) -> list:
    checks = s["checks"]
    answers = any(case.get("answers") for case in c.get("cases", []) if case.get("name") in set(s.get("cases", [])))
    exploratory = [chk for chk in checks if not chk.get("significant")]
    metric = "the target token's probability" if s.get("method") != "circuit" else \
        "the logit difference between the answer and the counterfactual (on up to 8 prompt pairs a case)"
    how = checks[0].get("intervention", "zero-ablation at every position but the start token") if checks else ""
    text = (f"Each checked node gets {how}, in every case of the contrast "
            "(on the model named), and the model runs again. Answer changed: the share of cases whose top next token "
            f"changed; mean Δ metric: the mean change in {metric}, ± its standard deviation over the cases"
            + ("; correct → wrong and wrong → correct: the share of cases whose answer turned from one of the "
               "case's answers (written greedily, whole, with the edit held at the prompt's positions) to something "
               "else, and back." if answers else
               "; no case has answers, so correctness flips are n/a."))
    if exploratory:
        text += (" No node was significant, so the checks are on the top ranked nodes: they say what these nodes do, "
                 "not that they carry the difference.")
    rows = []
    for chk in checks:
        for g, v in chk.get("groups", {}).items():
            rows.append((chk.get("key", "?"), str(chk.get("model", "a")).upper(), str(g), _int(v.get("cases")),
                         pct(v.get("answer_changed")),
                         f"{fmt(v.get('mean_delta'), '+.3f')} ± {fmt(v.get('sd_delta'), '.3f')}",
                         pct(v.get("correct_to_wrong")) if answers else "n/a",
                         pct(v.get("wrong_to_correct")) if answers else "n/a"))
    out = [Paragraph(text),
           Table(("Node", "Model", "Group", "Cases", "Answer changed", "Mean Δ metric ± sd", "Correct → wrong",
                  "Wrong → correct"), tuple(rows), widths=(1.3, 0.75, 1.4, 0.7, 1.05, 1.6, 1.05, 1.05),
                 numeric=(False, False, False, True, True, True, True, True),
                 caption="One row per checked node, model and group.")]
    out.append(Paragraph(" ".join(_check_sentence(chk) for chk in checks)))
    return out


# -- cases and provenance -------------------------------------------------------------------------------
def _session_file(folder: Path | None, rel: str | None) -> tuple[str, str]:
    """(file as named in comparison.json, its sha256 now or why there is none)."""
    if not rel:
        return "—", "no session (the case failed)"
    if folder is None:
        return rel, "not read (the comparison's folder is not known)"
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        return rel, "not read (outside the comparison's folder)"
    if not path.is_file():
        return rel, "MISSING: the file is not in the comparison's folder"
    return rel, file_sha256(path)


def _file_digest(folder: Path, name: str) -> str | None:
    p = folder / name
    return file_sha256(p) if p.is_file() else None


def _cases(c: dict, folder: Path | None) -> list:
    cases = c.get("cases", [])
    groups = c.get("groups") or {}
    versions = sorted(c.get("models", {}) or {"a": {}})
    answers = any(x.get("answers") for x in cases)
    # (column, relative width, shown): the group only when cases are grouped, the model only for two
    # versions, correctness only when cases have answers
    layout = [("Case", 1.3, True), ("Labels", 2.2, True), ("Group", 1.0, bool(groups)),
              ("Model", 0.7, len(versions) > 1), ("Prediction (p)", 1.9, True), ("Correct", 0.8, answers),
              ("Status", 0.8, True)]
    shown = [name for name, _, on in layout if on]
    rows, files, failures = [], [], []
    for x in cases:
        labels = ", ".join(f"{k} = {v}" for k, v in sorted((x.get("labels") or {}).items())) or "—"
        group = groups.get(x["group"], x["group"]) if x.get("group") in ("a", "b") else "—"
        for v in versions:
            run = (x.get("runs") or {}).get(v)
            ok = run is not None and run.get("status") == "ok"
            correct = None if run is None else run.get("correct")
            cells = {"Case": x["name"], "Labels": labels, "Group": str(group), "Model": v.upper(),
                     "Prediction (p)": f"{run.get('prediction', '')!r} ({fmt(run.get('probability'), '.3f')})"
                     if ok else "—",
                     "Correct": "—" if correct is None else "yes" if correct else "no",
                     "Status": "not run" if run is None else "ok" if ok else "failed"}
            rows.append(tuple(cells[name] for name in shown))
            if run is not None and not ok:
                failures.append((x["name"], v.upper(), str(run.get("error") or "no reason recorded")))
            name, digest = _session_file(folder, (run or {}).get("session"))
            files.append((x["name"], name, digest))  # the file's folder (a/, b/) names the model
    caption = ("Every case of the suite: its labels, "
               + ("the group it was put in (—: in neither), " if groups else "")
               + "the model's top next token with its probability"
               + (", whether it is one of the case's answers" if answers else "") + ", and whether the case ran.")
    out: list = [Heading("Cases"),
                 Table(tuple(shown), tuple(rows), widths=tuple(w for _, w, on in layout if on), caption=caption)]
    if failures:
        out += [Heading("Failed cases", 2),
                Table(("Case", "Model", "Reason"), tuple(failures), widths=(1.3, 0.7, 6))]
    out += [Heading("Session files", 2),
            Table(("Case", "Session file", "sha256"), tuple(files), widths=(0.9, 1.9, 6.1),
                  caption="Each case's session as the study saved it, under the comparison's folder"
                          + (f" {folder}" if folder else "") + " (a/: model A, b/: model B), with the sha256 of the "
                          "file as it is now: open one with circuitdesk report or the workbench to see that case's "
                          "own graph.")]
    return out


def regenerate_command(c: dict) -> str:
    """``circuitdesk compare SUITE --out DIR`` with the flags whose values differ from the defaults."""
    names = [f.name for f in dataclasses.fields(CompareSettings)]
    default = CompareSettings()
    given = c.get("settings", {})
    changed = {n: given[n] for n in names if n in given and given[n] != getattr(default, n)
               and not (isinstance(given[n], float) and number(given[n]) is None)}  # NaN: no flag gives it
    flags = command_args(CompareSettings(**{n: changed.get(n) for n in names}))
    suite = c.get("suite_file") or f"{c.get('suite', 'SUITE')}.toml"
    return shlex.join(["circuitdesk", "compare", str(suite), "--out", str(c.get("folder") or "DIR"), *flags])


def _provenance(c: dict, folder: Path | None) -> list:
    out: list = [Heading("Provenance")]
    labels = {"spec": "Given as", "name": "Name", "family": "Family", "n_params": "Parameters", "n_layers": "Layers",
              "n_heads": "Heads", "device": "Device", "dtype": "Dtype", "sha256": "Weights sha256"}
    for v, m in sorted(c.get("models", {}).items()):
        rows = [(labels.get(k, k), params(val) if k == "n_params" else str(val)) for k, val in m.items()]
        if "sha256" not in m:
            rows.append(("Weights sha256", "not recorded (no case of this model succeeded)"))
        out += [Heading(f"Model {v.upper()}", 2), Facts(tuple(rows))]
    digest = _file_digest(folder, "comparison.json") if folder else None
    tool = str(c.get("tool_version", "?"))
    out += [Heading("Suite and study", 2),
            Facts((("Suite", str(c.get("suite", "?"))),
                   ("Suite file", str(c.get("suite_file") or "not recorded")),
                   ("Suite file sha256 (when run)", str(c.get("suite_sha256") or "not recorded")),
                   ("Comparison file", str(Path(folder) / "comparison.json") if folder else "not known"),
                   ("Comparison sha256", digest or "the file is not there"),
                   ("Format", f"{c.get('format', '?')} version {c.get('format_version', '?')}"),
                   ("Started, finished", f"{c.get('started', '?')}, {c.get('created', '?')}"),
                   ("Seconds", fmt(c.get("seconds"), ".1f")),
                   ("Circuit Desk (study, report)", f"{tool}, {core.__version__}"))),
            Heading("Regenerate", 2),
            Paragraph("This command runs the study again, with the settings that differ from the defaults given as "
                      "flags (the suite's own [compare] table gives the same values):", "note"),
            Paragraph(regenerate_command(c), "mono"),
            Heading("Full settings", 2),
            Paragraph(compact_json({k: None if isinstance(v, float) and number(v) is None else v
                                    for k, v in c.get("settings", {}).items()}), "mono")]
    return out

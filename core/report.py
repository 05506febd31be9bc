"""The audit report as data: a title page, sections, tables and figure descriptions.

``build_report(session, path)`` turns a saved session into a ``Report``; ``build_summary`` turns a
batch audit's results into one. Nothing here draws: ``desktop.report_pdf`` lays the blocks out on
pages and paints them with QPainter (vector graphics, running header, page numbers, contents).
The report is a function of the session file alone (plus the auditor's name, the date and, for
attribution graphs, the feature atlas that describes its nodes), so the GUI and ``circuitdesk
report`` give the same document, and a reviewer can tie every page to the file by its sha256 (and
the atlas by its own, in the appendix). An atlas is only ever used for the model and basis it was
built for (``report_atlas`` finds one; ``build_report`` refuses another).

The blocks (headings, tables, figures) are ``core.report_blocks``; a behaviour study's comparison report
is ``core.report_comparison`` (both re-exported here).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np

import core
from core.atlas.store import Atlas, Example, atlas_home, find_atlas, graph_basis_key
from core.errors import CircuitDeskError
from core.graph import ERROR, FEATURE, cumulative_share
from core.paths import file_sha256
from core.report_blocks import (Contents, Facts, FeatureExamples, GraphFigure, Heading, Heatmap,  # noqa: F401
                                LineChart, PageBreak, Paragraph, Report, Snippet, Table, compact_json)
from core.report_comparison import build_comparison_report  # noqa: F401
from core.view import CATEGORIES, CATEGORY_COLOURS, GROUP_COLOUR, from_attribution, from_circuit

MAX_FIGURE_EDGES = 3000  # the strongest drawn edges, as in the graph pane
FIGURE_LABELS = 14  # nodes named in the graph figure (the most influential), besides groups and logits
TOP_ROWS = 25  # rows of the top nodes / top edges tables
ATLAS_NODES = 8  # feature nodes shown with their atlas examples (the most influential)
ATLAS_EXAMPLES = 3  # examples per feature node
SNIPPET_TOKENS = 40  # an example is elided to this many tokens around its peak ...
SNIPPET_AFTER = 8  # ... with at most this many after the peak (the context that matters comes before it)


# -- building ------------------------------------------------------------------------------------------
def build_report(session, path: str | Path, auditor: str = "", now: float | None = None,
                 atlas: Atlas | None = None) -> Report:
    """The audit report of the session saved at ``path`` (its sha256 is cited throughout).

    ``atlas``: the feature atlas that describes an attribution graph's nodes (labels and top
    examples of the most influential ones; see ``report_atlas``); one built for another model or
    basis is refused with one sentence. Component circuits have no feature nodes and ignore it."""
    path = Path(path)
    if session.graph is None:
        atlas = None
    elif atlas is not None:
        reason = atlas_mismatch(session, atlas)
        if reason:
            raise CircuitDeskError(reason)
    m = session.manifest
    model = m.get("model", {})
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(now if now is not None else time.time()))
    digest = file_sha256(path)
    name = model.get("name", "unknown model")
    kind = "Attribution graph" if session.graph is not None else "Component circuit"
    blocks: list = [_cover_facts(session, path, digest, auditor, when), Contents(), PageBreak()]
    if session.graph is not None:
        blocks += _attribution_sections(session, atlas)
        blocks += _atlas_section(session, atlas)
    else:
        blocks += _circuit_sections(session)
    blocks += _intervention_section(session.annotations.interventions)
    blocks += _annotation_section(session)
    blocks += _appendix(session, path, digest, atlas)
    return Report(
        title=f"Circuit audit report: {kind.lower()}",
        subtitle=_prompt_title(m),
        header=f"{name} · {kind} · {when}",
        footer=f"{path.name} · sha256 {digest[:12]}…",
        blocks=blocks,
    )


def _cover_facts(session, path: Path, digest: str, auditor: str, when: str) -> Facts:
    m = session.manifest
    mod = m.get("model", {})
    arch = mod.get("family", "?")
    if mod.get("model_type") and mod.get("model_type") != arch:
        arch += f" ({mod['model_type']})"
    shape = f"{mod.get('n_layers', '?')} layers, {mod.get('n_heads', '?')} heads, d_model {mod.get('d_model', '?')}"
    tool = core.__version__
    if m.get("tool_version") and m["tool_version"] != tool:
        tool += f" (session written by {m['tool_version']})"
    method = _method_name(session)
    rows = [
        ("Model", mod.get("name", "?")),
        ("Architecture", f"{arch}; {shape}"),
        ("Parameters", _params(mod.get("n_params"))),
        ("Weights sha256", mod.get("sha256", "?")),
        ("Weights from", mod.get("source", "?")),
        ("Device, dtype", f"{mod.get('device', '?')}, {mod.get('dtype', '?')}"),
        ("Method", method),
        ("Prompt", _prompt_title(m)),
        ("Session file", path.name),
        ("Session sha256", digest),
        ("Session integrity", integrity_note(session)),
        ("Session created", m.get("created", "?")),
        ("Report generated", when),
        ("Circuit Desk", tool),
        ("Auditor", auditor or "(not set)"),
    ]
    return Facts(tuple(rows))


def _prompt_title(m: dict) -> str:
    """The prompt as a title: the text, or for a chat conversation its last user message and size."""
    chat = m.get("chat")
    if not chat:
        return m.get("prompt", "")
    messages = chat["messages"]
    user = next((x["content"] for x in reversed(messages) if x["role"] == "user"), "")
    answer = " (explaining the assistant's final answer)" if messages[-1]["role"] == "assistant" else ""
    return f"{user} — chat, {len(messages)} message{'s' * (len(messages) != 1)}{answer}"


def _prompt_blocks(m: dict) -> list:
    """The prompt section's text: the prompt, or a chat conversation message by message and as the
    model's chat template rendered it (what the model read)."""
    chat = m.get("chat")
    if not chat:
        return [Paragraph(f"Prompt: {m.get('prompt', '')!r}")]
    messages = chat["messages"]
    answered = messages[-1]["role"] == "assistant" and len(messages) > 1
    rows = tuple((x["role"] + (" (answer explained)" if answered and i == len(messages) - 1 else ""), x["content"])
                 for i, x in enumerate(messages))
    return [Paragraph("The prompt is a chat conversation, put to the model in its own chat template"
                      + (": the graph explains the first token of the assistant's final answer, traced up to the "
                         "start of that answer." if answered else
                         ", with the assistant's turn opened: the graph explains the first token of its answer.")),
            Table(("Role", "Message"), rows, widths=(1, 5),
                  caption="The conversation, as recorded in the session (verify renders it again with the model's "
                          "template)."),
            Paragraph(f"Rendered by the chat template (what the model read): {m.get('prompt', '')!r}", "mono")]


def integrity_note(session) -> str:
    """Whether every member of the session file still has the sha256 recorded when it was saved."""
    if session.edited is None:
        return "member hashes not recorded (saved by an earlier version of Circuit Desk)"
    if session.edited:
        return "EDITED after it was saved: " + ", ".join(session.edited) + " no longer match the recorded sha256"
    return f"every member matches the sha256 recorded when it was saved ({len(session.manifest.get('members', {}))} members)"


def _method_name(session) -> str:
    if session.graph is not None:
        basis = session.graph.meta.get("basis", "neurons")
        what = "MLP neurons, frozen nonlinearity" if basis == "neurons" else f"{basis}"
        return f"Attribution graph (circuit-tracer method; basis: {what})"
    s = session.circuit.settings
    name = {"eap": "EAP (edge attribution patching)", "eap-ig": "EAP-IG (integrated gradients)",
            "exact": "exact activation patching", "random": "random scores (baseline)"}.get(s.get("method"), s.get("method"))
    return f"Component circuit over heads and MLPs; edge scores by {name}, metric {s.get('metric', '?')}"


def _params(n) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _p(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


# -- attribution graphs ----------------------------------------------------------------------------
def _start_and_candidates(settings: dict, stats: dict) -> str:
    """How the start token and (neuron basis) the candidate neurons were treated, in a sentence or two
    (sessions of earlier versions, traced under other conventions, do not get it)."""
    text = ("The start token's features are not nodes and its MLP outputs are constants, as in circuit-tracer; "
            "a token node is the token embedding alone (positional embeddings are constants)"
            + ("; the start token's embedding is a node, as in the reference." if settings.get("start_token_node")
               else "; the start token's own embedding is a constant too (it is the same in every prompt)."))
    if "candidates" in stats:
        unit = "transcoder features" if settings.get("transcoders") else "neurons"
        text += (f" Candidate {unit}: the {stats['candidates']:,} of {stats['candidate_pool']:,} active {unit} "
                 f"with the largest total effect on the explained logits, carrying "
                 f"{stats['candidate_effect_share']:.1%} of that effect and {stats['candidate_mass_share']:.1%} of "
                 "the MLP output mass; every other one's write is in its (layer, position) error node.")
    return text


def _attribution_sections(session, atlas: Atlas | None = None) -> list:
    g, m = session.graph, session.manifest
    notes = session.annotations
    stats = m.get("stats") or g.meta.get("stats", {})
    settings = m.get("settings") or g.meta.get("settings", {})
    targets = m.get("targets") or []
    threshold = notes.threshold if notes.threshold is not None else float(settings.get("node_threshold", 0.8))
    view = from_attribution(g, threshold)
    view.pinned = set(notes.pinned)
    labels = notes.labels
    out = [Heading("Prompt and prediction"),
           *_prompt_blocks(m),
           Paragraph("Tokens: " + "  ".join(f"{i}:{t!r}" for i, t in enumerate(g.tokens)), "mono"),
           Table(("Target token", "Token id", "Probability"),
                 tuple((repr(t.get("token")), str(t.get("token_id")), _p(t.get("probability"), 4)) for t in targets),
                 widths=(3, 1, 1), numeric=(False, True, True),
                 caption="The logits the graph explains, weighted by their probability (circuit-tracer: the top "
                         "logits up to the desired cumulative probability)."
                         + (f" Explained as a difference against the foil {targets[0].get('foil')!r}."
                            if targets and targets[0].get("foil") else ""))]
    out += [Heading("Method and settings"),
            Paragraph("The attribution graph follows Ameisen et al. (2025) and circuit-tracer: with attention "
                      "patterns, normalisation scales and the MLP nonlinearity frozen at their values on this "
                      "prompt, the model is linear in its active features, so each edge is the exact direct "
                      "effect of one node on another. Error nodes carry whatever the basis does not explain. "
                      "Nodes are pruned by their influence on the logits (node threshold), then edges (edge "
                      "threshold). The replacement score is the share of the logits' influence that flows from "
                      "the embeddings through features rather than error nodes; the completeness score the share "
                      "of the nodes' inputs explained by non-error nodes."),
            *([Paragraph(_start_and_candidates(settings, stats))] if "max_candidates" in settings else []),
            Facts(tuple((k, _fmt(v)) for k, v in settings.items()) +
                  (("basis", str(g.meta.get("basis", "neurons"))), ("threshold shown", f"{threshold:g}")))]
    d = view.drawing(list(notes.groups))
    out += [Heading("Circuit graph"),
            _graph_figure(view, d, labels, f"Attribution graph at node threshold {threshold:g}: "
                                           f"{len(d.nodes)} nodes drawn, {_drawn_edges_note(d)}. Blue edges excite, "
                                           "red inhibit; node size is influence on the logits. Grey: token "
                                           "embeddings, blue: features, red: error nodes, green: logits, teal "
                                           "squares: groups.")]
    out += [Heading("Activation heatmaps")] + _lens_heatmap(session) + _attribution_heatmaps(g)
    out += [Heading("Top nodes and edges")] + _attribution_tables(g, labels, atlas)
    scores = (
        ("Replacement score (full graph)", _p(stats.get("replacement_score"))),
        ("Completeness score (full graph)", _p(stats.get("completeness_score"))),
        ("Replacement score (pruned graph)", _p(stats.get("pruned_replacement_score"))),
        ("Completeness score (pruned graph)", _p(stats.get("pruned_completeness_score"))),
        ("Nodes / edges (full)", f"{stats.get('nodes', g.n_nodes):,} / {stats.get('edges', g.n_edges):,}"),
        ("Nodes / edges (pruned)", f"{_n(stats.get('pruned_nodes'))} / {_n(stats.get('pruned_edges'))}"),
        ("Active features, rows computed", f"{_n(stats.get('active_features'))}, {_n(stats.get('feature_rows'))}"),
        ("Largest completeness error", _identity_note(stats, g.meta.get("precision"))),
        ("Backward passes, seconds", f"{_n(stats.get('backward_passes'))}, {stats.get('seconds', 0.0):.1f}"),
    )
    out += [Heading("Graph scores"), Facts(scores), _influence_curve(g, threshold)]
    return out


def _identity_note(stats: dict, precision: dict | None) -> str:
    """The completeness identity as measured, at the precision the graph was computed in."""
    err = stats.get("max_completeness_error", 0.0)
    if not precision:
        return f"{err:.1e} (each row's edges sum to the node's value)"
    tol = precision.get("identity_tolerance", stats.get("identity_tolerance"))
    if precision.get("identity_holds"):
        return (f"{err:.1e}: each row's edges sum to the node's value to {err:.1e} of the row's magnitude at "
                f"{precision.get('dtype')} (tolerance at that precision {tol:.1e})")
    return (f"{err:.1e}: more than the tolerance at {precision.get('dtype')} ({tol:.1e}); some rows' edges do "
            "not sum to the node's value")


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "?"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "—"
    return str(v) if not isinstance(v, (dict, list)) else json.dumps(v)


def _drawn_edges_note(d) -> str:
    e = len(d.weight)
    return f"{e:,} edges" if e <= MAX_FIGURE_EDGES else f"the strongest {MAX_FIGURE_EDGES:,} of {e:,} edges"


def _graph_figure(view, d, labels: dict[int, str], caption: str) -> GraphFigure:
    at = {int(node): k for k, node in enumerate(d.nodes)}
    keep = np.argsort(-np.abs(d.weight), kind="stable")[:MAX_FIGURE_EDGES]
    src = np.array([at[int(s)] for s in d.src[keep]], dtype=int)
    dst = np.array([at[int(t)] for t in d.dst[keep]], dtype=int)
    colour = tuple(GROUP_COLOUR if grp else CATEGORY_COLOURS[CATEGORIES[int(c)]]
                   for c, grp in zip(d.category, d.is_group))
    # labels in priority order (the renderer skips one that would cover an earlier one): the
    # auditor's groups and labels, the strongest logits, then the most influential nodes
    names: dict[int, str] = {}
    for k, node in enumerate(d.nodes):
        node = int(node)
        if node in d.group_labels:
            names[k] = d.group_labels[node]
        elif node in labels:
            names[k] = labels[node]
    by_size = sorted(range(len(d.nodes)), key=lambda k: -d.size[k])
    logits = [k for k in by_size if CATEGORIES[int(d.category[k])] == "logit"]
    inner = [k for k in by_size if CATEGORIES[int(d.category[k])] not in ("embedding", "input", "logit")]
    for k in logits[:3] + inner[:FIGURE_LABELS]:
        names.setdefault(k, _short_label(view.labels[int(d.nodes[k])]))
    first = "emb" if view.kind == "attribution" else "input"
    ticks = ((0.0, first),) + tuple((l + 1.0, f"L{l}") for l in range(view.n_layers)) + ((view.n_layers + 1.0, "logits"),)
    return GraphFigure(
        x=d.x.astype(float), y=d.y.astype(float), size=d.size.astype(float), colour=colour,
        square=d.is_group.copy(), ring=np.isin(d.nodes, list(view.pinned)), labels=names,
        src=src, dst=dst, weight=d.weight[keep].astype(float), x_ticks=tuple(view.x_labels), y_ticks=ticks,
        caption=caption)


def _short_label(label: str) -> str:
    return label.split(" @")[0] if label.startswith("L") and " @" in label else label


def _attribution_heatmaps(g) -> list:
    L, P = g.n_layers, len(g.tokens)
    infl = g.influence if g.influence is not None else np.zeros(g.n_nodes)
    cols = tuple(f"{p}:{t!r}" for p, t in enumerate(g.tokens))
    rows = tuple(f"L{l}" for l in range(L))
    feats, errs = g.kind == FEATURE, g.kind == ERROR
    by_cell = np.zeros((L, P))
    np.add.at(by_cell, (g.layer[feats], g.pos[feats]), infl[feats])
    err = np.zeros((L, P))
    np.add.at(err, (g.layer[errs], g.pos[errs]), g.activation[errs])
    err_infl = np.zeros((L, P))
    np.add.at(err_infl, (g.layer[errs], g.pos[errs]), infl[errs])
    share = float(infl[errs].sum() / max(infl[feats | errs].sum(), 1e-30))
    return [
        Heatmap("Feature influence on the logits, by layer and token", by_cell, rows, cols, unit="influence",
                caption="Summed influence of the feature nodes in each layer and position (all computed nodes, "
                        "not only the pruned graph)."),
        Heatmap("Error-node influence, by layer and token", err_infl, rows, cols, unit="influence",
                caption=f"What the basis leaves unexplained, weighted by its influence on the logits: error nodes "
                        f"hold {share:.1%} of the influence of features and errors together."),
        Heatmap("Error-node norm, by layer and token", err, rows, cols, unit="‖error‖",
                caption="The size of each MLP reconstruction error (zero for the exact neuron basis)."),
    ]


def _lens_heatmap(session) -> list:
    """The logit lens stored with the session (the workbench's default heatmap), if any."""
    lens = session.logit_lens
    info = session.manifest.get("logit_lens") or {}
    if lens is None:
        return []
    tokens = list(info.get("tokens") or [])
    if len(tokens) != lens.shape[1]:
        tokens = [str(p) for p in range(lens.shape[1])]
    rows = ("emb",) + tuple(f"L{l}" for l in range(lens.shape[0] - 1))
    where = "the prompt" if session.graph is not None else "the first pair's clean prompt"
    return [Heatmap(f"Logit lens: P({info.get('target', '?')!r}) by layer and token", lens, rows,
                    tuple(f"{p}:{t!r}" for p, t in enumerate(tokens)), unit="probability",
                    caption=f"The probability of the target when each layer's residual stream (row emb: the "
                            f"embeddings) is read through the final norm and unembedding, on {where}.")]


def _attribution_tables(g, labels: dict[int, str], atlas: Atlas | None = None) -> list:
    infl = g.influence if g.influence is not None else np.zeros(g.n_nodes)
    mask = g.node_mask if g.node_mask is not None else np.ones(g.n_nodes, bool)
    cand = np.flatnonzero((g.kind == FEATURE) | (g.kind == ERROR))
    order = cand[np.argsort(-infl[cand], kind="stable")][:TOP_ROWS]
    node_rows, automatic = [], set()
    for r, i in enumerate(int(i) for i in order):
        label = labels.get(i, "")
        if not label and atlas is not None and g.kind[i] == FEATURE:
            label = atlas.label(int(g.layer[i]), int(g.index[i]), _side(g, i, atlas))
            if label:
                automatic.add((r, 2))
        node_rows.append((str(r + 1), g.label(i), label, f"{g.activation[i]:.3g}", f"{infl[i]:.4f}",
                          "yes" if mask[i] else "no"))
    label_note = (" Label: the auditor's, else (grey, italic) the feature atlas' automatic label: the tokens the "
                  "feature fires on most" + (" (for a neuron negative on this prompt, most negatively)"
                                             if atlas is not None and atlas.signed else "") + "."
                  if atlas is not None else "")
    emask = g.edge_mask if g.edge_mask is not None else np.ones(g.n_edges, bool)
    edges = np.flatnonzero(emask)
    edges = edges[np.argsort(-np.abs(g.weight[edges]), kind="stable")][:TOP_ROWS]
    edge_rows = tuple((str(r + 1), g.label(int(g.src[e])), g.label(int(g.dst[e])), f"{g.weight[e]:+.4f}")
                      for r, e in enumerate(edges))
    return [Heading("Most influential nodes", 2),
            Table(("#", "Node", "Label", "Activation", "Influence", "Pruned graph"), tuple(node_rows),
                  widths=(0.5, 3.2, 2.6, 1.2, 1.2, 1.1), numeric=(True, False, False, True, True, False),
                  caption="Feature and error nodes by influence on the logits (the indirect, normalised effect "
                          "through every path)." + label_note, muted=frozenset(automatic)),
            Heading("Strongest edges", 2),
            Table(("#", "From", "To", "Weight"), edge_rows, widths=(0.5, 4, 4, 1.4),
                  numeric=(True, False, False, True),
                  caption="Edges of the pruned graph by |weight| (direct effect of the source on the target's "
                          "pre-activation, or on the logit).")]


def _influence_curve(g, threshold: float) -> LineChart:
    infl = g.influence if g.influence is not None else np.zeros(g.n_nodes)
    feats = np.flatnonzero((g.kind == FEATURE) | (g.kind == ERROR))
    v = np.sort(infl[feats])[::-1]
    share = cumulative_share(v) if len(v) else np.zeros(0)
    # cumulative_share of a sorted vector is already in order
    xs = tuple(float(i + 1) for i in range(len(v)))
    kept = min(int(np.searchsorted(share, threshold) + 1), len(v))  # no influence at all: every node
    marker = (float(kept), float(share[kept - 1]), f"threshold {threshold:g}: {kept} nodes") if kept else None
    return LineChart("Influence captured by the most influential nodes", (("nodes", xs, tuple(share.tolist())),),
                     x_label="feature and error nodes kept (most influential first)",
                     y_label="share of influence", log_x=len(v) > 20, marker=marker,
                     caption="The pruning curve: how much of the influence on the logits the top nodes hold. "
                             "The node threshold keeps nodes until this share is reached.")


# -- the feature atlas ------------------------------------------------------------------------------
def atlas_mismatch(session, atlas: Atlas) -> str | None:
    """Why ``atlas`` cannot describe the nodes of the session's graph (None: it can)."""
    model = (session.manifest.get("model") or {}).get("sha256") or ""
    basis = graph_basis_key(session.graph.meta)
    if basis is None:
        return ("The graph's transcoders were not fingerprinted (a session of an earlier version), so no feature "
                f"atlas can be matched to it; the atlas {atlas.path} is not used.")
    return atlas.mismatch(model, basis)


def report_atlas(session, path: str | Path | None = None, folders=()) -> tuple[Atlas | None, str]:
    """The feature atlas for the session's report, with one sentence saying which it is or why there
    is none. ``path``: that atlas (a damaged one, or one of another model or basis, is refused with
    one sentence: ``CircuitDeskError``); else the newest atlas of the graph's model and basis among
    ``folders`` and the atlas folder (one found damaged is passed over, and said so)."""
    if session.graph is None:
        if path is not None:
            raise CircuitDeskError("A component circuit has no feature nodes for an atlas to describe; "
                                   "--atlas is for attribution graphs.")
        return None, "a component circuit has no feature nodes; no atlas is used"
    if path is not None:
        atlas = Atlas.open(path)
        reason = atlas_mismatch(session, atlas)
        if reason:
            raise CircuitDeskError(reason)
        return atlas, f"using the atlas {atlas.path} ({atlas.corpus_text})"
    model = (session.manifest.get("model") or {}).get("sha256") or ""
    basis = graph_basis_key(session.graph.meta)
    if basis is None:
        return None, ("the graph's transcoders were not fingerprinted (a session of an earlier version), so no "
                      "atlas can be matched to it")
    found, passed = find_atlas(model, basis, folders)
    others = f" ({len(passed)} other{'s' * (len(passed) != 1)} passed over)" if passed else ""
    if found is None:
        return None, f"no atlas found for this model and basis{others}; build one with: {atlas_build_command(session)}"
    try:
        atlas = Atlas.open(found)
    except CircuitDeskError as e:
        return None, f"{str(e).rstrip('.')}; the report is made without an atlas"
    return atlas, f"using the atlas {atlas.path} ({atlas.corpus_text}){others}"


def atlas_build_command(session) -> str:
    """The command that builds the atlas the session's graph needs, into the folder searched first."""
    model = session.manifest.get("model") or {}
    spec = str(model.get("spec") or model.get("source") or "MODEL")
    settings = session.manifest.get("settings") or session.graph.meta.get("settings") or {}
    transcoders = settings.get("transcoders")
    name = (Path(spec).name or "model") + ("-transcoders" if transcoders else "-neurons")
    return (f"circuitdesk atlas build --model {shlex.quote(spec)}"
            + (f" --transcoders {shlex.quote(str(transcoders))}" if transcoders else "")
            + f" --out {shlex.quote(str(atlas_home() / name))}")


def _side(g, i: int, atlas: Atlas) -> int:
    """Which side of a feature describes node ``i``: its most negative windows (-1) where the
    atlas keeps them (signed neurons) and the node's activation on this prompt is negative."""
    return -1 if atlas.signed and float(g.activation[i]) < 0 else 1


def snippet(e: Example, keep: int = SNIPPET_TOKENS, after: int = SNIPPET_AFTER) -> Snippet:
    """``e`` elided to at most ``keep`` tokens around its peak: up to ``after`` tokens after it,
    the rest before it (more after where the window starts close to the peak)."""
    n = len(e.tokens)
    end = min(n, e.at + 1 + after)
    start = max(0, end - keep)
    end = min(n, start + keep)
    return Snippet(tokens=tuple(e.tokens[start:end]),
                   activations=tuple(float(a) for a in e.activations[start:end]),
                   peak=e.at - start, value=float(e.value), where=e.where,
                   cut_before=start > 0, cut_after=end < n)


def top_feature_nodes(g, n: int = ATLAS_NODES) -> list[int]:
    """The ``n`` most influential feature nodes, one per feature (a neuron active at several
    positions is shown once, at its most influential one)."""
    infl = g.influence if g.influence is not None else np.zeros(g.n_nodes)
    feats = np.flatnonzero(g.kind == FEATURE)
    out, seen = [], set()
    for i in feats[np.argsort(-infl[feats], kind="stable")]:
        key = (int(g.layer[i]), int(g.index[i]))
        if key not in seen:
            seen.add(key)
            out.append(int(i))
            if len(out) == n:
                break
    return out


def feature_examples(g, i: int, atlas: Atlas, user_label: str = "") -> FeatureExamples:
    """Node ``i`` of the graph ``g`` with its atlas card: labels, density and its top examples."""
    layer, index = int(g.layer[i]), int(g.index[i])
    infl = float(g.influence[i]) if g.influence is not None else 0.0
    common = dict(node=g.label(i), feature=f"L{layer}/{atlas.unit}{index}", label=user_label,
                  influence=infl, activation=float(g.activation[i]))
    if not atlas.has(layer, index):  # the model matches, so only a damaged atlas gets here
        return FeatureExamples(**common, atlas_label="", stats="", sign=1, examples=(),
                               note="The atlas has no such feature.")
    sign = _side(g, i, atlas)
    card = atlas.card(layer, index)
    if sign > 0:
        stats = f"density {card.density:.3%} of {card.tokens_seen:,} corpus tokens · max {card.max:.3g}"
        examples = card.top
    else:
        stats = (f"negative on {card.density_negative:.3%} of {card.tokens_seen:,} corpus tokens · min "
                 f"{card.min:.3g} (positive on {card.density:.3%}, max {card.max:.3g})")
        examples = card.bottom
    shown = tuple(snippet(e) for e in examples[:ATLAS_EXAMPLES])
    note = "" if shown else ("The feature was never " + ("negative" if sign < 0 else "active")
                             + " on the atlas' corpus: there are no examples.")
    return FeatureExamples(**common, atlas_label=card.label_negative if sign < 0 else card.label, stats=stats,
                           sign=sign, examples=shown, note=note)


def _atlas_section(session, atlas: Atlas | None) -> list:
    out: list = [Heading("What the top nodes respond to")]
    if atlas is None:
        return out + [Paragraph("No feature atlas of this model and basis was used, so the nodes are described "
                                "by their graph alone; this command builds one, which later reports find "
                                f"automatically: {atlas_build_command(session)}")]
    g, labels = session.graph, session.annotations.labels
    nodes = top_feature_nodes(g)
    signed = (" For a neuron whose activation on this prompt is negative, its most negative windows are shown "
              "instead." if atlas.signed else "")
    out.append(Paragraph(
        f"For the {len(nodes)} most influential feature nodes (one per feature), the windows of the atlas' corpus "
        f"where the feature is most active: {atlas.corpus_text}. Each token is shaded by its activation relative "
        f"to the example's peak (orange: positive, blue: negative); the peak token is bold. The auditor's label "
        f"comes first; the atlas' automatic label names the tokens the feature fires on most, weighted by "
        f"activation. It says what the feature responds to in that corpus, not what it does in this graph."
        + signed))
    out += [feature_examples(g, i, atlas, labels.get(i, "")) for i in nodes]
    if not nodes:
        out.append(Paragraph("The graph has no feature nodes.", "note"))
    return out


def _atlas_appendix(atlas: Atlas | None) -> list:
    out: list = [Heading("Feature atlas", 2)]
    if atlas is None:
        return out + [Paragraph("No feature atlas was used for this report.", "note")]
    m = atlas.meta
    model = m.get("model") or {}
    corpus = m.get("corpus") or {}
    out += [Facts((("Folder", str(atlas.path)), ("Created", str(m.get("created", "?"))),
                   ("Built by", f"Circuit Desk {m.get('tool_version', '?')}"),
                   ("Model", f"{model.get('name', '?')}, sha256 {model.get('sha256', '?')}"),
                   ("Basis", f"{atlas.basis}; {atlas.n_layers} layers × {max(atlas.features_per_layer, default=0):,} "
                             f"features" + (", both signs kept" if atlas.signed else "")),
                   ("Corpus", atlas.corpus_text),
                   ("Tokens counted", f"{int(m.get('tokens_seen', 0)):,}"),
                   ("Settings", ", ".join(f"{k} {_fmt(v)}" for k, v in (m.get("settings") or {}).items())),
                   ("Features file sha256", str(m.get("features_sha256", "?"))))),
            Table(("Corpus source", "Bytes", "Tokens", "sha256"),
                  tuple((str(s.get("name", "?")), f"{int(s.get('bytes', 0)):,}", f"{int(s.get('tokens', 0)):,}",
                         str(s.get("sha256", "?"))) for s in corpus.get("sources", [])),
                  widths=(1.3, 0.7, 0.6, 5.4), numeric=(False, True, True, False),
                  caption="Every file the atlas was built from, as recorded when it was built.")]
    return out


# -- component circuits ---------------------------------------------------------------------------
def _circuit_sections(session) -> list:
    c, m = session.circuit, session.manifest
    notes = session.annotations
    s = c.settings
    task = c.task or {}
    view = from_circuit(c, notes.threshold)
    view.pinned = set(notes.pinned)
    labels = notes.labels
    pairs = c.pairs[:12]
    out = [Heading("Prompt and prediction"),
           Paragraph(f"Task: {task.get('task') or task.get('name') or '?'} ({task.get('source', '?')}); "
                     f"{len(c.pairs)} pairs used, {task.get('dropped', 0)} dropped"
                     + "".join(f"; {r}" for r in (task.get("dropped_reasons") or [])[:3]) + "."),
           Paragraph(f"Prompt: {m.get('prompt', '')!r}"),
           Table(("Clean prompt", "Corrupted prompt", "Answer", "Counterfactual"),
                 tuple((p.get("clean", ""), p.get("corrupted", ""), repr(p.get("answer", "")),
                        repr(p.get("counterfactual", ""))) for p in pairs),
                 widths=(3, 3, 1.2, 1.2),
                 caption=f"{len(pairs)} of {len(c.pairs)} prompt pairs. The metric compares the answer with the "
                         f"counterfactual on the clean prompt; patching with the corrupted prompt removes the "
                         f"information the circuit carries."),
           Facts((("Metric", s.get("metric", "?")), ("Metric, clean prompts (full model)", _p(c.metric_clean)),
                  ("Metric, corrupted prompts", _p(c.metric_corrupted)),
                  ("Metric, every edge patched", _p(c.metric_empty))))]
    out += [Heading("Method and settings"),
            Paragraph("Edge attribution patching (Syed et al. 2023) estimates, for every edge between components "
                      "(input, attention heads through their q/k/v inputs, MLPs, logits), how much the metric changes "
                      "when that edge carries the corrupted activation instead of the clean one. EAP-IG (Hanna et "
                      "al. 2024) integrates the gradient along the path from corrupted to clean. The circuit is the "
                      "set of top edges, pruned of edges that do not connect input to logits; its faithfulness is "
                      "(m(circuit) − m(∅)) / (m(full) − m(∅)), with every edge outside the circuit patched."),
            Facts(tuple((k, _fmt(v)) for k, v in s.items()))]
    d = view.drawing(list(notes.groups))
    out += [Heading("Circuit graph"),
            _graph_figure(view, d, labels, f"Component circuit ({view.threshold:.0%} of |score| shown): "
                                           f"{len(d.nodes)} nodes, {_drawn_edges_note(d)}. Blue edges raise the "
                                           "metric, red lower it; q/k/v paths into a head are summed. Purple: heads, "
                                           "orange: MLPs.")]
    L, H = c.graph.n_layers, c.graph.n_heads
    # the view places every head / MLP at (layer, column) and holds its node score
    comp = np.flatnonzero(np.isin(view.category, (CATEGORIES.index("head"), CATEGORIES.index("mlp"))))
    cell = (view.layer[comp], view.column[comp])
    grid = np.zeros((L, H + 1))
    grid[cell] = view.values[comp]
    member = np.zeros((L, H + 1))
    member[cell] = c.graph.nodes_in(c.circuit)[comp]
    names = list(c.graph.node_names)
    cols = tuple(f"h{h}" for h in range(H)) + ("MLP",)
    rows = tuple(f"L{l}" for l in range(L))
    out += [Heading("Activation heatmaps"), *_lens_heatmap(session),
            Heatmap("Component scores, by layer and head", grid, rows, cols, scale="diverging", unit="score",
                    caption="Each component's summed outgoing edge scores: the estimated change in the metric when "
                            "it is patched with its corrupted activation (sign: direction of the effect)."),
            Heatmap("Components in the circuit", member, rows, cols, unit="in circuit",
                    caption="1 where the head or MLP belongs to the chosen circuit.")]
    out += [Heading("Top nodes and edges"), Heading("Components by score", 2),
            Table(("#", "Component", "Label", "Score", "In circuit"),
                  tuple((str(r + 1), t["node"], labels.get(names.index(t["node"]), ""), f"{t['score']:+.4f}",
                         "yes" if t["in_circuit"] else "no") for r, t in enumerate(c.top_nodes(TOP_ROWS))),
                  widths=(0.5, 2, 3, 1.3, 1), numeric=(True, False, False, True, False)),
            Heading("Strongest edges", 2),
            Table(("#", "Edge", "Score", "In circuit"),
                  tuple((str(r + 1), t["edge"], f"{t['score']:+.4f}", "yes" if t["in_circuit"] else "no")
                        for r, t in enumerate(c.top_edges(TOP_ROWS))),
                  widths=(0.5, 4, 1.3, 1), numeric=(True, False, True, False),
                  caption="Edges by |score|; a destination names the q, k or v input of a head.")]
    st = c.stats
    rows = [("Circuit faithfulness", _p(c.circuit_faithfulness)),
            ("Circuit edges / nodes", f"{st.get('circuit_edges', int(c.circuit.sum())):,} / {st.get('circuit_nodes', '?')}"),
            ("Edges in the model graph", f"{c.graph.n_edges:,}")]
    curve = c.curve
    if curve:
        rows += [("CPR (area under the faithfulness curve)", _p(curve.cpr)),
                 ("CMD (area between the curve and 1)", _p(curve.cmd))]
    rows += [("Pairs used", str(len(c.pairs))), ("Seconds (scoring, curve)",
             f"{st.get('scoring_seconds', 0.0):.1f}, {st.get('curve_seconds', 0.0):.1f}")]
    out += [Heading("Graph scores"), Facts(tuple(rows))]
    if curve:
        chosen = int(c.circuit.sum())
        frac = chosen / max(c.graph.n_edges, 1)
        out.append(LineChart(
            "Faithfulness curve", (("faithfulness", tuple(curve.sizes), tuple(curve.faithfulness)),),
            x_label="share of edges kept (top by |score|, then pruned)", y_label="faithfulness", log_x=True,
            marker=(max(frac, curve.sizes[0]), c.circuit_faithfulness, f"circuit: {chosen} edges"),
            caption="Faithfulness of the top-scoring circuits of growing size (MIB's evaluation). CPR is the "
                    "area under this curve over log size, CMD the area between it and 1; higher CPR and lower "
                    "CMD are better."))
    return out


# -- interventions, annotations, appendix ----------------------------------------------------------------
def _intervention_section(log) -> list:
    out: list = [Heading("Interventions")]
    if not log:
        return out + [Paragraph("No interventions were run in this session.", "note")]
    from core.interventions import Intervention  # deferred: imports torch; only sessions with interventions need it

    rows = []
    for entry in log:  # validated by core.annotations
        what = "; ".join(Intervention(**{**i, "positions": None if i["positions"] is None
                                         else tuple(i["positions"])}).describe() for i in entry["interventions"])
        top_after = entry["top_after"]
        rows.append((what, entry["freeze"], repr(entry["target"]["token"]),
                     f"{entry['logit_before']:.3f} → {entry['logit_after']:.3f} "
                     f"({entry['logit_after'] - entry['logit_before']:+.3f})",
                     f"{entry['prob_before']:.3f} → {entry['prob_after']:.3f}",
                     repr(top_after[0][0]) if top_after else "—"))
    return out + [Table(("Intervention", "Freeze", "Target", "Logit before → after", "P before → after", "Top after"),
                        tuple(rows), widths=(3.2, 1.2, 1, 2.4, 1.7, 1),
                        caption="Every intervention run on this graph, in order. Freeze: none (the real model), "
                                "attention (patterns held) or replacement (the graph's linear model).")]


def _annotation_section(session) -> list:
    notes = session.annotations
    label_of = _labeller(session)
    out: list = [Heading("Annotations and findings")]
    findings = notes.findings.strip()
    out += [Heading("Findings", 2)] + ([Paragraph(p) for p in findings.split("\n\n")] if findings else
                                       [Paragraph("No findings were written.", "note")])
    groups = notes.groups
    if groups:
        out += [Heading("Groups (supernodes)", 2),
                Table(("Group", "Members"), tuple((g.label, ", ".join(label_of(i) for i in g.nodes)) for g in groups),
                      widths=(1.5, 5))]
    labels = notes.labels
    if labels:
        out += [Heading("Node labels", 2),
                Table(("Node", "Label"), tuple((label_of(i), t) for i, t in sorted(labels.items())), widths=(2, 4))]
    pinned = notes.pinned
    if pinned:
        out += [Heading("Pinned nodes", 2), Paragraph(", ".join(label_of(i) for i in pinned))]
    if not (groups or labels or pinned):
        out.append(Paragraph("No nodes were grouped, labelled or pinned.", "note"))
    return out


def _labeller(session):
    if session.graph is not None:
        return session.graph.label
    names = session.circuit.graph.node_names
    return lambda i: names[i]


def _appendix(session, path: Path, digest: str, atlas: Atlas | None = None) -> list:
    m = session.manifest
    command = m.get("command") or ""
    settings = {k: v for k, v in m.items() if k not in ("graph", "circuit")}
    if session.graph is not None:
        settings["graph"] = {k: v for k, v in session.graph.meta.items() if k != "row_check"}
    else:
        settings["circuit"] = {"settings": session.circuit.settings, "task": session.circuit.task,
                               "stats": session.circuit.stats}
    files = (m.get("model") or {}).get("files") or {}
    return [
        Heading("Reproducibility appendix"),
        Facts((("Session file", str(path.name)), ("Session sha256", digest),
               ("Session size", f"{path.stat().st_size:,} bytes"),
               ("Format version", str(m.get("format_version", "?"))))),
        Heading("Regenerate", 2),
        Paragraph("This command recomputes the analysis from the model on disk:" if command else
                  "No single command regenerates this run (a prompt pair typed in the window); "
                  "the verify command below recomputes it from the token ids stored in the session.", "note"),
        *([Paragraph(command, "mono")] if command else []),
        Paragraph("This command checks the model's fingerprint, recomputes the graph with the stored settings and "
                  "compares every edge (exit status 0 when it matches):", "note"),
        Paragraph(f"circuitdesk verify {path.name}", "mono"),
        Heading("Model files", 2),
        Table(("File", "sha256"), tuple((k, v) for k, v in files.items()), widths=(2, 4)),
        *(_atlas_appendix(atlas) if session.graph is not None else []),
        Heading("Full settings", 2),
        Paragraph(compact_json(settings), "mono"),
    ]


# -- batch audits ----------------------------------------------------------------------------------
def build_summary(summary: dict) -> Report:
    """The one-document overview of a batch audit (``core.audit``'s ``summary.json``)."""
    cases = summary.get("cases", [])
    failed = [c for c in cases if c.get("status") != "ok"]
    rows = []
    for c in cases:
        r = c.get("result") or {}
        rows.append((c.get("name", "?"), c.get("method", "?"), c.get("status", "?"),
                     repr(r["target"]) if "target" in r else "—",
                     _p(r.get("target_probability")) if "target_probability" in r else "—",
                     _score_cell(r), f"{c.get('seconds', 0.0):.1f}"))
    model = summary.get("model") or {}
    blocks = [
        Facts((("Suite", summary.get("suite", "?")), ("Model", model.get("name", summary.get("model_spec", "?"))),
               ("Weights sha256", model.get("sha256", "?")), ("Cases", f"{len(cases)} ({len(failed)} failed)"),
               ("Started", summary.get("started", "?")), ("Seconds", f"{summary.get('seconds', 0.0):.1f}"),
               ("Circuit Desk", core.__version__), ("Auditor", summary.get("auditor") or "(not set)"))),
        Heading("Cases"),
        Table(("Case", "Method", "Status", "Target", "P(target)", "Scores", "Seconds"), tuple(rows),
              widths=(2, 1.3, 0.8, 1.1, 1.1, 2.7, 0.9), numeric=(False, False, False, False, True, False, True),
              caption="Scores: replacement / completeness of the pruned attribution graph, or the circuit's "
                      "faithfulness and CPR. Each case's session and report sit beside this file."),
    ]
    if failed:
        blocks += [Heading("Failures"), Table(("Case", "Reason"), tuple((c.get("name", "?"), c.get("error", "?"))
                                                                        for c in failed), widths=(1.5, 5))]
    blocks += [Heading("Files"), Table(("Case", "Session", "Report"),
                                       tuple((c.get("name", "?"), c.get("session") or "—", c.get("report") or "—")
                                             for c in cases), widths=(1.5, 3, 3))]
    return Report(title="Batch audit summary", subtitle=summary.get("suite", ""),
                  header=f"{model.get('name', '')} · batch audit · {summary.get('started', '')}",
                  footer="summary.pdf", blocks=blocks, sections_start_pages=False)


def _score_cell(r: dict) -> str:
    if "pruned_replacement_score" in r:
        return f"repl {_p(r['pruned_replacement_score'])} / compl {_p(r.get('pruned_completeness_score'))}"
    if "circuit_faithfulness" in r:
        return f"faith {_p(r['circuit_faithfulness'])} / CPR {_p(r.get('cpr'))}"
    return "—"


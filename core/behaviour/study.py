"""A behaviour study of a suite: run every case (on one model version, or on two), merge the cases'
graphs into behaviour graphs, contrast two groups of cases and/or the two versions, and check the
top differences by intervention, so that a finding is a tested claim and not a correlation.

``run_study(suite, out_dir, settings)`` writes, into ``out_dir``:

* ``a/<case>.cdesk`` (and ``b/<case>.cdesk`` for ``--model-b``): every case's own session;
* ``comparison.json``: the study (format ``circuitdesk-comparison``, read back by ``load_comparison``).

Cases are split by *kind* (method + feature basis): each kind is a section with its own behaviour
graph and contrasts, since a neuron and a transcoder feature (or a head) are not the same node.

Groups come from the cases' labels (``group = "fabricated"``, or ``labels = {topic = "dosage"}`` with
``--groups topic``) or from a rule on the model's own output: ``--groups correct`` puts a case in
"correct" when the model, decoding greedily, writes one of the case's ``answers`` (the whole answer,
not only its first token), else in "wrong".
Differences between groups use the independent-samples permutation test, between versions the
paired one (``core.behaviour.stats``); both are corrected for the number of nodes compared.

Checks: each of the top ``checks`` ranked nodes that one unit carries (a neuron, a transcoder feature,
a head, an MLP; not an error node), significant or not (each check says which), is zero-ablated (or
scaled by ``check_scale``) at every position but the start token, in every case of the contrast,
and the study reports per group how often the top answer changes, how the target's
probability (attribution) or the answer's logit difference (circuits) moves, and for the
``correct`` rule how often a correct answer turns wrong and the other way round.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import core
from core.audit import Suite
from core.behaviour.aggregate import BehaviourGraph, aggregate
from core.behaviour.browse import check_browsable
from core.behaviour.cases import answer_sequences, case_job, loaded
from core.behaviour.profile import FIXED_KEYS, CaseProfile, check_description, check_verb, profile_of
from core.behaviour.stats import contrast_groups, contrast_paired
from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.paths import atomic_write
from core.session import load_session
from core.settings import COMPARE_SETTINGS, CORRECT_RULE, CompareSettings, suite_keys

FORMAT = "circuitdesk-comparison"
FORMAT_VERSION = 1
TOP_ROWS = 200  # ranked differences kept per contrast in comparison.json
MAX_COMPARISON_BYTES = 64 * 1024**2


@dataclass
class CaseRecord:
    """One case of the study as comparison.json lists it."""

    name: str
    method: str
    labels: dict[str, str] = field(default_factory=dict)  # group + labels table
    answers: list[str] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)  # version ("a"/"b") -> status, error, seconds, session,
    #                                                        prediction, probability, correct, result, command
    group: str | None = None  # "a", "b" or None (not in the contrast)

    def ok(self, version: str = "a") -> bool:
        return self.runs.get(version, {}).get("status") == "ok"

    def to_json(self) -> dict:
        return {"name": self.name, "method": self.method, "labels": self.labels, "answers": self.answers,
                "group": self.group, "runs": self.runs}


def _labels(case: dict) -> dict[str, str]:
    out = dict(case.get("labels", {}))
    if "group" in case:
        out["group"] = case["group"]
    return out


def _answers(case: dict) -> list[str]:
    a = case.get("answers", [])
    return [a] if isinstance(a, str) else list(a)


def group_key(records: list[CaseRecord], settings: CompareSettings) -> str | None:
    """The label that splits the cases (``--groups``, else "group" when cases have one, else the
    ``correct`` rule when they have answers); None when there is none."""
    key = settings.groups
    if key is None:
        if any("group" in r.labels for r in records):
            return "group"
        return CORRECT_RULE if any(r.answers for r in records) else None
    if key == CORRECT_RULE and not any(r.answers for r in records):
        raise CircuitDeskError("--groups correct needs answers: give the cases answers = [\" Paris\", …], the "
                               "tokens that count as a correct answer.")
    return key


def resolve_groups(records: list[CaseRecord], settings: CompareSettings) -> dict | None:
    """Which label splits the cases and which two values are groups A and B; sets each record's
    ``group`` (the ``correct`` rule: from the runs of model A). None when nothing splits them."""
    key = group_key(records, settings)
    if key is None:
        return None
    if key == CORRECT_RULE:
        for r in records:
            c = r.runs.get("a", {}).get("correct")
            if c is not None:
                r.labels[CORRECT_RULE] = "correct" if c else "wrong"
    values = sorted({r.labels[key] for r in records if key in r.labels})
    if not values and key != CORRECT_RULE:  # the correct rule with no case judged: every case failed, as each says
        raise CircuitDeskError(f"No case has the label {key!r}; give cases {key} = \"…\" (or labels = {{{key} = \"…\"}}), "
                               "or choose another --groups.")
    a, b = settings.group_a, settings.group_b
    if a is None:
        if key == CORRECT_RULE:
            a, b = "wrong", "correct"  # the behaviour under audit first
        elif len(values) == 1:
            raise CircuitDeskError(f"Every case has {key} = {values[0]!r}; a contrast needs two groups: give some "
                                   f"cases another {key}, or choose another --groups.")
        elif len(values) != 2:
            raise CircuitDeskError(f"The label {key!r} has {len(values)} values ({', '.join(values[:6])}); choose two "
                                   "with --group-a and --group-b.")
        else:
            a, b = values
    for name in (a, b):
        if key != CORRECT_RULE and name not in values:
            raise CircuitDeskError(f"No case has {key} = {name!r}; its values are {', '.join(values[:6])}.")
    for r in records:
        v = r.labels.get(key)
        r.group = "a" if v == a else "b" if v == b else None
    return {"key": key, "a": a, "b": b}


# -- running ---------------------------------------------------------------------------------------
def run_study(suite: Suite, out_dir: str | Path, settings: CompareSettings | None = None,
              ctx: JobContext | None = None, executor=None, notify=None) -> dict:
    """Run and compare; returns the comparison (also written as ``comparison.json``).
    ``notify(version, k, record)`` is called after each case; ``executor``: see ``core.executors``
    (default: in this process)."""
    from core.executors import LocalExecutor, executor_for  # deferred: Ray loads only when asked for

    settings = settings or CompareSettings(**suite_settings(suite))
    settings.validate()
    ctx = ctx or JobContext()
    executor = executor or (executor_for(settings) if settings.executor != "local" else LocalExecutor())
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CircuitDeskError(f"The output folder {out} is a file; give --out a folder (new or one of earlier "
                               "comparisons).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CircuitDeskError(f"Cannot create the output folder {out}: {e.strerror or e}.") from None
    start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    versions = {"a": _spec(suite, suite.model)}
    if settings.model_b:
        versions["b"] = _spec(suite, settings.model_b)
        if versions["b"] != "default" and not Path(versions["b"]).exists():
            raise CircuitDeskError(f"Model B ({versions['b']}) does not exist; give --model-b a model folder, a .gguf "
                                   "file or 'default'.")
    records = [CaseRecord(c["name"], str(c.get("method", "attribution")), _labels(c), _answers(c))
               for c in (suite.case(k) for k in range(len(suite.cases)))]
    if group_key(records, settings) not in (None, CORRECT_RULE):
        resolve_groups(records, settings)  # a label that splits nothing is said now, not after every case ran
    _prepare_folder(out, versions)
    profiles: dict[str, dict[str, CaseProfile]] = {v: {} for v in versions}
    facts: dict[str, dict] = {}  # version -> the model as its first session recorded it
    share = 0.8 / len(versions)
    shape_checked = False
    for vi, (version, spec) in enumerate(versions.items()):
        folder = out / version
        jobs = [case_job(spec, suite.device, suite.dtype, str(suite.folder), suite.case(k), suite.name,
                         suite.placement) for k in range(len(suite.cases))]
        part = ctx.sub(vi * share, (vi + 1) * share, f"Model {version.upper()}")
        for k, res in executor.run(jobs, part):
            if res.get("model_error"):  # the model itself cannot load: every case would fail alike
                raise CircuitDeskError(f"Model {version.upper()} ({spec}) cannot be loaded: {res['error']}")
            records[k].runs[version] = _record_run(res, folder, version, profiles[version], records[k].name, facts)
            if notify is not None:
                notify(version, k, records[k])
            if version == "b" and records[k].ok("b") and not shape_checked:
                _same_architecture(facts)
                shape_checked = True
    ctx.check_cancelled()
    groups = resolve_groups(records, settings)
    models = {v: {"spec": versions[v], **facts.get(v, {})} for v in versions}
    sections = []
    kinds = sorted({(p.method, p.basis) for p in profiles["a"].values()})
    for i, kind in enumerate(kinds):
        sctx = ctx.sub(0.8 + 0.2 * i / len(kinds), 0.8 + 0.2 * (i + 1) / len(kinds), kind[0])
        sections.append(_section(kind, records, profiles, groups, settings, versions, suite, sctx))
    comparison = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": core.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started": started,
        "suite": suite.name, "suite_file": str(suite.path) if suite.path else None, "suite_sha256": suite.sha256 or None,
        "auditor": suite.auditor, "model_spec": {v: s for v, s in versions.items()},
        "models": models, "settings": settings.to_json(), "groups": groups,
        "seconds": round(time.perf_counter() - start, 3),
        "cases_ok": sum(all(r.ok(v) for v in versions) for r in records),
        "cases_failed": sum(not all(r.ok(v) for v in versions) for r in records),  # on any version
        "cases": [r.to_json() for r in records], "sections": sections,
    }
    text = json.dumps(_finite(comparison), indent=1)
    atomic_write(out / "comparison.json", lambda fh: fh.write(text.encode("utf-8")))
    ctx.progress(1.0, "Done")
    return comparison


def _prepare_folder(out: Path, versions: dict) -> None:
    """Before any case runs: the versions' session folders, and no earlier comparison left in ``out``
    (a run stopped half-way must not leave an old comparison.json beside new sessions, looking complete)."""
    for name in ("comparison.json", "comparison.pdf"):
        old = out / name
        if old.is_dir():
            raise CircuitDeskError(f"Cannot write {old}: it is a folder; remove it or choose another --out.")
        try:
            old.unlink(missing_ok=True)
        except OSError as e:
            raise CircuitDeskError(f"Cannot replace the earlier {old}: {e.strerror or e}.") from None
    for version in versions:
        folder = out / version
        try:
            folder.mkdir(exist_ok=True)
        except OSError as e:
            what = "a file" if folder.exists() else e.strerror or e
            raise CircuitDeskError(f"Cannot create the session folder {folder}: {what}; remove it or choose "
                                   "another --out.") from None


def suite_settings(suite: Suite) -> dict:
    """The suite's [compare] table as CompareSettings arguments (unknown keys: one sentence)."""
    known = suite_keys(COMPARE_SETTINGS)
    out = {}
    for key, value in suite.compare.items():
        if key not in known:
            raise CircuitDeskError(f"Unknown setting {key!r} in [compare]; known: {', '.join(sorted(known))}.")
        want = known[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, want):
            kind = "text" if want is str else "a whole number" if want is int else "a number"
            raise CircuitDeskError(f"[compare] {key} must be {kind} (got {value!r}).")
        out[key] = value
    if "model_b" in out and out["model_b"] != "default":
        out["model_b"] = str(_resolve(suite.folder, out["model_b"]))
    return out


def _resolve(folder: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


def _spec(suite: Suite, model: str) -> str:
    return model if model == "default" else str(_resolve(suite.folder, model))


def _record_run(res: dict, folder: Path, version: str, profiles: dict, name: str, facts: dict) -> dict:
    """Save a job's session, read it back through the session checks, and profile it (the first
    session of a version also gives ``facts[version]``, the model's provenance)."""
    run = {k: res.get(k) for k in ("status", "error", "seconds", "result", "command", "correct")}
    run["prediction"], run["probability"] = res.get("prediction") or ["", 0.0]
    run["session"] = None
    if res.get("status") == "ok" and res.get("session"):
        path = folder / f"{name}.cdesk"
        data = res["session"]
        atomic_write(path, lambda fh: fh.write(data))
        session = load_session(path)
        run["session"] = f"{version}/{path.name}"
        profiles[name] = profile_of(session, name, (run["prediction"], run["probability"]))
        m = session.manifest["model"]
        facts.setdefault(version, {k: m[k] for k in ("name", "sha256", "n_params", "device", "dtype", *SHAPE,
                                                      "vocab_size") if k in m})
    return run


SHAPE = ("family", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_mlp")  # what versions share (node keys)


def _same_architecture(facts: dict) -> None:
    """Refuse model B when its shape differs from model A's (its nodes would not be A's nodes); said at
    B's first case, before the rest run."""
    a, b = facts.get("a", {}), facts.get("b", {})
    if "n_layers" not in a:  # no case ran on model A: nothing to compare with
        return
    differ = [k for k in SHAPE if a.get(k) != b.get(k)]
    if differ:
        k = differ[0]
        raise CircuitDeskError(f"Model B is not the same architecture as model A ({k} {b.get(k)} vs {a.get(k)}); a "
                               "comparison of versions needs the same layers, heads and widths (a fine-tune, "
                               "another checkpoint, a quantised copy).")


# -- one kind of case ------------------------------------------------------------------------------
def _section(kind, records, profiles, groups, settings: CompareSettings, versions, suite, ctx) -> dict:
    method, basis = kind
    names = [r.name for r in records if r.name in profiles["a"] and (profiles["a"][r.name].method,
                                                                     profiles["a"][r.name].basis) == kind]
    n_layers = profiles["a"][names[0]].n_layers
    graph_a = aggregate([profiles["a"][n] for n in names], n_layers, settings.min_recurrence)
    section: dict = {"method": method, "basis": basis, "n_layers": n_layers, "cases": names,
                     "behaviour": {"a": _graph_json(graph_a)}, "contrasts": [], "edge_changes": [], "checks": []}
    by_name = {r.name: r for r in records}
    contrasts = []
    if groups is not None:
        in_groups = [n for n in names if by_name[n].group is not None]
        n_a = sum(by_name[n].group == "a" for n in in_groups)
        if n_a >= 2 and len(in_groups) - n_a >= 2:
            rows = [graph_a.cases.index(n) for n in in_groups]
            columns = [i for i, k in enumerate(graph_a.keys) if k not in FIXED_KEYS]  # not the endpoints
            keys = tuple(graph_a.keys[i] for i in columns)
            values = graph_a.values[np.ix_(rows, columns)]
            mask = np.array([by_name[n].group == "a" for n in in_groups])
            c = contrast_groups(values, mask, keys, permutations=settings.permutations,
                                seed=settings.permutation_seed, correction=settings.correction)
            contrasts.append(("groups", c, in_groups, mask))
        else:
            section["note"] = (f"Groups {groups['a']!r} and {groups['b']!r} have {n_a} and {len(in_groups) - n_a} "
                               "cases of this kind; a contrast needs at least 2 in each.")
    if "b" in versions:
        both = [n for n in names if n in profiles["b"]]
        if len(both) >= 2:
            graph_b = aggregate([profiles["b"][n] for n in both], n_layers, settings.min_recurrence)
            section["behaviour"]["b"] = _graph_json(graph_b)
            keys = sorted(k for k in set(graph_a.keys) | set(graph_b.keys) if k not in FIXED_KEYS)
            va = np.array([[profiles["a"][n].nodes.get(k, 0.0) for k in keys] for n in both])
            vb = np.array([[profiles["b"][n].nodes.get(k, 0.0) for k in keys] for n in both])
            c = contrast_paired(va, vb, tuple(keys), permutations=settings.permutations,
                                seed=settings.permutation_seed, correction=settings.correction)
            contrasts.append(("versions", c, both, None))
            if method == "circuit":
                section["edge_changes"] = _edge_changes([profiles["a"][n] for n in both],
                                                        [profiles["b"][n] for n in both], settings)
        else:
            note = (f"{len(both)} case{'s' * (len(both) != 1)} of this kind ran on both models; a comparison of "
                    "the versions needs at least 2.")
            section["note"] = f"{section['note']} {note}" if section.get("note") else note
    for what, c, cases, mask in contrasts:
        section["contrasts"].append(_contrast_json(what, c, cases, mask, settings, groups))
    ctx.progress(0.3, "checking the top differences by intervention")
    if settings.checks and contrasts:
        section["checks"] = _checks(contrasts, profiles, by_name, versions, suite, settings, groups,
                                    ctx.sub(0.3, 1.0))
    return section


def _graph_json(g: BehaviourGraph) -> dict:
    drawn = g.drawn()
    return {"cases": list(g.cases), "min_recurrence": g.min_recurrence, "nodes": g.node_rows(drawn),
            "edges": g.edge_rows(), "keys": len(g.keys)}


def _contrast_json(what, c, cases, mask, settings, groups) -> dict:
    order = c.ranked()
    rows = []
    for i in order[:TOP_ROWS]:
        rows.append({"key": c.keys[i], "mean_a": c.mean_a[i], "mean_b": c.mean_b[i], "sd_a": c.sd_a[i],
                     "sd_b": c.sd_b[i], "present_a": c.present_a[i], "present_b": c.present_b[i],
                     "difference": c.difference[i], "effect_size": c.effect_size[i], "statistic": c.statistic[i],
                     "p_value": c.p_value[i], "p_adjusted": c.p_adjusted[i], "tested": bool(c.tested[i]),
                     "significant": bool(c.tested[i] and c.p_adjusted[i] <= settings.alpha)})
    label_a, label_b = (groups["a"], groups["b"]) if what == "groups" else ("model A", "model B")
    return {"what": what, "label_a": label_a, "label_b": label_b, "method": c.method, "n_a": c.n_a, "n_b": c.n_b,
            "cases": list(cases), "in_a": None if mask is None else [bool(x) for x in mask],
            "permutations": c.permutations, "exact": c.exact, "correction": c.correction, "alpha": settings.alpha,
            "keys_compared": int(np.sum(c.tested)), "significant": int(sum(r["significant"] for r in rows)),
            "rows": rows}


def _edge_changes(pa: list[CaseProfile], pb: list[CaseProfile], settings: CompareSettings) -> list[dict]:
    """Circuit edges gained, lost and changed in score between the versions (edges in either
    version's circuit in at least one case), ranked by the paired test."""
    edges = sorted(set().union(*(p.present_edges for p in pa), *(p.present_edges for p in pb)))
    if not edges:
        return []
    va = np.array([[p.edges.get(e, 0.0) for e in edges] for p in pa])
    vb = np.array([[p.edges.get(e, 0.0) for e in edges] for p in pb])
    ina = np.array([[e in p.present_edges for e in edges] for p in pa]).mean(0)
    inb = np.array([[e in p.present_edges for e in edges] for p in pb]).mean(0)
    names = tuple(f"{s}->{d}" for s, d in edges)
    c = contrast_paired(va, vb, names, permutations=settings.permutations, seed=settings.permutation_seed,
                        correction=settings.correction)
    out = []
    for i in c.ranked()[:TOP_ROWS]:
        change = "gained" if inb[i] >= 0.5 > ina[i] else "lost" if ina[i] >= 0.5 > inb[i] else "changed"
        out.append({"edge": names[i], "change": change, "in_circuit_a": float(ina[i]), "in_circuit_b": float(inb[i]),
                    "mean_a": float(c.mean_a[i]), "mean_b": float(c.mean_b[i]), "difference": float(c.difference[i]),
                    "p_adjusted": float(c.p_adjusted[i]),
                    "significant": bool(c.tested[i] and c.p_adjusted[i] <= settings.alpha)})
    return out


# -- checks by intervention ------------------------------------------------------------------------
def intervention_for(key: str, n_positions: int, scale: float = 0.0, start: int = 1):
    """The edit of a key at every position from ``start`` on (the start token's computation is left
    alone: it is not part of the graph): zero-ablation (``scale`` 0) or scaling by ``scale``; None for
    keys no single unit carries (errors, tokens)."""
    from core.interventions import Intervention  # deferred: torch loads only when a study checks nodes

    pos = tuple(range(start, n_positions))
    mode = {"mode": "zero"} if scale == 0 else {"mode": "scale", "value": float(scale)}
    if key.startswith("L") and ("/N" in key or "/F" in key):
        unit = "/N" if "/N" in key else "/F"
        layer, idx = key[1:].split(unit)
        return Intervention("neuron" if unit == "/N" else "feature", int(layer), int(idx), pos, **mode)
    if key.startswith("a") and ".h" in key:
        layer, head = key[1:].split(".h")
        return Intervention("head", int(layer), int(head), pos, **mode)
    if key.startswith("m") and key[1:].isdigit():
        return Intervention("mlp", int(key[1:]), 0, pos, **mode)
    return None


def _checks(contrasts, profiles, by_name, versions, suite, settings: CompareSettings, groups, ctx) -> list[dict]:
    out = []
    todo = []
    for what, c, cases, mask in contrasts:  # the top-ranked nodes a single unit carries (not error nodes)
        order = [i for i in c.ranked() if c.tested[i] and intervention_for(c.keys[i], 2) is not None]
        for i in order[:settings.checks]:
            todo.append((what, c.keys[i], bool(c.p_adjusted[i] <= settings.alpha), float(c.p_adjusted[i]), cases))
    if not todo:
        return out
    needed = ["a"] + (["b"] if any(what == "versions" for what, *_ in todo) else [])
    for vi, version in enumerate(needed):
        model = loaded(versions[version], suite.device, suite.dtype, placement=suite.placement)
        transcoder_sets: dict = {}  # folder -> TranscoderSet, loaded once per model for feature checks
        answers = {n: answer_sequences(model, by_name[n].answers) for n in profiles[version] if by_name[n].answers}
        right_before: dict[str, dict] = {n: {} for n in answers}  # case -> prompt -> written unedited: once per case
        for ti, (what, key, significant, p_adjusted, cases) in enumerate(todo):
            if what == "groups" and version != "a":
                continue
            ctx.check_cancelled()
            ctx.progress((vi + ti / len(todo)) / len(needed), f"checking {key} (model {version.upper()})")
            by_group: dict[str, list] = {}
            for n in (n for n in cases if n in profiles[version]):
                label = groups[by_name[n].group] if what == "groups" else "all cases"
                by_group.setdefault(label, []).append(
                    _case_effect(model, profiles[version][n], key, answers.get(n), transcoder_sets,
                                 settings.check_scale, right_before.get(n)))
            out.append({"key": key, "contrast": what, "model": version, "significant": significant,
                        "p_adjusted": p_adjusted,
                        "intervention": check_description(settings.check_scale),
                        "groups": {g: _summarise(es) for g, es in sorted(by_group.items())}})
    return out


def _case_effect(model, profile: CaseProfile, key: str, answers: list[tuple[int, ...]] | None,
                 transcoder_sets: dict, scale: float = 0.0, right_before: dict | None = None) -> dict:
    """What ablating (or scaling) ``key`` does to one case: top token changed, metric change, correctness
    flip (the whole answer written greedily, with the edit held at the prompt's positions, or not).
    ``right_before``: prompt index -> whether the unedited model writes an answer, filled on the first
    check of the case and read on the others."""
    import torch  # deferred: torch loads only when a study checks nodes

    from core.interventions import intervene, writes_answer  # deferred: as torch

    tc = None
    if "/F" in key:  # a transcoder feature: the edit needs the graph's transcoders
        from core.attribution.transcoders import load_transcoders  # deferred: as torch

        folder = profile.transcoders
        if folder not in transcoder_sets:
            transcoder_sets[folder] = load_transcoders(folder, model.facts.n_layers, model.facts.d_model,
                                                       device=model.device)
        tc = transcoder_sets[folder]
    prompts = profile.prompts
    changed, deltas, flips_to_wrong, flips_to_right = 0, [], 0, 0
    right_before = {} if right_before is None else right_before
    for i, (ids, target, foil) in enumerate(prompts):
        iv = intervention_for(key, len(ids), scale)
        r = intervene(model, torch.tensor([ids]), [iv], target_id=target, top_k=1, transcoders=tc)
        before, after = int(r.logits_before.argmax()), int(r.logits_after.argmax())
        changed += before != after
        if foil is None:
            deltas.append(r.prob_after - r.prob_before)
        else:
            deltas.append(float((r.logits_after[target] - r.logits_after[foil])
                                - (r.logits_before[target] - r.logits_before[foil])))
        if answers:
            if i not in right_before:
                right_before[i] = writes_answer(model, ids, answers, before)
            right_after = writes_answer(model, ids, answers, after, [iv], tc)
            flips_to_wrong += right_before[i] and not right_after
            flips_to_right += right_after and not right_before[i]
    n = len(prompts)
    return {"changed": changed / n, "delta": float(np.mean(deltas)), "to_wrong": flips_to_wrong / n,
            "to_right": flips_to_right / n, "metric": "probability" if prompts[0][2] is None else "logit difference"}


def _summarise(effects: list[dict]) -> dict:
    d = np.array([e["delta"] for e in effects])
    return {"cases": len(effects), "answer_changed": float(np.mean([e["changed"] for e in effects])),
            "metric": effects[0]["metric"], "mean_delta": float(d.mean()),
            "sd_delta": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "correct_to_wrong": float(np.mean([e["to_wrong"] for e in effects])),
            "wrong_to_correct": float(np.mean([e["to_right"] for e in effects]))}


# -- the file --------------------------------------------------------------------------------------
def _finite(obj):
    """JSON without NaN or infinities (they are not JSON): None in their place."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _finite(obj.item())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def load_comparison(path: str | Path) -> dict:
    """A comparison.json (or the folder holding it), checked enough to show safely (every field the
    window and the report read, with its type; session paths inside its folder); one sentence when
    it is not one."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "comparison.json"
    if not p.is_file():
        raise CircuitDeskError(f"{p} does not exist; open the comparison.json that circuitdesk compare wrote.")
    if p.stat().st_size > MAX_COMPARISON_BYTES:
        raise CircuitDeskError(f"{p.name} is larger than {MAX_COMPARISON_BYTES >> 20} MB; it is not a comparison.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise CircuitDeskError(f"{p.name} is not a comparison file ({e}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CircuitDeskError(f"{p.name} is not a Circuit Desk comparison (no format {FORMAT!r}).")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CircuitDeskError(f"{p.name} has format version {doc.get('format_version')!r}; this Circuit Desk reads "
                               f"version {FORMAT_VERSION}.")
    _check_session_paths(doc, p.name)
    check_browsable(doc, p.name)  # every field a reader uses, with its type
    doc["folder"] = str(p.parent.resolve())
    return doc


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _check_session_paths(doc: dict, where: str) -> None:
    """Every case's session path stays inside the comparison's folder (a file may come from anyone)."""
    cases = doc.get("cases")
    for c in cases if isinstance(cases, list) else []:
        runs = c.get("runs") if isinstance(c, dict) else None
        for run in runs.values() if isinstance(runs, dict) else []:
            s = run.get("session") if isinstance(run, dict) else 0
            if s is not None and (not isinstance(s, str) or s.startswith(("/", "\\")) or ".." in Path(s).parts):
                raise CircuitDeskError(f"{where}: a case's session path {s!r} is not inside the comparison's folder.")


def study_summary(comparison: dict) -> dict:
    """The comparison in brief (``--json``), with one line per finding for a terminal."""
    findings = []
    for s in comparison["sections"]:
        kind = s["method"] if s["method"] == "circuit" else f"attribution ({s.get('basis') or 'neurons'})"
        if s.get("note"):
            findings.append(f"{kind}: {s['note']}")
        for c in s["contrasts"]:
            what = (f"{c['label_a']} ({c['n_a']}) vs {c['label_b']} ({c['n_b']})" if c["what"] == "groups"
                    else f"model A vs model B on {c['n_a']} cases")
            top = [r for r in c["rows"] if r["significant"]][:5]
            findings.append(f"{kind} {what}: {c['significant']} of {c['keys_compared']} nodes differ "
                            f"(corrected p <= {c['alpha']:g}, {c['correction']})"
                            + (": " + ", ".join(f"{r['key']} (d={_num(r['effect_size'])}, p={_num(r['p_adjusted'])})"
                                               for r in top) if top else ""))
        for chk in s["checks"]:
            parts = [f"{g}: answer changed in {v['answer_changed']:.0%}, mean Δ{'p' if v['metric'] == 'probability' else 'logit diff'} "
                     f"{v['mean_delta']:+.3f}" for g, v in chk["groups"].items()]
            findings.append(f"  {check_verb(chk)} {chk['key']} (model {chk['model'].upper()}): " + "; ".join(parts))
    return {"suite": comparison["suite"], "models": comparison["models"], "groups": comparison["groups"],
            "seconds": comparison["seconds"], "cases_ok": comparison["cases_ok"],
            "cases_failed": comparison["cases_failed"],
            "sections": [{"method": s["method"], "basis": s["basis"], "cases": len(s["cases"]),
                          "contrasts": [{k: c[k] for k in ("what", "label_a", "label_b", "n_a", "n_b", "keys_compared",
                                                           "significant", "correction", "permutations", "exact")}
                                        | {"top": c["rows"][:10]} for c in s["contrasts"]],
                          "edge_changes": s["edge_changes"][:10], "checks": s["checks"]} for s in comparison["sections"]],
            "findings": findings}


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.2g}"

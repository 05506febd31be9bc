"""Batch audits: a TOML suite of cases → one session and one PDF report per case, plus a summary.

A suite names the model once and lists cases; ``[defaults]`` apply to every case, a case's own keys
win. The model loads once. A case that fails (an empty prompt, a target that is not one token, a
missing pair file, an unknown setting) is recorded with its reason and the suite goes on.

    name = "Capitals"            # optional; default: the file name
    model = "default"            # 'default', a model folder or a .gguf file (relative to this file)
    device = "auto"              # optional: auto | cpu | cuda
    dtype = "float32"            # optional
    auditor = "A. Auditor"       # optional: printed on every report

    [defaults]
    max_nodes = 200

    [[cases]]
    name = "france"
    prompt = "The capital of France is"
    target = " Paris"

    [[cases]]
    name = "ioi"
    method = "circuit"
    task = "ioi"
    n_pairs = 16

Rendering PDFs needs Qt, so ``run_suite`` takes the renderer as an argument (``desktop`` passes
``report_pdf.render_pdf``, report → PDF bytes); without one, sessions and ``summary.json`` are
still written. ``summary.json`` and ``summary.pdf`` are written together or not at all. An
attribution case's report uses the feature atlas of its model and basis found in the atlas folder,
as ``circuitdesk report`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.atlas.store import graph_basis_key
from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.paths import atomic_write, atomic_write_all
from core.report import build_report, build_summary, report_atlas
from core.runs import attribution_session, circuit_session
from core.settings import (
    ATTRIBUTION_SETTINGS,
    CHAT_SETTINGS,
    CIRCUIT_SETTINGS,
    PAIR_SOURCE_SETTINGS,
    AttributionSettings,
    ChatSettings,
    CircuitSettings,
    PairSource,
    PlacementSettings,
    settings_from_suite,
    suite_keys,
)
from core.session import save_session

log = logging.getLogger("circuitdesk.audit")

MAX_CASES = 1000
SUITE_KEYS = {"name", "model", "device", "dtype", "auditor", "defaults", "cases", "compare"}
# a case's labels for behaviour studies (``circuitdesk compare``): read there, ignored by the run itself
LABEL_KEYS = ("group", "answers", "labels")
# a case's keys: the command line's settings (``scoring`` for circuit's --method), from their declarations
ATTRIBUTION_KEYS = {"prompt": str, **suite_keys(CHAT_SETTINGS, ATTRIBUTION_SETTINGS)}  # chat, system, messages too
CIRCUIT_KEYS = suite_keys(PAIR_SOURCE_SETTINGS, CIRCUIT_SETTINGS)
METHODS = ("attribution", "circuit")


@dataclass
class Suite:
    name: str
    model: str
    device: str
    dtype: str
    auditor: str
    cases: list[dict]  # as written, "name" always set (unique, usable as a file name)
    folder: Path  # relative paths in the suite are relative to this
    defaults: dict = field(default_factory=dict)  # applied to the cases whose method has the setting
    compare: dict = field(default_factory=dict)  # the [compare] table: settings of ``circuitdesk compare``
    # where the model's layers live (--offload, --max-gpu-memory, …: the command line's, not the file's)
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    path: Path | None = None  # the suite file (None: a suite built in code), and its sha256 when read
    sha256: str = ""

    def case(self, k: int) -> dict:
        """Case ``k`` with the defaults that apply to its method."""
        own = self.cases[k]
        method = own.get("method", self.defaults.get("method", "attribution"))
        allowed = CIRCUIT_KEYS if method == "circuit" else ATTRIBUTION_KEYS
        return {**{key: v for key, v in self.defaults.items() if key in allowed or key == "method"}, **own}


@dataclass
class CaseOutcome:
    name: str
    method: str
    status: str = "failed"  # ok | failed
    error: str = ""
    seconds: float = 0.0
    session: str | None = None
    report: str | None = None
    command: str = ""
    result: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"name": self.name, "method": self.method, "status": self.status, "seconds": round(self.seconds, 3),
               "session": self.session, "report": self.report, "command": self.command, "result": self.result}
        if self.error:
            out["error"] = self.error
        return out


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; problems with the file itself are errors, a bad case is not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CircuitDeskError(f"The suite file {path} does not exist.")
    data = path.read_bytes()
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CircuitDeskError(f"{path.name} is not a text file.") from None
    except tomllib.TOMLDecodeError as e:
        raise CircuitDeskError(f"{path.name} is not valid TOML ({e}).") from None
    unknown = sorted(set(doc) - SUITE_KEYS)
    if unknown:
        raise CircuitDeskError(f"{path.name}: unknown suite setting {unknown[0]!r}; a suite has "
                               f"{', '.join(sorted(SUITE_KEYS))}.")
    for key in ("name", "model", "device", "dtype", "auditor"):
        if key in doc and not isinstance(doc[key], str):
            raise CircuitDeskError(f"{path.name}: {key!r} must be text.")
    defaults = doc.get("defaults", {})
    cases = doc.get("cases")
    if not isinstance(defaults, dict):
        raise CircuitDeskError(f"{path.name}: [defaults] must be a table of case settings.")
    known = set(ATTRIBUTION_KEYS) | set(CIRCUIT_KEYS) | {"method"}
    for key in defaults:
        if key not in known:
            raise CircuitDeskError(f"{path.name}: unknown setting {key!r} in [defaults]; known: {', '.join(sorted(known))}.")
    if not isinstance(cases, list) or not cases or not all(isinstance(c, dict) for c in cases):
        raise CircuitDeskError(f"{path.name} lists no cases; add [[cases]] tables (see the README).")
    if len(cases) > MAX_CASES:
        raise CircuitDeskError(f"{path.name} lists {len(cases)} cases; split it into suites of at most {MAX_CASES}.")
    compare = doc.get("compare", {})
    if not isinstance(compare, dict):
        raise CircuitDeskError(f"{path.name}: [compare] must be a table of compare settings.")
    merged, seen = [], set()
    for k, case in enumerate(cases, 1):
        _check_labels(case, f"{path.name}, case {k}")
        c = dict(case)
        name = _file_name(str(c.get("name") or f"case-{k}"))
        while name in seen:
            name += f"-{k}"
        seen.add(name)
        c["name"] = name
        merged.append(c)
    return Suite(name=doc.get("name") or path.stem, model=doc.get("model", "default"),
                 device=doc.get("device", "auto"), dtype=doc.get("dtype", "float32"),
                 auditor=doc.get("auditor", ""), cases=merged, folder=path.resolve().parent, defaults=defaults,
                 compare=compare, path=path.resolve(), sha256=hashlib.sha256(data).hexdigest())


def _check_labels(case: dict, where: str) -> None:
    """A case's labels: ``group`` text, ``answers`` text or a list of texts, ``labels`` a table of texts."""
    if "group" in case and not isinstance(case["group"], str):
        raise CircuitDeskError(f"{where}: 'group' must be text (e.g. group = \"correct\").")
    answers = case.get("answers", [])
    if isinstance(answers, str):
        answers = [answers]
    if (not isinstance(answers, list) or ("answers" in case and not answers)  # [] would judge every answer wrong
            or not all(isinstance(a, str) and a for a in answers)):
        raise CircuitDeskError(f"{where}: 'answers' must be a list of texts (e.g. answers = [\" Paris\"]).")
    labels = case.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise CircuitDeskError(f"{where}: 'labels' must be a table of texts (e.g. labels = {{ topic = \"dosage\" }}).")


def _file_name(name: str) -> str:
    """A case name usable as a file name on every system."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:80]
    return safe or "case"


def run_suite(suite: Suite, out_dir: str | Path, ctx: JobContext | None = None,
              render: Callable | None = None, notify: Callable[[int, CaseOutcome], None] | None = None) -> dict:
    """Run every case of ``suite`` into ``out_dir``; returns the summary (also written as
    ``summary.json``, and each case's PDF and ``summary.pdf`` through ``render(report) -> bytes``
    when given).
    ``notify(k, outcome)`` is called after each case."""
    from core.models import load_model  # deferred: torch loads only when a suite runs

    ctx = ctx or JobContext()
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CircuitDeskError(f"Cannot create the output folder {out}: {e.strerror or e}.") from None
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    start = time.perf_counter()
    n = len(suite.cases)
    model_spec = _resolve(suite.folder, suite.model) if suite.model != "default" else "default"
    model = load_model(model_spec, device=suite.device, dtype=suite.dtype, ctx=ctx.sub(0.0, 0.05, "Loading the model"),
                       placement=suite.placement)
    outcomes: list[CaseOutcome] = []
    atlases: dict = {}  # (model sha256, basis) -> the atlas its reports use (found once per suite)
    for k in range(n):
        case = suite.case(k)
        ctx.check_cancelled()
        part = ctx.sub(0.05 + 0.95 * k / n, 0.05 + 0.95 * (k + 1) / n, f"[{k + 1}/{n}] {case['name']}")
        outcome = CaseOutcome(case["name"], str(case.get("method", "attribution")))
        t0 = time.perf_counter()
        try:
            session, outcome.result, outcome.command = run_case(model, model_spec, suite, case, part)
            session_path = out / f"{outcome.name}.cdesk"
            save_session(session_path, session)
            outcome.session = session_path.name
            if render is not None:
                pdf = out / f"{outcome.name}.pdf"
                data = render(build_report(session, session_path, auditor=suite.auditor,
                                           atlas=_atlas_for(session, atlases)))
                atomic_write(pdf, lambda fh: fh.write(data))
                outcome.report = pdf.name
            outcome.status = "ok"
        except CircuitDeskError as e:
            outcome.error = str(e)
        except (KeyboardInterrupt, InterruptedError):
            raise
        except Exception as e:  # a bug: the case fails, the suite goes on, the traceback goes to the log
            log.exception("case %s failed", outcome.name)
            outcome.error = f"internal error: {e}"
        outcome.seconds = time.perf_counter() - t0
        outcomes.append(outcome)
        if notify is not None:
            notify(k, outcome)
    summary = {
        "suite": suite.name, "model_spec": suite.model, "model": _model_facts(model), "auditor": suite.auditor,
        "started": started, "seconds": round(time.perf_counter() - start, 3),
        "cases_ok": sum(o.status == "ok" for o in outcomes), "cases_failed": sum(o.status != "ok" for o in outcomes),
        "cases": [o.to_json() for o in outcomes],
    }
    text = json.dumps(summary, indent=1)
    files = {out / "summary.json": lambda fh: fh.write(text.encode("utf-8"))}
    if render is not None:
        pdf_bytes = render(build_summary(summary))
        files[out / "summary.pdf"] = lambda fh: fh.write(pdf_bytes)
    atomic_write_all(files)  # a pair from one run, never a new JSON beside an old PDF
    ctx.progress(1.0, "Done")
    return summary


def _atlas_for(session, atlases: dict):
    """The feature atlas of a case's report, found automatically (as ``circuitdesk report`` does)
    and opened once per model and basis."""
    if session.graph is None:
        return None
    key = (session.manifest["model"]["sha256"], graph_basis_key(session.graph.meta))
    if key not in atlases:
        atlases[key], note = report_atlas(session)
        log.info("audit reports: %s", note)
    return atlases[key]


def _model_facts(model) -> dict:
    s = model.summary()
    return {k: s[k] for k in ("name", "spec", "sha256", "family", "n_params", "device", "dtype") if k in s}


def _resolve(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else folder / p)


def _check_keys(case: dict, allowed: dict, method: str) -> None:
    for key, value in case.items():
        if key in ("name", "method") or key in LABEL_KEYS:
            continue
        if key not in allowed:
            other = "circuit" if method == "attribution" else "attribution"
            hint = f" (it belongs to method = \"{other}\")" if key in (CIRCUIT_KEYS if other == "circuit" else ATTRIBUTION_KEYS) else ""
            raise CircuitDeskError(f"Unknown setting {key!r} for a {method} case{hint}; known: "
                                   f"{', '.join(sorted(allowed))}.")
        want = allowed[key]
        if want is bool:  # a switch (chat, start_token_node): true or false, nothing else
            if not isinstance(value, bool):
                raise CircuitDeskError(f"The setting {key!r} must be true or false (got {value!r}).")
        elif isinstance(value, bool) or not isinstance(value, (int, float) if want is float else want):
            raise CircuitDeskError(f"The setting {key!r} must be {'text' if want is str else 'a number'} "
                                   f"(got {value!r}).")


def run_case(model, model_spec: str, suite: Suite, case: dict, ctx: JobContext) -> tuple:
    """(Session, summary fields, regenerate command) of one case."""
    method = case.get("method", "attribution")
    if method not in METHODS:
        raise CircuitDeskError(f"Unknown method {method!r}; a case's method is attribution or circuit.")
    if method == "attribution":
        _check_keys(case, ATTRIBUTION_KEYS, method)
        chat = settings_from_suite(ChatSettings, case)
        if "prompt" not in case and not chat.messages:
            raise CircuitDeskError("This case has no prompt (or messages file).")
        if chat.messages:
            chat = dataclasses.replace(chat, messages=_resolve(suite.folder, chat.messages))
        settings = settings_from_suite(AttributionSettings, case)
        if settings.transcoders is not None:
            settings = dataclasses.replace(settings, transcoders=_resolve(suite.folder, settings.transcoders))
        session, result = attribution_session(model, model_spec, case.get("prompt"), settings, suite.dtype,
                                              f"{case['name']}.cdesk", ctx=ctx, chat=chat)
        stats, top = result.stats, result.targets[0]
        fields = {"target": top.token, "target_probability": top.probability, "nodes": stats["nodes"],
                  "edges": stats["edges"], "pruned_nodes": stats["pruned_nodes"], "pruned_edges": stats["pruned_edges"],
                  **{k: stats[k] for k in ("replacement_score", "completeness_score", "pruned_replacement_score",
                                           "pruned_completeness_score")}}
        return session, fields, session.manifest["command"]
    _check_keys(case, CIRCUIT_KEYS, method)
    source = settings_from_suite(PairSource, case)
    if source.pairs_file is not None:
        source = dataclasses.replace(source, pairs_file=_resolve(suite.folder, source.pairs_file))
    source.check()
    settings = settings_from_suite(CircuitSettings, case)
    session, result, pairs = circuit_session(model, model_spec, source, settings, suite.dtype,
                                             f"{case['name']}.cdesk", ctx=ctx)
    curve = result.curve
    fields = {"n_pairs": len(pairs), "metric": settings.metric, "metric_clean": result.metric_clean,
              "metric_corrupted": result.metric_corrupted, "circuit_faithfulness": result.circuit_faithfulness,
              "circuit_edges": result.stats.get("circuit_edges"), "circuit_nodes": result.stats.get("circuit_nodes"),
              "cpr": curve.cpr if curve else None, "cmd": curve.cmd if curve else None}
    return session, fields, session.manifest["command"]

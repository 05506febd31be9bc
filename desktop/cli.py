"""``circuitdesk``: the one entry point (GUI and headless commands).

Exit codes: 0 success, 2 usage error, 1 any other error with a one-line reason on stderr.
``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import core
from core.audit import load_suite, run_suite
from core.behaviour.study import run_study, study_summary, suite_settings
from core.errors import CircuitDeskError
from core.graph import FEATURE, KIND_NAMES
from core.jobs import JobContext
from core.models.catalog import add_model_path, list_models, remove_model_path
from core.report import build_comparison_report, build_report, report_atlas
from core.runs import attribution_session, circuit_session, traced_prompt
from core.session import load_session, save_session
from core.settings import (
    ATLAS_SETTINGS,
    ATTRIBUTION_SETTINGS,
    CHAT_SETTINGS,
    CIRCUIT_SETTINGS,
    COMPARE_SETTINGS,
    PAIR_SOURCE_SETTINGS,
    PLACEMENT_SETTINGS,
    PRECISIONS,
    PREDICT_SETTINGS,
    AtlasSettings,
    AttributionSettings,
    ChatSettings,
    CircuitSettings,
    CompareSettings,
    PairSource,
    PlacementSettings,
    add_arguments,
    settings_from_args,
)
from desktop.logs import setup_logging

log = logging.getLogger("circuitdesk.cli")


class StderrProgress:
    """Progress on stderr: a redrawn bar on a terminal, one line per new message otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last_message = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        if self.tty:
            filled = int(p.fraction * 24)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (24 - filled)}] {p.fraction:4.0%} {p.message[:60]:<60}")
            if p.fraction >= 1.0:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif p.message != self._last_message:
            sys.stderr.write(f"{p.message}...\n")
            sys.stderr.flush()
        self._last_message = p.message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitdesk",
        description="Circuit tracing for open-weight language models, offline. With no command, opens the GUI.",
    )
    parser.add_argument("--version", action="version", version=f"circuitdesk {core.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gui = sub.add_parser("gui", help="open the desktop workbench")
    gui.add_argument("--model", help="model to open: 'default', a model folder or a .gguf file")
    gui.add_argument("--prompt", help="prompt to put in the prompt box")
    add_arguments(gui, CHAT_SETTINGS)  # --chat, --system, --messages: the panel's Chat row and conversation
    gui.add_argument("--device", default="auto", help="auto, cpu or cuda")
    gui.add_argument("--dtype", default="float32", choices=PRECISIONS,
                     help="the model's precision: float32 (exact), bfloat16 or float16 (half the memory)")
    add_arguments(gui, PLACEMENT_SETTINGS)  # the panel's Offload rows and Transcoders on
    gui.add_argument("--method", choices=["attribution", "circuit", "predict"], default="attribution",
                     help="what a run does: attribution graph (default), component circuit, or prediction only")
    gui.add_argument("--corrupted", help="component circuit: the corrupted prompt to compare with")
    gui.add_argument("--trace", action="store_true", help="run the prompt as soon as the window opens")
    gui.add_argument("--comparison", metavar="DIR_OR_JSON",
                     help="open a behaviour comparison (the folder circuitdesk compare wrote, or its comparison.json)")
    gui.add_argument("--screenshot", metavar="FILE.png",
                     help="save a picture of the window after the run (of the comparison's window with --comparison)")
    gui.add_argument("--quit-after-trace", action="store_true", help="close the app when the run has finished")

    models = sub.add_parser("models", help="list the models Circuit Desk can open")
    models.add_argument("--json", action="store_true", help="print one JSON object")
    models.add_argument("--add", metavar="PATH", help="remember a model folder, .gguf file or folder of models")
    models.add_argument("--remove", metavar="PATH", help="forget a remembered path")

    predict = sub.add_parser("predict", help="top next tokens for a prompt")
    predict.add_argument("--model", default="default", help="'default', a model folder or a .gguf file")
    _prompt_options(predict)
    add_arguments(predict, PREDICT_SETTINGS)
    _run_options(predict, session_out=False)

    trace = sub.add_parser("trace", help="build the attribution graph of a prompt (circuit-tracer method)")
    trace.add_argument("--model", default="default", help="'default', a model folder or a .gguf file")
    _prompt_options(trace)
    add_arguments(trace, ATTRIBUTION_SETTINGS)
    _run_options(trace, session_out=True, transcoders=True)

    circuit = sub.add_parser("circuit", help="find the component circuit (heads, MLPs) behind a task (EAP / EAP-IG)")
    circuit.add_argument("--model", default="default", help="'default', a model folder or a .gguf file")
    add_arguments(circuit, PAIR_SOURCE_SETTINGS, CIRCUIT_SETTINGS)  # --task, --pairs or --prompt; one --seed
    _run_options(circuit, session_out=True)

    export = sub.add_parser("export", help="write a session's graph for other tools (Neuronpedia, Gephi/yEd, CSV)")
    export.add_argument("session", metavar="FILE.cdesk", help="session file written by trace or circuit")
    export.add_argument("--format", required=True, choices=["neuronpedia", "graphml", "csv"],
                        help="neuronpedia: circuit-tracer/Neuronpedia graph JSON (attribution graphs); "
                             "graphml: every node and edge for Gephi/yEd; csv: NAME.nodes.csv + NAME.edges.csv")
    export.add_argument("--out", required=True, metavar="FILE", help="file to write")

    report = sub.add_parser("report", help="write the PDF audit report of a session")
    report.add_argument("session", metavar="FILE.cdesk", help="session file written by trace, circuit or the GUI")
    report.add_argument("--out", required=True, metavar="FILE.pdf", help="report to write")
    report.add_argument("--auditor", help="name on the cover (default: the one set in the GUI, File → Auditor Name…)")
    which_atlas = report.add_mutually_exclusive_group()
    which_atlas.add_argument("--atlas", metavar="ATLAS_DIR",
                             help="feature atlas that labels the top nodes and shows their top examples (default: "
                                  "the newest atlas of the session's model and basis in the atlas folder)")
    which_atlas.add_argument("--no-atlas", action="store_true", help="make the report without a feature atlas")

    audit = sub.add_parser("audit", help="batch audit: every case of a suite → session + PDF report, plus a summary",
                           description="Run every case of a TOML suite (see the README, and "
                                       "resources/suites/example.toml). Exit 0 when every case succeeded, 1 when "
                                       "any failed (the summary says why) or the suite could not run.")
    audit.add_argument("suite", metavar="SUITE.toml", help="the suite file")
    audit.add_argument("--out", required=True, metavar="DIR", help="folder for the sessions, reports and summary")
    audit.add_argument("--no-pdf", action="store_true", help="write sessions and summary.json only (faster)")
    add_arguments(audit, PLACEMENT_SETTINGS)
    audit.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    compare = sub.add_parser(
        "compare", help="behaviour audit: a suite's circuits aggregated, contrasted between groups of cases and "
                        "between model versions, checked by intervention",
        description="Run every case of a TOML suite (on the suite's model, and on --model-b when given), merge the "
                    "cases' graphs into a behaviour graph, contrast two groups of cases (labels, or --groups correct: "
                    "the model's answer is one of the case's answers) and the two versions with corrected "
                    "permutation tests, and ablate the top differences across the cases. Settings can also be given "
                    "in the suite's [compare] table; flags win. Writes DIR/comparison.json, DIR/comparison.pdf and "
                    "every case's session under DIR/a (and DIR/b).")
    compare.add_argument("suite", metavar="SUITE.toml", help="the suite file")
    compare.add_argument("--out", required=True, metavar="DIR", help="folder for the comparison and the sessions")
    add_arguments(compare, COMPARE_SETTINGS)
    compare.set_defaults(**{s.name: None for s in COMPARE_SETTINGS})  # not given: the suite's [compare], then the default
    add_arguments(compare, PLACEMENT_SETTINGS)
    compare.add_argument("--no-pdf", action="store_true", help="write comparison.json and the sessions only")
    compare.add_argument("--json", action="store_true", help="print the comparison's summary as one JSON object")

    atlas = sub.add_parser("atlas", help="feature atlas: what each neuron / transcoder feature responds to",
                           description="Build a feature atlas from a local corpus (top-activating windows, density, "
                                       "histograms and a label per feature), or show one feature's dashboard.")
    atlas_sub = atlas.add_subparsers(dest="atlas_command", metavar="ACTION", required=True)
    build = atlas_sub.add_parser(
        "build", help="build (or resume) an atlas",
        description="Scan a corpus once with the model and keep, for every feature, its top-activating windows, "
                    "density and activation histogram. Without --corpus, text sampled from the model itself (fixed "
                    "seed) and the bundled prompts are used. Stopped (Ctrl-C) or crashed builds resume when the same "
                    "command is run again.")
    build.add_argument("--model", default="default", help="'default', a model folder or a .gguf file")
    build.add_argument("--corpus", nargs="+", action="extend", metavar="FILE_OR_FOLDER",
                       help="text files (.txt, .md: one document each), .jsonl (a \"text\" field per line), .csv/.tsv "
                            "(a column per row), or folders of them")
    build.add_argument("--column", default="text", help="the text column of .csv/.tsv files (default: text)")
    add_arguments(build, ATLAS_SETTINGS)
    build.add_argument("--device", default="auto", help="auto, cpu or cuda")
    build.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    add_arguments(build, PLACEMENT_SETTINGS)
    build.add_argument("--out", required=True, metavar="ATLAS_DIR", help="folder to build the atlas in")
    build.add_argument("--overwrite", action="store_true", help="replace a finished atlas or another unfinished build there")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    show = atlas_sub.add_parser("show", help="print a feature's dashboard, or what an atlas holds")
    show.add_argument("atlas", metavar="ATLAS_DIR", help="the atlas folder")
    show.add_argument("--feature", metavar="L/N", help="the feature, e.g. L12/N340 (layer 12, neuron 340)")
    show.add_argument("--examples", type=int, default=10, help="top examples to print (default 10)")
    show.add_argument("--json", action="store_true", help="print one JSON object")

    verify = sub.add_parser("verify", help="recompute a session with the model on disk and compare (exit 0: it matches)")
    verify.add_argument("session", metavar="FILE.cdesk", help="session file written by trace or circuit")
    verify.add_argument("--model", help="the model to check against (default: the one the session names)")
    verify.add_argument("--device", help="device to recompute on (default: the recorded one)")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _prompt_options(p: argparse.ArgumentParser) -> None:
    """--prompt, and its chat form: --chat, --system, or a conversation (--messages) instead."""
    p.add_argument("--prompt", help="the prompt (or give --messages)")
    add_arguments(p, CHAT_SETTINGS)


def _traced(args):
    """The prompt or conversation a command reads (checked before a model loads)."""
    return traced_prompt(args.prompt, settings_from_args(ChatSettings, args))


def _run_options(p: argparse.ArgumentParser, session_out: bool, transcoders: bool = False) -> None:
    """Options every model-running command ends with: device, dtype, offloading, [--out session], --json."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    add_arguments(p, [s for s in PLACEMENT_SETTINGS if transcoders or s.name != "transcoders_device"])
    if session_out:
        p.add_argument("--out", required=True, metavar="FILE.cdesk", help="session file to write")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def placement_from_args(args: argparse.Namespace) -> PlacementSettings:
    """The placement flags a command was given (a command without ``--transcoders-device`` keeps the default)."""
    return PlacementSettings(**{s.name: getattr(args, s.name, s.default) for s in PLACEMENT_SETTINGS})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    if args.command in ("trace", "predict") and (args.prompt is None) == (not args.messages):
        parser.error(f"{args.command}: give the prompt, as --prompt TEXT or as a conversation in --messages FILE.json "
                     "(one of them)")  # exits 2
    setup_logging()
    command = args.command or "gui"
    if command == "gui":
        from desktop.app import run_gui  # deferred: Qt loads only for the GUI, never for a headless command

        return run_gui(
            model=getattr(args, "model", None),
            prompt=getattr(args, "prompt", None),
            chat=settings_from_args(ChatSettings, args) if args.command == "gui" else None,
            device=getattr(args, "device", "auto"),
            method=getattr(args, "method", "attribution"),
            corrupted=getattr(args, "corrupted", None),
            trace=getattr(args, "trace", False),
            screenshot=getattr(args, "screenshot", None),
            quit_after_trace=getattr(args, "quit_after_trace", False),
            comparison=getattr(args, "comparison", None),
            dtype=getattr(args, "dtype", "float32"),
            placement=placement_from_args(args) if args.command == "gui" else None,
        )
    # No command reads standard input: detached from it, nothing piped in can answer a question
    # some library might ask (transformers' "Do you wish to run the custom code? [y/N]").
    sys.stdin = open(os.devnull, encoding="utf-8")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return {"models": cmd_models, "predict": cmd_predict, "trace": cmd_trace, "circuit": cmd_circuit,
                "export": cmd_export, "report": cmd_report, "audit": cmd_audit, "compare": cmd_compare, "atlas": cmd_atlas,
                "verify": cmd_verify}[command](args)
    except CircuitDeskError as err:
        log.info("user error: %s", err)
        print(f"circuitdesk: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        print(f"circuitdesk: {'terminated' if isinstance(stop, Terminated) else 'interrupted'}.", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback for the log
        log.exception("internal error in %s", command)
        where = setup_logging()
        print(f"circuitdesk: internal error: {exc} (details in {where}).", file=sys.stderr)
        return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), handled as Ctrl-C is: every partial file is removed."""


def _terminate(signum, frame) -> None:
    raise Terminated


def cmd_export(args) -> int:
    from core.export import export_session  # deferred: networkx loads only for an export, not at GUI start

    for path in export_session(load_session(args.session), args.format, args.out):
        print(path)
    return 0


def cmd_report(args) -> int:
    from desktop.report_pdf import auditor_name, write_pdf  # deferred: Qt loads only to write a PDF

    out = check_output_path(args.out, ".pdf")
    session = load_session(args.session)
    auditor = args.auditor if args.auditor is not None else auditor_name()
    start = time.perf_counter()
    atlas = None
    if not args.no_atlas:
        atlas, note = report_atlas(session, args.atlas)
        print(f"atlas: {note}", file=sys.stderr)
    report = build_report(session, args.session, auditor=auditor, atlas=atlas)
    write_pdf(report, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB, {time.perf_counter() - start:.1f} s)")
    return 0


def cmd_audit(args) -> int:
    suite = load_suite(args.suite)
    suite.placement = placement_from_args(args)
    suite.placement.validate()
    render = None
    if not args.no_pdf:
        from desktop.report_pdf import auditor_name, render_pdf  # deferred: Qt loads only to write PDFs

        render = render_pdf
        suite.auditor = suite.auditor or auditor_name()
    n = len(suite.cases)
    print(f"suite {suite.name!r}: {n} case{'s' * (n != 1)}, model {suite.model}", file=sys.stderr)

    def notify(k, outcome) -> None:
        what = f"ok, {outcome.seconds:.1f} s" if outcome.status == "ok" else f"FAILED: {outcome.error}"
        print(f"[{k + 1}/{n}] {outcome.name}: {what}", file=sys.stderr)

    summary = run_suite(suite, args.out, ctx=JobContext(StderrProgress(enabled=True)), render=render, notify=notify)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['cases_ok']} of {n} cases ok, {summary['seconds']:.1f} s; summary in "
              f"{Path(args.out) / 'summary.json'}")
    if summary["cases_failed"]:
        print(f"circuitdesk: {summary['cases_failed']} of {n} cases failed (reasons in summary.json).", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    suite = load_suite(args.suite)
    suite.placement = placement_from_args(args)
    suite.placement.validate()
    from_suite = CompareSettings(**suite_settings(suite))
    given = {s.name: getattr(args, s.name) for s in COMPARE_SETTINGS if getattr(args, s.name) is not None}
    settings = dataclasses.replace(from_suite, **given)
    if settings.model_b and settings.model_b != "default" and "model_b" in given:
        settings = dataclasses.replace(settings, model_b=str(Path(settings.model_b).expanduser().resolve()))
    settings.validate()
    out = Path(args.out)
    n = len(suite.cases)
    versions = 2 if settings.model_b else 1
    print(f"suite {suite.name!r}: {n} case{'s' * (n != 1)} on {versions} model version{'s' * (versions > 1)}",
          file=sys.stderr)

    def notify(version, k, record) -> None:
        run = record.runs[version]
        what = f"ok, {run['seconds']:.2f} s" if run["status"] == "ok" else f"FAILED: {run['error']}"
        print(f"[{version.upper()} {k + 1}/{n}] {record.name}: {what}", file=sys.stderr)

    comparison = run_study(suite, out, settings, ctx=JobContext(StderrProgress(enabled=True)), notify=notify)
    if not args.no_pdf:
        from desktop.report_pdf import auditor_name, write_pdf  # deferred: Qt loads only to write a PDF

        comparison["folder"] = str(out.resolve())
        write_pdf(build_comparison_report(comparison, auditor=suite.auditor or auditor_name()), out / "comparison.pdf")
    summary = study_summary(comparison)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for line in summary["findings"]:
            print(line)
        print(f"{comparison['cases_ok']} of {n} cases ok, {comparison['seconds']:.1f} s; comparison in "
              f"{out / 'comparison.json'}")
    if comparison["cases_failed"]:
        print(f"circuitdesk: {comparison['cases_failed']} of {n} cases failed (reasons in comparison.json).",
              file=sys.stderr)
        return 1
    return 0


def cmd_atlas(args) -> int:
    return cmd_atlas_build(args) if args.atlas_command == "build" else cmd_atlas_show(args)


def cmd_atlas_build(args) -> int:
    from core.atlas.build import build_atlas  # deferred: torch loads only when a command needs it
    from core.jobs import Cancelled  # deferred: with the build
    from core.models import load_model  # deferred: torch loads only when a command needs it

    settings = settings_from_args(AtlasSettings, args)
    settings.validate()

    def estimate(name, value) -> None:
        if name == "estimate":
            print(f"atlas: about {value['bytes'] / 1e6:,.0f} MB for {value['tokens']:,} corpus tokens in "
                  f"{value['windows']:,} windows", file=sys.stderr)

    ctx = JobContext(StderrProgress(enabled=True), on_partial=estimate)

    def stop(signum, frame) -> None:  # the first Ctrl-C / SIGTERM stops at the next batch, with a checkpoint
        if ctx.cancelled:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        print("\ncircuitdesk: stopping after this batch (again to stop at once)...", file=sys.stderr)
        ctx.cancel()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype, placement=placement_from_args(args),
                           ctx=ctx.sub(0.0, 0.02))
        result = build_atlas(model, args.out, settings, corpus=args.corpus, column=args.column,
                             overwrite=args.overwrite, ctx=ctx.sub(0.02, 1.0))
    except Cancelled:
        print(f"circuitdesk: stopped; the build is saved in {args.out}: run the same command again to resume it.",
              file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps({**result.to_json(), "model": model.summary()}, indent=1))
        return 0
    m = result.meta
    resumed = f", resumed at window {result.resumed_from:,}" if result.resumed_from else ""
    print(f"wrote {result.path}: {sum(m['features_per_layer']):,} {m['basis']['name']} over {m['tokens_seen']:,} "
          f"tokens, {m['size_bytes'] / 1e6:,.1f} MB, {m['tokens_per_second'] or 0:,.0f} tokens/s, "
          f"{result.seconds:.1f} s{resumed}")
    print(f"corpus: {m['corpus']['description']}")
    unit = "N" if m["basis"]["name"] == "neurons" else "F"
    print(f"show a feature: circuitdesk atlas show {result.path} --feature L{len(m['features_per_layer']) // 2}/{unit}0")
    return 0


def cmd_atlas_show(args) -> int:
    from core.atlas.store import Atlas, parse_feature  # deferred: the atlas reader only for this command

    atlas = Atlas.open(args.atlas)
    if args.examples < 0:
        raise CircuitDeskError(f"--examples must be 0 or more (got {args.examples}).")
    if args.feature:
        card = atlas.card(*parse_feature(args.feature), examples=args.examples)
        print(json.dumps(card.to_json(), indent=1, ensure_ascii=False) if args.json else card.to_text(args.examples))
        return 0
    m = atlas.meta
    if args.json:
        print(json.dumps(m, indent=1, ensure_ascii=False))
        return 0
    print(f"atlas {atlas.path}")
    print(f"  model {m['model']['name']} (sha256 {m['model']['sha256'][:16]}…), basis {atlas.basis}, "
          f"{atlas.n_layers} layers × {max(atlas.features_per_layer, default=0):,} features")
    print(f"  corpus: {atlas.corpus_text}; {m['tokens_seen']:,} tokens counted")
    print(f"  top {atlas.top_k} windows of {atlas.context} tokens per feature"
          + (" and sign" if atlas.signed else "") + f"; {m['size_bytes'] / 1e6:,.1f} MB; built {m['created']}")
    print(f"  show a feature: circuitdesk atlas show {atlas.path} --feature L0/{atlas.unit}0")
    return 0


def cmd_verify(args) -> int:
    from core.verify import TOLERANCE, verify_session  # deferred: torch loads only when a command needs it

    session = load_session(args.session)
    report = verify_session(session, model_spec=args.model, device=args.device,
                            ctx=JobContext(StderrProgress(enabled=not args.json)))
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for problem in report.problems:
            print(f"circuitdesk: {problem}", file=sys.stderr)
        if report.edited is None:
            print("member hashes: not recorded (saved by an earlier version)")
        elif not report.edited:
            print("member hashes: every member is as saved")
        if report.fingerprint_ok:
            print(f"model fingerprint matches; recomputed and compared (allowed deviation {TOLERANCE:g} of each "
                  "array's scale):")
            for c in report.checks:
                print(f"  {'ok  ' if c.ok else 'DIFF'} {c.name}: {c.compared:,} compared, largest deviation "
                      f"{c.max_abs_deviation:.3g}" + (f" at {c.worst}" if c.max_abs_deviation else ""))
        print("verified: the session matches" if report.ok else "NOT verified")
    return 0 if report.ok else 1


def cmd_models(args) -> int:
    if args.add:
        print(f"added {add_model_path(args.add)}", file=sys.stderr)
    if args.remove:
        print(f"removed {remove_model_path(args.remove)}", file=sys.stderr)
    entries = list_models()
    if args.json:
        print(json.dumps({"models": entries}, indent=1))
        return 0
    for e in entries:
        status = e.get("family") or e.get("problem", "")
        print(f"{e['spec']:<50} {e['kind']:<10} {status}")
    return 0


def cmd_predict(args) -> int:
    from core.models import load_model  # deferred: torch loads only when a command needs it
    from core.predict import predict_next  # deferred: torch loads only when a command needs it

    prompt = _traced(args)  # before spending seconds on loading
    start = time.perf_counter()
    ctx = JobContext(StderrProgress(enabled=True))
    model = load_model(args.model, device=args.device, dtype=args.dtype, placement=placement_from_args(args),
                       ctx=ctx)
    loaded_at = time.perf_counter()
    pred = predict_next(model, prompt, top_k=args.top_k)
    if args.json:
        out = {
            "model": model.summary(),
            **pred.to_json(),
            **({"chat": {"messages": prompt.to_json()}} if not isinstance(prompt, str) else {}),
            "load_seconds": round(loaded_at - start, 3),
            "seconds": round(time.perf_counter() - start, 3),
        }
        print(json.dumps(out, indent=1))
        return 0
    print(f"{model.name}  ({model.facts.family}, {model.facts.n_params / 1e6:.1f}M params, {model.device})")
    print(f"prompt: {pred.prompt!r}  ({len(pred.prompt_tokens)} tokens)")
    for i, t in enumerate(pred.top, 1):
        bar = "#" * int(round(t.probability * 40))
        print(f"{i:>3}. {t.token!r:<20} {t.probability:8.4f}  {bar}")
    return 0


def check_output_path(path: str, suffix: str) -> Path:
    """Fail before any work when the output cannot be written."""
    out = Path(path).expanduser()
    if out.suffix != suffix:
        raise CircuitDeskError(f"The output file must end in {suffix} (got {out.name!r}).")
    folder = out.parent
    if not folder.is_dir():
        raise CircuitDeskError(f"Cannot write {out}: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CircuitDeskError(f"Cannot write {out}: permission denied.")
    return out


def cmd_trace(args) -> int:
    from core.models import load_model  # deferred: torch loads only when a command needs it

    _traced(args)  # the prompt checked before spending seconds on loading
    out = check_output_path(args.out, ".cdesk")
    settings = settings_from_args(AttributionSettings, args)
    settings.validate()
    ctx = JobContext(StderrProgress(enabled=True))
    model = load_model(args.model, device=args.device, dtype=args.dtype, placement=placement_from_args(args),
                       ctx=ctx.sub(0.0, 0.1))
    session, result = attribution_session(model, args.model, args.prompt, settings, args.dtype, args.out,
                                          ctx=ctx.sub(0.1, 1.0), chat=settings_from_args(ChatSettings, args))
    save_session(out, session)
    g, stats = result.graph, session.manifest["stats"]
    top = _top_nodes(g, 10)
    if args.json:
        summary = {
            "model": model.summary(),
            "prompt": result.prompt,
            **({"chat": session.manifest["chat"]} if "chat" in session.manifest else {}),
            "prompt_tokens": g.tokens,
            "basis": g.meta.get("basis"),
            "targets": [t.to_json() for t in result.targets],
            **{k: stats[k] for k in ("nodes", "edges", "pruned_nodes", "pruned_edges", "replacement_score",
                                     "completeness_score", "pruned_replacement_score", "pruned_completeness_score",
                                     "max_completeness_error", "backward_passes", "active_features",
                                     "feature_rows", "seconds", "attribution_seconds")},
            **{k: stats[k] for k in ("candidate_pool", "candidates", "candidate_effect_share",
                                     "candidate_mass_share", "estimated_peak_bytes", "identity_tolerance")
               if k in stats},
            "top_nodes": top,
            "out": str(out),
        }
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{model.name}: {len(g.tokens)} tokens, basis {g.meta.get('basis')}")
    print("targets: " + ", ".join(f"{t.token!r} {t.probability:.3f}" for t in result.targets))
    print(f"graph: {stats['nodes']} nodes, {stats['edges']} edges; pruned: {stats['pruned_nodes']} nodes, "
          f"{stats['pruned_edges']} edges")
    print(f"replacement score {stats['replacement_score']:.3f}, completeness {stats['completeness_score']:.3f} "
          f"(pruned {stats['pruned_replacement_score']:.3f} / {stats['pruned_completeness_score']:.3f}); "
          f"max completeness error {stats['max_completeness_error']:.1e}")
    if "candidates" in stats:
        print(f"candidate neurons: {stats['candidates']} of {stats['candidate_pool']}, carrying "
              f"{stats['candidate_effect_share']:.1%} of the total effect on the targets and "
              f"{stats['candidate_mass_share']:.1%} of the MLP output mass (the rest is in the error nodes)")
    print(f"{stats['backward_passes']} backward passes, {stats['seconds']:.1f} s")
    print("most influential nodes:")
    for n in top:
        print(f"  {n['influence']:.4f}  {n['label']}")
    print(f"wrote {out}")
    return 0


def cmd_circuit(args) -> int:
    from core.circuits import load_pair_source  # deferred: torch loads only when a command needs it
    from core.models import load_model  # deferred: torch loads only when a command needs it

    out = check_output_path(args.out, ".cdesk")
    if not args.prompt and (args.corrupted or args.answer or args.counterfactual):
        raise CircuitDeskError("--corrupted, --answer and --counterfactual go with --prompt.")
    source = settings_from_args(PairSource, args)
    source.check()
    settings = settings_from_args(CircuitSettings, args)
    settings.validate()
    start = time.perf_counter()
    ctx = JobContext(StderrProgress(enabled=True))
    model = load_model(args.model, device=args.device, dtype=args.dtype, placement=placement_from_args(args),
                       ctx=ctx.sub(0.0, 0.05))
    pairs = load_pair_source(source, model)
    if settings.method == "exact":
        n = model.facts.n_layers
        print(f"circuitdesk: exact patching runs one pass per edge and batch; this takes long "
              f"({n} layers, {len(pairs)} pairs). Ctrl-C stops it.", file=sys.stderr)
    session, result, pairs = circuit_session(model, args.model, source, settings, args.dtype, args.out,
                                             ctx=ctx.sub(0.05, 1.0), pairs=pairs)
    save_session(out, session)
    seconds = time.perf_counter() - start
    task_name = source.task or (Path(source.pairs_file).name if source.pairs_file else "prompt pair")
    curve = result.curve
    summary = {
        "model": model.summary(),
        "task": task_name,
        "method": settings.method,
        "metric": settings.metric,
        "n_pairs": len(pairs),
        "dropped_pairs": len(pairs.dropped),
        "edges_total": result.graph.n_edges,
        "baseline_metric": result.metric_clean,
        "corrupted_metric": result.metric_corrupted,
        "empty_circuit_metric": result.metric_empty,
        "faithfulness": {f"{s * 100:g}%": f for s, f in zip(curve.sizes, curve.faithfulness)} if curve else {},
        "curve_edges": {f"{s * 100:g}%": e for s, e in zip(curve.sizes, curve.edges)} if curve else {},
        "cpr": curve.cpr if curve else None,
        "cmd": curve.cmd if curve else None,
        "circuit_edges": result.stats["circuit_edges"],
        "circuit_nodes": result.stats["circuit_nodes"],
        "circuit_faithfulness": result.circuit_faithfulness,
        "top_edges": result.top_edges(20),
        "top_nodes": result.top_nodes(10),
        "scoring_seconds": round(result.stats["scoring_seconds"], 3),
        "curve_seconds": round(result.stats["curve_seconds"], 3),
        "seconds": round(seconds, 3),
        "out": str(out),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{model.name}: task {task_name}, {len(pairs)} pairs ({len(pairs.dropped)} dropped), "
          f"{result.graph.n_edges:,} edges, method {settings.method}")
    print(f"metric ({settings.metric}): clean {result.metric_clean:.3f}, corrupted {result.metric_corrupted:.3f}")
    if curve:
        print("faithfulness: " + "  ".join(f"{s * 100:g}%={f:.2f}" for s, f in zip(curve.sizes, curve.faithfulness)))
        print(f"CPR {curve.cpr:.3f}  CMD {curve.cmd:.3f}")
    print(f"circuit: {result.stats['circuit_edges']} edges, {result.stats['circuit_nodes']} nodes, "
          f"faithfulness {result.circuit_faithfulness:.3f}")
    print("top edges:")
    for e in result.top_edges(10):
        print(f"  {e['score']:+.4f}  {e['edge']}")
    print(f"{seconds:.1f} s; wrote {out}")
    return 0


def _top_nodes(g, k: int) -> list[dict]:
    infl = g.influence if g.influence is not None else np.zeros(g.n_nodes)
    cand = np.flatnonzero(g.kind == FEATURE)
    order = cand[np.argsort(-infl[cand])][:k]
    return [{"id": g.node_id(int(i)), "label": g.label(int(i)), "kind": KIND_NAMES[int(g.kind[i])],
             "layer": int(g.layer[i]), "pos": int(g.pos[i]), "index": int(g.index[i]),
             "activation": float(g.activation[i]), "influence": float(infl[i])} for i in order]


if __name__ == "__main__":
    sys.exit(main())

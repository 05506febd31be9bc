"""``circuitdesk``: the one entry point (GUI and headless commands).

Exit codes: 0 success, 2 usage error, 1 any other error with a one-line reason on stderr.
``--json`` prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import core
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
    gui.add_argument("--device", default="auto", help="auto, cpu or cuda")
    gui.add_argument("--trace", action="store_true", help="run the prompt as soon as the window opens")
    gui.add_argument("--screenshot", metavar="FILE.png", help="save a picture of the window after the run")
    gui.add_argument("--quit-after-trace", action="store_true", help="close the app when the run has finished")

    models = sub.add_parser("models", help="list the models Circuit Desk can open")
    models.add_argument("--json", action="store_true", help="print one JSON object")

    predict = sub.add_parser("predict", help="top next tokens for a prompt")
    predict.add_argument("--model", default="default", help="'default', a model folder or a .gguf file")
    predict.add_argument("--prompt", required=True)
    predict.add_argument("--top-k", type=int, default=10)
    predict.add_argument("--device", default="auto", help="auto, cpu or cuda")
    predict.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    setup_logging()
    command = args.command or "gui"
    if command == "gui":
        from desktop.app import run_gui

        return run_gui(
            model=getattr(args, "model", None),
            prompt=getattr(args, "prompt", None),
            device=getattr(args, "device", "auto"),
            trace=getattr(args, "trace", False),
            screenshot=getattr(args, "screenshot", None),
            quit_after_trace=getattr(args, "quit_after_trace", False),
        )
    from core.errors import CircuitDeskError

    try:
        return {"models": cmd_models, "predict": cmd_predict}[command](args)
    except CircuitDeskError as err:
        log.info("user error: %s", err)
        print(f"circuitdesk: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("circuitdesk: interrupted.", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback for the log
        log.exception("internal error in %s", command)
        where = setup_logging()
        print(f"circuitdesk: internal error: {exc} (details in {where}).", file=sys.stderr)
        return 1


def cmd_models(args) -> int:
    from core.models.catalog import list_models

    entries = list_models()
    if args.json:
        print(json.dumps({"models": entries}, indent=1))
        return 0
    for e in entries:
        status = e.get("family") or e.get("problem", "")
        print(f"{e['spec']:<50} {e['kind']:<10} {status}")
    return 0


def cmd_predict(args) -> int:
    from core.jobs import JobContext
    from core.models import load_model
    from core.predict import predict_next
    from core.prompt import require_prompt

    require_prompt(args.prompt)  # before spending seconds on loading
    start = time.perf_counter()
    ctx = JobContext(StderrProgress(enabled=True))
    model = load_model(args.model, device=args.device, dtype=args.dtype, ctx=ctx)
    loaded_at = time.perf_counter()
    pred = predict_next(model, args.prompt, top_k=args.top_k)
    if args.json:
        out = {
            "model": model.summary(),
            **pred.to_json(),
            "load_seconds": round(loaded_at - start, 3),
            "seconds": round(time.perf_counter() - start, 3),
        }
        print(json.dumps(out, indent=1))
        return 0
    print(f"{model.name}  ({model.facts.family}, {model.facts.n_params / 1e6:.1f}M params, {model.device})")
    print(f"prompt: {args.prompt!r}  ({len(pred.prompt_tokens)} tokens)")
    for i, t in enumerate(pred.top, 1):
        bar = "#" * int(round(t.probability * 40))
        print(f"{i:>3}. {t.token!r:<20} {t.probability:8.4f}  {bar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

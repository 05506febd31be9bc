"""One case of a behaviour study, as a job any executor can run (in this process or on a Ray worker).

A job is plain JSON (the model spec, device, dtype, the suite's folder and the case's settings) and
its result is JSON plus the session file's bytes, so nothing but text and a session zip (read back
through ``core.session``'s checks) crosses between processes or machines. A worker loads each model
once and keeps it for the next job.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.session import save_session
from core.settings import PlacementSettings

log = logging.getLogger("circuitdesk.behaviour")

_MODELS: dict[tuple, object] = {}  # (spec, device, dtype) -> LoadedModel, per worker process


def case_job(model_spec: str, device: str, dtype: str, folder: str, case: dict, suite_name: str = "",
             placement: PlacementSettings | None = None) -> dict:
    """The JSON job of one case (``case``: its settings with the suite's defaults applied)."""
    return {"model": model_spec, "device": device, "dtype": dtype, "folder": folder, "case": case,
            "suite": suite_name, "placement": (placement or PlacementSettings()).to_json()}


def loaded(spec: str, device: str, dtype: str, ctx: JobContext | None = None,
           placement: PlacementSettings | None = None):
    """The model of ``spec`` loaded once per process (``placement``: its layers offloaded, or not)."""
    from core.models import load_model  # deferred: torch loads only when a case runs

    placement = placement or PlacementSettings()
    key = (spec, device, dtype, placement)
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time: a worker that moves on frees the last one
        _MODELS[key] = load_model(spec, device=device, dtype=dtype, ctx=ctx, placement=placement)
    return _MODELS[key]


def run_case_job(job: dict, ctx: JobContext | None = None) -> dict:
    """Run one case: ``{"status", "error", "seconds", "result", "command", "session" (bytes or None),
    "prediction" [token, probability], "correct" (True/False, None without answers)}``. A case's
    own failure is its status, never an exception (except cancellation)."""
    from core.audit import Suite, run_case  # deferred: the audit module pulls in report code

    ctx = ctx or JobContext()
    case = job["case"]
    out = {"name": case["name"], "method": str(case.get("method", "attribution")), "status": "failed", "error": "",
           "seconds": 0.0, "result": {}, "command": "", "session": None, "prediction": ["", 0.0], "correct": None}
    t0 = time.perf_counter()
    placement = PlacementSettings(**job.get("placement", {}))
    try:
        try:
            model = loaded(job["model"], job["device"], job["dtype"], ctx.sub(0.0, 0.1, "Loading the model"), placement)
        except CircuitDeskError:
            out["model_error"] = True  # the model, not the case: every case would fail alike
            raise
        suite = Suite(name=job.get("suite", ""), model=job["model"], device=job["device"], dtype=job["dtype"],
                      auditor="", cases=[case], folder=Path(job["folder"]),
                      placement=placement)
        session, out["result"], out["command"] = run_case(model, job["model"], suite, case, ctx.sub(0.1, 0.95))
        ids = _prompt_ids(session)
        top = _top_token(model, ids)
        out["prediction"] = [top[1], top[2]]
        if "answers" in case:
            from core.interventions import writes_answer  # deferred: as torch

            out["correct"] = writes_answer(model, ids, answer_sequences(model, case["answers"]), top[0])
        out["session"] = session_bytes(session)
        out["status"] = "ok"
    except CircuitDeskError as e:
        out["error"] = str(e)
    except (KeyboardInterrupt, InterruptedError):
        raise
    except Exception as e:  # a bug: the case fails, the study goes on, the traceback goes to the log
        log.exception("case %s failed", case["name"])
        out["error"] = f"internal error: {e}"
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _prompt_ids(session) -> list[int]:
    """The token ids the case's model read: the traced prompt, or the first pair's clean prompt."""
    if session.graph is not None:
        return list(session.graph.token_ids)
    return list(session.circuit.pairs[0]["clean_ids"])


def _top_token(model, ids: list[int]) -> tuple[int, str, float]:
    import torch  # deferred: torch loads only when a case runs

    with torch.inference_mode():
        logits = model.hf(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, -1].float()
    p = torch.softmax(logits, -1)
    i = int(p.argmax())
    return i, model.tokenizer.decode([i]), float(p[i])


def answer_sequences(model, answers) -> list[tuple[int, ...]]:
    """Each allowed answer's token ids, as the model would write it (" Paris" → the id of " Paris"; " Abuja"
    → " Ab", "uja"). A case is correct when greedy decoding begins with one of them (the whole answer,
    not its first token only: " New Delhi" and " New York" share " New")."""
    if isinstance(answers, str):
        answers = [answers]
    out = []
    unk = getattr(model.tokenizer, "unk_token_id", None)
    for a in answers:
        ids = model.tokenizer(a, add_special_tokens=False).input_ids
        if not ids:
            raise CircuitDeskError(f"The answer {a!r} is empty once tokenized; give the text the model would write.")
        if unk is not None and unk in ids and model.tokenizer.unk_token not in a:
            raise CircuitDeskError(f"The answer {a!r} has a token not in the model's vocabulary; give the text the "
                                   "model would write.")
        ids = tuple(int(i) for i in ids)
        if ids not in out:
            out.append(ids)
    return out


def session_bytes(session) -> bytes:
    """The session file's bytes (what a remote worker sends back)."""
    with tempfile.TemporaryDirectory(prefix="circuitdesk-case-") as tmp:
        path = Path(tmp) / "case.cdesk"
        save_session(path, session)
        return path.read_bytes()

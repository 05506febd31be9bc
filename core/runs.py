"""One analysis from settings to a session: what ``circuitdesk trace`` / ``circuit``, batch audits and
the workbench all do, so the three give the same session and the same regenerate command.

* ``PairSource`` (declared in ``core.settings``, re-exported here): where a component circuit's
  prompt pairs come from (a built-in task, a pair file, or one prompt and its corrupted twin);
* ``attribution_session`` / ``circuit_session``: run the method and wrap the result as a
  ``core.session.Session`` whose manifest records model, settings, scores and ``command``;
* ``trace_command`` / ``circuit_command``: the exact ``circuitdesk`` line that regenerates it, every
  setting's flag derived from its declaration in ``core.settings``.
"""

from __future__ import annotations

import dataclasses
import shlex
import time

from core.chat import Conversation, conversation
from core.jobs import JobContext
from core.prompt import require_prompt
from core.session import Session, new_manifest
from core.settings import AttributionSettings, ChatSettings, CircuitSettings, PairSource, command_args, flag_args

__all__ = ["PairSource", "add_logit_lens", "attribution_session", "chat_target", "circuit_command", "circuit_session",
           "trace_command", "traced_prompt"]


def trace_command(model_spec: str, prompt: str | None, settings: AttributionSettings, dtype: str = "float32",
                  out: str = "FILE.cdesk", chat: ChatSettings = ChatSettings()) -> str:
    """``circuitdesk trace …`` that recomputes an attribution graph with ``settings`` of ``prompt``
    in the form ``chat`` gives it (a raw prompt's command has no chat flags; a messages file is
    named, not the prompt)."""
    parts = ["circuitdesk", "trace", *flag_args("--model", model_spec)]
    if not chat.messages:
        parts += flag_args("--prompt", prompt)
    if chat.chat or chat.messages:
        parts += command_args(dataclasses.replace(chat, chat=True))
    return shlex.join(parts + command_args(settings) + ["--dtype", dtype, "--out", out])


def circuit_command(model_spec: str, source: PairSource, settings: CircuitSettings, n_used: int | None = None,
                    dtype: str = "float32", out: str = "FILE.cdesk") -> str:
    """``circuitdesk circuit …`` that recomputes a component circuit with ``settings`` (``n_used``: the
    pairs a pair file gave, recorded so that lines added to the file later do not count)."""
    if source.pairs_file and n_used:
        source = dataclasses.replace(source, n_pairs=n_used)
    parts = ["circuitdesk", "circuit", *flag_args("--model", model_spec), *command_args(source, settings)]
    return shlex.join(parts + ["--dtype", dtype, "--out", out])


def traced_prompt(prompt: str | None, chat: ChatSettings | None) -> str | Conversation:
    """What a trace reads: the raw prompt, or the conversation ``chat`` makes of it (checked, no model needed)."""
    conv = conversation(prompt, chat or ChatSettings())
    return conv if conv is not None else require_prompt(prompt)


def chat_target(model, prompt: str | Conversation, settings: AttributionSettings) -> AttributionSettings:
    """``settings`` with, for a conversation ending with an assistant answer and no target given,
    that answer's first token as the target (recorded, so the session says what it explains)."""
    from core.predict import answer_target  # deferred: torch loads only when a run starts

    target = None if settings.target else answer_target(model, prompt)
    return dataclasses.replace(settings, target=target) if target else settings


def attribution_session(model, model_spec: str, prompt: str | None, settings, dtype: str = "float32",
                        out: str = "FILE.cdesk", ctx: JobContext | None = None, chat: ChatSettings | None = None):
    """(Session, AttributionResult) of the attribution graph of ``prompt`` (in the form ``chat``
    gives it: raw text, or a chat conversation)."""
    from core.attribution import attribute  # deferred: torch loads only when a run starts

    traced = traced_prompt(prompt, chat)
    settings.validate()
    start = time.perf_counter()
    settings = chat_target(model, traced, settings)
    result = attribute(model, traced, settings, ctx=ctx)
    stats = dict(result.stats, attribution_seconds=round(result.stats["seconds"], 3),
                 seconds=round(time.perf_counter() - start, 3))
    command = trace_command(model_spec, prompt, settings, dtype, out, chat or ChatSettings())
    session = graph_session(model.summary(), result, stats, command)
    add_logit_lens(session, model, result.ids, result.targets[0].token_id)
    return session, result


def circuit_session(model, model_spec: str, source: PairSource, settings, dtype: str = "float32",
                    out: str = "FILE.cdesk", ctx: JobContext | None = None, pairs=None):
    """(Session, CircuitResult, PairSet) of the component circuit behind ``source``'s pairs
    (``pairs``: already loaded from ``source``)."""
    import torch  # deferred: torch loads only when a run starts

    from core.circuits import find_circuit, load_pair_source  # deferred: torch loads only when a run starts

    settings.validate()
    start = time.perf_counter()
    pairs = pairs if pairs is not None else load_pair_source(source, model)
    result = find_circuit(model, pairs, settings, ctx=ctx)
    result.stats["total_seconds"] = time.perf_counter() - start
    session = circuit_result_session(model.summary(), result,
                                     circuit_command(model_spec, source, settings, len(pairs), dtype, out))
    first = pairs.pairs[0]
    add_logit_lens(session, model, torch.tensor([first.clean]), first.answer[0])
    return session, result, pairs


def graph_session(model_summary: dict, result, stats: dict, command: str) -> Session:
    """An attribution graph (``AttributionResult``) as a session: the manifest records the model,
    the prompt (a conversation: its rendering, and its messages under "chat"), the settings it ran
    with, its targets, ``stats`` and the regenerate ``command``."""
    chat = {} if result.conversation is None else {"chat": {"messages": result.conversation.to_json()}}
    manifest = new_manifest("attribution", model_summary, result.prompt, result.graph.meta.get("settings", {}),
                            targets=[t.to_json() for t in result.targets], stats=stats, command=command, **chat)
    return Session(manifest, result.graph)


def circuit_result_session(model_summary: dict, result, command: str) -> Session:
    """A component circuit (``CircuitResult``) as a session; its prompt is the first pair's clean one."""
    prompt = result.pairs[0]["clean"] if result.pairs else ""
    manifest = new_manifest("circuit", model_summary, prompt, result.settings, task=result.task, stats=result.stats,
                            command=command)
    return Session(manifest, circuit=result)


def add_logit_lens(session, model, ids, target_id: int, lens_data=None) -> None:
    """Store the logit lens of ``ids`` for ``target_id`` in the session (``lens_data``: already
    computed, e.g. by the workbench)."""
    from core.lens import lens  # deferred: torch loads only when a run starts

    data = lens_data if lens_data is not None else lens(model, ids, target_id=int(target_id), details=False)
    session.logit_lens = data.lens_prob
    session.manifest["logit_lens"] = {"target_id": int(data.target_id), "target": data.target,
                                      "tokens": list(data.tokens)}

"""One analysis from settings to a session: what ``circuitdesk trace`` / ``circuit``, batch audits and
the workbench all do, so the three give the same session and the same regenerate command.

* ``PairSource``: where a component circuit's prompt pairs come from (a built-in task, a pair file,
  or one prompt and its corrupted twin) and the command-line flags that say so;
* ``attribution_session`` / ``circuit_session``: run the method and wrap the result as a
  ``core.session.Session`` whose manifest records model, settings, scores and ``command``;
* ``trace_command`` / ``circuit_command``: the exact ``circuitdesk`` line that regenerates it.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from core.errors import CircuitDeskError
from core.jobs import JobContext


@dataclass(frozen=True)
class PairSource:
    task: str | None = None  # ioi | greater-than | induction | factual
    pairs_file: str | None = None  # .jsonl
    prompt: str | None = None  # one pair: the clean prompt ...
    corrupted: str | None = None  # ... and its corrupted twin
    answer: str | None = None  # default: the model's top token on the prompt
    counterfactual: str | None = None  # default: its top token on the corrupted prompt
    n_pairs: int | None = None  # default: 32 for a task, every line of a file
    seed: int = 0

    def check(self) -> None:
        given = [x for x in (self.task, self.pairs_file, self.prompt) if x]
        if len(given) != 1:
            raise CircuitDeskError("A component circuit needs exactly one source of prompt pairs: a task, a pair "
                                   "file, or a prompt with its corrupted twin.")
        if self.prompt and not (self.corrupted or "").strip():
            raise CircuitDeskError("The corrupted prompt is empty; give the prompt to compare with "
                                   "(same number of tokens, the detail that matters changed).")
        if self.n_pairs is not None and self.n_pairs < 1:
            raise CircuitDeskError("--n-pairs must be at least 1.")

    def load(self, model, prediction=None):
        """The ``PairSet`` (``prediction``: the model's prediction on ``prompt``, if already known)."""
        from core.circuits import load_pairs, make_task, prompt_pair

        self.check()
        if self.task:
            return make_task(model, self.task, n_pairs=self.n_pairs or 32, seed=self.seed)
        if self.pairs_file:
            return load_pairs(model, self.pairs_file, n_pairs=self.n_pairs)
        return prompt_pair(model, self.prompt, self.corrupted, self.answer, self.counterfactual, prediction)

    def args(self, n_used: int | None = None) -> list[str]:
        if self.task:
            return ["--task", self.task, "--n-pairs", str(n_used or self.n_pairs or 32)]
        if self.pairs_file:
            return ["--pairs", self.pairs_file] + (["--n-pairs", str(n_used or self.n_pairs)]
                                                  if (n_used or self.n_pairs) else [])
        out = ["--prompt", self.prompt, "--corrupted", self.corrupted]
        for flag, value in (("--answer", self.answer), ("--counterfactual", self.counterfactual)):
            if value:
                out += [flag, value]
        return out


def trace_command(model_spec: str, prompt: str, settings, dtype: str = "float32", out: str = "FILE.cdesk") -> str:
    """``circuitdesk trace …`` that recomputes an attribution graph with ``settings``."""
    parts = ["circuitdesk", "trace", "--model", model_spec, "--prompt", prompt]
    for flag, value in (("--target", settings.target), ("--foil", settings.foil),
                        ("--transcoders", settings.transcoders)):
        if value:
            parts += [flag, str(value)]
    parts += ["--max-nodes", str(settings.max_nodes), "--batch-size", str(settings.batch_size),
              "--node-threshold", str(settings.node_threshold), "--edge-threshold", str(settings.edge_threshold),
              "--dtype", dtype, "--out", out]
    return shlex.join(parts)


def circuit_command(model_spec: str, source: PairSource, settings, n_used: int | None = None,
                    dtype: str = "float32", out: str = "FILE.cdesk") -> str:
    """``circuitdesk circuit …`` that recomputes a component circuit with ``settings``."""
    parts = ["circuitdesk", "circuit", "--model", model_spec, *source.args(n_used),
             "--method", settings.method, "--steps", str(settings.steps), "--metric", settings.metric,
             "--batch-size", str(settings.batch_size), "--seed", str(settings.seed)]  # one --seed: tasks and random
    if settings.top_n is not None:
        parts += ["--top-n", str(settings.top_n)]
    elif settings.threshold is not None:
        parts += ["--threshold", str(settings.threshold)]
    else:
        parts += ["--target-faithfulness", str(settings.target_faithfulness)]
    return shlex.join(parts + ["--dtype", dtype, "--out", out])


def attribution_session(model, model_spec: str, prompt: str, settings, dtype: str = "float32",
                        out: str = "FILE.cdesk", ctx: JobContext | None = None):
    """(Session, AttributionResult) of the attribution graph of ``prompt``."""
    from core.attribution import attribute
    from core.prompt import require_prompt
    from core.session import Session, new_manifest

    require_prompt(prompt)
    settings.validate()
    start = time.perf_counter()
    result = attribute(model, prompt, settings, ctx=ctx)
    stats = dict(result.stats, attribution_seconds=round(result.stats["seconds"], 3),
                 seconds=round(time.perf_counter() - start, 3))
    session = Session(new_manifest("attribution", model.summary(), prompt, settings.to_json(),
                                   targets=[t.to_json() for t in result.targets], stats=stats,
                                   command=trace_command(model_spec, prompt, settings, dtype, out)), result.graph)
    add_logit_lens(session, model, result.ids, result.targets[0].token_id)
    return session, result


def circuit_session(model, model_spec: str, source: PairSource, settings, dtype: str = "float32",
                    out: str = "FILE.cdesk", ctx: JobContext | None = None, pairs=None):
    """(Session, CircuitResult, PairSet) of the component circuit behind ``source``'s pairs
    (``pairs``: already loaded from ``source``)."""
    import torch

    from core.circuits import find_circuit
    from core.session import Session, new_manifest

    settings.validate()
    start = time.perf_counter()
    pairs = pairs if pairs is not None else source.load(model)
    result = find_circuit(model, pairs, settings, ctx=ctx)
    result.stats["total_seconds"] = time.perf_counter() - start
    prompt = result.pairs[0]["clean"] if result.pairs else ""
    manifest = new_manifest("circuit", model.summary(), prompt, settings.to_json(), task=result.task,
                            stats=result.stats,
                            command=circuit_command(model_spec, source, settings, len(pairs), dtype, out))
    session = Session(manifest, circuit=result)
    first = pairs.pairs[0]
    add_logit_lens(session, model, torch.tensor([first.clean]), first.answer[0])
    return session, result, pairs


def add_logit_lens(session, model, ids, target_id: int, lens_data=None) -> None:
    """Store the logit lens of ``ids`` for ``target_id`` in the session (``lens_data``: already
    computed, e.g. by the workbench)."""
    from core.lens import lens

    data = lens_data if lens_data is not None else lens(model, ids, target_id=int(target_id), details=False)
    session.logit_lens = data.lens_prob
    session.manifest["logit_lens"] = {"target_id": int(data.target_id), "target": data.target,
                                      "tokens": list(data.tokens)}

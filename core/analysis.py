"""The analysis on show in the workbench, what a run was asked to do, and the inspector's edits.

Torch-free (the window imports it at start-up, before torch loads):

* ``RunRequest``: what the model & prompt panel asks a run for (frozen: it crosses threads);
* ``Analysis``: what a run or an opened session puts on show, as one object handed to
  ``core.selection.WorkbenchState``: the drawable view, the result behind it, its model, the
  heatmap data, the prediction and the command that regenerates it;
* ``InterventionRequest``: the inspector's edit of one node (frozen).

The runs that produce an ``Analysis`` and act on one live in ``core.analysis_runs`` (torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.errors import CircuitDeskError
from core.graph import ERROR, FEATURE
from core.prompt import require_prompt
from core.runs import (
    add_logit_lens,
    circuit_command,
    circuit_result_session,
    graph_session,
    trace_command,
    traced_prompt,
)
from core.session import Session
from core.settings import (
    ATTRIBUTION_SETTINGS,
    PAIR_SOURCE_SETTINGS,
    PRECISIONS,
    PREDICT_SETTINGS,
    TASKS,
    AttributionSettings,
    ChatSettings,
    CircuitSettings,
    PairSource,
    PlacementSettings,
    by_name,
    memory_bytes,
)
from core.view import CATEGORIES

ATTRIBUTION, CIRCUIT, PREDICT = "Attribution graph", "Component circuit", "Next-token prediction"
METHODS = (ATTRIBUTION, CIRCUIT, PREDICT)
PROMPT_PAIR, PAIR_FILE = "prompt", "file"  # circuit pair sources besides the built-in tasks
# where a circuit's pairs come from, as the panel lists them
PAIR_SOURCES = {PROMPT_PAIR: "This prompt vs a corrupted one", **TASKS, PAIR_FILE: "Pair file (.jsonl)…"}
MODEL, PREDICTION, LOGIT_LENS = "model", "prediction", "logit lens"  # a run's partial results, in order


@dataclass(frozen=True)
class RunRequest:
    spec: str
    device: str
    prompt: str
    top_k: int = by_name(PREDICT_SETTINGS)["top_k"].initial
    method: str = ATTRIBUTION
    target: str | None = None
    foil: str | None = None
    max_nodes: int = by_name(ATTRIBUTION_SETTINGS)["max_nodes"].initial
    transcoders: str | None = None  # attribution basis: a transcoder folder, or None for MLP neurons
    task: str = PROMPT_PAIR  # component circuits: PROMPT_PAIR, PAIR_FILE or a built-in task
    corrupted: str = ""
    pairs_file: str = ""
    scoring: str = CircuitSettings().method
    n_pairs: int = by_name(PAIR_SOURCE_SETTINGS)["n_pairs"].initial
    chat: bool = ChatSettings().chat  # attribution and prediction: the prompt as a user message ...
    system: str = ""  # ... after this system message
    messages_file: str = ""  # ... or the conversation in this JSON file instead of the prompt
    dtype: str = "float32"  # the model's precision (one of PRECISIONS)
    placement: PlacementSettings = PlacementSettings()  # offloading; the results are the same wherever weights live

    @property
    def model_key(self) -> tuple:
        """What the loaded model depends on: a run with the same key reuses the model of the last one."""
        return model_key(self.spec, self.device, self.dtype, self.placement)

    def check(self) -> None:
        """What can be checked before a model loads (a clear error instead of a wasted run)."""
        if self.dtype not in PRECISIONS:
            raise CircuitDeskError(f"Unknown precision {self.dtype!r}; use {', '.join(PRECISIONS)}.")
        for label, size in (("GPU memory", self.placement.max_gpu_memory), ("CPU memory", self.placement.max_cpu_memory)):
            if size is not None:  # said with the panel's labels, not the command line's flags
                memory_bytes(size, label)
        self.placement.validate()
        if self.method != CIRCUIT:
            self.traced()
            return
        if self.task == PROMPT_PAIR:
            require_prompt(self.prompt)
        if self.task == PAIR_FILE and not self.pairs_file:
            raise CircuitDeskError("No pair file chosen; pick a .jsonl file of prompt pairs.")
        self.pair_source().check()

    def chat_settings(self) -> ChatSettings:
        """The prompt's form (attribution and prediction; a circuit reads raw prompts)."""
        if self.method == CIRCUIT:
            return ChatSettings()
        chat = self.chat or bool(self.messages_file)
        return ChatSettings(chat=chat, system=(self.system or None) if chat else None,
                            messages=self.messages_file or None)

    def traced(self):
        """The prompt, or the chat conversation the run reads (``core.chat.Conversation``)."""
        chat = self.chat_settings()
        return traced_prompt(None if chat.messages else self.prompt, chat)

    def attribution_settings(self) -> AttributionSettings:
        return AttributionSettings(target=self.target, foil=self.foil, max_nodes=self.max_nodes,
                                   transcoders=self.transcoders)

    def circuit_settings(self) -> CircuitSettings:
        return CircuitSettings(method=self.scoring)

    def pair_source(self) -> PairSource:
        """Where a circuit run's prompt pairs come from."""
        if self.task == PROMPT_PAIR:
            return PairSource(prompt=self.prompt, corrupted=self.corrupted, answer=self.target or None,
                              counterfactual=self.foil or None)
        if self.task == PAIR_FILE:
            return PairSource(pairs_file=self.pairs_file, n_pairs=self.n_pairs)
        return PairSource(task=self.task, n_pairs=self.n_pairs)

    def command(self) -> str:
        """The headless command that regenerates the run's graph (provenance for its session)."""
        if self.method == ATTRIBUTION:
            return trace_command(self.spec, self.prompt, self.attribution_settings(), self.dtype,
                                 chat=self.chat_settings())
        if self.method == CIRCUIT:
            return circuit_command(self.spec, self.pair_source(), self.circuit_settings(), dtype=self.dtype)
        return ""

    def job_name(self) -> str:
        """How the jobs pane lists the run: the method and what it ran on."""
        if self.method == CIRCUIT and self.task == PAIR_FILE:
            return f"circuit: pairs from {Path(self.pairs_file).name}"
        if self.method == CIRCUIT and self.task != PROMPT_PAIR:
            return f"circuit: {PAIR_SOURCES[self.task].removesuffix(', generated')} task"
        if self.method == CIRCUIT:
            return f"circuit: {_short(self.prompt, 30)} vs {_short(self.corrupted, 30)}"
        what = "predict" if self.method == PREDICT else "trace"
        if self.messages_file:
            return f"{what}: conversation {Path(self.messages_file).name}"
        return f"{what}{' (chat)' * self.chat}: {_short(self.prompt)}"


def model_key(spec: str, device: str, dtype: str = "float32", placement: PlacementSettings = PlacementSettings()) -> tuple:
    """A loaded model's identity for reuse: the same spec, device, precision and placement."""
    return spec, device, dtype, placement


def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def sequence_note(method: str, chat: bool = False) -> str:
    """What the Predictions tab's numbers were computed on (a trace prepends a start token to a raw prompt)."""
    if chat and method != CIRCUIT:
        return "after the conversation as the model's chat template renders it, at the start of the assistant's turn"
    if method == ATTRIBUTION:
        return "after the traced sequence (start token + prompt), as the graph's logit nodes"
    if method == CIRCUIT:
        return "after the first pair's clean prompt as the circuit reads it, as the interventions"
    return "after the prompt as typed"


@dataclass(frozen=True)
class InterventionRequest:
    """The inspector's edit of one node of the analysis on show."""

    node: int
    mode: str  # zero | scale | set
    value: float = 0.0
    freeze: str = "none"  # none | attention | replacement
    every_position: bool = False


@dataclass(frozen=True)
class CircuitRun:
    """A component circuit as a run hands it over."""

    result: Any  # core.circuits.CircuitResult
    ids: Any  # torch [1, P]: the first pair's clean prompt (heatmaps, interventions)
    outputs_last: Any  # numpy [n_sources, d]: what each component writes at its last position
    answer_id: int
    pair_lens: tuple = ()  # core.lens.LensData of each pair's clean prompt (the first MAX_PAIR_HEATMAPS)


@dataclass(frozen=True)
class Analysis:
    """The analysis on show: a graph or circuit from a run here (``model`` set) or from a file
    (``opened``), or only the heatmap data of a run still on its way (``view`` None)."""

    view: Any = None  # core.view.GraphView
    model: Any = None  # the LoadedModel the run used (None: opened from a file)
    trace: Any = None  # core.attribution.AttributionResult of an attribution graph ...
    circuit: CircuitRun | None = None  # ... or the component circuit
    opened: Session | None = None  # the session file it was opened from
    lens: Any = None  # core.lens.LensData for the heatmaps
    prediction: Any = None  # core.predict.Prediction on the analysed sequence
    command: str = ""  # the `circuitdesk` command that regenerates it
    # reads a node's direct effect on tokens: (analysis, node) -> core.lens.TokenEffects | None; set by
    # the run that made it (core.analysis_runs.token_effects), None where there is no model
    effects: Callable[[Any, int], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str | None:
        return None if self.view is None else self.view.kind

    @property
    def method(self) -> str | None:
        """ATTRIBUTION or CIRCUIT (None while only heatmap data is on show)."""
        return {"attribution": ATTRIBUTION, "circuit": CIRCUIT}.get(self.kind)

    @property
    def can_intervene(self) -> bool:
        """The model behind the graph is loaded (an opened session has none until run again)."""
        return self.model is not None and (self.trace is not None or self.circuit is not None)

    @property
    def model_summary(self) -> dict:
        if self.model is not None:
            return self.model.summary()
        return dict(self.opened.manifest.get("model", {})) if self.opened is not None else {}

    def intervenable(self, node: int) -> bool:
        """An attribution graph's features and error nodes, a circuit's heads."""
        if not self.can_intervene or self.view is None:
            return False
        if self.view.kind == "attribution":
            return int(self.view.source.kind[node]) in (FEATURE, ERROR)
        return CATEGORIES[self.view.category[node]] == "head"

    def session(self, annotations) -> Session:
        """The analysis as a ``core.session.Session`` with ``annotations`` (re-saving an opened
        session keeps its manifest and payload)."""
        if self.opened is not None:
            o = self.opened
            return Session(o.manifest, o.graph, annotations, o.circuit, o.logit_lens)
        if self.view is None:
            raise CircuitDeskError("Nothing to save yet: run a trace or a circuit first.")
        summary = self.model.summary()
        if self.circuit is not None:
            session = circuit_result_session(summary, self.circuit.result, self.command)
        else:
            session = graph_session(summary, self.trace, self.trace.stats, self.command)
        session.annotations = annotations
        if self.lens is not None:  # the heatmap's logit lens, for the report
            add_logit_lens(session, self.model, None, self.lens.target_id, lens_data=self.lens)
        return session

    def token_effects(self, node: int):
        """Tokens a node promotes and suppresses (``core.lens.TokenEffects``), or None."""
        if self.effects is None or self.view is None:
            return None
        return self.effects(self, node)

"""What a session's ``manifest.json`` may hold: every field declared once, with its type and bounds.

A session may come from anyone, so ``core.session.load_session`` validates the parsed JSON against
``Manifest`` once, before anything reads it: strict types (no "1" for 1, no true for 1.0), finite
numbers, bounded strings and lists, no unknown fields. What passes is handed on as a plain dict
(``validate_manifest``) whose every present field has the declared type, so report, export,
verify and the workbench never meet unvalidated data. Cross-checks against the arrays (positions
within the tokens, the lens's shape…) are the session loader's.

Settings are validated against the method's own settings dataclass (``AttributionSettings``,
``CircuitSettings``, declared with every setting in ``core.settings``): their fields, types and
defaults are written once.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, create_model

from core.errors import CircuitDeskError
from core.settings import AttributionSettings, CircuitSettings

MAX_TEXT = 100_000  # a prompt, a pair's text, a command line
MAX_NAME = 4_096  # names, paths, token strings
MAX_ITEMS = 100_000  # tokens, pairs, row checks
MAX_DIM = 1 << 20  # layers, heads, widths: far above any real model, far below overflow

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Dim = Annotated[int, Field(ge=0, le=MAX_DIM)]
TokenId = Annotated[int, Field(ge=0, le=1 << 31)]
Count = Annotated[int, Field(ge=0, le=1 << 53)]
Scalar = Union[StrictBool, StrictInt, StrictFloat, Name, None]
Strings = Annotated[list[Name], Field(max_length=MAX_ITEMS)]
Ids = Annotated[list[TokenId], Field(max_length=MAX_ITEMS)]
Floats = Annotated[list[float], Field(max_length=MAX_ITEMS)]
Facts = Annotated[dict[Name, Scalar], Field(max_length=256)]  # a basis's description
Stats = Annotated[dict[Name, Union[StrictInt, StrictFloat, None]], Field(max_length=256)]  # counts, scores, seconds


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ModelSummary(_Strict):
    """``LoadedModel.summary()``: provenance of the model that made the session."""

    name: Name
    spec: Name | None = None
    source: Name | None = None
    sha256: Sha256
    files: Annotated[dict[Name, Sha256], Field(max_length=10_000)] = {}
    device: Name | None = None
    dtype: Name | None = None
    family: Name | None = None
    model_type: Name | None = None
    n_layers: Dim | None = None
    n_heads: Dim | None = None
    n_kv_heads: Dim | None = None
    d_model: Dim | None = None
    d_head: Dim | None = None
    d_mlp: Dim | None = None
    vocab_size: Count | None = None
    n_params: Count | None = None
    context_length: Count | None = None
    tied_embeddings: StrictBool | None = None
    device_map: Annotated[dict[Name, Name], Field(max_length=100_000)] | None = None  # offloaded: module -> device


class TargetInfo(_Strict):
    """``Target.to_json()``: one logit node of an attribution graph."""

    token_id: TokenId
    token: Name
    probability: Annotated[float, Field(ge=0, le=1)]
    foil_id: TokenId | None = None
    foil: Name | None = None


class LensInfo(_Strict):
    target_id: TokenId
    target: Name
    tokens: Strings


class RowCheck(_Strict):
    """Each computed row's value, constant and edge sum (the completeness identity, as recorded)."""

    value: Floats
    constant: Floats
    sum: Floats
    node: Annotated[list[Count], Field(max_length=MAX_ITEMS)]


class MessageInfo(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatInfo(_Strict):
    """A chat-formatted prompt (``core.chat.Conversation``): the messages its template rendered
    (the manifest's ``prompt`` is the rendering)."""

    messages: Annotated[list[MessageInfo], Field(min_length=1, max_length=10_000)]


class GraphMeta(_Strict):
    basis: Literal["neurons", "transcoders"] = "neurons"
    basis_info: Facts = {}
    settings: dict = {}  # checked against AttributionSettings by validate_manifest
    target_tokens: Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Name],
                             Field(max_length=MAX_ITEMS)] = {}
    stats: Stats = {}
    row_check: RowCheck | None = None
    precision: Facts | None = None  # dtype, eps, identity_tolerance, identity_holds (core.attribution.precision)


class GraphHeader(_Strict):
    tokens: Strings
    token_ids: Ids
    n_layers: Annotated[int, Field(ge=1, le=1024)]
    meta: GraphMeta = GraphMeta()


class Curve(_Strict):
    sizes: Floats
    edges: Annotated[list[Count], Field(max_length=MAX_ITEMS)]
    faithfulness: Floats
    cpr: float
    cmd: float


class TaskInfo(_Strict):
    task: Name | None = None
    name: Name | None = None  # older sessions
    source: Name | None = None
    n_pairs: Count | None = None
    dropped: Count = 0
    dropped_reasons: Annotated[list[Text], Field(max_length=1_000)] = []


class PairInfo(_Strict):
    label: Name = ""
    clean: Text
    corrupted: Text
    tokens: Count
    answer: Ids
    counterfactual: Ids
    clean_ids: Ids
    corrupted_ids: Ids
    answer_text: Strings | None = None
    counterfactual_text: Strings | None = None


class CircuitHeader(_Strict):
    n_layers: Annotated[int, Field(ge=1, le=1024)]
    n_heads: Annotated[int, Field(ge=1, le=1024)]
    circuit_faithfulness: float
    curve: Curve | None = None
    metric_clean: float
    metric_corrupted: float
    metric_empty: float
    task: TaskInfo = TaskInfo()
    pairs: Annotated[list[PairInfo], Field(max_length=MAX_ITEMS)]
    settings: dict  # checked against CircuitSettings by validate_manifest
    stats: Stats = {}


class Manifest(_Strict):
    format: Literal["circuitdesk-session"]
    format_version: Annotated[int, Field(ge=1)]
    tool_version: Name | None = None
    created: Name | None = None
    kind: Literal["attribution", "circuit"]
    model: ModelSummary
    prompt: Text
    chat: ChatInfo | None = None  # attribution graphs of a chat-formatted prompt
    settings: dict  # the method's settings, checked against its dataclass
    targets: Annotated[list[TargetInfo], Field(max_length=10_000)] = []
    task: TaskInfo | None = None
    stats: Stats = {}
    command: Text | None = None
    logit_lens: LensInfo | None = None
    members: Annotated[dict[Name, Sha256], Field(max_length=256)] | None = None  # sha256 of every other member
    graph: GraphHeader | None = None
    circuit: CircuitHeader | None = None


def validate_manifest(raw, where: str) -> dict:
    """``raw`` (parsed JSON) checked against ``Manifest``; returns it as a plain dict holding only the
    fields that were present. Raises ``CircuitDeskError`` with one sentence naming the field."""
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        raise CircuitDeskError(f"{where}: {describe_error(e, 'manifest')}.") from None
    if (m.kind == "circuit") != (m.circuit is not None) or (m.kind == "attribution") != (m.graph is not None):
        raise CircuitDeskError(f"{where}: the manifest of a {m.kind} session has no valid "
                               f"{'circuit' if m.kind == 'circuit' else 'graph'!r}.")
    settings_type = CircuitSettings if m.kind == "circuit" else AttributionSettings
    check_settings(m.settings, settings_type, where, "settings")
    if m.graph is not None and m.graph.meta.settings:
        check_settings(m.graph.meta.settings, AttributionSettings, where, "graph.meta.settings")
    if m.circuit is not None:
        check_settings(m.circuit.settings, CircuitSettings, where, "circuit.settings")
    return m.model_dump(exclude_unset=True)


# Settings earlier versions wrote and this one no longer has: accepted when a session is opened
# (so older sessions still open), then ignored. row_keep: rows kept their largest entries, before
# the neuron basis had sparse candidates (issue 17).
RETIRED_SETTINGS = {"AttributionSettings": ("row_keep",)}


def current_settings(values: dict, settings_type) -> dict:
    """``values`` without the settings this version retired."""
    retired = RETIRED_SETTINGS.get(settings_type.__name__, ())
    return {k: v for k, v in values.items() if k not in retired}


def check_settings(values: dict, settings_type, where: str, field: str):
    """``values`` as an instance of the settings dataclass ``settings_type``: every field of the
    declared type (strictly: no "1" for 1), nothing unknown (retired settings aside), its own
    ``validate()`` passed."""
    values = current_settings(values, settings_type)
    try:
        typed = _settings_model(settings_type).model_validate(values)
    except ValidationError as e:
        raise CircuitDeskError(f"{where}: {describe_error(e, field)}.") from None
    settings = settings_type(**dict(typed))
    try:
        settings.validate()
    except CircuitDeskError as e:
        raise CircuitDeskError(f"{where}: {field} are not valid ({str(e).rstrip('.')}).") from None
    return settings


@functools.cache
def _settings_model(settings_type) -> type[BaseModel]:
    """A strict pydantic model with the dataclass's fields, types and defaults."""
    hints = typing.get_type_hints(settings_type)
    fields = {f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(settings_type)}
    return create_model(f"{settings_type.__name__}JSON", __base__=_Strict, **fields)


def describe_error(e: ValidationError, root: str = "") -> str:
    """The first problem of a pydantic error as a short clause: ``root.a.b: what is wrong``."""
    err = e.errors(include_url=False)[0]
    path = ".".join(([root] if root else []) + [str(p) for p in err["loc"] if p != "[key]"]) or "the file"
    msg = re.sub(r"\s+", " ", str(err["msg"]))[:120]
    return f"{path[:120]}: {msg[0].lower() + msg[1:]}"

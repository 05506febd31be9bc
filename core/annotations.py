"""The auditor's annotations of one analysis: groups, pins, node labels, findings, the view's
threshold and the interventions tried. One type, validated once (``from_json``) and written once
(``to_json``), used by the session file, the report, the exports and the workbench.

Text is capped (``MAX_LABEL``, ``MAX_FINDINGS``) where it is typed and where it is read: a 1 MB
label without spaces has nothing to say and froze the panes and the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import CircuitDeskError
from core.manifest import MAX_NAME, Name, TokenId, describe_error

MAX_LABEL = 200  # characters of a node or group label
MAX_FINDINGS = 50_000  # characters of the findings text
MAX_GROUPS = 1_000
MAX_INTERVENTIONS = 1_000


@dataclass(frozen=True)
class Group:
    """A labelled supernode: nodes drawn and selected together."""

    label: str
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Annotations:
    groups: tuple[Group, ...] = ()
    pinned: tuple[int, ...] = ()
    labels: dict[int, str] = field(default_factory=dict)  # node -> the auditor's label
    findings: str = ""
    threshold: float | None = None  # the view's pruning threshold when saved
    interventions: tuple[dict, ...] = ()  # InterventionResult.to_json() records, validated

    def to_json(self) -> dict:
        return {"groups": [{"label": g.label, "nodes": list(g.nodes)} for g in self.groups],
                "pinned": list(self.pinned), "threshold": self.threshold,
                "labels": {str(n): text for n, text in sorted(self.labels.items())},
                "findings": self.findings, "interventions": list(self.interventions)}

    @classmethod
    def from_json(cls, data, n_nodes: int, where: str = "annotations.json") -> "Annotations":
        """Validate ``data`` (JSON text, or what ``to_json`` gives) for a graph of ``n_nodes`` nodes;
        one sentence on failure."""
        try:
            raw = _AnnotationsJSON.model_validate_json(data if isinstance(data, (str, bytes)) else json.dumps(data))
        except ValidationError as e:
            raise CircuitDeskError(f"{where}: {describe_error(e)}.") from None

        def node(i: int, what: str) -> int:
            if not 0 <= i < n_nodes:
                raise CircuitDeskError(f"{where}: {what} names node {i}, but the graph has {n_nodes} nodes.")
            return i

        labels = {}
        for key, text in raw.labels.items():
            labels[node(key, "a label")] = text
        pinned = tuple(sorted({node(i, "a pin") for i in raw.pinned}))
        groups, taken = [], set()
        for g in raw.groups:
            nodes = tuple(node(i, f"group {g.label[:40]!r}") for i in g.nodes)
            if len(set(nodes)) != len(nodes) or taken & set(nodes):
                raise CircuitDeskError(f"{where}: group {g.label[:40]!r} repeats a node or shares one with another group.")
            taken |= set(nodes)
            groups.append(Group(g.label, nodes))
        return cls(tuple(groups), pinned, labels, raw.findings, raw.threshold,
                   tuple(i.model_dump() for i in raw.interventions))


def cap_label(text: str) -> str:
    return text[:MAX_LABEL]


def cap_findings(text: str) -> str:
    return text[:MAX_FINDINGS]


# -- the JSON form ---------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


Node = Annotated[int, Field(ge=0, le=1 << 31)]
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]
Short = Annotated[str, Field(max_length=MAX_NAME)]


class _GroupJSON(_Strict):
    label: Label
    nodes: Annotated[list[Node], Field(min_length=2, max_length=100_000)]


class _InterventionJSON(_Strict):
    kind: Literal["neuron", "feature", "head", "error"]
    layer: Annotated[int, Field(ge=0, le=1024)]
    index: Node = 0
    positions: Annotated[list[Annotated[int, Field(ge=0, le=1 << 20)]], Field(max_length=100_000)] | None = None
    mode: Literal["zero", "scale", "set"] = "zero"
    value: float = 0.0


class _TargetJSON(_Strict):
    token_id: TokenId
    token: Name


class _InterventionRecordJSON(_Strict):
    interventions: Annotated[list[_InterventionJSON], Field(max_length=10_000)]
    freeze: Literal["none", "attention", "replacement"]
    target: _TargetJSON
    logit_before: float
    logit_after: float
    prob_before: Annotated[float, Field(ge=0, le=1)]
    prob_after: Annotated[float, Field(ge=0, le=1)]
    top_before: Annotated[list[tuple[Name, float]], Field(max_length=1_000)] = []
    top_after: Annotated[list[tuple[Name, float]], Field(max_length=1_000)] = []
    continuation_before: Short = ""
    continuation_after: Short = ""
    seconds: Annotated[float, Field(ge=0)] = 0.0


class _AnnotationsJSON(_Strict):
    groups: Annotated[list[_GroupJSON], Field(max_length=MAX_GROUPS)] = []
    pinned: Annotated[list[Node], Field(max_length=100_000)] = []
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    labels: Annotated[dict[Node, Label], Field(max_length=100_000)] = {}
    findings: Annotated[str, Field(max_length=MAX_FINDINGS)] = ""
    interventions: Annotated[list[_InterventionRecordJSON], Field(max_length=MAX_INTERVENTIONS)] = []

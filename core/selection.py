"""The workbench's shared state: what is shown and what is selected, observed by every pane.

Pure Python (no Qt): the desktop panes are thin adapters that read this model and write user
actions to it. One user action is one ``Change`` delivered once to each observer; writes made
by an observer while a change is being delivered are refused (a pane reacting to a change must
not bounce it back), so the panes never call each other and never loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.analysis import Analysis
from core.observable import Change, Observable  # Change: what the panes receive

__all__ = ["ANNOTATION", "ATLAS", "HOVER", "INTERVENTION", "SELECTION", "THRESHOLD", "VIEW", "Change", "WorkbenchState"]
from core.annotations import Annotations, Group, cap_findings, cap_label
from core.view import DEFAULT_EDGES_PER_NODE, DEFAULT_MAX_NODES

# what a change is about
VIEW = "view"  # a new analysis (graph or circuit, heatmap data) is shown
SELECTION = "selection"  # selected nodes (and the current cell) changed
HOVER = "hover"
THRESHOLD = "threshold"  # the pruning threshold (or the drawing cap) moved: the visible subgraph changed
ANNOTATION = "annotation"  # pins, groups or labels changed
INTERVENTION = "intervention"  # an intervention result arrived for the selection
ATLAS = "atlas"  # the feature atlas that describes the graph's nodes changed (or there is none)


@dataclass
class WorkbenchState(Observable):
    """Everything the panes share. Fields are read freely; change them only through methods."""

    analysis: Analysis | None = None  # what is on show (None before the first run)
    selected: tuple[int, ...] = ()
    cell: tuple[int, int] | None = None  # (layer, position) of the current heatmap cell
    hovered: int | None = None
    threshold: float = 0.8
    max_nodes: int | None = DEFAULT_MAX_NODES  # the drawing cap, kept from one analysis to the next
    edges_per_node: int | None = DEFAULT_EDGES_PER_NODE
    pinned: tuple[int, ...] = ()
    groups: list[Group] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)  # the auditor's label for a node
    findings: str = ""  # free-text findings about the analysis on show
    intervention: Any = None  # the latest core.interventions.InterventionResult for the selection
    interventions: tuple[dict, ...] = ()  # every intervention on the analysis on show (saved with it)
    atlas: Any = None  # the core.atlas.store.Atlas of the graph's model and basis, or None
    atlas_note: str = ""  # why there is none, or which it is, in one sentence (for the status line)

    @property
    def view(self):
        """The drawable graph of the analysis on show (``core.view.GraphView``), or None."""
        return None if self.analysis is None else self.analysis.view

    # -- actions ------------------------------------------------------------------------------------
    def show(self, analysis, source: str = "", annotations: Annotations | None = None) -> None:
        """Show a new analysis (an ``Analysis``, or a bare ``GraphView``): selection and the
        intervention result reset; pins, groups, labels, findings, threshold and the intervention
        log from ``annotations`` (validated for this view), else none. One change."""
        if not self._writable():
            return
        if analysis is not None and not isinstance(analysis, Analysis):
            analysis = Analysis(view=analysis)
        notes = annotations or Annotations()
        self.analysis = analysis
        view = self.view
        self.selected, self.cell, self.hovered, self.intervention = (), None, None, None
        self.pinned, self.groups = notes.pinned, list(notes.groups)
        self.notes, self.findings = dict(notes.labels), notes.findings
        self.interventions = tuple(notes.interventions)
        if view is not None:
            if notes.threshold is not None:
                view.set_threshold(notes.threshold)
            view.pinned = set(notes.pinned)
            view.set_cap(self.max_nodes, self.edges_per_node)
            self.threshold = view.threshold
        self._emit(VIEW, source)

    def annotations(self) -> Annotations:
        """The auditor's annotations of the analysis on show, with its intervention log."""
        return Annotations(tuple(self.groups), tuple(sorted(self.pinned)), dict(sorted(self.notes.items())),
                           self.findings, self.threshold if self.view is not None else None, self.interventions)

    def select(self, nodes, source: str = "", extend: bool = False, cell: tuple[int, int] | None = None) -> bool:
        """Select ``nodes`` (replacing, or toggling them into the selection with ``extend``).
        Returns False (and tells nobody) when nothing changed."""
        if not self._writable():
            return False
        nodes = tuple(int(n) for n in nodes)
        if extend:
            current = list(self.selected)
            for n in nodes:
                if n in current:
                    current.remove(n)
                else:
                    current.append(n)
            nodes = tuple(current)
        else:
            nodes = tuple(dict.fromkeys(nodes))
        if cell is None and len(nodes) == 1 and self.view is not None:
            cell = self.view.cell_of(nodes[0])
        if nodes == self.selected and cell == self.cell:
            return False
        self.selected, self.cell = nodes, cell
        self.intervention = None
        self._emit(SELECTION, source)
        return True

    def select_cell(self, layer: int, pos: int, source: str = "") -> bool:
        """Select every visible node at (layer, position)."""
        if self.view is None:
            return False
        return self.select(self.view.nodes_at(layer, pos), source=source, cell=(layer, pos))

    def clear_selection(self, source: str = "") -> bool:
        return self.select((), source=source, cell=None)

    def hover(self, node: int | None, source: str = "") -> None:
        if self._writable() and node != self.hovered:
            self.hovered = node
            self._emit(HOVER, source)

    def set_threshold(self, value: float, source: str = "") -> bool:
        if not self._writable() or self.view is None:
            return False
        value = float(min(max(value, 0.0), 1.0))
        if value == self.threshold:
            return False
        self.threshold = value
        self.view.set_threshold(value)
        self._visible_changed(source)
        return True

    def set_cap(self, max_nodes: int | None, edges_per_node: int | None, source: str = "") -> bool:
        """Draw at most ``max_nodes`` nodes and ``edges_per_node`` incoming edges per node of an
        attribution graph (None: no limit); kept for the analyses shown after this one."""
        if not self._writable() or (max_nodes, edges_per_node) == (self.max_nodes, self.edges_per_node):
            return False
        self.max_nodes, self.edges_per_node = max_nodes, edges_per_node
        if self.view is None:
            return False
        self.view.set_cap(max_nodes, edges_per_node)
        self._visible_changed(source)
        return True

    def _visible_changed(self, source: str) -> None:
        visible = set(self.view.visible_nodes().tolist())
        self.selected = tuple(n for n in self.selected if n in visible or n in self.pinned)
        self._emit(THRESHOLD, source)

    def pin(self, nodes=None, source: str = "") -> None:
        """Pin nodes (default: the selection): they stay visible at any threshold."""
        if not self._writable():
            return
        nodes = self.selected if nodes is None else tuple(int(n) for n in nodes)
        pinned = tuple(dict.fromkeys(self.pinned + nodes))
        if pinned != self.pinned:
            self.pinned = pinned
            if self.view is not None:
                self.view.pinned = set(pinned)
            self._emit(ANNOTATION, source)

    def unpin_all(self, source: str = "") -> None:
        if self._writable() and self.pinned:
            self.pinned = ()
            if self.view is not None:
                self.view.pinned = set()
            self._emit(ANNOTATION, source)

    def group(self, label: str, nodes=None, source: str = "") -> Group | None:
        """Group nodes (default: the selection, at least two) into a labelled supernode."""
        if not self._writable():
            return None
        nodes = tuple(self.selected if nodes is None else (int(n) for n in nodes))
        label = cap_label(label.strip())
        if len(nodes) < 2 or not label:
            return None
        grouped = {n for g in self.groups for n in g.nodes}
        nodes = tuple(n for n in nodes if n not in grouped)
        if len(nodes) < 2:
            return None
        g = Group(label, nodes)
        self.groups.append(g)
        self._emit(ANNOTATION, source)
        return g

    def group_all(self, groups, source: str = "") -> list[Group]:
        """Several supernodes at once (accepted suggestions, ``Group``s): one change. Each keeps
        the rules of ``group`` (a label, two nodes not already grouped); labels stay distinct.
        Returns the groups made."""
        if not self._writable():
            return []
        grouped = {n for g in self.groups for n in g.nodes}
        labels = {g.label for g in self.groups}
        made = []
        for g in groups:
            label = cap_label(g.label.strip())
            nodes = tuple(dict.fromkeys(int(n) for n in g.nodes if int(n) not in grouped))
            if len(nodes) >= 2 and label and label not in labels:
                made.append(Group(label, nodes))
                grouped |= set(nodes)
                labels.add(label)
        if made:
            self.groups.extend(made)
            self._emit(ANNOTATION, source)
        return made

    def set_note(self, node: int, text: str, source: str = "") -> bool:
        """Label a node in your own words (empty text removes the label)."""
        if not self._writable():
            return False
        text = cap_label(text.strip())
        if self.notes.get(int(node), "") == text:
            return False
        if text:
            self.notes[int(node)] = text
        else:
            self.notes.pop(int(node), None)
        self._emit(ANNOTATION, source)
        return True

    def set_atlas(self, atlas, note: str = "", source: str = "") -> bool:
        """The feature atlas that describes the nodes on show (None: none matches; ``note`` says why)."""
        if not self._writable() or (atlas is self.atlas and note == self.atlas_note):
            return False
        self.atlas, self.atlas_note = atlas, note
        self._emit(ATLAS, source)
        return True

    def set_findings(self, text: str, source: str = "") -> bool:
        text = cap_findings(text)
        if not self._writable() or text == self.findings:
            return False
        self.findings = text
        self._emit(ANNOTATION, source)
        return True

    def ungroup(self, label: str, source: str = "") -> bool:
        if not self._writable():
            return False
        before = len(self.groups)
        self.groups = [g for g in self.groups if g.label != label]
        if len(self.groups) != before:
            self._emit(ANNOTATION, source)
            return True
        return False

    def group_of(self, node: int) -> Group | None:
        for g in self.groups:
            if node in g.nodes:
                return g
        return None

    def set_intervention(self, result, source: str = "") -> None:
        """An intervention's result (``core.interventions.InterventionResult``) arrived: shown for
        the selection and added to the log saved with the analysis."""
        if self._writable():
            self.intervention = result
            self.interventions += (result.to_json(),)
            self._emit(INTERVENTION, source)

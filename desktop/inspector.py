"""The inspector: the selected node's facts, what a feature responds to (its feature atlas card:
label, density, histogram, top examples), the tokens it promotes and suppresses, its strongest
edges (click to follow), and intervention controls with the before/after result."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.analysis import InterventionRequest
from core.annotations import MAX_LABEL
from core.errors import CircuitDeskError
from core.selection import ANNOTATION, ATLAS, INTERVENTION, SELECTION, THRESHOLD, VIEW, Change, WorkbenchState
from core.view import CATEGORIES
from desktop.feature_card import EXAMPLES, FeatureCardView

NAME = "inspector"
NO_ATLAS_HINT = "No feature atlas for this model: Tools → Build Feature Atlas… shows what each neuron responds to."


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Inspector(QScrollArea):
    refreshed = Signal(str)
    intervention_requested = Signal(object)  # core.analysis.InterventionRequest

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__()
        self.state = state
        self.refresh_counts: dict[str, int] = {}
        self.setWidgetResizable(True)
        body = QWidget()
        self.setWidget(body)
        self.facts = QLabel("Select a node in the graph or a cell in the heatmap.")
        self.facts.setWordWrap(True)
        self.facts.setTextFormat(Qt.TextFormat.RichText)
        self.facts.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.note_edit = QLineEdit()
        self.note_edit.setMaxLength(MAX_LABEL)
        self.note_edit.setPlaceholderText("Your label for this node (Enter to keep it)")
        self.note_edit.setToolTip("Saved with the session, shown in the graph's tooltip and used by Find")
        self.note_edit.editingFinished.connect(self._note_edited)
        self.card = FeatureCardView()  # the feature's atlas card (hidden for other nodes)
        self.tokens = QTableWidget(0, 2)
        self.tokens.setHorizontalHeaderLabels(["Promotes", "Suppresses"])
        self.tokens.verticalHeader().setVisible(False)
        self.tokens.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        # both columns share the width (token texts and scores are alike); the height fits every row
        self.tokens.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.tokens.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.tokens.setMinimumHeight(60)
        self.incoming, self.outgoing = QListWidget(), QListWidget()
        for lst in (self.incoming, self.outgoing):
            lst.itemActivated.connect(self._follow)
            lst.itemClicked.connect(self._follow)
            lst.setMinimumHeight(110)

        box = QGroupBox("Intervene")
        self.mode = QComboBox()
        self.mode.addItems(["zero", "scale", "set"])
        self.value = QDoubleSpinBox()
        self.value.setRange(-1e4, 1e4)
        self.value.setDecimals(3)
        self.value.setValue(2.0)
        self.positions = QComboBox()
        self.positions.addItems(["this position", "every position"])
        self.positions.setToolTip("Where the edit applies: the node's own token position, or every position")
        self.freeze = QComboBox()
        self.freeze.addItems(["none", "attention", "replacement"])
        self.freeze.setToolTip("none: the real model; attention: patterns held; replacement: the graph's linear model")
        self.run_button = QPushButton("Run intervention")
        self.run_button.setToolTip("Run the edit on the prompt as a background job (Ctrl+I)")
        self.run_button.clicked.connect(self.request_intervention)
        form = QFormLayout(box)
        form.addRow("Edit", self.mode)
        form.addRow("Value / factor", self.value)
        form.addRow("Where", self.positions)
        form.addRow("Freeze", self.freeze)
        form.addRow(self.run_button)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)
        form.addRow(self.result)

        layout = QVBoxLayout(body)
        layout.addWidget(self.facts)
        layout.addWidget(self.note_edit)
        layout.addWidget(self.card)
        layout.addWidget(QLabel("<b>Direct effect on tokens</b>"))
        layout.addWidget(self.tokens)
        edges = QHBoxLayout()
        left, right = QVBoxLayout(), QVBoxLayout()
        left.addWidget(QLabel("<b>Strongest inputs</b>"))
        left.addWidget(self.incoming)
        right.addWidget(QLabel("<b>Strongest outputs</b>"))
        right.addWidget(self.outgoing)
        edges.addLayout(left)
        edges.addLayout(right)
        layout.addLayout(edges)
        layout.addWidget(box)
        layout.addStretch(1)
        self._revealing = False  # an intervention result waits to be scrolled into view
        self.verticalScrollBar().rangeChanged.connect(self._scroll_range_changed)
        self._clear()
        state.subscribe(self.on_change)

    # -- state -> view ----------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        if change.what not in (VIEW, SELECTION, THRESHOLD, INTERVENTION, ATLAS, ANNOTATION):
            return
        self.refresh_counts[change.what] = self.refresh_counts.get(change.what, 0) + 1
        if change.what == INTERVENTION:
            self._show_intervention()
        elif change.what in (ANNOTATION, ATLAS):  # a label, pin or group, or the atlas: name and card
            node = self.node()
            if node is not None:
                self._show_facts(node)
                if change.what == ATLAS:
                    self._show_card(node)
        else:
            self._show_node()
        self.refreshed.emit(change.what)

    def node(self) -> int | None:
        sel = self.state.selected
        return sel[0] if len(sel) == 1 and self.state.view is not None else None

    def intervenable(self, node: int) -> bool:
        analysis = self.state.analysis
        return analysis is not None and analysis.intervenable(node)

    def _note_edited(self) -> None:
        node = self.node()
        if node is not None:
            self.state.set_note(node, self.note_edit.text(), source=NAME)

    def _clear(self) -> None:
        self.tokens.setRowCount(0)
        self._fit_tokens()
        self.incoming.clear()
        self.outgoing.clear()
        self.result.setText("")
        self.run_button.setEnabled(False)
        self.note_edit.blockSignals(True)
        self.note_edit.clear()
        self.note_edit.blockSignals(False)
        self.note_edit.setEnabled(False)

    def _show_node(self) -> None:
        self._revealing = False
        v, node = self.state.view, self.node()
        self._clear()
        if v is None:
            self.facts.setText("Run a trace to inspect its nodes.")
            self.card.show_message("")
            return
        if node is None:
            self.card.show_message("")
            n = len(self.state.selected)
            self.facts.setText(f"{n} nodes selected." if n else "Select a node in the graph or a cell in the heatmap.")
            return
        self.note_edit.blockSignals(True)
        self.note_edit.setText(self.state.notes.get(node, ""))
        self.note_edit.blockSignals(False)
        self.note_edit.setEnabled(True)
        self._show_facts(node)
        self._show_card(node)
        effects = self.state.analysis.token_effects(node)
        if effects is not None:
            k = max(len(effects.promoted), len(effects.suppressed))
            self.tokens.setRowCount(k)
            for r in range(k):
                for c, items in enumerate((effects.promoted, effects.suppressed)):
                    if r < len(items):
                        t, s = items[r]
                        self.tokens.setItem(r, c, QTableWidgetItem(f"{t!r}  {s:+.3f}"))
            self.tokens.setToolTip(effects.note)
        self._fit_tokens()
        for lst, edges in ((self.incoming, v.incoming(node, 10)), (self.outgoing, v.outgoing(node, 10))):
            for other, w in edges:
                item = QListWidgetItem(f"{w:+.4g}  {v.labels[other]}")
                item.setData(Qt.ItemDataRole.UserRole, other)
                item.setForeground(Qt.GlobalColor.darkBlue if w >= 0 else Qt.GlobalColor.darkRed)
                lst.addItem(item)
        self.run_button.setEnabled(self.intervenable(node))
        # a circuit's head is edited at every position (as the circuit's patching does): say so
        head = v.kind == "circuit"
        if head:
            self.positions.setCurrentIndex(1)
        self.positions.setEnabled(not head)
        self.positions.setToolTip("A circuit's heads are edited at every position" if head else
                                  "Where the edit applies: the node's own token position, or every position")
        if not self.state.analysis.can_intervene:
            self.result.setText("Interventions need the model: run the prompt again to intervene here.")

    def _show_facts(self, node: int) -> None:
        """The node's name (your label, else its atlas label, else its own) and facts."""
        v = self.state.view
        kind = CATEGORIES[v.category[node]]
        name = self.state.notes.get(node) or v.atlas_label(node, self.state.atlas)
        lines = [f"<b>{_html(name)}</b>"] if name else []
        lines += [f"<b>{_html(v.labels[node])}</b>" if not name else _html(v.labels[node]),
                  f"{kind} · layer {v.layer[node]} · " + ("position" if v.kind == "attribution" else "column")
                  + f" {v.column[node]}"]
        if v.values is not None and np.isfinite(v.values[node]):
            lines.append(("activation" if v.kind == "attribution" else "node score") + f" {v.values[node]:.5g}")
        lines.append(f"relative influence {v.size[node]:.4f}")
        if node in self.state.pinned:
            lines.append("pinned")
        group = self.state.group_of(node)
        if group:
            lines.append(f"group ⟨{_html(group.label)}⟩")
        self.facts.setText("<br>".join(lines))

    def _show_card(self, node: int) -> None:
        """The feature's atlas card; one line on how to get one where there is no atlas."""
        v, atlas = self.state.view, self.state.atlas
        feature = v.feature_of(node)
        if feature is None:
            self.card.show_message("")
            return
        if atlas is None:
            self.card.show_message(self.state.atlas_note or NO_ATLAS_HINT)
            return
        if not atlas.has(*feature):
            self.card.show_message(f"The feature atlas has no L{feature[0]}/{atlas.unit}{feature[1]}.")
            return
        try:
            card = atlas.card(*feature, examples=EXAMPLES)
        except (CircuitDeskError, OSError) as err:
            self.card.show_message(str(err))
            return
        value = float(v.values[node]) if v.values is not None and np.isfinite(v.values[node]) else None
        self.card.show_card(card, value)

    def _reveal_result(self) -> None:
        """Scroll so the whole intervention result shows. Its wrapped height is known only once
        the group box and the body are laid out again, so lay them out first (inside out)."""
        widget = self.result.parentWidget()
        while widget is not None and widget is not self.viewport():
            if widget.layout() is not None:
                widget.layout().activate()
            widget = widget.parentWidget()
        self.ensureWidgetVisible(self.result, 0, 8)

    def _scroll_range_changed(self, _lo: int, _hi: int) -> None:
        if self._revealing:
            self._reveal_result()

    def _fit_tokens(self) -> None:
        """The token table as tall as its rows: none is cut off, and it never scrolls by itself."""
        t = self.tokens
        rows = sum(t.rowHeight(r) for r in range(t.rowCount()))
        t.setFixedHeight(t.horizontalHeader().height() + rows + 2 * t.frameWidth() + 2)

    def _show_intervention(self) -> None:
        r = self.state.intervention
        if r is None:
            self.result.setText("")
            return
        # the result is below the fold of a short inspector: bring it into view once laid out
        # (and again when the body grows to fit it, which changes the scroll range)
        self._revealing = True
        QTimer.singleShot(0, self, self._reveal_result)
        before = ", ".join(f"{_html(repr(t))} {p:.3f}" for t, p in r.top_before[:5])
        after = ", ".join(f"{_html(repr(t))} {p:.3f}" for t, p in r.top_after[:5])
        self.result.setText(
            f"<b>{_html(r.interventions[0].describe())}</b> (freeze: {r.freeze})<br>"
            f"P({_html(repr(r.target))}): {r.prob_before:.4f} → <b>{r.prob_after:.4f}</b> "
            f"(logit {r.logit_change:+.3f})<br>before: {before}<br>after: {after}"
        )

    # -- user -> state / window -------------------------------------------------------------------
    def _follow(self, item: QListWidgetItem) -> None:
        node = item.data(Qt.ItemDataRole.UserRole)
        if node is not None:
            self.state.select([int(node)], source=NAME)

    def request_intervention(self) -> None:
        node = self.node()
        if node is None or not self.intervenable(node):
            return
        self.result.setText("Running…")
        self.intervention_requested.emit(InterventionRequest(node, self.mode.currentText(), float(self.value.value()),
                                                             self.freeze.currentText(), self.positions.currentIndex() == 1))

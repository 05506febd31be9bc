"""The heatmap pane: logit lens, attribution per cell, the selected node's activation, attention
patterns; one ImageItem with a colour bar and token labels. Clicking a cell selects the graph
nodes there; a selection outlines its cell. Reads and writes ``WorkbenchState`` only.

Readability: a colour scale per heatmap (linear, log, clipped at a percentile; chosen
automatically when one cell dominates, ``core.heatmap_scale``), a diverging map centred at 0 for
signed values, every row labelled when there is room, and the layer, token and exact value of the
cell under the mouse in a status line and tooltip. A component circuit's pairs can be stepped
through where their heatmaps were computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QCursor, QFontMetrics, QPen
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QGraphicsRectItem, QHBoxLayout, QLabel, QSpinBox,
                               QStackedWidget, QToolButton, QToolTip, QVBoxLayout, QWidget)

from core.graph import FEATURE
from core.heatmap_scale import CLIPPED, LINEAR, LOG, PERCENTILE, ColourScale, colour_scale
from core.selection import SELECTION, THRESHOLD, VIEW, Change, WorkbenchState
from core.view import NEGATIVE, POSITIVE, short_token

NAME = "heatmap"
LENS, ATTRIBUTION, ACTIVATION, ATTENTION = "Logit lens: P(target)", "Attribution per cell", "Selected node: activation", "Attention pattern"
MODES = (LENS, ATTRIBUTION, ACTIVATION, ATTENTION)
SCALED = (LENS, ATTRIBUTION, ACTIVATION)  # attention probabilities keep one 0–1 scale, so heads compare
PER_PAIR = (LENS, ATTENTION)  # the modes that show one prompt of a circuit's pairs
AUTO = "auto"
SCALE_CHOICES = ((AUTO, "Auto"), (LINEAR, "Linear"), (LOG, "Log"), (CLIPPED, "Clipped at percentile"))
SEQUENTIAL = pg.colormap.get("viridis")
DIVERGING = pg.ColorMap([0.0, 0.5, 1.0], [NEGATIVE, (247, 247, 247), POSITIVE])  # red < 0, white at 0, blue > 0
HOVER_HINT = "Hover a cell to read its layer, token and value."


@dataclass
class Grid:
    """One heatmap as drawn: values [rows, cols], the cells left blank, axis labels, the hover
    text of a cell, and how it is read."""

    values: np.ndarray | None
    blank: np.ndarray | None = None  # bool [rows, cols]: cells drawn blank (nothing there), left out of the scale
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    caption: str = ""
    signed: bool = False  # diverging colours centred at 0
    cell_text: Callable[[int, int], str] | None = None
    top_down: bool = False  # row 0 at the top (attention: the first query first)
    layers: list[int] = field(default_factory=list)  # each row's graph layer, where a click selects nodes
    axis_titles: tuple[str, str] = ("", "")  # (left, bottom); tokens and heads name themselves


@dataclass(frozen=True)
class SavedLens:
    """The logit lens a session file keeps (no attention patterns, no activations)."""

    tokens: list[str]
    target: str
    lens_prob: np.ndarray
    lens_top: tuple = ()

    @property
    def n_layers(self) -> int:
        return self.lens_prob.shape[0] - 1

    @property
    def patterns(self) -> np.ndarray:
        return np.zeros((self.n_layers, 0, 0, 0), np.float32)

    @property
    def mlp_post(self) -> np.ndarray:
        return np.zeros((self.n_layers, 0, 0), np.float32)


class _Image(pg.ImageItem):
    """An ImageItem that reports the clicked cell (row, column)."""

    def __init__(self, on_click) -> None:
        super().__init__()
        self._on_click = on_click

    def mouseClickEvent(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton or self.image is None:
            return
        p = ev.pos()
        self._on_click(int(np.floor(p.y())), int(np.floor(p.x())))
        ev.accept()


class _Plot(pg.PlotWidget):
    """A PlotWidget that reports every mouse move over it (its scene position). The scene's own
    sigMouseMoved drops moves less than a frame apart, so the cell the mouse stops on could go
    unreported. (Leaving is not reported: a window being deleted sends its widgets leave events.)"""

    mouse_moved = Signal(object)

    def mouseMoveEvent(self, ev) -> None:
        super().mouseMoveEvent(ev)
        self.mouse_moved.emit(self.mapToScene(ev.position().toPoint()))


def _boxed(*widgets: QWidget) -> QWidget:
    """Widgets in one row, shown and hidden together (a control with its label)."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        row.addWidget(w)
    return box


class HeatmapPane(QWidget):
    refreshed = Signal(str)

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__()
        self.state = state
        self.refresh_counts: dict[str, int] = {}
        self.rows: list[int] = []  # graph layer of each image row, where a click selects nodes
        self.pair_index = 0  # the circuit pair whose heatmaps are shown
        self._grid: Grid | None = None
        self.scale: ColourScale | None = None
        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.mode.setToolTip("What the heatmap shows")
        self.mode.currentTextChanged.connect(lambda _t: self.redraw())
        self.layer_spin, self.head_spin = QSpinBox(), QSpinBox()
        for s, tip in ((self.layer_spin, "Layer of the attention pattern"), (self.head_spin, "Head")):
            s.setToolTip(tip)
            s.valueChanged.connect(lambda _v: self.redraw() if self.mode.currentText() == ATTENTION else None)
        self.head_box = _boxed(QLabel("layer"), self.layer_spin, QLabel("head"), self.head_spin)
        self.scale_combo = QComboBox()
        for key, text in SCALE_CHOICES:
            self.scale_combo.addItem(text, key)
        self.scale_combo.setToolTip("Colour scale: Auto is linear unless one cell dominates, then clipped or log")
        self.scale_combo.currentIndexChanged.connect(lambda _i: self.redraw())
        self.percentile = QDoubleSpinBox()
        self.percentile.setRange(50.0, 100.0)
        self.percentile.setDecimals(1)
        self.percentile.setSingleStep(0.5)
        self.percentile.setValue(PERCENTILE)
        self.percentile.setSuffix("th pct")
        self.percentile.setToolTip("The colour range ends at this percentile of the cells; larger cells take the end colour")
        self.percentile.valueChanged.connect(lambda _v: self.redraw())
        self.scale_box = _boxed(QLabel("scale"), self.scale_combo, self.percentile)
        bar = QHBoxLayout()
        bar.addWidget(self.mode, 1)
        bar.addWidget(self.head_box)
        bar.addWidget(self.scale_box)
        # a circuit's prompt pairs: which one is shown, and stepping through them
        self.prev_pair, self.next_pair = QToolButton(), QToolButton()
        for b, arrow, step, tip in ((self.prev_pair, Qt.ArrowType.LeftArrow, -1, "Previous pair"),
                                    (self.next_pair, Qt.ArrowType.RightArrow, 1, "Next pair")):
            b.setArrowType(arrow)
            b.setToolTip(tip)
            b.clicked.connect(lambda _c=False, s=step: self.step_pair(s))
        self.pair_label = QLabel("")
        self.pair_label.setStyleSheet("color: #333")
        self.pair_row = _boxed(self.prev_pair, self.pair_label, self.next_pair)
        self.pair_row.layout().setStretch(1, 1)
        self.plot = _Plot(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.invertY(False)
        self.plot.getPlotItem().setContentsMargins(2, 8, 2, 2)  # room for the colour bar's end labels
        for side in ("left", "bottom"):
            self.plot.getAxis(side).setTextPen("#222")
        self.image = _Image(self._cell_clicked)
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(colorMap=SEQUENTIAL, width=12, interactive=False)
        self.colorbar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.colorbar.axis.setTextPen("#222")
        self.outline = QGraphicsRectItem()
        pen = QPen(QColor("#f59e0b"))
        pen.setCosmetic(True)
        pen.setWidthF(3)
        self.outline.setPen(pen)
        self.outline.setZValue(10)
        self.outline.hide()
        self.plot.addItem(self.outline)
        self.plot.mouse_moved.connect(self._mouse_moved)
        # with nothing to draw, a sentence in place of the plot (empty axes show nonsense ranges)
        self.empty = QLabel("Run a trace to see heatmaps.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color: #555; background: white")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.plot)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.hover = QLabel(HOVER_HINT)
        self.hover.setStyleSheet("color: #333")
        self.hover.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addLayout(bar)
        layout.addWidget(self.pair_row)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        layout.addWidget(self.hover)
        state.subscribe(self.on_change)
        self._update_modes()
        self.redraw()

    # -- what is on show --------------------------------------------------------------------------
    @property
    def lens(self):
        """Heatmap data (``core.lens.LensData``) of the prompt on show, or None: the shown pair's
        for a circuit run here, the run's, or the logit lens an opened session keeps."""
        analysis = self.state.analysis
        if analysis is None:
            return None
        per_pair = self._pair_lens()
        if per_pair:
            return per_pair[min(self.pair_index, len(per_pair) - 1)]
        if analysis.lens is not None:
            return analysis.lens
        return _saved_lens(analysis.opened)

    def _pair_lens(self) -> tuple:
        a = self.state.analysis
        return tuple(a.circuit.pair_lens) if a is not None and a.circuit is not None else ()

    def pairs(self) -> list[dict]:
        """The prompt pairs of the circuit on show (each with its clean and corrupted text)."""
        v = self.state.view
        return list(getattr(v.source, "pairs", None) or []) if v is not None and v.kind == "circuit" else []

    def step_pair(self, step: int) -> None:
        """Show the heatmaps of the next (``step`` 1) or previous (-1) pair."""
        n = len(self._pair_lens())
        if n > 1:
            self.pair_index = min(max(self.pair_index + step, 0), n - 1)
            self.redraw()

    def pair_text(self) -> str:
        """Which of a circuit's pairs the heatmaps show ("" for a single prompt)."""
        pairs = self.pairs()
        if not pairs:
            return ""
        shown = len(self._pair_lens())
        k = min(self.pair_index, max(shown - 1, 0))
        p = pairs[k]
        clean, corrupted = _contrast(str(p.get("clean", "")), str(p.get("corrupted", "")))
        text = f"Pair {k + 1}/{len(pairs)}: clean {clean!r} vs corrupted {corrupted!r}"
        if len(pairs) == 1 or shown == len(pairs):
            return text + " (heatmaps of the clean prompt)"
        if shown > 1:
            return text + f" (heatmaps of the clean prompt; the first {shown} pairs have them)"
        opened = self.state.analysis is not None and self.state.analysis.opened is not None
        why = "the session file keeps no others" if opened else "no others were computed"
        return text + f"; heatmaps of this pair's clean prompt only ({why})"

    # -- state -> view ----------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        if change.what not in (VIEW, SELECTION, THRESHOLD):
            return
        self.refresh_counts[change.what] = self.refresh_counts.get(change.what, 0) + 1
        if change.what == VIEW:
            self.pair_index = 0
            d = self.lens
            for spin, n in ((self.layer_spin, 0 if d is None else d.patterns.shape[0]),
                            (self.head_spin, 0 if d is None else d.patterns.shape[1])):
                spin.blockSignals(True)
                spin.setRange(0, max(n - 1, 0))
                spin.blockSignals(False)
            self._update_modes()
        if change.what == SELECTION and self._follow_selection():
            pass  # the mode's image changed with the selection: redraw below
        elif change.what == SELECTION:
            self._draw_outline()
            self.refreshed.emit(change.what)
            return
        self.redraw()
        self.refreshed.emit(change.what)

    def unavailable(self) -> dict[str, str]:
        """Why each mode has nothing to show for the analysis on show ("" where it has)."""
        v, d = self.state.view, self.lens
        attention = d is not None and d.patterns.ndim == 4 and d.patterns.shape[1] > 0
        return {
            LENS: "" if d is not None else "This analysis has no logit lens.",
            ATTRIBUTION: "" if v is not None else "Attribution per cell needs a graph or circuit.",
            ACTIVATION: "" if v is not None and v.kind == "attribution" else "Activations are shown for attribution-graph nodes.",
            ATTENTION: "" if attention else "No attention patterns here (a session file keeps the logit lens only).",
        }

    def _update_modes(self) -> None:
        """Modes without data are greyed out (their tooltip says why); leave one that has none."""
        why = self.unavailable()
        model = self.mode.model()
        for i, mode in enumerate(MODES):
            item = model.item(i)
            item.setEnabled(not why[mode])
            item.setToolTip(why[mode])
        self.mode.setEnabled(any(not w for w in why.values()))
        if why[self.mode.currentText()] and self.mode.isEnabled():
            self.mode.blockSignals(True)
            self.mode.setCurrentText(next(m for m in MODES if not why[m]))
            self.mode.blockSignals(False)

    def _follow_selection(self) -> bool:
        """Selecting a head shows its attention pattern; the activation view follows the node."""
        v, sel = self.state.view, self.state.selected
        if v is None or len(sel) != 1:
            return False
        mode = self.mode.currentText()
        if v.kind == "circuit" and v.category[sel[0]] == 5:  # a head
            layer, head = v.cell_of(sel[0])
            self.layer_spin.blockSignals(True)
            self.head_spin.blockSignals(True)
            self.layer_spin.setValue(layer)
            self.head_spin.setValue(head)
            self.layer_spin.blockSignals(False)
            self.head_spin.blockSignals(False)
            return mode == ATTENTION
        return mode == ACTIVATION

    def matrix(self) -> tuple[np.ndarray | None, list[str], list[str], str]:
        """(image [rows, cols], row labels, column labels, caption) of the current mode."""
        g = self.grid()
        return g.values, g.row_labels, g.col_labels, g.caption

    def grid(self) -> Grid:
        """The heatmap of the current mode (``values`` None, with a sentence, when there is none)."""
        v, d = self.state.view, self.lens
        mode = self.mode.currentText()
        if v is None and d is None:
            return Grid(None, caption="Run a trace to see heatmaps.")
        if mode == LENS and d is not None:
            return self._lens_grid(d)
        if mode == ATTENTION and d is not None and d.patterns.shape[1] > 0:
            return self._attention_grid(d)
        if mode == ACTIVATION:
            return self._activation_grid(d)
        if v is None:
            return Grid(None, caption="The graph is on its way.")
        return self._attribution_grid(v)

    def _lens_grid(self, d) -> Grid:
        values = np.asarray(d.lens_prob, float)
        tokens = list(d.tokens)
        v = self.state.view
        top = d.lens_top

        def text(r: int, c: int) -> str:
            where = "embeddings" if r == 0 else f"layer {r - 1} (residual after block {r - 1})"
            out = f"{where} · position {c} {tokens[c]!r} · P({d.target!r}) = {values[r, c]:.6g}"
            return out + (f" · the lens's top token: {top[r][c]!r}" if top else "")

        # a click selects graph nodes only where the columns are the graph's (token positions)
        layers = list(range(-1, d.n_layers)) if v is not None and v.kind == "attribution" else []
        return Grid(values, None, ["emb"] + [f"L{l}" for l in range(d.n_layers)], tokens,
                    f"Probability of {d.target!r} read from each layer's residual stream (logit lens)",
                    cell_text=text, layers=layers, axis_titles=("layer", ""))

    def _attention_grid(self, d) -> Grid:
        l = min(self.layer_spin.value(), d.patterns.shape[0] - 1)
        h = min(self.head_spin.value(), d.patterns.shape[1] - 1)
        pattern = np.asarray(d.patterns[l, h], float)
        tokens = list(d.tokens)

        def text(r: int, c: int) -> str:
            out = f"layer {l}, head {h} · query {r} {tokens[r]!r} → key {c} {tokens[c]!r} · "
            return out + (f"attention = {pattern[r, c]:.6g}" if c <= r else "masked: a query sees no later key")

        causal = np.triu(np.ones(pattern.shape, bool), 1)  # keys after the query: masked, left blank
        return Grid(pattern, causal, tokens, tokens,
                    f"Attention of layer {l}, head {h}: one row per query (the first token at the top), "
                    "one column per key; each row sums to 1",
                    cell_text=text, top_down=True, axis_titles=("query", "key"))

    def _activation_grid(self, d) -> Grid:
        v, sel = self.state.view, self.state.selected
        if v is None or len(sel) != 1:
            return Grid(None, caption="Select one node to see its activation over positions.")
        if v.kind != "attribution":
            return Grid(None, caption="Activations are shown for attribution-graph nodes.")
        i = sel[0]
        g = v.source
        name = v.labels[i].split(" @")[0]
        if int(g.kind[i]) == FEATURE and d is not None and g.meta.get("basis") == "neurons" and d.mlp_post.size:
            row = np.asarray(d.mlp_post[int(g.layer[i]), :, int(g.index[i])], float)
            tokens = list(d.tokens)
            caption = f"Activation of {name} at every position"
            absent = np.zeros(len(row), bool)
        else:
            same = np.flatnonzero((g.kind == g.kind[i]) & (g.layer == g.layer[i]) & (g.index == g.index[i]))
            row = np.zeros(len(v.x_labels))
            row[g.pos[same]] = g.activation[same]
            absent = np.ones(len(row), bool)
            absent[g.pos[same]] = False
            tokens = list(v.x_labels)
            caption = f"Activation of {name} where it is a graph node (blank: not a node there)"
        values = row[None, :]

        def text(_r: int, c: int) -> str:
            there = "not a graph node here" if absent[c] else f"activation = {values[0, c]:.6g}"
            return f"{name} · position {c} {tokens[c]!r} · {there}"

        return Grid(values, absent[None, :], [_short(name, 12)], tokens, caption, signed=True, cell_text=text,
                    axis_titles=("", ""))

    def _attribution_grid(self, v) -> Grid:
        """Per (layer, column) cell: an attribution graph's summed relative influence of the
        visible nodes; a circuit's signed node score (sum of its outgoing edge scores) of each
        visible head and MLP. Cells without a visible node are blank."""
        circuit = v.kind == "circuit"
        layers = sorted(set(int(r) for r in v.layer))
        index = {r: i for i, r in enumerate(layers)}
        vis = v.visible_nodes()
        values = np.zeros((len(layers), len(v.x_labels)))
        filled = np.zeros(values.shape, bool)
        at = ([index[int(r)] for r in v.layer[vis]], v.column[vis].astype(int))
        np.add.at(values, at, v.values[vis] if circuit else v.size[vis])
        filled[at] = True
        empty_name, top = ("input" if circuit else "emb"), v.n_layers
        labels = [empty_name if r < 0 else ("logits" if r == top else f"L{r}") for r in layers]
        what = "node score" if circuit else "Σ relative influence"

        def text(r: int, c: int) -> str:
            layer = layers[r]
            nodes = v.nodes_at(layer, c)
            if circuit:
                where = v.labels[nodes[0]] if nodes else (labels[r] if layer in (-1, top) else
                                                          (f"m{layer} (MLP)" if c == len(v.x_labels) - 1 else f"a{layer}.h{c}"))
            else:
                row = "embeddings" if layer < 0 else ("logits" if layer == top else f"layer {layer}")
                where = f"{row} · position {c} {v.x_labels[c]!r}"
            if not nodes:
                return f"{where} · no visible node here"
            more = f" · {len(nodes)} visible nodes, strongest {v.labels[nodes[0]]}" if not circuit else ""
            return f"{where} · {what} = {values[r, c]:.6g}{more}"

        if circuit:
            n = len(self.pairs())
            caption = (f"Node score of each visible head and MLP (its edges' summed attribution to the metric, "
                       f"mean over {n} pair{'s' if n != 1 else ''}): blue above 0, red below; blank: not in view")
        else:
            caption = "Summed relative influence of the visible nodes in each cell (blank: no visible node)"
        return Grid(values, ~filled, labels, list(v.x_labels), caption, signed=circuit, cell_text=text,
                    layers=layers, axis_titles=("layer", ""))

    def scale_choice(self) -> str | None:
        """The scale chosen in the combo (None: automatic)."""
        key = self.scale_combo.currentData()
        return None if key == AUTO else key

    def redraw(self) -> None:
        grid = self.grid()
        self._grid = grid
        self.rows = list(grid.layers)
        mode = self.mode.currentText()
        self.scale = None
        if grid.values is not None:
            values = np.asarray(grid.values, dtype=float)
            if grid.blank is not None:
                values = np.where(grid.blank, np.nan, values)  # drawn transparent, left out of the scale
            self.scale = (colour_scale(values, self.scale_choice(), grid.signed, self.percentile.value())
                          if mode in SCALED else ColourScale(LINEAR, False, 0.0, 1.0))
        self._update_controls(grid)
        if self.scale is not None and mode in SCALED:  # what Auto chose, in the box itself
            kind = {LINEAR: "linear", LOG: "symmetric log" if self.scale.signed else "log", CLIPPED: "clipped"}
            self.scale_combo.setItemText(0, f"Auto: {kind[self.scale.kind]}" if self.scale.auto else "Auto")
        if grid.values is None:
            self.image.clear()
            self.outline.hide()
            self.empty.setText(grid.caption)
            self.caption.setText("")
            self.hover.setText("")
            self.stack.setCurrentWidget(self.empty)
            return
        scale = self.scale
        self.caption.setText(f"{grid.caption}. Colours: {scale.describe()}.")
        self.hover.setText(HOVER_HINT)
        self.stack.setCurrentWidget(self.plot)
        self.colorbar.setColorMap(DIVERGING if grid.signed else SEQUENTIAL)
        self.image.setImage(scale.display(values).T, autoLevels=False)  # ImageItem: x = axis 0
        self.colorbar.setLevels(scale.levels)
        self.colorbar.axis.setTicks([scale.ticks()])
        self.colorbar.setToolTip(scale.describe())
        self.image.setRect(QRectF(0, 0, values.shape[1], values.shape[0]))
        self.plot.invertY(grid.top_down)
        left, bottom = grid.axis_titles
        self.plot.setLabel("left", left, color="#444")
        self.plot.setLabel("bottom", bottom, color="#444")
        self.plot.setRange(xRange=(0, values.shape[1]), yRange=(0, values.shape[0]), padding=0.02)
        self._label_axes()
        self._draw_outline()

    def _update_controls(self, grid: Grid) -> None:
        """Each control only in the modes it affects."""
        mode = self.mode.currentText()
        shown = grid.values is not None
        self.head_box.setVisible(mode == ATTENTION and shown)
        self.scale_box.setVisible(mode in SCALED and shown)
        self.percentile.setVisible(self.scale is not None and self.scale.kind == CLIPPED)
        text = self.pair_text() if mode in PER_PAIR and shown else ""
        self.pair_row.setVisible(bool(text))
        self.pair_label.setText(text)
        self.pair_label.setToolTip(self._pair_tooltip() if text else "")
        stepping = len(self._pair_lens()) > 1
        self.prev_pair.setVisible(stepping)
        self.next_pair.setVisible(stepping)
        self.prev_pair.setEnabled(self.pair_index > 0)
        self.next_pair.setEnabled(self.pair_index < len(self._pair_lens()) - 1)

    def _pair_tooltip(self) -> str:
        pairs = self.pairs()
        k = min(self.pair_index, len(pairs) - 1)
        p = pairs[k]
        return f"{p.get('label', '')}\nclean: {p.get('clean', '')}\ncorrupted: {p.get('corrupted', '')}"

    def _label_axes(self) -> None:
        """Token labels under the columns and row labels on the left: every one when they fit,
        else every step-th one (the rest as unlabelled ticks), so neighbouring labels never
        overlap; the hover line names every cell."""
        g = self._grid
        if g is None or g.values is None:
            return
        vb = self.plot.getViewBox()
        for side, labels, room, size in (("bottom", [_short(t) for t in g.col_labels], vb.width(), "width"),
                                         ("left", [_short(t) for t in g.row_labels], vb.height(), "height")):
            if not labels:
                continue
            axis = self.plot.getAxis(side)
            fm = QFontMetrics(axis.style.get("tickFont") or self.plot.font())
            if size == "width":
                need = max(fm.horizontalAdvance(t) for t in labels) + fm.horizontalAdvance("  ")
            else:
                need = fm.height() + 2
            step = max(1, math.ceil(need * len(labels) / max(1.0, room or self.plot.width())))
            ticks = [(i + 0.5, t) for i, t in enumerate(labels)]
            axis.setTicks([[ticks[i] for i in _spread(len(ticks), step)], [(x, "") for x, _ in ticks]])

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._label_axes()  # the room for labels changed

    def _draw_outline(self) -> None:
        cell = self.state.cell
        if cell is None or not self.rows or cell[0] not in self.rows:
            self.outline.hide()
            return
        r = self.rows.index(cell[0])
        self.outline.setRect(QRectF(cell[1], r, 1, 1))
        self.outline.show()

    # -- hover ------------------------------------------------------------------------------------
    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        """The (row, column) of the image cell under a scene position, or None."""
        g = self._grid
        vb = self.plot.getViewBox()
        if g is None or g.values is None or not vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = vb.mapSceneToView(scene_pos)
        r, c = int(np.floor(p.y())), int(np.floor(p.x()))
        rows, cols = g.values.shape
        return (r, c) if 0 <= r < rows and 0 <= c < cols else None

    def cell_text(self, row: int, col: int) -> str:
        """What the hover line says about a cell: layer, token (position and text), exact value."""
        g = self._grid
        return g.cell_text(row, col) if g is not None and g.cell_text is not None else ""

    def _mouse_moved(self, scene_pos) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None:
            if self._grid is not None and self._grid.values is not None:
                self.hover.setText(HOVER_HINT)
            QToolTip.hideText()
            return
        text = self.cell_text(*cell)
        self.hover.setText(text)
        QToolTip.showText(QCursor.pos(), text, self.plot)

    # -- user -> state ----------------------------------------------------------------------------
    def _cell_clicked(self, row: int, col: int) -> None:
        self.click_cell(row, col)

    def click_cell(self, row: int, col: int) -> None:
        """A click on image cell (row, col): select the graph nodes at that (layer, column)."""
        if not self.rows or not 0 <= row < len(self.rows) or self.state.view is None:
            return
        self.state.select_cell(self.rows[row], col, source=NAME)


def _spread(n: int, step: int) -> list[int]:
    """Every step-th of n indices, the first and the last always among them (the embeddings and
    the top layer, the first and the last token), none closer than ``step``."""
    picked = list(range(0, n, step))
    if len(picked) > 1:
        picked[-1] = n - 1  # moved up by less than a step: still a step or more from the one before
    return picked


def _saved_lens(session) -> SavedLens | None:
    """The logit lens an opened session keeps, or None."""
    if session is None or session.logit_lens is None:
        return None
    info = session.manifest.get("logit_lens") or {}
    return SavedLens(list(info.get("tokens", [])), str(info.get("target", "")), np.asarray(session.logit_lens, float))


def _short(token: str, n: int = 8) -> str:
    return short_token(token, n)


def _contrast(a: str, b: str, n: int = 44) -> tuple[str, str]:
    """Two prompts cut to about ``n`` characters each around where they first differ (a shared
    start elided as "…"), so the difference stays in view."""
    a, b = " ".join(a.split()), " ".join(b.split())
    if max(len(a), len(b)) <= n:
        return a, b
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, same - n // 3)
    if start > 0:
        space = a.rfind(" ", 0, start + 1)  # from a word's start
        start = space + 1 if space > 0 and same - space < n // 2 else start

    def cut(t: str) -> str:
        s = ("…" if start else "") + t[start:]
        return s if len(s) <= n else s[: n - 1] + "…"

    return cut(a), cut(b)

"""The heatmap pane: logit lens, attribution per cell, the selected node's activation, attention
patterns; one ImageItem with a colour bar and token labels. Clicking a cell selects the graph
nodes there; a selection outlines its cell. Reads and writes ``WorkbenchState`` only."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPen
from PySide6.QtWidgets import (QComboBox, QGraphicsRectItem, QHBoxLayout, QLabel, QSpinBox, QStackedWidget,
                               QVBoxLayout, QWidget)

from core.graph import FEATURE
from core.selection import SELECTION, THRESHOLD, VIEW, Change, WorkbenchState

NAME = "heatmap"
LENS, ATTRIBUTION, ACTIVATION, ATTENTION = "Logit lens: P(target)", "Attribution per cell", "Selected node: activation", "Attention pattern"


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


class HeatmapPane(QWidget):
    refreshed = Signal(str)

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__()
        self.state = state
        self.refresh_counts: dict[str, int] = {}
        self.rows: list[int] = []  # layer shown in each image row
        self.mode = QComboBox()
        self.mode.addItems([LENS, ATTRIBUTION, ACTIVATION, ATTENTION])
        self.mode.currentTextChanged.connect(lambda _t: self.redraw())
        self.layer_spin, self.head_spin = QSpinBox(), QSpinBox()
        for s, tip in ((self.layer_spin, "Layer of the attention pattern"), (self.head_spin, "Head")):
            s.setToolTip(tip)
            s.valueChanged.connect(lambda _v: self.redraw() if self.mode.currentText() == ATTENTION else None)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        bar = QHBoxLayout()
        bar.addWidget(self.mode, 1)
        bar.addWidget(QLabel("layer"))
        bar.addWidget(self.layer_spin)
        bar.addWidget(QLabel("head"))
        bar.addWidget(self.head_spin)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.invertY(False)
        for side in ("left", "bottom"):
            self.plot.getAxis(side).setTextPen("#222")
        self.image = _Image(self._cell_clicked)
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), width=12, interactive=False)
        self.colorbar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.outline = QGraphicsRectItem()
        pen = QPen(QColor("#f59e0b"))
        pen.setCosmetic(True)
        pen.setWidthF(3)
        self.outline.setPen(pen)
        self.outline.setZValue(10)
        self.outline.hide()
        self.plot.addItem(self.outline)
        # with nothing to draw, a sentence in place of the plot (empty axes show nonsense ranges)
        self.empty = QLabel("Run a trace to see heatmaps.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color: #555; background: white")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.caption)
        state.subscribe(self.on_change)
        self.redraw()

    @property
    def lens(self):
        """Heatmap data (``core.lens.LensData``) of the analysis on show, or None."""
        analysis = self.state.analysis
        return None if analysis is None else analysis.lens

    # -- state -> view ----------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        if change.what not in (VIEW, SELECTION, THRESHOLD):
            return
        self.refresh_counts[change.what] = self.refresh_counts.get(change.what, 0) + 1
        if change.what == VIEW and self.lens is not None:
            self.layer_spin.setRange(0, self.lens.patterns.shape[0] - 1)
            self.head_spin.setRange(0, self.lens.patterns.shape[1] - 1)
        if change.what == SELECTION and self._follow_selection():
            pass  # the mode's image changed with the selection: redraw below
        elif change.what == SELECTION:
            self._draw_outline()
            self.refreshed.emit(change.what)
            return
        self.redraw()
        self.refreshed.emit(change.what)

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
        v, d = self.state.view, self.lens
        mode = self.mode.currentText()
        tokens = d.tokens if d is not None else (v.x_labels if v is not None else [])
        if v is None and d is None:
            return None, [], [], "Run a trace to see heatmaps."
        if mode == LENS and d is not None:
            rows = ["emb"] + [f"L{l}" for l in range(d.n_layers)]
            self.rows = list(range(-1, d.n_layers))
            return d.lens_prob, rows, tokens, f"Probability of {d.target!r} reading each layer's residual stream (logit lens)"
        if mode == ATTENTION and d is not None:
            l, h = self.layer_spin.value(), self.head_spin.value()
            self.rows = []
            return d.patterns[l, h], tokens, tokens, f"Attention of layer {l}, head {h}: query (rows) × key (columns)"
        if mode == ACTIVATION:
            return self._activation(tokens)
        if v is None:
            return None, [], [], "No graph."
        # attribution per cell: influence of the visible nodes in each (layer, column)
        rows = sorted(set(int(r) for r in v.layer))
        self.rows = rows
        img = np.zeros((len(rows), len(v.x_labels)))
        vis = v.visible_nodes()
        r_index = {r: i for i, r in enumerate(rows)}
        np.add.at(img, ([r_index[int(r)] for r in v.layer[vis]], v.column[vis].astype(int)), v.size[vis])
        labels = [("emb" if v.kind == "attribution" else "input") if r < 0 else ("logits" if r == v.n_layers else f"L{r}")
                  for r in rows]
        what = "relative influence" if v.kind == "attribution" else "|node score|"
        return img, labels, v.x_labels, f"Sum of {what} of the visible nodes in each cell"

    def _activation(self, tokens):
        v, d, sel = self.state.view, self.lens, self.state.selected
        self.rows = []
        if v is None or len(sel) != 1:
            return None, [], [], "Select one node to see its activation over positions."
        i = sel[0]
        g = v.source
        if v.kind == "attribution" and int(g.kind[i]) == FEATURE and d is not None and g.meta.get("basis") == "neurons":
            row = d.mlp_post[int(g.layer[i]), :, int(g.index[i])]
            return row[None, :], [v.labels[i].split(" @")[0]], tokens, f"Activation of {v.labels[i]} at every position"
        if v.kind == "attribution":
            same = np.flatnonzero((g.kind == g.kind[i]) & (g.layer == g.layer[i]) & (g.index == g.index[i]))
            row = np.zeros(len(v.x_labels))
            row[g.pos[same]] = g.activation[same]
            return row[None, :], [v.labels[i]], v.x_labels, f"Activation of {v.labels[i]} where it is a graph node"
        return None, [], [], "Activations are shown for attribution-graph nodes."

    def redraw(self) -> None:
        img, rows, cols, caption = self.matrix()
        if img is None:
            self.image.clear()
            self.outline.hide()
            self.empty.setText(caption)
            self.caption.setText("")
            self.stack.setCurrentWidget(self.empty)
            return
        self.caption.setText(caption)
        self.stack.setCurrentWidget(self.plot)
        img = np.asarray(img, dtype=float)
        self.image.setImage(img.T, autoLevels=False)  # ImageItem: x = axis 0
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if hi <= lo:
            hi = lo + 1e-9
        self.colorbar.setLevels((lo, hi))
        self.image.setRect(QRectF(0, 0, img.shape[1], img.shape[0]))
        self._columns = list(cols)
        self._label_columns()
        ticks = [(r + 0.5, t) for r, t in enumerate(rows)]
        step = max(1, len(rows) // 12)  # crowded axes: label every step-th row, the rest as minor ticks
        self.plot.getAxis("left").setTicks([ticks[::step], ticks])
        self.plot.setRange(xRange=(0, img.shape[1]), yRange=(0, img.shape[0]), padding=0.02)
        self._draw_outline()

    def _label_columns(self) -> None:
        """Token labels under the columns: every column when they fit, else every step-th one
        (the rest as unlabelled ticks), so neighbouring labels never overlap."""
        cols = getattr(self, "_columns", [])
        labels = [_short(t) for t in cols]
        if not labels:
            return
        axis = self.plot.getAxis("bottom")
        fm = QFontMetrics(axis.style.get("tickFont") or self.plot.font())
        widest = max(fm.horizontalAdvance(t) for t in labels) + fm.horizontalAdvance("  ")
        room = max(1.0, self.plot.getViewBox().width() or self.plot.width())
        step = max(1, math.ceil(widest * len(labels) / room))
        ticks = [(c + 0.5, t) for c, t in enumerate(labels)]
        axis.setTicks([ticks[::step], [(x, "") for x, _ in ticks]])

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._label_columns()  # the room for labels changed

    def _draw_outline(self) -> None:
        cell = self.state.cell
        if cell is None or not self.rows or cell[0] not in self.rows:
            self.outline.hide()
            return
        r = self.rows.index(cell[0])
        self.outline.setRect(QRectF(cell[1], r, 1, 1))
        self.outline.show()

    # -- user -> state ----------------------------------------------------------------------------
    def _cell_clicked(self, row: int, col: int) -> None:
        self.click_cell(row, col)

    def click_cell(self, row: int, col: int) -> None:
        """A click on image cell (row, col): select the graph nodes at that (layer, column)."""
        if not self.rows or not 0 <= row < len(self.rows) or self.state.view is None:
            return
        self.state.select_cell(self.rows[row], col, source=NAME)


def _short(token: str, n: int = 8) -> str:
    t = token.replace("\n", "⏎")
    return t if len(t) <= n else t[: n - 1] + "…"

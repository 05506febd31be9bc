"""The circuit graph pane: nodes as one scatter item, edges as a few batched paths (by sign and
magnitude), a live threshold slider, find, fit. Reads and writes ``WorkbenchState`` only."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSlider,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.selection import ANNOTATION, HOVER, INTERVENTION, SELECTION, THRESHOLD, VIEW, Change, WorkbenchState
from core.view import CATEGORIES, CATEGORY_COLOURS, GROUP_COLOUR, NEGATIVE, POSITIVE

NAME = "graph"
BINS = (0.0, 0.15, 0.4, 1.01)  # |weight| / max, three widths
MAX_DRAWN_EDGES = 3000  # the strongest visible edges are drawn (plus every edge of the selection)
PREVIEW_EDGES = 400  # while the view pans/zooms, only the strongest edges are drawn...
SETTLE_MS = 150  # ...until it has been still this long
DRAG_MS = 80  # a dragged threshold slider re-prunes at most this often


def _edge_path(x0, y0, x1, y1) -> QPainterPath:
    """One path of straight segments (x0, y0) -> (x1, y1)."""
    xs = np.empty(2 * len(x0))
    ys = np.empty(2 * len(x0))
    xs[0::2], xs[1::2], ys[0::2], ys[1::2] = x0, x1, y0, y1
    return pg.arrayToQPath(xs, ys, connect="pairs")


class GraphPane(QWidget):
    refreshed = Signal(str)  # the change kind a refresh handled (tests count these)

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__()
        self.state = state
        self.refresh_counts: dict[str, int] = {}
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.showGrid(x=False, y=True, alpha=0.15)
        for side in ("left", "bottom"):
            ax = self.plot.getAxis(side)
            ax.setTextPen("#222")
            ax.setPen("#888")
        # Edges: long translucent lines cost pixels, not Python (a wide pen costs twice a 1-pixel
        # one, so magnitude is alpha). The full set is cached as a device-space pixmap, so hover
        # and selection repaints only blit it; while the view pans or zooms only the strongest
        # PREVIEW_EDGES are drawn, and the full set returns once the view has settled.
        self.edge_items = [self._path_item(sign, (40, 100, 230)[b], 1.0, cached=True)
                           for sign in (POSITIVE, NEGATIVE) for b in range(len(BINS) - 1)]
        self.preview_items = [self._path_item(sign, 160, 1.0, cached=False) for sign in (POSITIVE, NEGATIVE)]
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self.settle)
        self.plot.getViewBox().sigRangeChanged.connect(self._view_moved)
        self.nodes = pg.ScatterPlotItem(pxMode=True, hoverable=True, tip=self._tip,
                                        hoverPen=pg.mkPen("#111", width=2))
        self.nodes.sigClicked.connect(self._clicked)
        # shared objects: pyqtgraph's symbol atlas then holds a handful of node images
        self._brushes = [pg.mkBrush(CATEGORY_COLOURS[c]) for c in CATEGORIES]
        self._pens = [pg.mkPen("#ffffff", width=0.8), pg.mkPen("#111", width=2)]  # plain, pinned
        self._group_brush = pg.mkBrush(GROUP_COLOUR)  # supernodes: teal squares
        self.drawn = None  # core.view.Drawing on show
        self.plot.addItem(self.nodes)
        self.rings = pg.ScatterPlotItem(pxMode=True, brush=pg.mkBrush(0, 0, 0, 0), pen=pg.mkPen("#f59e0b", width=3))
        self.rings.setZValue(10)
        self.plot.addItem(self.rings)
        self.labels: list[pg.TextItem] = []

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setToolTip("Pruning threshold: keep the nodes/edges covering this share of influence")
        self.slider.valueChanged.connect(self._slider_moved)
        self._drag = QTimer(self)  # while the handle is dragged, re-prune at most every DRAG_MS
        self._drag.setSingleShot(True)
        self._drag.setInterval(DRAG_MS)
        self._drag.timeout.connect(self._apply_slider)
        self.slider.sliderReleased.connect(self._apply_slider)
        self.threshold_label = QLabel("")
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("Find node (Ctrl+F)…")
        self.find_edit.setClearButtonEnabled(True)
        self.find_edit.returnPressed.connect(self.find_next)
        self._find_hits: list[int] = []
        self._find_at = -1
        self.pinned_only = QToolButton()
        self.pinned_only.setText("Pinned only")
        self.pinned_only.setCheckable(True)
        self.pinned_only.setToolTip("Show only the pinned nodes and every edge among them (the pinned subgraph)")
        self.pinned_only.toggled.connect(lambda _on: self._draw_all())
        fit = QToolButton()
        fit.setText("Fit")
        fit.setToolTip("Fit the graph in view (F)")
        fit.clicked.connect(self.fit)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Threshold"))
        bar.addWidget(self.slider, 2)
        bar.addWidget(self.threshold_label)
        bar.addWidget(self.find_edit, 1)
        bar.addWidget(self.pinned_only)
        bar.addWidget(fit)
        # with no graph, a sentence in place of the plot (empty axes show nonsense ranges)
        self.empty_label = QLabel("Run a trace or a circuit to see it here, or open a session (Ctrl+Alt+O).")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setStyleSheet("color: #555; background: white")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty_label)
        self.stack.addWidget(self.plot)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        layout.addWidget(self.stack, 1)
        self._set_enabled(False)
        state.subscribe(self.on_change)

    def _path_item(self, rgb, alpha: int, width: float, cached: bool) -> QGraphicsPathItem:
        item = QGraphicsPathItem()
        pen = QPen(QColor(*rgb, alpha))
        pen.setCosmetic(True)
        pen.setWidthF(width)
        item.setPen(pen)
        item.setZValue(-10)
        if cached:
            item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        else:
            item.hide()
        self.plot.addItem(item)
        return item

    def _view_moved(self, *_args) -> None:
        """Pans and zooms redraw the edges: show the preview until the view settles."""
        if self.state.view is not None and len(self.state.view.visible_edges()) > PREVIEW_EDGES:
            self._show_preview(True)
            self._settle.start()

    def _slider_moved(self, _value: int) -> None:
        if self.slider.isSliderDown():
            if not self._drag.isActive():
                self._drag.start()
        else:  # keys, wheel, a click on the groove: one step each
            self._apply_slider()

    def _apply_slider(self) -> None:
        self._drag.stop()
        self.state.set_threshold(self.slider.value() / 100, source=NAME)

    def settle(self) -> None:
        """Draw the full edge set now (the view stopped moving, or moved programmatically)."""
        self._settle.stop()
        self._show_preview(False)

    def _show_preview(self, on: bool) -> None:
        if self.preview_items[0].isVisible() == on:
            return
        for item in self.edge_items:
            item.setVisible(not on)
        for item in self.preview_items:
            item.setVisible(on)

    # -- state -> view ----------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        if change.what in (HOVER, INTERVENTION):
            return
        self.refresh_counts[change.what] = self.refresh_counts.get(change.what, 0) + 1
        if change.what == VIEW:
            self._draw_all()
            self.fit()
        elif change.what in (THRESHOLD, ANNOTATION):
            self._draw_all()
        elif change.what == SELECTION:
            v = self.state.view
            if v is not None and len(v.visible_edges()) > MAX_DRAWN_EDGES:
                self._draw_all()  # the selection's own edges join the drawn ones
            else:
                self._draw_selection()
        self.refreshed.emit(change.what)

    def _set_enabled(self, on: bool) -> None:
        for w in (self.slider, self.find_edit, self.pinned_only):
            w.setEnabled(on)

    def _draw_all(self) -> None:
        v = self.state.view
        self.stack.setCurrentWidget(self.plot if v is not None else self.empty_label)
        self._set_enabled(v is not None)
        if v is None:
            self.drawn = None
            self.nodes.setData([])
            for item in self.edge_items + self.preview_items:
                item.setPath(QPainterPath())
            self._draw_selection()
            return
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(self.state.threshold * 100)))
        self.slider.blockSignals(False)
        only = set(self.state.pinned) if self.pinned_only.isChecked() and self.state.pinned else None
        d = self.drawn = v.drawing(self.state.groups, only)
        edges = np.arange(len(d.weight))
        text = f"{self.state.threshold:.2f} · {len(v.visible_nodes())} nodes · {len(v.visible_edges())} edges"
        if only is not None:
            text = f"pinned subgraph · {len(only)} nodes · {len(edges)} edges"
        self.threshold_label.setText(text)
        self.threshold_label.setToolTip("")
        if len(edges) > MAX_DRAWN_EDGES:  # a hairball helps nobody: draw the strongest, say so
            keep = edges[np.argsort(-np.abs(d.weight), kind="stable")[:MAX_DRAWN_EDGES]]
            sel = np.unique(d.rep[np.asarray(self.state.selected, dtype=int)])
            if len(sel):
                keep = np.union1d(keep, edges[np.isin(d.src, sel) | np.isin(d.dst, sel)])
            edges = keep
            self.threshold_label.setToolTip(f"{text}; the strongest {MAX_DRAWN_EDGES} edges (and the selection's) are drawn")
        # edges, batched by sign and |weight| bin
        w = d.weight[edges]
        top = np.abs(w).max() if len(w) else 1.0
        rel = np.abs(w) / top if top > 0 else np.zeros_like(w)
        k = 0
        for positive in (True, False):
            for b in range(len(BINS) - 1):
                self.edge_items[k].setPath(self._edges_path(d, edges[((w >= 0) == positive) & (rel >= BINS[b]) & (rel < BINS[b + 1])]))
                k += 1
        strongest = edges[np.argsort(-np.abs(w), kind="stable")[:PREVIEW_EDGES]]
        for item, positive in zip(self.preview_items, (True, False)):
            item.setPath(self._edges_path(d, strongest[(d.weight[strongest] >= 0) == positive]))
        pinned = np.isin(d.nodes, list(self.state.pinned))
        brushes = [self._group_brush if g else self._brushes[c] for c, g in zip(d.category, d.is_group)]
        self.nodes.setData(x=d.x, y=d.y, data=d.nodes, size=7 + 15 * np.sqrt(d.size), brush=brushes,
                           pen=[self._pens[p] for p in pinned.astype(int)],
                           symbol=["s" if g else "o" for g in d.is_group])
        ax = self.plot.getAxis("bottom")
        ax.setTicks([[(column_x(v, i), _short(t)) for i, t in enumerate(v.x_labels)]])
        first = "emb" if v.kind == "attribution" else "input"
        left = [(0, first)] + [(l + 1, f"L{l}") for l in range(v.n_layers)] + [(v.n_layers + 1, "logits")]
        self.plot.getAxis("left").setTicks([left[:: max(1, len(left) // 16)] + [left[-1]], left])
        for t in self.labels:
            self.plot.removeItem(t)
        self.labels = []
        drawn = set(d.nodes.tolist())
        for node, label in d.group_labels.items():
            if node not in drawn:
                continue
            x, y, _ = d.position([node])
            t = pg.TextItem(f"⟨{label}⟩", color="#0f5257", anchor=(0.5, 1.3))
            t.setPos(float(x[0]), float(y[0]))
            self.plot.addItem(t)
            self.labels.append(t)
        self._draw_selection()

    @staticmethod
    def _edges_path(d, edges: np.ndarray) -> QPainterPath:
        at_s, at_d = np.searchsorted(d.nodes, d.src[edges]), np.searchsorted(d.nodes, d.dst[edges])
        return _edge_path(d.x[at_s], d.y[at_s], d.x[at_d], d.y[at_d])

    def _draw_selection(self) -> None:
        d = self.drawn
        sel = np.asarray(self.state.selected, dtype=int)
        if self.state.view is None or d is None or not len(sel):
            self.rings.setData([])
            return
        shown = np.unique(d.rep[sel])
        shown = shown[np.isin(shown, d.nodes)]
        x, y, size = d.position(shown)
        self.rings.setData(x=x, y=y, size=11 + 15 * np.sqrt(size))

    def fit(self) -> None:
        v = self.state.view
        if v is None:
            self.plot.setRange(xRange=(-1, 1), yRange=(-1, 1))
            return
        self.plot.setRange(xRange=(v.x.min() - 0.6, v.x.max() + 0.6), yRange=(v.y.min() - 0.6, v.y.max() + 0.6),
                           padding=0.02)
        self.settle()

    def _tip(self, x, y, data) -> str:
        v = self.state.view
        if v is None or data is None:
            return ""
        i = int(data)
        group = self.state.group_of(i)
        if group is not None:
            names = [v.labels[n] for n in group.nodes]
            more = f", … ({len(names) - 6} more)" if len(names) > 6 else ""
            return f"⟨{group.label}⟩ supernode of {len(names)} nodes\n" + ", ".join(names[:6]) + more
        note = self.state.notes.get(i)
        parts = [v.labels[i] + (f"  “{note}”" if note else ""), f"{CATEGORIES[v.category[i]]} · layer {v.layer[i]} · column {v.column[i]}"]
        if v.values is not None and np.isfinite(v.values[i]):
            parts.append(("activation" if v.kind == "attribution" else "node score") + f" {v.values[i]:.4g}")
        parts.append(f"relative influence {v.size[i]:.3f}")
        ins = v.incoming(i, 3, visible_only=True)
        if ins:
            parts.append("from: " + ", ".join(f"{v.labels[s]} ({w:+.3g})" for s, w in ins))
        return "\n".join(parts)

    # -- user -> state ----------------------------------------------------------------------------
    def _clicked(self, _item, points, ev) -> None:
        if not len(points):
            return
        node = int(points[0].data())
        extend = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        self.click_node(node, extend)
        ev.accept()

    def click_node(self, node: int, extend: bool = False) -> None:
        """A click on a node (shift: add/remove it); a grouped node selects its whole group."""
        group = self.state.group_of(node)
        nodes = group.nodes if group else (node,)
        self.state.select(nodes, source=NAME, extend=extend)

    def find_next(self) -> None:
        v = self.state.view
        if v is None:
            return
        text = self.find_edit.text().strip().lower()
        noted = [n for n, note in sorted(self.state.notes.items()) if text and text in note.lower()]
        hits = noted + [n for n in v.find(text) if n not in noted]  # your labels first
        if hits != self._find_hits:
            self._find_hits, self._find_at = hits, -1
        if not hits:
            self.find_edit.setStyleSheet("background: #fde2e2")
            return
        self.find_edit.setStyleSheet("")
        self._find_at = (self._find_at + 1) % len(hits)
        node = hits[self._find_at]
        if node not in set(v.visible_nodes().tolist()):
            self.state.pin([node], source=NAME)
        self.state.select([node], source=NAME)
        self.plot.setRange(xRange=(v.x[node] - 3, v.x[node] + 3), yRange=(v.y[node] - 4, v.y[node] + 4))
        self.settle()


def column_x(v, column: int) -> float:
    """Where column ``column``'s label goes: under its nodes. A circuit's MLPs are drawn half a
    column right of the last head (core.view.from_circuit), so their label moves with them."""
    mlp = np.flatnonzero((v.column == column) & (v.category == CATEGORIES.index("mlp")))
    return float(v.x[mlp[0]]) if v.kind == "circuit" and len(mlp) else float(column)


def _short(token: str, n: int = 10) -> str:
    t = token.replace("\n", "⏎")
    return t if len(t) <= n else t[: n - 1] + "…"

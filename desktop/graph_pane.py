"""The circuit graph pane: nodes as one scatter item, edges as a few batched paths (by sign and
magnitude), a live threshold slider, the drawing cap (nodes drawn, incoming edges per node), labels
on the canvas, a focus on the selected or hovered node, the graph's scores, find, fit. Reads and
writes ``WorkbenchState`` only; what is drawn is decided in ``core.view``."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainterPath, QPen
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.selection import ANNOTATION, ATLAS, HOVER, INTERVENTION, SELECTION, THRESHOLD, VIEW, Change, WorkbenchState
from core.view import CATEGORIES, CATEGORY_COLOURS, GROUP_COLOUR, NEGATIVE, POSITIVE, nearest_segment, place_labels, short_token

NAME = "graph"
BINS = (0.0, 0.15, 0.4, 1.01)  # |weight| / max, three widths
MAX_DRAWN_EDGES = 3000  # the strongest visible edges are drawn (plus every edge of the selection)
PREVIEW_EDGES = 400  # while the view pans/zooms, only the strongest edges are drawn...
SETTLE_MS = 150  # ...until it has been still this long
DRAG_MS = 80  # a dragged threshold slider re-prunes at most this often
DIM_EDGES = 0.12  # opacity of the edges outside a focus
FOCUS_EDGES = 30  # a focused node's strongest edges drawn, in and out
FOCUS_STYLE = ((235, 3.5), (210, 2.0), (150, 1.0))  # (alpha, width) by |weight| / the focus's largest, as BINS
DIM_ALPHA = 45  # alpha of the nodes outside a focus
LABEL_POINTS = 9  # canvas labels' font size
MAX_LABEL_ROWS = 4  # rows of logit labels stacked above the top row at most
EDGE_PICK_PX = 5  # how near the pointer must be to an edge to name it
SELECTED_PEN = ("#111111", 3.0)  # a selected node: a thick dark ring
PINNED_PEN = ("#f59e0b", 2.5)  # a pinned node: an amber outline


def _edge_path(x0, y0, x1, y1) -> QPainterPath:
    """One path of straight segments (x0, y0) -> (x1, y1)."""
    xs = np.empty(2 * len(x0))
    ys = np.empty(2 * len(x0))
    xs[0::2], xs[1::2], ys[0::2], ys[1::2] = x0, x1, y0, y1
    return pg.arrayToQPath(xs, ys, connect="pairs")


def _brush(colour: str, alpha: int = 255):
    c = QColor(colour)
    c.setAlpha(alpha)
    return pg.mkBrush(c)


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
        # a focused node's own edges, over the dimmed rest: (direction, positive, bin) -> item;
        # incoming solid, outgoing dashed, the sign in the colour, |weight| in width and alpha
        self.focus_items = {}
        for direction in ("in", "out"):
            for sign in (POSITIVE, NEGATIVE):
                for b, (alpha, width) in enumerate(FOCUS_STYLE):
                    item = self._path_item(sign, alpha, width, cached=False)
                    if direction == "out":
                        pen = item.pen()
                        pen.setStyle(Qt.PenStyle.DashLine)
                        item.setPen(pen)
                    item.setZValue(-5)
                    self.focus_items[direction, sign == POSITIVE, b] = item
        self.nodes = pg.ScatterPlotItem(pxMode=True, hoverable=True, tip=self._tip,
                                        hoverPen=pg.mkPen("#111", width=2))
        self.nodes.sigClicked.connect(self._clicked)
        self.nodes.sigHovered.connect(self._nodes_hovered)
        # shared objects: pyqtgraph's symbol atlas then holds a handful of node images
        self._brushes = [_brush(CATEGORY_COLOURS[c]) for c in CATEGORIES]
        self._dim_brushes = [_brush(CATEGORY_COLOURS[c], DIM_ALPHA) for c in CATEGORIES]  # outside a focus
        self._group_brush = _brush(GROUP_COLOUR)  # supernodes: teal squares
        self._dim_group_brush = _brush(GROUP_COLOUR, DIM_ALPHA)
        self._pens = [pg.mkPen("#ffffff", width=0.8), pg.mkPen(PINNED_PEN[0], width=PINNED_PEN[1])]  # plain, pinned
        self._dim_pen = pg.mkPen(255, 255, 255, DIM_ALPHA, width=0.8)
        self.drawn = None  # core.view.Drawing on show
        self.focus = None  # core.view.Focus of the hovered node, else of the selection (None: no focus)
        self._hovered = None  # the node under the pointer (drawn id)
        self._hover_dismissed = None  # the node under the pointer when Esc was pressed
        self._hover_edge = None  # (source, destination, weight) of the edge under the pointer
        self._edges_shown = np.zeros(0, int)  # indices of the Drawing's edges drawn
        self._caption_text = ""
        self.plot.addItem(self.nodes)
        self.rings = pg.ScatterPlotItem(pxMode=True, brush=pg.mkBrush(0, 0, 0, 0),
                                        pen=pg.mkPen(SELECTED_PEN[0], width=SELECTED_PEN[1]))
        self.rings.setZValue(10)
        self.plot.addItem(self.rings)
        self.labels: list[pg.TextItem] = []  # supernodes' labels
        self.node_labels: list[pg.TextItem] = []  # logits', the most influential nodes', the focus's
        self._label_specs: list[tuple[int, str, str]] = []  # (node, text, role) of each node label
        self._label_font = QFont()
        self._label_font.setPointSize(LABEL_POINTS)
        self.plot.scene().sigMouseClicked.connect(self._scene_clicked)
        self.plot.scene().sigMouseMoved.connect(self._mouse_moved)
        self.plot.installEventFilter(self)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setToolTip("Pruning threshold: keep the nodes/edges covering this share of influence")
        self.slider.valueChanged.connect(self._slider_moved)
        self._drag = QTimer(self)  # while the handle is dragged, re-prune at most every DRAG_MS
        self._drag.setSingleShot(True)
        self._drag.setInterval(DRAG_MS)
        self._drag.timeout.connect(self._apply_slider)
        self.slider.sliderReleased.connect(self._apply_slider)
        self.slider.sliderReleased.connect(self._show_scores)  # skipped while the handle was dragged
        self.threshold_label = QLabel("")
        # the drawing cap: 0 = all
        self.max_nodes_spin = QSpinBox()
        self.max_nodes_spin.setRange(0, 100_000)
        self.max_nodes_spin.setSingleStep(25)
        self.max_nodes_spin.setSpecialValueText("all")
        self.max_nodes_spin.setKeyboardTracking(False)
        self.max_nodes_spin.setToolTip("Nodes drawn at most: the most influential nodes of the pruned graph that "
                                       "connect to the logits, plus every logit, pinned node and the token "
                                       "embeddings that still connect (all: no limit)")
        self.edges_spin = QSpinBox()
        self.edges_spin.setRange(0, 1000)
        self.edges_spin.setSpecialValueText("all")
        self.edges_spin.setKeyboardTracking(False)
        self.edges_spin.setToolTip("Incoming edges drawn at most per node: the strongest, after one way up for "
                                   "every node (all: every edge of the pruned graph among the drawn nodes). "
                                   "Select a node to see all of its edges.")
        for spin in (self.max_nodes_spin, self.edges_spin):
            spin.valueChanged.connect(self._cap_changed)
        self.caption = QLabel("")  # what is drawn out of the pruned graph; the hovered edge
        self.caption.setStyleSheet("color: #333")
        self.scores_label = QLabel("")  # the graph's scores
        self.scores_label.setStyleSheet("color: #333")
        self.scores_label.setWordWrap(True)
        self.scores_label.setToolTip(
            "Attribution graph: the replacement score is the share of the logits' influence that flows from the "
            "embeddings through features rather than error nodes; the completeness score the share of the nodes' "
            "inputs explained by non-error nodes (full graph, then the pruned graph at the current threshold). "
            "Circuit: faithfulness of the chosen circuit, CPR (area under the faithfulness curve, higher is better) "
            "and CMD (area between the curve and 1, lower is better).")
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("Find node (Ctrl+F)…")
        self.find_edit.setClearButtonEnabled(True)
        self.find_edit.setToolTip("Find a node by its label or yours; with a feature atlas, also by a feature's atlas "
                                  "label or the text of its top examples (Enter: the next match)")
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
        info = QHBoxLayout()  # what is drawn, and the cap that decides it
        info.addWidget(self.caption, 1)
        self.cap_labels = (QLabel("Nodes ≤"), QLabel("In-edges ≤"))
        for label, spin in zip(self.cap_labels, (self.max_nodes_spin, self.edges_spin)):
            label.setToolTip(spin.toolTip())
            info.addWidget(label)
            info.addWidget(spin)
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
        layout.addLayout(info)
        layout.addWidget(self.scores_label)
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
        """Pans and zooms redraw the edges: show the preview until the view settles (then the
        labels are placed again for the new scale)."""
        d = self.drawn
        if d is not None and len(d.weight) > PREVIEW_EDGES:
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

    def _cap_changed(self, _value: int = 0) -> None:
        self.state.set_cap(self.max_nodes_spin.value() or None, self.edges_spin.value() or None, source=NAME)

    def settle(self) -> None:
        """Draw the full edge set now (the view stopped moving, or moved programmatically)."""
        self._settle.stop()
        self._show_preview(False)
        self._place_labels()

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
            self._hovered = self._hover_dismissed = None
            self._draw_all()
            self.fit()
        elif change.what in (THRESHOLD, ANNOTATION):
            self._draw_all()
        elif change.what == SELECTION:
            self._draw_focus()
        elif change.what == ATLAS:  # feature nodes without your label take their atlas label
            self._draw_labels()
        self.refreshed.emit(change.what)

    def _set_enabled(self, on: bool) -> None:
        for w in (self.slider, self.find_edit, self.pinned_only):
            w.setEnabled(on)
        capped = on and self.state.view.capped
        for w in (self.max_nodes_spin, self.edges_spin) + self.cap_labels:
            w.setEnabled(capped)

    def _sync_cap(self) -> None:
        for spin, value in ((self.max_nodes_spin, self.state.max_nodes), (self.edges_spin, self.state.edges_per_node)):
            spin.blockSignals(True)
            spin.setValue(value or 0)
            spin.blockSignals(False)

    def _draw_all(self) -> None:
        v = self.state.view
        self.stack.setCurrentWidget(self.plot if v is not None else self.empty_label)
        self._set_enabled(v is not None)
        self._sync_cap()
        if v is None:
            self.drawn = None
            self.nodes.setData([])
            for item in self.edge_items + self.preview_items:
                item.setPath(QPainterPath())
            self.caption.setText("")
            self.scores_label.setText("")
            self._draw_focus()
            return
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(self.state.threshold * 100)))
        self.slider.blockSignals(False)
        only = set(self.state.pinned) if self.pinned_only.isChecked() and self.state.pinned else None
        d = self.drawn = v.drawing(self.state.groups, only)
        edges = np.arange(len(d.weight))
        self.threshold_label.setText(f"{self.state.threshold:.2f}")
        if only is not None:
            text = f"Pinned subgraph: {len(d.nodes)} nodes · {len(edges):,} edges"
        elif v.capped:
            text = (f"Drawn: {len(v.visible_nodes())} of {len(v.pruned_nodes())} nodes, "
                    f"{len(v.visible_edges()):,} of {len(v.pruned_edges()):,} edges")
        else:
            text = f"{len(v.visible_nodes())} nodes · {len(v.visible_edges()):,} edges"
        self.caption.setToolTip("Nodes and edges drawn, out of the pruned graph's at this threshold"
                                if v.capped and only is None else "")
        if len(edges) > MAX_DRAWN_EDGES:  # a hairball helps nobody: draw the strongest, say so
            edges = edges[np.argsort(-np.abs(d.weight), kind="stable")[:MAX_DRAWN_EDGES]]
            self.caption.setToolTip(f"The strongest {MAX_DRAWN_EDGES} edges are drawn "
                                    "(select a node for all of its own)")
        self._caption_text = text
        self._hover_edge = None
        self.caption.setText(text)
        self._show_scores()
        self._edges_shown = edges
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
        self.nodes.setData(x=d.x, y=d.y, data=d.nodes, size=7 + 15 * np.sqrt(d.size),
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
        self._draw_focus()

    def _show_scores(self) -> None:
        """The graph's scores (a pruned graph's are computed anew at each threshold: not while the
        slider's handle is dragged)."""
        v = self.state.view
        if v is None:
            self.scores_label.setText("")
        elif not self.slider.isSliderDown():
            self.scores_label.setText(v.scores_text())

    @staticmethod
    def _edges_path(d, edges: np.ndarray) -> QPainterPath:
        return GraphPane._segments(d, d.src[edges], d.dst[edges])

    @staticmethod
    def _segments(d, src: np.ndarray, dst: np.ndarray) -> QPainterPath:
        at_s, at_d = np.searchsorted(d.nodes, src), np.searchsorted(d.nodes, dst)
        return _edge_path(d.x[at_s], d.y[at_s], d.x[at_d], d.y[at_d])

    def _draw_focus(self) -> None:
        """Ring the selection; bring the hovered node (else the selection) and its edges forward,
        dimming everything not directly connected to it."""
        d, v = self.drawn, self.state.view
        for item in self.focus_items.values():
            item.setPath(QPainterPath())
            item.hide()
        if v is None or d is None:
            self.rings.setData([])
            self.focus = None
            self._draw_labels()
            return
        sel = np.asarray(self.state.selected, dtype=int)
        shown = np.unique(d.rep[sel]) if len(sel) else sel
        shown = shown[np.isin(shown, d.nodes)]
        if len(shown):
            x, y, size = d.position(shown)
            self.rings.setData(x=x, y=y, size=12 + 15 * np.sqrt(size))
        else:
            self.rings.setData([])
        target = [self._hovered] if self._hovered is not None else list(self.state.selected)
        focus = d.focus(target, FOCUS_EDGES) if target else None
        self.focus = focus if focus is not None and len(focus.nodes) else None
        for item in self.edge_items + self.preview_items:
            item.setOpacity(DIM_EDGES if self.focus is not None else 1.0)
        if self.focus is not None:
            f = self.focus
            links = np.concatenate([f.incoming, f.outgoing])
            top = np.abs(d.link_weight[links]).max() if len(links) else 1.0
            for direction, idx in (("in", f.incoming), ("out", f.outgoing)):
                w = d.link_weight[idx]
                rel = np.abs(w) / top if top > 0 else np.zeros_like(w)
                for (dir_, positive, b), item in self.focus_items.items():
                    lo, hi = BINS[len(BINS) - 2 - b], BINS[len(BINS) - 1 - b]  # bin 0: the strongest
                    pick = idx[((w >= 0) == positive) & (rel >= lo) & (rel < hi)] if dir_ == direction else idx[:0]
                    if len(pick):
                        item.setPath(self._segments(d, d.link_src[pick], d.link_dst[pick]))
                        item.show()
        self._style_nodes()
        self._draw_labels()

    def _style_nodes(self) -> None:
        d = self.drawn
        if d is None or not len(d.nodes):
            return
        pinned = np.isin(d.nodes, list(self.state.pinned))
        near = np.isin(d.nodes, self.focus.neighbours) if self.focus is not None else np.ones(len(d.nodes), bool)
        brushes = [(self._group_brush if n else self._dim_group_brush) if g
                   else (self._brushes if n else self._dim_brushes)[c] for c, g, n in zip(d.category, d.is_group, near)]
        pens = [self._pens[1] if p else (self._pens[0] if n else self._dim_pen) for p, n in zip(pinned, near)]
        self.nodes.setBrush(brushes)
        self.nodes.setPen(pens)

    def _draw_labels(self) -> None:
        """Label the logits, the most influential drawn nodes (your label where you gave one) and
        the focus on the canvas, placed so they do not overlap."""
        for t in self.node_labels:
            self.plot.removeItem(t)
        self.node_labels = []
        v, d = self.state.view, self.drawn
        self._label_specs = [] if v is None or d is None else v.canvas_labels(d, self.state.notes, focus=self.focus,
                                                                                   atlas=self.state.atlas)
        near = set(self.focus.neighbours.tolist()) if self.focus is not None else None
        for node, text, role in self._label_specs:
            colour = "#14532d" if role == "logit" else "#111111"
            item = pg.TextItem(text, color=colour, anchor=(0, 0), fill=pg.mkBrush(255, 255, 255, 215))
            item.setFont(self._label_font)
            item.textItem.document().setDocumentMargin(1)
            if near is not None and node not in near:
                item.setOpacity(0.35)
            item.setZValue(20)
            self.plot.addItem(item)
            self.node_labels.append(item)
        self._place_labels()

    def _place_labels(self) -> None:
        d, items, specs = self.drawn, self.node_labels, self._label_specs
        if d is None or not items:
            return
        vb = self.plot.getViewBox()
        (x0, x1), (y0, y1) = vb.viewRange()
        width, height = vb.width(), vb.height()
        if width < 10 or height < 10 or x1 <= x0 or y1 <= y0:
            return
        pw, ph = (x1 - x0) / width, (y1 - y0) / height  # view units per pixel
        x, y, size = d.position([node for node, _, _ in specs])
        px, py = (x - x0) / pw, (y1 - y) / ph
        radius = (7 + 15 * np.sqrt(size)) / 2
        fm = QFontMetricsF(self._label_font)
        w = np.array([fm.horizontalAdvance(text) + 6 for _, text, _ in specs])
        h = np.full(len(specs), fm.height() + 4)
        is_logit = np.array([role == "logit" for _, _, role in specs])
        top = radius[is_logit].max() if is_logit.any() else 0.0  # the logits' label rows line up
        offsets = []
        for r, wi, hi, (_, _, role) in zip(radius, w, h, specs):
            if role == "logit":  # in rows above the top row
                offsets.append([(-wi / 2, -top - 2 - hi - j * hi) for j in range(MAX_LABEL_ROWS)])
            else:
                offsets.append([(r + 3, -hi / 2), (-r - 3 - wi, -hi / 2), (r, -r - hi), (r, r),
                                (-wi / 2, -r - hi - 2), (-wi / 2, r + 2)])
        required = np.array([role in ("logit", "focus") for _, _, role in specs])
        picks = place_labels(px, py, w, h, offsets, required, bounds=(0, 0, width, height))
        for item, pick, xi, yi, opts in zip(items, picks, x, y, offsets):
            if pick < 0:
                item.hide()
                continue
            dx, dy = opts[pick]
            item.setPos(float(xi + dx * pw), float(yi - dy * ph))
            item.show()

    def drawn_labels(self) -> list[str]:
        """The node labels shown on the canvas now."""
        return [t.toPlainText() for t in self.node_labels if t.isVisible()]

    def fit(self) -> None:
        v = self.state.view
        if v is None:
            self.plot.setRange(xRange=(-1, 1), yRange=(-1, 1))
            return
        x0, x1 = v.x.min() - 0.6, v.x.max() + 0.6
        y0, y1 = v.y.min() - 0.6, v.y.max() + 0.6
        vb = self.plot.getViewBox()
        room_px = self._logit_label_rows(x1 - x0, vb.width()) * (QFontMetricsF(self._label_font).height() + 4) + 6
        h = vb.height()
        room = (y1 - y0) * room_px / max(h - room_px, 60.0) if h > 0 else 1.0  # the logits' labels
        self.plot.setRange(xRange=(x0, x1), yRange=(y0, y1 + room), padding=0.02)
        self.settle()

    def _logit_label_rows(self, x_span: float, width_px: float) -> int:
        """How many rows the logits' labels need above the top row, staggered so none overlaps."""
        d, v = self.drawn, self.state.view
        logits = [(node, text) for node, text, role in self._label_specs if role == "logit"]
        if d is None or v is None or len(logits) < 2 or width_px <= 0:
            return 1
        fm = QFontMetricsF(self._label_font)
        widest = max(fm.horizontalAdvance(text) + 6 for _, text in logits)
        gap = np.diff(np.sort(d.position([n for n, _ in logits])[0])).min() * width_px / max(x_span, 1e-9)
        return int(min(MAX_LABEL_ROWS, max(1, np.ceil(widest / max(gap, 1.0)))))

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
        parts = [v.node_title(i, self.state.notes, self.state.atlas),
                 f"{CATEGORIES[v.category[i]]} · layer {v.layer[i]} · column {v.column[i]}"]
        if v.values is not None and np.isfinite(v.values[i]):
            parts.append(("activation" if v.kind == "attribution" else "node score") + f" {v.values[i]:.4g}")
        parts.append(f"relative influence {v.size[i]:.3f}")
        if i in self.state.pinned:
            parts.append("pinned")
        ins = v.incoming(i, 3, visible_only=True)
        if ins:
            parts.append("from: " + ", ".join(f"{v.labels[s]} ({w:+.3g})" for s, w in ins))
        return "\n".join(parts)

    def _name(self, node: int) -> str:
        group = self.state.group_of(node)
        return f"⟨{group.label}⟩" if group is not None else self.state.view.labels[node]

    # -- pointer: hover focus, edges under the pointer ------------------------------------------------
    def _nodes_hovered(self, _item, points, _ev) -> None:
        node = int(points[0].data()) if len(points) else None
        if node is not None and node == self._hover_dismissed:  # Esc dismissed it: none until the pointer leaves
            return
        self._hover_dismissed = None
        if node != self._hovered:
            self._hovered = node
            self._draw_focus()

    def _mouse_moved(self, scene_pos) -> None:
        """Name the edge under the pointer (weight and both ends) in the caption and a tooltip."""
        edge = None
        vb = self.plot.getViewBox()
        if self.drawn is not None and self.state.view is not None and vb.sceneBoundingRect().contains(scene_pos):
            p = vb.mapSceneToView(scene_pos)
            if not len(self.nodes.pointsAt(p)):
                edge = self.edge_at(p.x(), p.y())
        self._show_edge(edge)

    def edge_at(self, x: float, y: float) -> tuple[int, int, float] | None:
        """The drawn edge within EDGE_PICK_PX of the view point (x, y), as (source, destination,
        weight), the focused node's edges first; None when there is none."""
        d = self.drawn
        vb = self.plot.getViewBox()
        (x0, x1), (y0, y1) = vb.viewRange()
        if d is None or vb.width() < 1 or vb.height() < 1:
            return None
        pw, ph = (x1 - x0) / vb.width(), (y1 - y0) / vb.height()
        groups = []
        if self.focus is not None:
            links = np.concatenate([self.focus.incoming, self.focus.outgoing])
            groups.append((d.link_src[links], d.link_dst[links], d.link_weight[links]))
        edges = self._edges_shown
        groups.append((d.src[edges], d.dst[edges], d.weight[edges]))
        for src, dst, weight in groups:
            at_s, at_d = np.searchsorted(d.nodes, src), np.searchsorted(d.nodes, dst)
            i, dist = nearest_segment(x / pw, y / ph, d.x[at_s] / pw, d.y[at_s] / ph, d.x[at_d] / pw, d.y[at_d] / ph)
            if i >= 0 and dist <= EDGE_PICK_PX:
                return int(src[i]), int(dst[i]), float(weight[i])
        return None

    def _show_edge(self, edge) -> None:
        if edge == self._hover_edge:
            return
        self._hover_edge = edge
        vb = self.plot.getViewBox()
        if edge is None:
            self.caption.setText(self._caption_text)
            if vb.toolTip().startswith("Edge "):
                vb.setToolTip("")
            return
        s, t, w = edge
        text = f"Edge {self._name(s)} → {self._name(t)}: weight {w:+.4g}"
        self.caption.setText(text)
        vb.setToolTip(text)

    # -- user -> state ----------------------------------------------------------------------------
    def _clicked(self, _item, points, ev) -> None:
        if not len(points):
            return
        node = int(points[0].data())
        extend = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        self.click_node(node, extend)
        ev.accept()

    def _scene_clicked(self, ev) -> None:
        """A plain click on empty canvas clears the selection."""
        if ev.isAccepted() or ev.button() != Qt.MouseButton.LeftButton or ev.double() or self.state.view is None:
            return
        if ev.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            return
        if self.plot.getViewBox().sceneBoundingRect().contains(ev.scenePos()):
            self.state.clear_selection(source=NAME)

    def eventFilter(self, obj, event) -> bool:
        """Esc on the graph clears the selection and the hovered node's focus (while a job runs,
        Esc cancels it instead)."""
        if obj is self.plot and event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape \
                and (self.state.selected or self._hovered is not None):
            self._hover_dismissed, self._hovered = self._hovered, None
            if not self.state.clear_selection(source=NAME):
                self._draw_focus()
            return True
        return super().eventFilter(obj, event)

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
        # your labels first, then node labels and (with an atlas) atlas labels and example text
        hits = noted + [n for n in v.find(text, self.state.atlas) if n not in noted]
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
    return short_token(token, n)

"""A behaviour comparison in its own window (File → Open Comparison…, or ``circuitdesk gui --comparison``):
the study's header, a section (method and basis) and a contrast (groups or versions) to choose, the ranked
differences, the behaviour graph coloured by effect size, the intervention checks of the selected node,
and the cases, each of which opens its own session in the workbench.

The views read and write ``core.behaviour.browse.ComparisonState`` only (a click in the table selects
the node in the drawing through it, and the other way round); ``ComparisonController`` is the main
window's part that opens comparisons and hands a case's session to the workbench's documents. No model
is loaded: everything shown is in comparison.json.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainterPath, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QGraphicsPathItem,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.behaviour.browse import (
    COMPARISON,
    CONTRAST,
    SECTION,
    SELECTION,
    VERSION,
    VERSION_NAMES,
    ComparisonState,
    case_rows,
    checks_lines,
    contrast_note,
    contrast_title,
    fmt,
    header_lines,
    section_title,
    session_file,
)
from core.behaviour.layout import behaviour_layout
from core.behaviour.study import FIXED_KEYS, load_comparison
from core.errors import CircuitDeskError
from core.observable import Change
from core.report_comparison import EFFECT_SCALE, ENDPOINT_COLOUR, UNCOMPARED_COLOUR
from core.report_comparison import effect_colour as report_colour
from desktop.runs import GRAPH_TAB

TABLE, GRAPH, WINDOW = "table", "graph", "window"  # the views, as sources of a change
# The comparison report's colours (core.report_comparison), so the window and the PDF read alike: the
# effect size saturates at ±EFFECT_SCALE, blue where a node is higher in A, red where higher in B (the
# workbench's colours of a positive and a negative edge), pale grey where there is no effect size.
DIVERGING = pg.ColorMap(np.linspace(0.0, 1.0, 21), [report_colour(t) for t in np.linspace(-1.0, 1.0, 21)])
MAX_EDGES = 300  # edges drawn: the most recurrent (then the strongest); a real model's graph holds thousands
SIGNIFICANT_PEN = pg.mkPen("#111111", width=2.6)  # a significant difference: a dark ring
PLAIN_PEN = pg.mkPen("#6b7280", width=0.8)
SELECTED_PEN = ("#f59e0b", 3.0)  # the selected node: an amber ring around it
MIN_NODE_PX, MAX_NODE_PX = 5.0, 28.0  # node diameters on screen
PER_LAYER = 12  # nodes drawn a layer at most (the most influential, plus every significant one)
LABELLED = 8  # in a large drawing, the nodes named on the canvas (by |effect|, significant first)
LABEL_ALL = 30  # a drawing of at most this many nodes names them all
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
KEY_ROLE = Qt.ItemDataRole.UserRole + 2


def effect_colour(effect: float | None, endpoint: bool = False) -> QColor:
    """Blue: higher in A than in B, red: lower, white: no difference; pale grey: no effect size (dark
    grey: a graph endpoint, never compared)."""
    if endpoint:
        return QColor(ENDPOINT_COLOUR)
    return QColor(UNCOMPARED_COLOUR if effect is None else report_colour(effect / EFFECT_SCALE))


# -- the ranked differences ------------------------------------------------------------------------
class DifferencesModel(QAbstractTableModel):
    """The chosen contrast's ranked rows: rank, node, means, difference, effect size, corrected p, ✓."""

    HEADERS = ("#", "Node", "Mean A", "Mean B", "Difference", "Effect size", "Corrected p", "Sig.")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.labels = ("A", "B")

    def set_contrast(self, contrast: dict | None) -> None:
        self.beginResetModel()
        self.rows = [] if contrast is None else list(contrast["rows"])
        self.labels = ("A", "B") if contrast is None else (contrast["label_a"], contrast["label_b"])
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 (Qt's signature)
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            a, b = ("A", "B") if self.labels == ("model A", "model B") else self.labels
            return {2: f"Mean {a}", 3: f"Mean {b}"}.get(section, self.HEADERS[section])
        if role == Qt.ItemDataRole.ToolTipRole:
            return {4: f"Mean {self.labels[0]} − mean {self.labels[1]}",
                    5: "Effect size: Hedges' g between groups, d_z between paired model versions "
                       "(positive: higher in A); the drawing's colour",
                    6: "p-value of the permutation test, corrected for the number of nodes compared",
                    7: "Significant: the corrected p at most the study's α"}.get(section)
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        r, col = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return (str(index.row() + 1), r["key"], fmt(r["mean_a"]), fmt(r["mean_b"]), fmt(r["difference"], "+.3g"),
                    fmt(r["effect_size"], "+.2f"), fmt(r["p_adjusted"], ".3g") if r["tested"] else "not tested",
                    "✓" if r["significant"] else "")[col]
        if role == SORT_ROLE:  # numbers sort as numbers; missing ones last in ascending order
            values = (index.row(), r["key"], r["mean_a"], r["mean_b"], r["difference"], r["effect_size"],
                      r["p_adjusted"] if r["tested"] else None, int(r["significant"]))
            v = values[col]
            return v if v is not None else (float("inf") if col == 6 else float("-inf"))
        if role == KEY_ROLE:
            return r["key"]
        if role == Qt.ItemDataRole.DecorationRole and col == 5:
            return effect_colour(r["effect_size"] if r["tested"] else None)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return (Qt.AlignmentFlag.AlignCenter if col == 7 else
                    Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter if col == 1 else
                    Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and not r["tested"]:
            return QColor("#777")
        if role == Qt.ItemDataRole.ToolTipRole and not r["tested"]:
            return f"{r['key']} was not tested: its value does not vary across the cases compared"
        return None

    def row_of(self, key: str | None) -> int | None:
        return next((i for i, r in enumerate(self.rows) if r["key"] == key), None)


class DifferencesTable(QTableView):
    """The ranked differences, sortable by any column; selecting a row selects its node."""

    def __init__(self, state: ComparisonState) -> None:
        super().__init__()
        self.state = state
        self.refresh_counts: dict[str, int] = {}
        self.source = DifferencesModel()
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.source)
        self.proxy.setSortRole(SORT_ROLE)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(22)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self._syncing = False  # the table's own selection is being set from the state
        self.selectionModel().selectionChanged.connect(self._selection_changed)
        state.subscribe(self.on_change)

    def on_change(self, change: Change) -> None:
        if change.what in (COMPARISON, SECTION, CONTRAST):
            self._count(change.what)
            self._syncing = True
            try:
                self.source.set_contrast(self.state.contrast_data)
            finally:
                self._syncing = False
            self._show_selected()
        elif change.what == SELECTION and change.source != TABLE:
            self._count(change.what)
            self._show_selected()

    def _count(self, what: str) -> None:
        self.refresh_counts[what] = self.refresh_counts.get(what, 0) + 1

    def _show_selected(self) -> None:
        row = self.source.row_of(self.state.selected)
        self._syncing = True
        try:
            if row is None:
                self.clearSelection()
            else:
                index = self.proxy.mapFromSource(self.source.index(row, 1))
                self.selectionModel().setCurrentIndex(
                    index, self.selectionModel().SelectionFlag.ClearAndSelect | self.selectionModel().SelectionFlag.Rows)
                self.scrollTo(index)
        finally:
            self._syncing = False

    def selected_key(self) -> str | None:
        rows = self.selectionModel().selectedRows(1)
        return rows[0].data(KEY_ROLE) if rows else None

    def _selection_changed(self, *_args) -> None:
        if not self._syncing:
            self.state.select(self.selected_key(), source=TABLE)


# -- the behaviour graph ---------------------------------------------------------------------------
class BehaviourPlot(QWidget):
    """The behaviour graph of the chosen section and version: layers bottom to top, colour = effect
    size in the chosen contrast, a dark ring = significant, size = mean influence; a click selects."""

    def __init__(self, state: ComparisonState) -> None:
        super().__init__()
        self.state = state
        self.refresh_counts: dict[str, int] = {}
        self.drawn_nodes = []  # core.behaviour.layout.DrawnNode, in the scatter's order
        self.drawn_edges = []  # the edges drawn (the most recurrent of all_edges)
        self.all_edges = []  # core.behaviour.layout.DrawnEdge between the drawn nodes
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.showGrid(x=False, y=True, alpha=0.12)
        pi = self.plot.getPlotItem()
        pi.setContentsMargins(2, 10, 2, 10)  # room for the colour bar's end labels
        pi.hideAxis("bottom")  # x is a node's place in its layer: no unit to read
        left = self.plot.getAxis("left")
        left.setTextPen("#222")
        left.setPen("#888")
        left.setLabel("layer", color="#222")
        self.edges = self._path_item(QColor(100, 116, 139, 90), 1.0, -10)
        self.focus_edges = self._path_item(QColor(17, 24, 39, 200), 1.6, -5)  # the selected node's own
        self.nodes = pg.ScatterPlotItem(pxMode=True, hoverable=True, tip=self._tip, hoverPen=pg.mkPen("#111", width=2))
        self.nodes.sigClicked.connect(self._clicked)
        self.plot.addItem(self.nodes)
        self.ring = pg.ScatterPlotItem(pxMode=True, brush=pg.mkBrush(0, 0, 0, 0),
                                       pen=pg.mkPen(SELECTED_PEN[0], width=SELECTED_PEN[1]))
        self.ring.setZValue(10)
        self.plot.addItem(self.ring)
        self.plot.scene().sigMouseClicked.connect(self._scene_clicked)
        self._fixed, self._influence = np.zeros(0, bool), np.zeros(0)
        self.plot.getViewBox().sigRangeChanged.connect(self._view_changed)
        self.plot.getViewBox().sigResized.connect(self._view_changed)
        self.labels: list[pg.TextItem] = []
        self._label_font = QFont()
        self._label_font.setPointSize(8)
        self.colorbar = pg.ColorBarItem(values=(-EFFECT_SCALE, EFFECT_SCALE), colorMap=DIVERGING, width=12,
                                        interactive=False)
        self.colorbar.axis.setTextPen("#222")
        pi.layout.addItem(self.colorbar, 2, 5)
        pi.layout.setColumnFixedWidth(4, 5)
        self.caption = QLabel("")  # which graph, what is drawn, a selected node that is not
        self.caption.setStyleSheet("color: #333")
        self.caption.setWordWrap(True)
        self.legend = QLabel("")
        self.legend.setStyleSheet("color: #333")
        self.legend.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.legend)
        state.subscribe(self.on_change)

    def _path_item(self, colour: QColor, width: float, z: float) -> QGraphicsPathItem:
        item = QGraphicsPathItem()
        pen = QPen(colour)
        pen.setCosmetic(True)
        pen.setWidthF(width)
        item.setPen(pen)
        item.setZValue(z)
        self.plot.addItem(item)
        return item

    def _edge_path(self, edges) -> QPainterPath:
        if not edges:
            return QPainterPath()
        xs, ys = np.empty(2 * len(edges)), np.empty(2 * len(edges))
        nodes = self.drawn_nodes
        xs[0::2], xs[1::2] = [nodes[e.src].x for e in edges], [nodes[e.dst].x for e in edges]
        ys[0::2], ys[1::2] = [nodes[e.src].y for e in edges], [nodes[e.dst].y for e in edges]
        return pg.arrayToQPath(xs, ys, connect="pairs")

    # -- state -> view ----------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        self._count(change.what)
        if change.what == SELECTION:  # from a click here too: the ring moves to the clicked node
            self._draw_selection()
        else:
            self._draw_all()
            self.fit()

    def _count(self, what: str) -> None:
        self.refresh_counts[what] = self.refresh_counts.get(what, 0) + 1

    def _draw_all(self) -> None:
        s, st = self.state.section_data, self.state
        if s is None:
            self.drawn_nodes, self.drawn_edges, self.all_edges = [], [], []
            self.nodes.setData([])
            self.edges.setPath(QPainterPath())
            self.caption.setText("")
            self.legend.setText("")
            self._draw_selection()
            return
        contrast = st.contrast_data
        nodes, edges = behaviour_layout(s, st.version, contrast, max_per_layer=PER_LAYER)
        self.drawn_nodes, self.all_edges = nodes, edges
        self.drawn_edges = sorted(edges, key=lambda e: (-e.recurrence, -abs(e.mean)))[:MAX_EDGES]
        x = np.array([n.x for n in nodes], dtype=float)
        y = np.array([n.y for n in nodes], dtype=float)
        self.edges.setPath(self._edge_path(self.drawn_edges))
        fixed = np.array([n.key in FIXED_KEYS for n in nodes], dtype=bool)
        means = np.array([abs(n.mean) for n in nodes], dtype=float)
        top = means[~fixed].max() if (~fixed).any() and means[~fixed].max() > 0 else 1.0
        self._fixed, self._influence = fixed, np.sqrt(np.clip(means / top, 0, 1))
        self.nodes.setData(x=x, y=y, data=[n.key for n in nodes], size=self._sizes(),
                           symbol=["s" if f else "o" for f in fixed],
                           brush=[pg.mkBrush(effect_colour(n.effect, f)) for n, f in zip(nodes, fixed)],
                           pen=[SIGNIFICANT_PEN if n.significant else PLAIN_PEN for n in nodes])
        ax = self.plot.getAxis("left")
        first = "input" if s["method"] == "circuit" else "tokens"
        n_layers = int(s["n_layers"])
        ticks = [(-1, first)] + [(layer, f"L{layer}") for layer in range(n_layers)] + [(n_layers, "logits")]
        step = max(1, len(ticks) // 20)
        ax.setTicks([ticks[::step] + ([ticks[-1]] if (len(ticks) - 1) % step else []), []])
        self.caption.setText(self._caption())
        self.colorbar.axis.setLabel("effect size" if contrast is None else
                                    f"effect size: {contrast['label_a']} − {contrast['label_b']}", color="#222")
        if contrast is None:
            self.legend.setText("No contrast: every node is grey. Size: mean influence over the cases.")
        else:
            a, b = contrast["label_a"], contrast["label_b"]
            self.legend.setText(
                f"<span style='color:{report_colour(1.0)}'>●</span> blue: higher in {a} than in {b} · "
                f"<span style='color:{report_colour(-1.0)}'>●</span> red: higher in {b} · "
                f"<span style='color:{UNCOMPARED_COLOUR}'>●</span> pale grey: no effect size (untested, or beyond the "
                f"ranked rows) · <span style='color:{ENDPOINT_COLOUR}'>■</span> endpoints, never compared · "
                f"dark ring: significant (corrected p ≤ {fmt(contrast['alpha'], 'g')}) · size: mean influence · "
                "hover a node for its figures")
        self._draw_selection()

    def _sizes(self) -> np.ndarray:
        """Node diameters in pixels: by mean influence, as large as the room between layers and between
        neighbours allows on screen (a 30-layer model's nodes would overlap at a fixed size)."""
        vb = self.plot.getViewBox()
        (x0, x1), (y0, y1) = vb.viewRange()
        room = 0.8 * min(vb.width() / max(x1 - x0, 1e-9), vb.height() / max(y1 - y0, 1e-9))
        cap = float(np.clip(room, MIN_NODE_PX, MAX_NODE_PX)) if room > 0 else MAX_NODE_PX
        return np.where(self._fixed, min(16.0, cap), np.maximum(MIN_NODE_PX, cap * (0.3 + 0.7 * self._influence)))

    def _view_changed(self, *_args) -> None:
        """Zoom, pan and resize change the room the nodes have (the positions stay: no redraw)."""
        if len(self.drawn_nodes) and len(self.nodes.data) == len(self.drawn_nodes):
            sizes = self._sizes()
            if not np.allclose(sizes, self.nodes.data["size"]):
                self.nodes.setSize(sizes)
                self._draw_selection()

    def _caption(self) -> str:
        st, s = self.state, self.state.section_data
        graph = s["behaviour"][st.version]
        contrast = st.contrast_data
        text = (f"Behaviour graph of {VERSION_NAMES[st.version]} over {len(graph['cases'])} cases: "
                f"{len(self.drawn_nodes)} nodes (at most {PER_LAYER} a layer, the most influential, plus every significant "
                f"one); {self._edges_text()} recurring in ≥ {fmt(graph.get('min_recurrence'), '.0%')} of cases")
        if contrast is not None and contrast["what"] == "groups" and st.version == "b":
            text += "; coloured by the groups contrast, which was measured on model A"
        return text + "."

    def _edges_text(self) -> str:
        shown, every = len(self.drawn_edges), len(self.all_edges)
        if shown == every:
            return f"{every:,} edges"
        return f"the {shown} most recurrent of {every:,} edges (select a node for all of its own)"

    def _draw_selection(self) -> None:
        key = self.state.selected
        i = next((i for i, n in enumerate(self.drawn_nodes) if n.key == key), None)
        own = [] if i is None else [e for e in self.all_edges if i in (e.src, e.dst)]
        self.focus_edges.setPath(self._edge_path(own))
        if i is None:
            self.ring.setData([])
        else:
            n = self.drawn_nodes[i]
            size = self.nodes.data["size"][i] if len(self.nodes.data) > i else 16
            self.ring.setData(x=[n.x], y=[n.y], size=[float(size) + 9])
        if self.state.section_data is not None:
            text = self._caption()
            if key is not None and i is None:
                text += (f" The selected node {key} is not drawn: it is below the graph's recurrence or outside its "
                         "layer's most influential.")
            self.caption.setText(text)
        self._draw_labels(i)

    def _draw_labels(self, selected: int | None) -> None:
        for t in self.labels:
            self.plot.removeItem(t)
        self.labels = []
        nodes = self.drawn_nodes
        ranked = sorted((i for i, n in enumerate(nodes) if n.effect is not None),
                        key=lambda i: (not nodes[i].significant, -abs(nodes[i].effect)))
        named = set(ranked[:LABELLED])
        if len(nodes) <= LABEL_ALL:
            named = set(range(len(nodes)))
        named = {i for i in named if nodes[i].key not in FIXED_KEYS}  # the layer axis names the endpoints
        if selected is not None:
            named.add(selected)
        sizes = self.nodes.data["size"] if len(self.nodes.data) == len(nodes) else np.full(len(nodes), 16.0)
        for i in sorted(named):
            n = nodes[i]
            t = pg.TextItem(n.key, color="#7c2d12" if i == selected else "#222",
                            fill=pg.mkBrush(255, 255, 255, 190))  # readable over the edges
            t.setFont(self._label_font)
            # clear of the node (and of the selection's ring) by a few pixels: above it, or under it for
            # the tokens (input), whose edges all go up
            room = (float(sizes[i]) + (9 if i == selected else 0)) / 2 + 1
            h = max(t.boundingRect().height(), 1.0)
            t.setAnchor((0.5, -room / h if n.y < 0 else 1 + room / h))
            t.setPos(n.x, n.y)
            self.plot.addItem(t)
            self.labels.append(t)

    def fit(self) -> None:
        if not self.drawn_nodes:
            self.plot.setRange(xRange=(-1, 1), yRange=(-1, 1))
            return
        x = [n.x for n in self.drawn_nodes]
        y = [n.y for n in self.drawn_nodes]
        self.plot.setRange(xRange=(min(x) - 0.7, max(x) + 0.7), yRange=(min(y) - 0.5, max(y) + 0.7), padding=0.02)

    def _tip(self, x, y, data) -> str:
        n = next((n for n in self.drawn_nodes if n.key == data), None)
        if n is None:
            return ""
        layer = "tokens / input" if n.y < 0 else "logits" if n.key == "logits" else f"layer {int(n.y)}"
        lines = [f"{n.key} ({layer})", f"mean {fmt(n.mean)} · in {n.recurrence:.0%} of the cases' graphs"]
        row = self.state.row(n.key)
        if n.key in FIXED_KEYS:
            lines.append("a graph endpoint: not compared")
        elif row is None:
            lines.append("not among the contrast's ranked differences" if self.state.contrast_data else "no contrast")
        elif not row["tested"]:
            lines.append("not tested: no variation across the cases compared")
        else:
            lines.append(f"effect size {fmt(row['effect_size'], '+.2f')} · corrected p {fmt(row['p_adjusted'])}"
                         + (" · significant" if row["significant"] else ""))
        return "\n".join(lines)

    # -- view -> state ----------------------------------------------------------------------------
    def _clicked(self, _item, points, ev) -> None:
        if len(points):
            self.state.select(str(points[0].data()), source=GRAPH)
            ev.accept()

    def _scene_clicked(self, ev) -> None:
        """A click on empty canvas clears the selection."""
        if ev.isAccepted() or ev.button() != Qt.MouseButton.LeftButton or ev.double():
            return
        self.state.select(None, source=GRAPH)

    def node_position(self, key: str) -> tuple[float, float]:
        n = next(n for n in self.drawn_nodes if n.key == key)
        return n.x, n.y


# -- the window ------------------------------------------------------------------------------------
class ComparisonWindow(QMainWindow):
    """The comparison on show; ``case_requested(case, version)`` asks the workbench to open a case."""

    case_requested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("comparisonWindow")
        self.setWindowTitle("Comparison — Circuit Desk")
        self.state = ComparisonState()
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.title = QLabel("")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        self.models_label = QLabel("")
        self.settings_label = QLabel("")
        for label in (self.title, self.models_label, self.settings_label):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.settings_label.setStyleSheet("color: #333")
        self.models_label.setStyleSheet("color: #333")
        self.section_combo = QComboBox()
        self.section_combo.setToolTip("The kind of case compared: method and feature basis (each has its own graph)")
        self.section_combo.currentIndexChanged.connect(lambda i: self.state.choose_section(i, source=WINDOW))
        self.contrast_combo = QComboBox()
        self.contrast_combo.setToolTip("Which two sets of cases the differences compare: the groups, or the "
                                       "model versions on the same cases")
        self.contrast_combo.currentIndexChanged.connect(lambda i: self.state.choose_contrast(i, source=WINDOW))
        self.version_buttons = QButtonGroup(self)
        self.version_buttons.setExclusive(True)
        self.version_tools = {}
        for v in ("a", "b"):
            b = QToolButton()
            b.setText(f"Model {v.upper()}")
            b.setCheckable(True)
            b.setToolTip(f"Draw the behaviour graph of {VERSION_NAMES[v]}")
            b.clicked.connect(lambda _checked=False, v=v: self.state.choose_version(v, source=WINDOW))
            self.version_buttons.addButton(b)
            self.version_tools[v] = b
        self.version_label = QLabel("Graph of")
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #333")

        self.table = DifferencesTable(self.state)
        self.edge_table = QTableWidget(0, 9)
        self.edge_table.setHorizontalHeaderLabels(["Edge", "Change", "In A", "In B", "Mean A", "Mean B",
                                                   "Difference", "Corrected p", "Significant"])
        self.edge_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.edge_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.edge_table.verticalHeader().hide()
        self.edge_table.verticalHeader().setDefaultSectionSize(22)
        self.edge_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.edge_table.horizontalHeader().setStretchLastSection(True)
        self.edge_table.setToolTip("Circuit edges gained, lost or changed in score between the model versions "
                                   "(share of the cases whose circuit holds the edge, mean score, paired test)")
        self.lists = QTabWidget()
        self.lists.setDocumentMode(True)
        self.lists.addTab(self.table, "Nodes")
        self.lists.addTab(self.edge_table, "Circuit edges, model A → B")
        self.checks = QPlainTextEdit()
        self.checks.setReadOnly(True)
        self.checks.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.plot = BehaviourPlot(self.state)
        self.cases = QTableWidget(0, 0)
        self.cases.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.cases.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.cases.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.cases.verticalHeader().hide()
        self.cases.verticalHeader().setDefaultSectionSize(22)
        self.cases.setAlternatingRowColors(True)
        self.cases.setToolTip("Double-click a case (or press Enter) to open its own graph in the workbench")
        self.cases.activated.connect(self._case_activated)  # double-click, or Enter

        bar = QHBoxLayout()
        bar.addWidget(QLabel("Section"))
        bar.addWidget(self.section_combo)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Contrast"))
        bar.addWidget(self.contrast_combo)
        bar.addSpacing(12)
        bar.addWidget(self.version_label)
        for b in self.version_tools.values():
            bar.addWidget(b)
        bar.addStretch(1)
        top = QWidget()
        head = QVBoxLayout(top)
        head.setContentsMargins(8, 6, 8, 2)
        head.setSpacing(3)
        head.addWidget(self.title)
        head.addWidget(self.models_label)
        head.addWidget(self.settings_label)
        head.addLayout(bar)
        head.addWidget(self.note)

        def boxed(title: str, widget: QWidget) -> QGroupBox:
            box = QGroupBox(title)
            lay = QVBoxLayout(box)
            lay.setContentsMargins(4, 4, 4, 4)
            lay.addWidget(widget)
            return box

        self.checks_box = boxed("Intervention checks of the selected node", self.checks)
        self.cases_box = boxed("Cases — double-click or Enter opens a case's own graph in the workbench", self.cases)
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(boxed("Ranked differences", self.lists))
        left.addWidget(self.checks_box)
        left.setSizes([620, 150])
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(boxed("Behaviour graph", self.plot))
        right.addWidget(self.cases_box)
        right.setSizes([600, 220])
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setSizes([690, 810])
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(top)
        lay.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.resize(1500, 940)
        self.state.subscribe(self.on_change)

    def show_comparison(self, comparison: dict) -> None:
        self.state.show(comparison, source=WINDOW)

    # -- state -> view ----------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        st = self.state
        c = st.comparison
        if c is None:
            return
        if change.what == COMPARISON:
            title, models, settings = header_lines(c)
            self.setWindowTitle(f"{c['suite']} — Comparison — Circuit Desk")
            self.title.setText(title)
            self.models_label.setText(models)
            self.settings_label.setText(settings)
            self._fill(self.section_combo, [section_title(s) for s in st.sections], st.section)
            self._fill_cases()
        if change.what in (COMPARISON, SECTION):
            s = st.section_data
            contrasts = [] if s is None else s["contrasts"]
            self._fill(self.contrast_combo, [contrast_title(x) for x in contrasts] or ["(no contrast)"],
                       st.contrast or 0)
            self.contrast_combo.setEnabled(bool(contrasts))
            self._fill_edges()
            two = len(st.versions) > 1
            for w in (self.version_label, *self.version_tools.values()):
                w.setVisible(two)
        if change.what in (COMPARISON, SECTION, VERSION):
            self.version_tools[st.version].setChecked(True)
        if change.what in (COMPARISON, SECTION, CONTRAST):
            s = st.section_data
            self.note.setText("" if s is None else contrast_note(st.contrast_data, s))
        if change.what in (COMPARISON, SECTION, CONTRAST, SELECTION):
            self.checks.setPlainText("\n".join(checks_lines(st, st.selected)))

    @staticmethod
    def _fill(combo: QComboBox, items: list[str], current: int) -> None:
        combo.blockSignals(True)  # filled from the state: nothing to write back
        combo.clear()
        combo.addItems(items)
        combo.setCurrentIndex(current)
        combo.blockSignals(False)

    def _fill_cases(self) -> None:
        c = self.state.comparison
        versions = sorted(c["models"])
        heads = ["Case", "Group"] + ([f"Prediction {v.upper()}" for v in versions] if len(versions) > 1
                                     else ["Prediction"]) + ["Correct", "Status"]
        rows = case_rows(c)
        t = self.cases
        t.clear()
        t.setColumnCount(len(heads))
        t.setHorizontalHeaderLabels(heads)
        t.setRowCount(len(rows))
        for i, r in enumerate(rows):
            for j, text in enumerate((r.name, r.group, *r.predictions, r.correct, r.status)):
                item = QTableWidgetItem(text)
                item.setData(KEY_ROLE, r.name)
                if j == len(heads) - 1 and "failed" in text:
                    item.setForeground(QColor("#b91c1c"))
                    item.setToolTip(text)
                t.setItem(i, j, item)
        t.setColumnHidden(1, c.get("groups") is None)
        header = t.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)

    def _fill_edges(self) -> None:
        """A circuit section's edges gained, lost or changed between the model versions (ranked)."""
        s = self.state.section_data
        rows = [] if s is None else s.get("edge_changes") or []
        t = self.edge_table
        t.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = (r["edge"], r["change"], fmt(r["in_circuit_a"], ".0%"), fmt(r["in_circuit_b"], ".0%"),
                     fmt(r["mean_a"]), fmt(r["mean_b"]), fmt(r["difference"], "+.3g"), fmt(r["p_adjusted"]),
                     "✓" if r["significant"] else "")
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                t.setItem(i, j, item)
        self.lists.setTabVisible(1, bool(rows))
        self.lists.tabBar().setVisible(bool(rows))  # one tab needs no tab bar
        if not rows:
            self.lists.setCurrentIndex(0)

    # -- view -> the workbench --------------------------------------------------------------------
    def _case_activated(self, index) -> None:
        name = self.cases.item(index.row(), 0).data(KEY_ROLE)
        version = self.state.version if self.state.version in self.state.comparison["models"] else "a"
        self.case_requested.emit(name, version)

    def show_error(self, message: str) -> None:
        """One sentence in a dialog over this window (non-blocking)."""
        self.last_error = message
        self.statusBar().showMessage("Error: " + message)
        box = QMessageBox(QMessageBox.Icon.Warning, "Circuit Desk", message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _=None: setattr(self, "error_box", None))
        self.error_box = box
        box.open()


class ComparisonController(QObject):
    """The main window's part that opens comparisons (one window, reused) and their cases' sessions."""

    tab_wanted = Signal(str)  # the workbench tab to show after a case's session opened

    def __init__(self, window: QMainWindow, documents, status) -> None:
        super().__init__(window)
        self.main, self.documents, self.status = window, documents, status
        self.window: ComparisonWindow | None = None

    def open(self, path: str | None = None) -> bool:
        """Open a comparison.json (or the folder holding it): a file dialog when no path is given."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self.main, "Open comparison", "",
                                                  "Comparisons (comparison.json);;JSON files (*.json);;All files (*)")
            if not path:
                return False
        try:
            doc = load_comparison(path)
        except CircuitDeskError as err:
            self._error(str(err))
            return False
        if self.window is None:
            self.window = ComparisonWindow(self.main)
            self.window.case_requested.connect(self.open_case)
        self.window.show_comparison(doc)
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()
        self.status.say(f"Opened the comparison {doc['suite']} ({doc['folder']})")
        return True

    def open_case(self, case: str, version: str = "a") -> bool:
        """Open a case's session in the workbench (through its documents), and bring the workbench forward."""
        try:
            path = session_file(self.window.state.comparison, case, version)
        except CircuitDeskError as err:
            self._error(str(err))
            return False
        opened = self.documents.open(str(path))
        if opened:
            self.tab_wanted.emit(GRAPH_TAB)
        self.main.raise_()
        self.main.activateWindow()
        return opened

    def _error(self, message: str) -> None:
        """Over the comparison window when it is on show, else over the workbench."""
        if self.window is not None and self.window.isVisible():
            self.window.show_error(message)
        else:
            self.status.show_error(message)

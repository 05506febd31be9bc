"""The report's figures painted as vectors: the circuit graph, heatmaps and line charts
(``core.report`` figure blocks), and a comparison's behaviour graph (``core.report_comparison``), for
``desktop.report_pdf``'s page layout."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QPainter, QPainterPath, QPen

from core.report_blocks import GraphFigure, Heatmap, LineChart
from core.report_comparison import ENDPOINT_COLOUR, UNCOMPARED_COLOUR
from core.view import NEGATIVE, POSITIVE

DPI = 300
PT = DPI / 72.0  # device units per point
INK, GREY, RULE, HEADER_BG = QColor("#1f2933"), QColor("#616e7c"), QColor("#cbd2d9"), QColor("#eef2f6")
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]


class FigurePainter:
    """Paints figure blocks into a rectangle, with the report's fonts."""

    def __init__(self, small: QFont, table_bold: QFont, w: float, h: float,
                 metrics: Callable[[QFont], QFontMetricsF]) -> None:
        """``w``, ``h``: the page's content size; ``metrics``: font metrics on the painter's device."""
        self.small, self.table_bold, self.w, self.h, self.metrics = small, table_bold, w, h, metrics

    def graph_height(self, g: GraphFigure) -> float:
        rows = len(g.y_ticks)
        return min(self.h * 0.72, max(0.55 * self.w, rows * 15 * PT))

    def paint_graph(self, p: QPainter, r: QRectF, g: GraphFigure) -> None:
        fm = self.metrics(self.small)
        left, bottom = 34 * PT, 16 * PT
        plot = QRectF(r.left() + left, r.top() + 4 * PT, r.width() - left - 4 * PT, r.height() - bottom - 4 * PT)
        n_cols = max(len(g.x_ticks), int(np.ceil(g.x.max())) + 1 if len(g.x) else 1)
        y_lo, y_hi = min(t for t, _ in g.y_ticks), max(t for t, _ in g.y_ticks)
        x_lo, x_hi = -0.6, n_cols - 0.4
        y_lo, y_hi = y_lo - 0.7, y_hi + 0.7
        sx = lambda v: plot.left() + (v - x_lo) / (x_hi - x_lo) * plot.width()  # noqa: E731
        sy = lambda v: plot.bottom() - (v - y_lo) / (y_hi - y_lo) * plot.height()  # noqa: E731
        # frame and axes
        p.setPen(QPen(RULE, 0.5 * PT))
        p.drawRect(plot)
        p.setFont(self.small)
        layer_rules(p, plot, g.y_ticks, sy, max(1, math.ceil(len(g.y_ticks) / 24)), fm)
        col_w = plot.width() / (x_hi - x_lo)
        for k, text in enumerate(g.x_ticks):
            label = fm.elidedText(text.replace("\n", "⏎"), Qt.TextElideMode.ElideRight, col_w - 2 * PT)
            p.drawText(QPointF(sx(k) - fm.horizontalAdvance(label) / 2, plot.bottom() + 4 * PT + fm.ascent()), label)
        # edges: weakest first, one path per sign and strength band
        if len(g.weight):
            top = float(np.abs(g.weight).max()) or 1.0
            rel = np.abs(g.weight) / top
            for positive, rgb in ((True, POSITIVE), (False, NEGATIVE)):
                for lo, hi, alpha, width in ((0.0, 0.15, 50, 0.35), (0.15, 0.4, 120, 0.6), (0.4, 1.01, 210, 1.0)):
                    sel = np.flatnonzero(((g.weight >= 0) == positive) & (rel >= lo) & (rel < hi))
                    if not len(sel):
                        continue
                    path = QPainterPath()
                    for e in sel:
                        s, t = int(g.src[e]), int(g.dst[e])
                        path.moveTo(sx(g.x[s]), sy(g.y[s]))
                        path.lineTo(sx(g.x[t]), sy(g.y[t]))
                    p.setPen(QPen(QColor(*rgb, alpha), width * PT))
                    p.setBrush(Qt.BrushStyle.NoBrush)
                    p.drawPath(path)
        # nodes
        for k in np.argsort(g.size, kind="stable"):
            radius = (2.2 + 4.5 * math.sqrt(float(g.size[k]))) * PT
            c = QPointF(sx(g.x[k]), sy(g.y[k]))
            p.setBrush(QBrush(QColor(g.colour[k])))
            p.setPen(QPen(QColor("#f59e0b"), 1.4 * PT) if g.ring[k] else QPen(QColor("white"), 0.5 * PT))
            if g.square[k]:
                p.drawRect(QRectF(c.x() - radius, c.y() - radius, 2 * radius, 2 * radius))
            else:
                p.drawEllipse(c, radius, radius)
        # labels in priority order, skipping any that would cover one already drawn; a light box
        # behind each so edges do not cross the text
        p.setFont(self.small)
        boxes: list[QRectF] = []
        for k, text in g.labels.items():
            text = fm.elidedText(text, Qt.TextElideMode.ElideRight, 90 * PT)
            radius = (2.2 + 4.5 * math.sqrt(float(g.size[k]))) * PT
            at = QPointF(sx(g.x[k]) + radius + 1.5 * PT, sy(g.y[k]) + fm.ascent() / 2 - 1 * PT)
            box = QRectF(at.x() - 1 * PT, at.y() - fm.ascent(), fm.horizontalAdvance(text) + 2 * PT, fm.height())
            if any(box.intersects(b) for b in boxes):
                continue
            boxes.append(box)
            p.fillRect(box, QColor(255, 255, 255, 200))
            p.setPen(INK)
            p.drawText(at, text)

    def heatmap_height(self, h: Heatmap) -> float:
        rows = max(1, h.values.shape[0])
        return min(self.h * 0.45, 20 * PT + rows * min(9 * PT, max(4 * PT, 220 * PT / rows)) + 26 * PT)

    def paint_heatmap(self, p: QPainter, r: QRectF, h: Heatmap) -> None:
        fm = self.metrics(self.small)
        v = np.nan_to_num(np.asarray(h.values, float))
        rows, cols = v.shape
        p.setFont(self.table_bold)
        p.setPen(INK)
        tfm = self.metrics(self.table_bold)
        p.drawText(QPointF(r.left(), r.top() + tfm.ascent()), h.title)
        left = max((fm.horizontalAdvance(t) for t in h.row_labels), default=0) + 6 * PT
        bar_w = 54 * PT
        grid = QRectF(r.left() + left, r.top() + tfm.height() + 6 * PT,
                      r.width() - left - bar_w - 8 * PT, r.height() - tfm.height() - 6 * PT - 20 * PT)
        cw, ch = grid.width() / max(cols, 1), grid.height() / max(rows, 1)
        if h.scale == "diverging":
            m = float(np.abs(v).max()) or 1.0
            lo, hi = -m, m
        else:
            lo, hi = min(0.0, float(v.min())), max(0.0, float(v.max()))
            hi = hi if hi > lo else lo + 1.0  # a constant map (all zero, or all one value): no 0/0
        colour = lambda x: _diverging((x - lo) / (hi - lo) * 2 - 1) if h.scale == "diverging" else _viridis((x - lo) / (hi - lo))  # noqa: E731
        p.setPen(Qt.PenStyle.NoPen)
        for i in range(rows):
            for j in range(cols):
                p.setBrush(colour(v[i, j]))
                p.drawRect(QRectF(grid.left() + j * cw, grid.bottom() - (i + 1) * ch, cw + 0.3, ch + 0.3))
        p.setFont(self.small)
        p.setPen(GREY)
        step = max(1, math.ceil(rows * fm.height() / grid.height()))
        for i, text in enumerate(h.row_labels):
            if i % step == 0 or i == rows - 1:
                y = grid.bottom() - (i + 0.5) * ch + fm.ascent() / 2 - 1 * PT
                p.drawText(QPointF(grid.left() - 3 * PT - fm.horizontalAdvance(text), y), text)
        for j, text in enumerate(h.col_labels):
            label = fm.elidedText(text.replace("\n", "⏎"), Qt.TextElideMode.ElideRight, cw - 1 * PT)
            p.drawText(QPointF(grid.left() + (j + 0.5) * cw - fm.horizontalAdvance(label) / 2,
                               grid.bottom() + 3 * PT + fm.ascent()), label)
        # colour bar
        bar = QRectF(grid.right() + 8 * PT, grid.top(), 9 * PT, grid.height())
        steps = 48
        for k in range(steps):
            x = lo + (hi - lo) * (k + 0.5) / steps
            p.setBrush(colour(x))
            p.setPen(Qt.PenStyle.NoPen)
            p.drawRect(QRectF(bar.left(), bar.bottom() - (k + 1) * bar.height() / steps, bar.width(),
                              bar.height() / steps + 0.3))
        p.setPen(QPen(GREY, 0.4 * PT))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(bar)
        for frac in (0.0, 0.5, 1.0):
            val = lo + (hi - lo) * frac
            y = bar.bottom() - frac * bar.height()
            p.drawLine(QPointF(bar.right(), y), QPointF(bar.right() + 2 * PT, y))
            p.drawText(QPointF(bar.right() + 3 * PT, y + fm.ascent() / 2 - 1 * PT), f"{val:.3g}")
        if h.unit:
            p.drawText(QPointF(bar.left(), bar.bottom() + 3 * PT + fm.ascent()), h.unit)

    def paint_chart(self, p: QPainter, r: QRectF, c: LineChart) -> None:
        fm = self.metrics(self.small)
        tfm = self.metrics(self.table_bold)
        p.setFont(self.table_bold)
        p.setPen(INK)
        p.drawText(QPointF(r.left(), r.top() + tfm.ascent()), c.title)
        plot = QRectF(r.left() + 40 * PT, r.top() + tfm.height() + 8 * PT, r.width() - 56 * PT,
                      r.height() - tfm.height() - 8 * PT - 30 * PT)
        xs = np.concatenate([np.asarray(s[1], float) for s in c.series]) if c.series else np.array([1.0])
        ys = np.concatenate([np.asarray(s[2], float) for s in c.series]) if c.series else np.array([0.0])
        tx = (lambda v: math.log10(max(v, 1e-12))) if c.log_x else (lambda v: v)
        x_lo, x_hi = tx(xs.min()), tx(xs.max())
        if x_hi <= x_lo:
            x_hi = x_lo + 1
        y_lo, y_hi = min(0.0, float(ys.min())), max(1.0, float(ys.max()))
        sx = lambda v: plot.left() + (tx(v) - x_lo) / (x_hi - x_lo) * plot.width()  # noqa: E731
        sy = lambda v: plot.bottom() - (v - y_lo) / (y_hi - y_lo) * plot.height()  # noqa: E731
        p.setFont(self.small)
        for yv in _nice_ticks(y_lo, y_hi):
            p.setPen(QPen(QColor("#eef0f2"), 0.4 * PT))
            p.drawLine(QPointF(plot.left(), sy(yv)), QPointF(plot.right(), sy(yv)))
            p.setPen(GREY)
            text = f"{yv:g}"
            p.drawText(QPointF(plot.left() - 3 * PT - fm.horizontalAdvance(text), sy(yv) + fm.ascent() / 2 - 1 * PT), text)
        if c.log_x:
            ticks = [10.0 ** k for k in range(math.floor(x_lo), math.ceil(x_hi) + 1) if x_lo - 1e-9 <= k <= x_hi + 1e-9]
        else:
            ticks = _nice_ticks(x_lo, x_hi)
        for xv in ticks:
            p.setPen(QPen(QColor("#eef0f2"), 0.4 * PT))
            p.drawLine(QPointF(sx(xv), plot.top()), QPointF(sx(xv), plot.bottom()))
            p.setPen(GREY)
            text = f"{xv:g}"
            p.drawText(QPointF(sx(xv) - fm.horizontalAdvance(text) / 2, plot.bottom() + 3 * PT + fm.ascent()), text)
        p.setPen(QPen(GREY, 0.6 * PT))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(plot)
        p.drawText(QPointF(plot.center().x() - fm.horizontalAdvance(c.x_label) / 2, plot.bottom() + 6 * PT + 2 * fm.height()),
                   c.x_label)
        p.save()
        p.translate(plot.left() - 30 * PT, plot.center().y() + fm.horizontalAdvance(c.y_label) / 2)
        p.rotate(-90)
        p.drawText(QPointF(0, 0), c.y_label)
        p.restore()
        for _, sx_vals, sy_vals in c.series:
            path = QPainterPath()
            for k, (xv, yv) in enumerate(zip(sx_vals, sy_vals)):
                pt = QPointF(sx(xv), sy(yv))
                path.moveTo(pt) if k == 0 else path.lineTo(pt)
            p.setPen(QPen(QColor(*POSITIVE), 1.3 * PT))
            p.drawPath(path)
            if len(sx_vals) <= 40:
                p.setBrush(QColor(*POSITIVE))
                for xv, yv in zip(sx_vals, sy_vals):
                    p.drawEllipse(QPointF(sx(xv), sy(yv)), 1.6 * PT, 1.6 * PT)
        if c.marker is not None:
            mx, my, text = c.marker
            pt = QPointF(sx(mx), sy(my))
            p.setPen(QPen(QColor("#f59e0b"), 1.2 * PT))
            p.setBrush(QColor("#f59e0b"))
            p.drawEllipse(pt, 2.6 * PT, 2.6 * PT)
            p.setPen(INK)
            w = fm.horizontalAdvance(text)
            x = pt.x() + 5 * PT if pt.x() + 5 * PT + w < plot.right() else pt.x() - 5 * PT - w
            p.drawText(QPointF(x, pt.y() + 10 * PT), text)


def layer_rules(p: QPainter, plot: QRectF, ticks, sy, step: int, fm) -> None:
    """A graph figure's layer axis: a faint rule and a label at every ``step``-th tick (and the last)."""
    for k, (v, text) in enumerate(ticks):
        if k % step and k != len(ticks) - 1:
            continue
        y = sy(v)
        p.setPen(QPen(QColor("#eef0f2"), 0.4 * PT))
        p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        p.setPen(GREY)
        p.drawText(QPointF(plot.left() - 4 * PT - fm.horizontalAdvance(text), y + fm.ascent() / 2 - 1 * PT), text)


def _viridis(t: float) -> QColor:
    t = min(max(float(t), 0.0), 1.0) * (len(_VIRIDIS) - 1)
    k = min(int(t), len(_VIRIDIS) - 2)
    a, b = QColor(_VIRIDIS[k]), QColor(_VIRIDIS[k + 1])
    f = t - k
    return QColor(round(a.red() + (b.red() - a.red()) * f), round(a.green() + (b.green() - a.green()) * f),
                  round(a.blue() + (b.blue() - a.blue()) * f))


def _diverging(t: float) -> QColor:
    """−1 → red (inhibits), 0 → white, +1 → blue (excites): the edge colours of the graph."""
    t = min(max(float(t), -1.0), 1.0)
    rgb = POSITIVE if t >= 0 else NEGATIVE
    f = abs(t)
    return QColor(*(round(255 + (c - 255) * f) for c in rgb))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + k * step, 10) for k in range(int((hi - start) / step + 1e-9) + 1)]


# -- the behaviour graph of a comparison ----------------------------------------------------------------
EDGE_INK = (82, 96, 109)  # behaviour-graph edges: grey, darker and wider the more cases hold them
NODE_RIM = QColor("#9aa5b1")


class BehaviourPainter:
    """Paints a ``core.report_comparison.BehaviourFigure``: layers bottom to top, nodes coloured by
    effect size, significant ones outlined, and a legend below the plot."""

    def __init__(self, figures: FigurePainter) -> None:
        self.f = figures

    def height(self, b) -> float:
        rows = len(b.y_ticks)
        plot = min(self.f.h * 0.6, max(0.42 * self.f.w, rows * 16 * PT))
        return self.title_height() + plot + self.legend_height(b)

    def title_height(self) -> float:
        return self.f.metrics(self.f.table_bold).height() + 4 * PT

    # the legend: items flowed over lines of the figure's width
    def legend_items(self, b) -> list[tuple[float, Callable[[QPainter, float, float], None]]]:
        """(width, paint(painter, x, y of the swatches' centre line)) of each legend entry; the colour
        bar comes first (its tick values hang below the line)."""
        fm = self.f.metrics(self.f.small)
        sw = 12 * PT  # a swatch's width (symbol + gap)
        items = []

        def text_at(p, x, y, text):
            p.setFont(self.f.small)
            p.setPen(GREY)
            p.drawText(QPointF(x, y + fm.ascent() / 2 - 1 * PT), text)

        if b.scale:
            bar_w = 110 * PT
            # a group's label is the user's text: elided so the bar's line fits the page
            low, high = (fm.elidedText(t, Qt.TextElideMode.ElideRight, 0.22 * self.f.w)
                         for t in (b.scale_low, b.scale_high))
            wl, wh = fm.horizontalAdvance(low), fm.horizontalAdvance(high)
            lo_v, hi_v = b.scale[0][0], b.scale[-1][0]

            def bar(p, x, y):
                text_at(p, x, y, low)
                left = x + wl + 4 * PT
                n = len(b.scale)
                cell = bar_w / n
                p.setPen(Qt.PenStyle.NoPen)
                for k, (_, colour) in enumerate(b.scale):
                    p.setBrush(QColor(colour))
                    p.drawRect(QRectF(left + k * cell, y - 3.5 * PT, cell + 0.3, 7 * PT))
                p.setPen(QPen(GREY, 0.4 * PT))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRect(QRectF(left, y - 3.5 * PT, bar_w, 7 * PT))
                p.setFont(self.f.small)
                for val, at in ((lo_v, 0.0), (0.0, 0.5), (hi_v, 1.0)):
                    t = "0" if val == 0 else f"{'≤ −' if val < 0 else '≥ +'}{abs(val):g}"
                    tx = left + at * bar_w - fm.horizontalAdvance(t) / 2
                    p.drawText(QPointF(tx, y + 3.5 * PT + 1 * PT + fm.ascent()), t)
                text_at(p, left + bar_w + 4 * PT, y, high)
            items.append((wl + wh + bar_w + 8 * PT, bar))
            def circle(fill: str, pen: QPen, text: str):
                """A legend entry: a node's circle and its meaning."""
                def paint(p, x, y):
                    p.setBrush(QColor(fill))
                    p.setPen(pen)
                    p.drawEllipse(QPointF(x + 4 * PT, y), 3.5 * PT, 3.5 * PT)
                    text_at(p, x + sw, y, text)
                return sw + fm.horizontalAdvance(text), paint

            items.append(circle("#ffffff", QPen(INK, 1.6 * PT), f"significant (corrected p ≤ {b.alpha:g})"))
            items.append(circle(UNCOMPARED_COLOUR, QPen(NODE_RIM, 0.5 * PT), "not tested"))
        end = "endpoint (tokens / input, logits)"

        def endpoint(p, x, y):
            p.setBrush(QColor(ENDPOINT_COLOUR))
            p.setPen(QPen(QColor("white"), 0.5 * PT))
            p.drawRect(QRectF(x + 1 * PT, y - 3 * PT, 6 * PT, 6 * PT))
            text_at(p, x + sw, y, end)
        items.append((sw + fm.horizontalAdvance(end), endpoint))
        rec = "edge held by 25% / 100% of the cases"

        def edges(p, x, y):
            for k, r in enumerate((0.25, 1.0)):
                p.setPen(QPen(self.edge_colour(r), self.edge_width(r)))
                p.drawLine(QPointF(x, y - 1.5 * PT + 3 * PT * k), QPointF(x + 14 * PT, y - 1.5 * PT + 3 * PT * k))
            text_at(p, x + 18 * PT, y, rec)
        items.append((18 * PT + fm.horizontalAdvance(rec), edges))
        return items

    def legend_lines(self, b) -> list[list[tuple[float, float, Callable]]]:
        """The legend's entries flowed over lines of the figure's width: (x, width, paint) each."""
        gap = 14 * PT
        lines: list[list] = [[]]
        x = 0.0
        for w, paint in self.legend_items(b):
            if lines[-1] and x + w > self.f.w:
                lines.append([])
                x = 0.0
            lines[-1].append((x, w, paint))
            x += w + gap
        return lines

    def legend_height(self, b) -> float:
        return sum(self.line_height(b, k) for k in range(len(self.legend_lines(b)))) + 6 * PT

    def line_height(self, b, k: int) -> float:
        """Line ``k`` of the legend: the first holds the colour bar and its ticks when there is one."""
        fm = self.f.metrics(self.f.small)
        return (8 * PT + 2 * fm.height() if k == 0 and b.scale else fm.height() + 4 * PT)

    @staticmethod
    def edge_colour(rec: float) -> QColor:
        return QColor(*EDGE_INK, int(25 + 95 * min(max(rec, 0.0), 1.0)))

    @staticmethod
    def edge_width(rec: float) -> float:
        return (0.2 + 0.7 * min(max(rec, 0.0), 1.0)) * PT

    def paint(self, p: QPainter, r: QRectF, b) -> None:
        fm = self.f.metrics(self.f.small)
        tfm = self.f.metrics(self.f.table_bold)
        p.setFont(self.f.table_bold)
        p.setPen(INK)
        p.drawText(QPointF(r.left(), r.top() + tfm.ascent()), b.title)
        left = max(fm.horizontalAdvance(t) for _, t in b.y_ticks) + 8 * PT
        top = r.top() + self.title_height()
        legend_h = self.legend_height(b)
        plot = QRectF(r.left() + left, top, r.width() - left - 2 * PT, r.bottom() - legend_h - top)
        span = max(float(np.abs(b.x).max()) if len(b.x) else 0.0, 2.0) + 0.7
        x_lo, x_hi = -span, span
        y_lo, y_hi = min(t for t, _ in b.y_ticks) - 0.6, max(t for t, _ in b.y_ticks) + 0.6
        sx = lambda v: plot.left() + (v - x_lo) / (x_hi - x_lo) * plot.width()  # noqa: E731
        sy = lambda v: plot.bottom() - (v - y_lo) / (y_hi - y_lo) * plot.height()  # noqa: E731
        row_h = plot.height() / (y_hi - y_lo)
        col_w = plot.width() / (x_hi - x_lo)
        r_max = min(6.5 * PT, 0.3 * row_h, 0.42 * col_w)
        r_min = min(1.8 * PT, r_max)
        radius = np.maximum(r_min, r_max * np.asarray(b.size, float))
        p.setPen(QPen(RULE, 0.5 * PT))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(plot)
        p.setFont(self.f.small)
        layer_rules(p, plot, b.y_ticks, sy, max(1, math.ceil(len(b.y_ticks) * fm.height() / plot.height())), fm)
        # edges: the rarest first, one path per band of recurrence
        rec = np.asarray(b.recurrence, float)
        for lo, hi in ((0.0, 0.4), (0.4, 0.7), (0.7, 1.01)):
            sel = np.flatnonzero((rec >= lo) & (rec < hi))
            if not len(sel):
                continue
            mid = float(rec[sel].mean())
            path = QPainterPath()
            for e in sel:
                s, t = int(b.src[e]), int(b.dst[e])
                a, z = QPointF(sx(b.x[s]), sy(b.y[s])), QPointF(sx(b.x[t]), sy(b.y[t]))
                path.moveTo(a)
                if b.y[s] == b.y[t]:  # within a layer (a head into its layer's MLP): an arc, not a line through
                    bend = min(0.45 * row_h, 0.25 * abs(z.x() - a.x()) + 4 * PT)  # the nodes between them
                    path.quadTo(QPointF((a.x() + z.x()) / 2, a.y() - 2 * bend), z)
                else:
                    path.lineTo(z)
            p.setPen(QPen(self.edge_colour(mid), self.edge_width(mid)))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPath(path)
        # nodes
        boxes: list[QRectF] = []
        for k in range(len(b.x)):
            c = QPointF(sx(b.x[k]), sy(b.y[k]))
            rad = float(radius[k])
            p.setBrush(QBrush(QColor(b.colour[k])))
            if b.outline[k]:
                p.setPen(QPen(INK, 1.6 * PT))
            else:
                p.setPen(QPen(QColor("white") if b.square[k] else NODE_RIM, 0.5 * PT))
            if b.square[k]:
                p.drawRect(QRectF(c.x() - rad, c.y() - rad, 2 * rad, 2 * rad))
            else:
                p.drawEllipse(c, rad, rad)
            boxes.append(QRectF(c.x() - rad, c.y() - rad, 2 * rad, 2 * rad))
        # names: below the node, else above it; one that would cover a node or a name is left out
        p.setFont(self.f.small)
        taken = list(boxes)
        for k, text in b.labels.items():
            w = fm.horizontalAdvance(text) + 2 * PT
            cx, cy, rad = sx(b.x[k]), sy(b.y[k]), float(radius[k])
            for top_y in (cy + rad + 0.5 * PT, cy - rad - 0.5 * PT - fm.height()):
                box = QRectF(cx - w / 2, top_y, w, fm.height())
                if not plot.contains(box) or any(box.intersects(o) for i, o in enumerate(taken) if i != k):
                    continue
                taken.append(box)
                p.fillRect(box, QColor(255, 255, 255, 210))
                p.setPen(INK)
                p.drawText(QPointF(box.left() + 1 * PT, box.top() + fm.ascent()), text)
                break
        # legend
        y = plot.bottom() + 5 * PT
        for k, line in enumerate(self.legend_lines(b)):
            for x, _, paint in line:
                paint(p, r.left() + x, y + max(3.5 * PT, fm.height() / 2))
            y += self.line_height(b, k)

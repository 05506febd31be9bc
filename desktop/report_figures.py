"""The report's figures painted as vectors: the circuit graph, heatmaps and line charts
(``core.report`` figure blocks), for ``desktop.report_pdf``'s page layout."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QPainter, QPainterPath, QPen

from core.report import GraphFigure, Heatmap, LineChart
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
        step = max(1, math.ceil(len(g.y_ticks) / 24))
        for k, (v, text) in enumerate(g.y_ticks):
            if k % step and k != len(g.y_ticks) - 1:
                continue
            y = sy(v)
            p.setPen(QPen(QColor("#eef0f2"), 0.4 * PT))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(GREY)
            p.drawText(QPointF(plot.left() - 4 * PT - fm.horizontalAdvance(text), y + fm.ascent() / 2 - 1 * PT), text)
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

"""Paint a ``core.report.Report`` into a PDF with QPdfWriter and QPainter.

Everything is vector: text stays text (selectable, searchable, ``pdftotext`` reads it), the
graph's edges and nodes are paths, heatmap cells are filled rectangles. Layout is a simple flow:
each block becomes pieces of known height (a table row, a line of text, a figure), placed top to
bottom and onto a new page when the next one does not fit; a table split over pages repeats its
header, a section starts on a new page, a heading is kept with what follows it. Page numbers are
known once everything is placed, so the contents page and the "Page i of N" footers are painted
after the layout.

Needs a ``QGuiApplication`` (fonts); ``ensure_gui_app`` makes an offscreen one for the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMarginsF, QPointF, QRectF, QSettings, Qt
from PySide6.QtGui import (QColor, QFont, QFontMetricsF, QGuiApplication, QPageLayout, QPageSize,
                           QPainter, QPdfWriter, QPen, QTextLayout, QTextOption)

from core.errors import CircuitDeskError
from core.paths import atomic_write
from core.report_blocks import (Contents, Facts, FeatureExamples, GraphFigure, Heading, Heatmap, LineChart, PageBreak,
                                Paragraph, Report, Snippet, Table)
from core.report_comparison import BehaviourFigure
from desktop.report_figures import DPI, GREY, HEADER_BG, INK, PT, RULE, BehaviourPainter, FigurePainter

MARGIN_MM = 16
SANS = ["DejaVu Sans", "Noto Sans", "Liberation Sans", "Helvetica", "Arial"]
MONO = ["DejaVu Sans Mono", "Noto Sans Mono", "Liberation Mono", "Courier New"]
AUDITOR_KEY = "report/auditor"
WARM, COOL = QColor("#f97316"), QColor("#3b82f6")  # a token's shade: positive / negative activation
TOKEN_GAP = 0.7  # points between two tokens' backgrounds (where one token ends and the next begins)
SHADE_MAX = 0.8  # the peak token's shade: this share of the colour over white (the text stays legible)
VISIBLE = {"\n": "⏎", "\r": "␍", "\t": "⇥"}  # whitespace a reader must see in an example


def ensure_gui_app():
    """The running QGuiApplication, or a new offscreen one (headless report rendering)."""
    app = QGuiApplication.instance()
    if app is None:
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        app = QGuiApplication([])
    return app


def auditor_name() -> str:
    """The auditor's name kept in the GUI's settings (File → Auditor Name…), or ""."""
    return str(QSettings("CircuitDesk", "CircuitDesk").value(AUDITOR_KEY, "") or "")


def write_pdf(report: Report, path: str | Path, ctx=None) -> Path:
    """Render ``report`` to ``path`` (written whole or not at all); returns the path.

    ``ctx`` (a ``core.jobs`` context): cancellation is checked between blocks and pages, and once
    more before the file is written, so a cancelled report leaves nothing behind."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".pdf":
        raise CircuitDeskError(f"Reports are PDF files; the name must end in .pdf (got {path.name!r}).")
    data = render_pdf(report, ctx)
    if ctx is not None:
        ctx.check_cancelled()
    return atomic_write(path, lambda fh: fh.write(data))


def render_pdf(report: Report, ctx=None) -> bytes:
    """The PDF document as bytes (``ctx``: see ``write_pdf``)."""
    ensure_gui_app()
    buf = QByteArray()
    dev = QBuffer(buf)
    dev.open(QIODevice.OpenModeFlag.WriteOnly)
    writer = QPdfWriter(dev)
    writer.setResolution(DPI)
    writer.setTitle(report.title)
    writer.setCreator("Circuit Desk")
    writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4), QPageLayout.Orientation.Portrait,
                                     QMarginsF(MARGIN_MM, MARGIN_MM, MARGIN_MM, MARGIN_MM),
                                     QPageLayout.Unit.Millimeter))
    painter = QPainter(writer)
    try:
        _Renderer(report, painter, writer.pageLayout().paintRectPixels(DPI), ctx).run(writer)
    finally:
        painter.end()
    dev.close()
    return bytes(buf.data())


def _font(families, size: float, bold: bool = False, italic: bool = False) -> QFont:
    f = QFont()
    f.setFamilies(families)
    f.setPointSizeF(size)
    f.setBold(bold)
    f.setItalic(italic)
    f.setStyleHint(QFont.StyleHint.Monospace if families is MONO else QFont.StyleHint.SansSerif)
    for tag in ("liga", "clig"):  # "ff" in a sha256 must stay two letters for search and copy
        f.setFeature(QFont.Tag(tag), 0)
    return f


def visible_token(token: str) -> str:
    """A token as printed in an example: line breaks and tabs as symbols, an empty token as ∅."""
    text = "".join(VISIBLE.get(c, c if c.isprintable() or c == " " else "�") for c in token)
    return text or "∅"


def shade(share: float) -> QColor | None:
    """The background of a token whose activation is ``share`` of its example's extreme (in
    [-1, 1]): warm for positive, cool for negative, none where it is about zero."""
    t = min(abs(share), 1.0) * SHADE_MAX
    if t < 0.02:
        return None
    base = WARM if share > 0 else COOL
    return QColor.fromRgbF(1 - t * (1 - base.redF()), 1 - t * (1 - base.greenF()), 1 - t * (1 - base.blueF()))


def flow(widths: list[float], width: float, gap: float = 0.0) -> list[tuple[int, float, float]]:
    """Place runs of the given widths left to right on lines of ``width``, ``gap`` apart: (line, x,
    w) each. A run starts a new line when it would cross the right edge (runs are at most ``width``
    wide, see ``_split_to_fit``), so nothing is drawn beyond it."""
    out, line, x = [], 0, 0.0
    for w in widths:
        if x > 0 and x + w > width:
            line, x = line + 1, 0.0
        out.append((line, x, w))
        x += w + gap
    return out


def _split_to_fit(text: str, fm: QFontMetricsF, width: float) -> list[str]:
    """``text`` cut into pieces no wider than ``width`` (one piece unless a token is longer than a line)."""
    if fm.horizontalAdvance(text) <= width:
        return [text]
    out, cur = [], ""
    for c in text:
        if cur and fm.horizontalAdvance(cur + c) > width:
            out.append(cur)
            cur = ""
        cur += c
    return out + ([cur] if cur else [])


@dataclass
class _Piece:
    height: float
    paint: Callable[[QPainter, float, float], None]  # (painter, x, y) at the content width
    gap: float = 0.0  # space above, dropped at the top of a page
    keep_with_next: bool = False
    new_page: bool = False
    heading: tuple[str, int] | None = None  # (numbered title, level) for the contents
    repeat: "_Piece | None" = None  # a table's header, repeated after a page break


@dataclass
class _Page:
    pieces: list = field(default_factory=list)  # (piece, y)


class _Renderer:
    def __init__(self, report: Report, painter: QPainter, rect, ctx=None) -> None:
        self.report, self.p = report, painter
        self.ctx = ctx  # checked for cancellation between blocks, paragraphs and pages
        self.w = rect.width()
        self.h = rect.height()
        self.body = _font(SANS, 9.5)
        self.small = _font(SANS, 7.5)
        self.table = _font(SANS, 8)
        self.table_bold = _font(SANS, 8, bold=True)
        self.caption = _font(SANS, 8, italic=True)
        self.mono = _font(MONO, 7.2)
        self.h1 = _font(SANS, 15, bold=True)
        self.h2 = _font(SANS, 11, bold=True)
        self.title = _font(SANS, 21, bold=True)
        self.header_h = 14 * PT  # running header band (pages after the first)
        self.footer_h = 12 * PT
        self.contents: list[tuple[str, int, int]] = []  # (title, level, page), filled after layout
        self.figures = FigurePainter(self.small, self.table_bold, self.w, self.h, self.metrics)
        self.behaviour = BehaviourPainter(self.figures)

    # -- text helpers ----------------------------------------------------------------------------
    def check_cancelled(self) -> None:
        if self.ctx is not None:
            self.ctx.check_cancelled()

    def metrics(self, font: QFont) -> QFontMetricsF:
        return QFontMetricsF(font, self.p.device())

    def lines(self, text: str, font: QFont, width: float) -> list[str]:
        """``text`` broken into lines that fit ``width`` (at word boundaries, else anywhere)."""
        out: list[str] = []
        for para in text.split("\n"):
            self.check_cancelled()
            if not para:
                out.append("")
                continue
            layout = QTextLayout(para, font, self.p.device())
            opt = QTextOption()
            opt.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
            layout.setTextOption(opt)
            layout.beginLayout()
            while True:
                line = layout.createLine()
                if not line.isValid():
                    break
                line.setLineWidth(width)
                out.append(para[line.textStart(): line.textStart() + line.textLength()].rstrip())
            layout.endLayout()
        return out

    def text_pieces(self, text: str, font: QFont, colour: QColor = INK, indent: float = 0.0,
                    gap: float = 0.0) -> list[_Piece]:
        fm = self.metrics(font)
        lh = fm.lineSpacing()
        pieces = []
        for k, line in enumerate(self.lines(text, font, self.w - indent)):
            def paint(p, x, y, line=line):
                p.setFont(font)
                p.setPen(colour)
                p.drawText(QPointF(x + indent, y + fm.ascent()), line)
            pieces.append(_Piece(lh, paint, gap=gap if k == 0 else 0.0))
        return pieces

    # -- blocks -> pieces -----------------------------------------------------------------------
    def pieces(self) -> list[_Piece]:
        out: list[_Piece] = []
        numbers = [0, 0]
        first_section = True
        for block in self.report.blocks:
            self.check_cancelled()
            if isinstance(block, Heading):
                if block.level == 1:
                    numbers = [numbers[0] + 1, 0]
                    title = f"{numbers[0]}  {block.text}"
                else:
                    numbers[1] += 1
                    title = f"{numbers[0]}.{numbers[1]}  {block.text}"
                font = self.h1 if block.level == 1 else self.h2
                fm = self.metrics(font)
                title = fm.elidedText(title, Qt.TextElideMode.ElideRight, self.w)  # one line, never past the margin

                def paint(p, x, y, title=title, font=font, fm=fm, level=block.level):
                    p.setFont(font)
                    p.setPen(INK)
                    p.drawText(QPointF(x, y + fm.ascent()), title)
                    if level == 1:
                        p.setPen(QPen(RULE, 0.8 * PT))
                        p.drawLine(QPointF(x, y + fm.height() + 2 * PT), QPointF(x + self.w, y + fm.height() + 2 * PT))
                new_page = block.level == 1 and not first_section and self.report.sections_start_pages
                first_section = False if block.level == 1 else first_section
                out.append(_Piece(fm.height() + (6 if block.level == 1 else 3) * PT, paint,
                                  gap=(16 if block.level == 1 else 10) * PT, keep_with_next=True,
                                  new_page=new_page, heading=(title, block.level)))
            elif isinstance(block, Paragraph):
                font = {"mono": self.mono, "note": self.caption}.get(block.style, self.body)
                colour = GREY if block.style == "note" else INK
                out += self.text_pieces(block.text, font, colour, gap=5 * PT)
            elif isinstance(block, Facts):
                out += self.table_pieces(("", ""), block.rows, (1.6, 4.4), (), "", header=False)
            elif isinstance(block, Table):
                out += self.table_pieces(block.columns, block.rows, block.widths, block.numeric, block.caption,
                                         muted=block.muted)
            elif isinstance(block, FeatureExamples):
                out += self.feature_pieces(block)
            elif isinstance(block, GraphFigure):
                out += self.figure(block, self.figures.graph_height(block), self.figures.paint_graph, block.caption)
            elif isinstance(block, Heatmap):
                out += self.figure(block, self.figures.heatmap_height(block), self.figures.paint_heatmap, block.caption)
            elif isinstance(block, BehaviourFigure):
                out += self.figure(block, self.behaviour.height(block), self.behaviour.paint, block.caption)
            elif isinstance(block, LineChart):
                out += self.figure(block, 0.42 * self.w, self.figures.paint_chart, block.caption)
            elif isinstance(block, Contents):
                out += self.contents_pieces()
            elif isinstance(block, PageBreak):
                out.append(_Piece(0.0, lambda p, x, y: None, new_page=True))
        return out

    def table_pieces(self, columns, rows, widths, numeric, caption: str, header: bool = True,
                     muted=frozenset()) -> list[_Piece]:
        n = len(columns)
        widths = widths if len(widths) == n else (1.0,) * n
        total = sum(widths)
        col_w = [self.w * wi / total for wi in widths]
        pad = 2.5 * PT
        fm = self.metrics(self.table)
        lh = fm.lineSpacing()
        right = [bool(numeric[i]) if i < len(numeric) else False for i in range(n)]
        # a left-aligned column right after a right-aligned one: their texts meet at the rule
        # between them ("Influence" | "Pruned graph"), so the left one starts further in
        lead = [pad * (3 if i and right[i - 1] and not right[i] else 1) for i in range(n)]

        muted_font = _font(SANS, 8, italic=True)

        def font_of(i, bold_cols, muted_cols):
            return self.table_bold if i in bold_cols else muted_font if i in muted_cols else self.table

        def row_piece(cells, bold_cols, fill: QColor | None, gap: float = 0.0, muted_cols=()) -> _Piece:
            wrapped = []
            for i, cell in enumerate(cells):
                wrapped.append(self.lines(str(cell), font_of(i, bold_cols, muted_cols), col_w[i] - lead[i] - pad)[:40])
            height = max(len(w) for w in wrapped) * lh + 2 * pad

            def paint(p, x, y):
                if fill is not None:
                    p.fillRect(QRectF(x, y, self.w, height), fill)
                p.setPen(QPen(RULE, 0.4 * PT))
                p.drawLine(QPointF(x, y + height), QPointF(x + self.w, y + height))
                cx = x
                for i, lines in enumerate(wrapped):
                    p.setFont(font_of(i, bold_cols, muted_cols))
                    p.setPen(GREY if i in muted_cols else INK)
                    for k, line in enumerate(lines):
                        base = y + pad + k * lh + fm.ascent()
                        if right[i]:
                            p.drawText(QPointF(cx + col_w[i] - pad - fm.horizontalAdvance(line), base), line)
                        else:
                            p.drawText(QPointF(cx + lead[i], base), line)
                    cx += col_w[i]
            return _Piece(height, paint, gap=gap)

        pieces = []
        head = row_piece(columns, set(range(n)), HEADER_BG, gap=5 * PT) if header else None
        if head is not None:
            head.keep_with_next = True
            pieces.append(head)
        for k, r in enumerate(rows):
            piece = row_piece(r, {0} if not header else set(), None, gap=0.0 if (header or k) else 5 * PT,
                              muted_cols={c for (row, c) in muted if row == k})
            piece.repeat = head
            pieces.append(piece)
        if header and not rows:
            pieces += self.text_pieces("(none)", self.caption, GREY)
        if caption:
            pieces += self.text_pieces(caption, self.caption, GREY, gap=2 * PT)
        return pieces

    def feature_pieces(self, block: FeatureExamples) -> list[_Piece]:
        """A feature node: its name, labels and statistics, then each example as shaded tokens."""
        name_font = _font(SANS, 9.5, bold=True)
        fm, small = self.metrics(name_font), self.metrics(self.small)
        right = f"influence {block.influence:.4f} · activation {block.activation:.3g}"
        right_w = small.horizontalAdvance(right)
        name = fm.elidedText(block.node, Qt.TextElideMode.ElideRight, self.w - right_w - 8 * PT)

        def head(p, x, y):
            p.setFont(name_font)
            p.setPen(INK)
            p.drawText(QPointF(x, y + fm.ascent()), name)
            p.setFont(self.small)
            p.setPen(GREY)
            p.drawText(QPointF(x + self.w - right_w, y + fm.ascent()), right)
        pieces = [_Piece(fm.lineSpacing(), head, gap=10 * PT, keep_with_next=True)]
        side = ", negative side" if block.sign < 0 else ""
        if block.label:
            text = f"Label: {block.label}"
            if block.atlas_label and block.atlas_label != block.label:
                text += f"   (atlas{side}: {block.atlas_label})"
        else:
            text = f"Atlas label{side}: {block.atlas_label}" if block.atlas_label else "No label"
        pieces += self.text_pieces(text, self.body, gap=1 * PT)
        if block.stats:
            pieces += self.text_pieces(block.stats + ("; its most negative windows:" if block.sign < 0 else ""),
                                       self.caption, GREY)
        for piece in pieces:
            piece.keep_with_next = True
        if not block.examples:
            pieces += self.text_pieces(block.note or "No examples.", self.caption, GREY, gap=2 * PT)
        for k, example in enumerate(block.examples):
            pieces.append(self.snippet_piece(example, gap=(3 if k == 0 else 2.5) * PT))
        return pieces

    def snippet_piece(self, e: Snippet, gap: float) -> _Piece:
        """One example: its peak value in a left column, its tokens flowed over the lines to the right
        (each on a background shaded by its activation, the peak bold), its source below in grey."""
        font, bold = _font(SANS, 8.5), _font(SANS, 8.5, bold=True)
        fm, fb, small = self.metrics(font), self.metrics(bold), self.metrics(self.small)
        value = f"{e.value:+.3g}"
        indent = self.metrics(self.mono).horizontalAdvance("+0.00e+00") + 3 * PT
        width = self.w - indent
        extreme = max((abs(a) for a in e.activations), default=0.0) or 1.0
        runs: list[tuple[str, float, bool]] = []  # (text, activation, bold)
        if e.cut_before:
            runs.append(("…", 0.0, False))
        for k, (token, act) in enumerate(zip(e.tokens, e.activations)):
            runs.append((visible_token(token), act, k == e.peak))
        if e.cut_after:
            runs.append((" …", 0.0, False))
        pieces: list[tuple[str, float, bool, float]] = []
        for text, act, strong in runs:
            metrics = fb if strong else fm
            for chunk in _split_to_fit(text, metrics, width):
                pieces.append((chunk, act, strong, metrics.horizontalAdvance(chunk)))
        placed = flow([w for *_, w in pieces], width, gap=TOKEN_GAP * PT)
        lh = max(fm.lineSpacing(), fb.lineSpacing()) + 1.2 * PT
        n_lines = (placed[-1][0] + 1) if placed else 1
        height = n_lines * lh + small.lineSpacing() + 1 * PT
        where = small.elidedText(e.where, Qt.TextElideMode.ElideMiddle, width)

        def paint(p, x, y):
            p.setFont(self.mono)
            p.setPen(GREY)
            p.drawText(QPointF(x, y + fm.ascent() + 0.6 * PT), value)
            for (text, act, strong, w), (line, tx, _) in zip(pieces, placed):
                top = y + line * lh
                fill = shade(act / extreme)
                if fill is not None:
                    p.fillRect(QRectF(x + indent + tx, top, w, lh - 0.6 * PT), fill)
                p.setFont(bold if strong else font)
                p.setPen(INK)
                p.drawText(QPointF(x + indent + tx, top + 0.6 * PT + fm.ascent()), text)
            p.setFont(self.small)
            p.setPen(GREY)
            p.drawText(QPointF(x + indent, y + n_lines * lh + small.ascent()), where)
        return _Piece(height, paint, gap=gap)

    def figure(self, block, height: float, paint_fn, caption: str) -> list[_Piece]:
        def paint(p, x, y):
            p.save()
            paint_fn(p, QRectF(x, y, self.w, height), block)
            p.restore()
        pieces = [_Piece(height, paint, gap=8 * PT, keep_with_next=bool(caption))]
        if caption:  # a figure and its whole caption stay on one page
            lines = self.text_pieces(caption, self.caption, GREY, gap=3 * PT)
            for line in lines[:-1]:
                line.keep_with_next = True
            pieces += lines
        return pieces

    def contents_pieces(self) -> list[_Piece]:
        headings = [b for b in self.report.blocks if isinstance(b, Heading)]
        fm = self.metrics(self.body)
        lh = fm.lineSpacing() * 1.15
        title_fm = self.metrics(self.h2)

        def title(p, x, y):
            p.setFont(self.h2)
            p.setPen(INK)
            p.drawText(QPointF(x, y + title_fm.ascent()), "Contents")
        pieces = [_Piece(title_fm.height() + 4 * PT, title, gap=14 * PT, keep_with_next=True)]
        for k in range(len(headings)):
            def paint(p, x, y, k=k):
                if k >= len(self.contents):
                    return
                text, level, page = self.contents[k]
                font = self.body if level == 1 else self.table
                p.setFont(font)
                p.setPen(INK if level == 1 else GREY)
                indent = 0 if level == 1 else 14 * PT
                num = str(page)
                room = self.w - indent - self.metrics(font).horizontalAdvance(num) - 8 * PT
                text = self.metrics(font).elidedText(text, Qt.TextElideMode.ElideRight, room)
                p.drawText(QPointF(x + indent, y + fm.ascent()), text)
                p.drawText(QPointF(x + self.w - self.metrics(font).horizontalAdvance(num), y + fm.ascent()), num)
                left = x + indent + self.metrics(font).horizontalAdvance(text) + 4 * PT
                right = x + self.w - self.metrics(font).horizontalAdvance(num) - 4 * PT
                if right > left:
                    p.setPen(QPen(RULE, 0.6 * PT, Qt.PenStyle.DotLine))
                    p.drawLine(QPointF(left, y + fm.ascent()), QPointF(right, y + fm.ascent()))
            pieces.append(_Piece(lh, paint))
        return pieces

    # -- layout and painting ---------------------------------------------------------------------------
    def layout(self, pieces: list[_Piece]) -> list[_Page]:
        pages = [_Page()]
        cover_top = self.cover_height()
        top = lambda: cover_top if len(pages) == 1 else self.header_h  # noqa: E731
        bottom = self.h - self.footer_h
        y = top()
        i = 0
        while i < len(pieces):
            piece = pieces[i]
            at_top = not pages[-1].pieces or y == top()
            if piece.new_page and not at_top:
                pages.append(_Page())
                y = top()
                at_top = True
            if piece.new_page and piece.height == 0:
                i += 1
                continue
            need = piece.height + (0 if at_top else piece.gap)
            j = i  # keep a heading (or table header) with the piece after it
            while pieces[j].keep_with_next and j + 1 < len(pieces) and not pieces[j + 1].new_page:
                j += 1
                need += pieces[j].gap + pieces[j].height
            if y + need > bottom and not at_top:
                pages.append(_Page())
                y = top()
                if piece.repeat is not None:  # a table goes on: its header again
                    pages[-1].pieces.append((piece.repeat, y))
                    y += piece.repeat.height
                continue
            y += 0 if at_top else piece.gap
            pages[-1].pieces.append((piece, y))
            y += piece.height
            i += 1
        return pages

    def cover_height(self) -> float:
        t, s = self.metrics(self.title), self.metrics(_font(SANS, 12))
        n = len(self.lines(self.report.subtitle, _font(SANS, 12), self.w)) if self.report.subtitle else 0
        return t.height() + 8 * PT + n * s.lineSpacing() + 14 * PT

    def paint_cover(self) -> None:
        p = self.p
        t = self.metrics(self.title)
        p.setFont(self.title)
        p.setPen(INK)
        p.drawText(QPointF(0, t.ascent()), self.report.title)
        sub = _font(SANS, 12, italic=True)
        s = self.metrics(sub)
        p.setFont(sub)
        p.setPen(GREY)
        y = t.height() + 8 * PT
        if self.report.subtitle:
            for line in self.lines(self.report.subtitle, sub, self.w):
                p.drawText(QPointF(0, y + s.ascent()), line)
                y += s.lineSpacing()
        p.setPen(QPen(QColor("#0f766e"), 2 * PT))
        p.drawLine(QPointF(0, y + 6 * PT), QPointF(self.w, y + 6 * PT))

    def paint_frame(self, page_no: int, n_pages: int) -> None:
        p = self.p
        fm = self.metrics(self.small)
        p.setFont(self.small)
        p.setPen(GREY)
        if page_no > 1:
            head = fm.elidedText(self.report.header, Qt.TextElideMode.ElideRight, self.w)
            p.drawText(QPointF(0, fm.ascent()), head)
            p.setPen(QPen(RULE, 0.5 * PT))
            p.drawLine(QPointF(0, fm.height() + 2 * PT), QPointF(self.w, fm.height() + 2 * PT))
            p.setPen(GREY)
        y = self.h - fm.descent()
        p.drawText(QPointF(0, y), fm.elidedText(self.report.footer, Qt.TextElideMode.ElideMiddle, self.w * 0.7))
        num = f"Page {page_no} of {n_pages}"
        p.drawText(QPointF(self.w - fm.horizontalAdvance(num), y), num)

    def run(self, writer: QPdfWriter) -> None:
        pieces = self.pieces()
        pages = self.layout(pieces)
        for k, page in enumerate(pages, 1):
            self.contents += [(*piece.heading, k) for piece, _ in page.pieces if piece.heading is not None]
        for k, page in enumerate(pages, 1):
            self.check_cancelled()
            if k > 1:
                writer.newPage()
            else:
                self.paint_cover()
            self.paint_frame(k, len(pages))
            for piece, y in page.pieces:
                piece.paint(self.p, 0.0, y)

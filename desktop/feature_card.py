"""The inspector's feature atlas section: what a neuron or transcoder feature responds to.

A feature's card (``core.atlas.store.FeatureCard``) as the inspector shows it: its automatic label,
density, extremes and quantile bins, a small histogram of its activations (this node's activation
marked on it), and its top-activating examples, each token's background shaded by its activation
relative to the example's extreme (warm positive, cool negative; the peak token bold), long
examples elided around the peak. Signed neurons show either side; the side of the node's own
activation first.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from core.atlas.store import HIST_EDGES, Example, FeatureCard

EXAMPLES = 10  # examples shown per side
WARM, COOL = (234, 88, 12), (37, 99, 235)  # token backgrounds: positive, negative activation (RGB)
MAX_ALPHA = 0.62  # the background's opacity at the example's extreme
MIN_SHADE = 0.04  # below this share of the extreme a token is left unshaded
BEFORE, AFTER = 110, 70  # characters kept before / after the peak token of a long example
VISIBLE_CHARS = {"\n": "⏎", "\t": "⇥", "\r": ""}


def shade(a: float, extreme: float) -> str | None:
    """A token's CSS background for activation ``a`` in an example whose extreme is ``extreme``
    (None: unshaded). Opacity grows with |a| / |extreme|; the hue is the sign's."""
    top = abs(extreme)
    t = min(1.0, abs(a) / top) if top > 0 else 0.0
    if t < MIN_SHADE:
        return None
    r, g, b = WARM if a > 0 else COOL
    return f"rgba({r},{g},{b},{MAX_ALPHA * t:.3f})"


def elide(tokens, at: int, before: int = BEFORE, after: int = AFTER) -> tuple[int, int]:
    """The tokens [lo, hi) shown of an example: the peak ``at`` and as many tokens around it as fit
    in ``before`` characters before it and ``after`` after it."""
    lo, used = at, 0
    while lo > 0 and used + len(tokens[lo - 1]) <= before:
        lo -= 1
        used += len(tokens[lo])
    hi, used = at + 1, 0
    while hi < len(tokens) and used + len(tokens[hi]) <= after:
        used += len(tokens[hi])
        hi += 1
    return lo, hi


def token_text(token: str) -> str:
    return "".join(VISIBLE_CHARS.get(c, c) for c in token)


def example_html(e: Example, before: int = BEFORE, after: int = AFTER) -> str:
    """One example as rich text: every token a span, shaded by its activation (``shade``), the
    peak token bold; "…" where the window is elided."""
    lo, hi = elide(e.tokens, e.at, before, after)
    parts = ["…"] if lo > 0 else []
    for i in range(lo, hi):
        text = escape(token_text(e.tokens[i]))
        style = shade(float(e.activations[i]), e.value)
        span = f'<span style="background-color:{style}">{text}</span>' if style else f"<span>{text}</span>"
        parts.append(f"<b>{span}</b>" if i == e.at else span)
    if hi < len(e.tokens):
        parts.append("…")
    return "".join(parts)


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _share(x: float) -> str:
    """A density in words: 19.0%, 0.042%, 0%."""
    return f"{x:.1%}" if x >= 0.01 or x == 0 else f"{x * 100:.2g}%"


class HistogramView(QWidget):
    """The activation histogram of one side of a feature (counts over the atlas's log bins), with
    the node's own activation marked."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = np.zeros(0, np.int64)
        self.marker: float | None = None
        self.warm = True
        self.setMinimumHeight(64)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(280, 70)

    def set_counts(self, counts: np.ndarray, marker: float | None, warm: bool) -> None:
        """``counts`` per bin of |activation| (``HIST_EDGES``), ``marker``: |activation| here."""
        self.counts, self.marker, self.warm = np.asarray(counts, np.int64), marker, warm
        self.setToolTip("Activations on the corpus (log scale of |activation|, count per bin)"
                        + ("; the line marks this node's activation" if marker else ""))
        self.update()

    def span(self) -> tuple[int, int]:
        """The bins drawn: the nonempty ones and the marker's, with one bin either side."""
        nonzero = np.flatnonzero(self.counts)
        if not len(nonzero):
            return 0, 0
        lo, hi = int(nonzero[0]), int(nonzero[-1])
        if self.marker:
            m = int(np.searchsorted(HIST_EDGES, self.marker, side="right"))
            lo, hi = min(lo, m), max(hi, m)
        return max(0, lo - 1), min(len(self.counts) - 1, hi + 1)

    @staticmethod
    def _edge(j: int) -> float:
        """The lower edge of bin ``j`` (bins below and above the range are a quarter octave wide)."""
        if j <= 0:
            return float(HIST_EDGES[0]) / 2 ** 0.25
        return float(HIST_EDGES[min(j, len(HIST_EDGES)) - 1]) * (2 ** 0.25 if j > len(HIST_EDGES) else 1)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1.5))
        p.setFont(font)
        fm = p.fontMetrics()
        w, h = self.width(), self.height()
        axis = h - fm.height() - 2
        p.fillRect(0, 0, w, axis, QColor("#fafafa"))
        if not self.counts.sum():
            p.setPen(QColor("#777"))
            p.drawText(QRectF(0, 0, w, axis), Qt.AlignmentFlag.AlignCenter, "never active on the corpus")
            return
        lo, hi = self.span()
        n = hi - lo + 1
        bw = w / n
        peak = self.counts[lo:hi + 1].max()
        colour = QColor(*(WARM if self.warm else COOL))
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(colour)
        for k, c in enumerate(self.counts[lo:hi + 1].tolist()):
            if c:
                bh = max(1.5, (axis - 4) * c / peak)
                p.drawRect(QRectF(k * bw + 0.5, axis - bh, max(1.0, bw - 1), bh))
        p.setPen(QPen(QColor("#999"), 1))
        p.drawLine(0, axis, w, axis)
        if self.marker:
            # the marker inside its bin, on the log scale
            m = int(np.searchsorted(HIST_EDGES, self.marker, side="right"))
            a, b = self._edge(m), self._edge(m + 1)
            frac = (math.log(self.marker) - math.log(a)) / (math.log(b) - math.log(a)) if b > a else 0.5
            x = (m - lo + min(max(frac, 0.0), 1.0)) * bw
            p.setPen(QPen(QColor("#111"), 1.5, Qt.PenStyle.DashLine))
            p.drawLine(int(x), 0, int(x), axis)
        p.setPen(QColor("#555"))
        left, right = _num(self._edge(lo)), _num(self._edge(hi + 1))
        p.drawText(QRectF(0, axis + 1, w / 2, fm.height()), Qt.AlignmentFlag.AlignLeft, left)
        p.drawText(QRectF(w / 2, axis + 1, w / 2, fm.height()), Qt.AlignmentFlag.AlignRight, right)
        p.drawText(QRectF(0, axis + 1, w, fm.height()), Qt.AlignmentFlag.AlignHCenter, "|activation|, log scale")


class FeatureCardView(QWidget):
    """The atlas section of the inspector (``show_card``; ``show_message`` without an atlas)."""

    sign_changed = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.card: FeatureCard | None = None
        self.sign = 1
        self.activation: float | None = None
        self.title = QLabel("<b>Feature atlas</b>")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.side = QComboBox()
        self.side.addItem("Most positive examples", 1)
        self.side.addItem("Most negative examples", -1)
        self.side.setToolTip("This neuron's activation can be positive or negative: which side's examples to show")
        self.side.activated.connect(self._side_chosen)
        self.histogram = HistogramView()
        self.examples_title = QLabel("")
        self.examples: list[QLabel] = []
        self.examples_box = QVBoxLayout()
        self.examples_box.setSpacing(5)
        self.corpus = QLabel("")
        self.corpus.setWordWrap(True)
        self.corpus.setStyleSheet("color: #666")
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.side)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 4)
        layout.addLayout(head)
        layout.addWidget(self.summary)
        layout.addWidget(self.histogram)
        layout.addWidget(self.examples_title)
        layout.addLayout(self.examples_box)
        layout.addWidget(self.corpus)
        self.show_message("")

    # -- what it shows ------------------------------------------------------------------------------
    def show_message(self, text: str) -> None:
        """No card: one line (how to build an atlas, or why there is none); empty hides the section."""
        self.card = None
        self.side.hide()
        self.histogram.hide()
        self._set_examples([])
        self.examples_title.hide()
        self.corpus.hide()
        self.summary.setText(escape(text))
        self.setVisible(bool(text))

    def show_card(self, card: FeatureCard, activation: float | None = None, sign: int | None = None) -> None:
        """The feature's card; ``activation``: the node's own on this prompt (its side is shown first
        for a signed feature, and it is marked on the histogram)."""
        self.card, self.activation = card, activation
        if sign is None:
            sign = -1 if card.signed and activation is not None and activation < 0 else 1
        self.sign = sign if card.signed else 1
        self.side.setVisible(card.signed)
        self.side.setCurrentIndex(0 if self.sign > 0 else 1)
        self._render()
        self.show()

    def _side_chosen(self, index: int) -> None:
        sign = int(self.side.itemData(index))
        if self.card is not None and sign != self.sign:
            self.sign = sign
            self._render()
            self.sign_changed.emit(sign)

    def _render(self) -> None:
        c, sign = self.card, self.sign
        positive = sign > 0
        label = c.label if positive else c.label_negative
        density = c.density if positive else c.density_negative
        extreme = c.max if positive else c.min
        word = ("positive" if positive else "negative") if c.signed else "active"
        lines = [f"Atlas label: <b>{escape(label)}</b>" if label else
                 f"Atlas label: <i>none (never {word} on the corpus)</i>",
                 f"{c.name} · {word} on {_share(density)} of {c.tokens_seen:,} tokens · "
                 + (f"max {_num(c.max)}" if positive else f"min {_num(c.min)}")]
        if c.signed:
            other = (f"negative on {_share(c.density_negative)}, min {_num(c.min)}" if positive else
                     f"positive on {_share(c.density)}, max {_num(c.max)}")
            lines[-1] += f" ({other})"
        if self.activation is not None:
            lines.append(f"here {_num(self.activation)}"
                         + (f" = {abs(self.activation) / abs(extreme):.0%} of the corpus {'max' if positive else 'min'}"
                            if extreme and np.isfinite(extreme) and self.activation * sign > 0 else ""))
        qs = c.quantiles(sign)
        if qs:
            lines.append("quantiles of nonzero |activation| (bins): " + " · ".join(
                f"q{int(round(q * 100))} {_num(lo)}–{_num(hi)}" for q, (lo, hi) in qs.items()))
        self.summary.setText("<br>".join(lines))
        marker = abs(self.activation) if self.activation is not None and self.activation * sign > 0 else None
        self.histogram.set_counts(c.hist_positive if positive else c.hist_negative, marker, positive)
        self.histogram.show()
        examples = (c.top if positive else c.bottom)[:EXAMPLES]
        which = ("most positive" if positive else "most negative") if c.signed else "most active"
        self.examples_title.setText(f"<b>Top examples</b> ({len(examples)} of the {which} windows)" if examples
                                    else "No examples: the feature never fired on this side.")
        self.examples_title.show()
        self._set_examples(examples)
        self.corpus.setText(f"Built from {c.corpus}.")
        self.corpus.show()

    def _set_examples(self, examples) -> None:
        for lab in self.examples:
            self.examples_box.removeWidget(lab)
            lab.deleteLater()
        self.examples = []
        for e in examples:
            lab = QLabel()
            lab.setTextFormat(Qt.TextFormat.RichText)
            lab.setWordWrap(True)
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            lab.setText(f'<p style="white-space:pre-wrap; margin:0"><span style="color:#6b7280">'
                        f'{e.value:+.3g}</span>  {example_html(e)}</p>')
            lab.setToolTip(f"{e.where}\nactivation {e.value:+.4g} at “{token_text(e.tokens[e.at])}”")
            lab.setStyleSheet("QLabel { background: white; border: 1px solid #e5e7eb; padding: 3px; }")
            self.examples_box.addWidget(lab)
            self.examples.append(lab)

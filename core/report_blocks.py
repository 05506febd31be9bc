"""The report's building blocks: a ``Report`` is a title, a running header and footer, and a list of
blocks (headings, paragraphs, key/value facts, tables, figures) that ``desktop.report_pdf`` lays out on
pages and paints. Every report (a session's audit report, a batch audit's summary, a behaviour study's
comparison) is made of these; nothing here draws.

Figures carry numbers, not pictures: ``GraphFigure`` holds node positions, colours and the edges
to draw (the same layout and palette as the graph pane, ``core.view``), ``Heatmap`` a matrix and
its colour scale, ``LineChart`` a few series.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


# -- blocks -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1  # 1: a section (new page, in the contents); 2: a subsection (in the contents)


@dataclass(frozen=True)
class Paragraph:
    text: str
    style: str = "body"  # body | mono (code, JSON; wrapped anywhere) | note (small, grey)


@dataclass(frozen=True)
class Facts:
    """A two-column key / value table."""

    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    widths: tuple[float, ...] = ()  # relative column widths; equal when empty
    numeric: tuple[bool, ...] = ()  # right-aligned columns
    caption: str = ""
    muted: frozenset = frozenset()  # (row, column) cells drawn grey and italic (e.g. automatic labels)


@dataclass(frozen=True)
class GraphFigure:
    """A circuit graph as the graph pane draws it: x = token position or head, y = layer."""

    x: np.ndarray  # [n] node positions
    y: np.ndarray
    size: np.ndarray  # [n] in [0, 1]
    colour: tuple[str, ...]  # [n] "#rrggbb"
    square: np.ndarray  # [n] bool: supernodes are squares
    ring: np.ndarray  # [n] bool: pinned nodes are ringed
    labels: dict  # node position in the arrays -> text
    src: np.ndarray  # [e] indices into the node arrays
    dst: np.ndarray
    weight: np.ndarray  # [e] signed
    x_ticks: tuple[str, ...]  # one per integer x
    y_ticks: tuple[tuple[float, str], ...]
    caption: str = ""


@dataclass(frozen=True)
class Heatmap:
    title: str
    values: np.ndarray  # [rows, cols]; row 0 is drawn at the bottom (layer 0)
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    scale: str = "sequential"  # sequential (0 .. max) | diverging (−m .. +m, white at 0)
    unit: str = ""
    caption: str = ""


@dataclass(frozen=True)
class LineChart:
    title: str
    series: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]  # (name, xs, ys)
    x_label: str
    y_label: str
    log_x: bool = False
    marker: tuple[float, float, str] | None = None  # a labelled point (the chosen circuit)
    caption: str = ""


@dataclass(frozen=True)
class Snippet:
    """A top-activating window of a feature, elided around its peak, for the renderer to shade
    token by token (``activations[k]`` belongs to ``tokens[k]``)."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    peak: int  # index of the window's extreme token in ``tokens``
    value: float  # the window's extreme activation (negative for the most negative windows)
    where: str  # the corpus file, document and token where the window starts
    cut_before: bool = False  # tokens before the first one shown were left out
    cut_after: bool = False


@dataclass(frozen=True)
class FeatureExamples:
    """One feature node of the graph and what its feature responds to in the atlas' corpus."""

    node: str  # the graph's name of the node, e.g. "L12 N340 @5 ' Paris'"
    feature: str  # the atlas' name of the feature, e.g. "L12/N340"
    label: str  # the auditor's label ("" when none)
    atlas_label: str  # the atlas' automatic label of the side shown ("" when none)
    stats: str  # density and extreme, in words
    sign: int  # +1: its top windows; -1: its most negative ones (its activation here is negative)
    influence: float
    activation: float
    examples: tuple[Snippet, ...]
    note: str = ""  # said instead of examples when there are none


@dataclass(frozen=True)
class Contents:
    """The table of contents (filled in by the renderer, which knows the page numbers)."""


@dataclass(frozen=True)
class PageBreak:
    pass


@dataclass
class Report:
    title: str
    subtitle: str
    header: str  # running header on every page after the first
    footer: str  # left of the page number
    blocks: list = field(default_factory=list)
    sections_start_pages: bool = True  # each level-1 heading begins a new page

    def headings(self) -> list[Heading]:
        return [b for b in self.blocks if isinstance(b, Heading)]


def compact_json(obj, indent: int = 0, width: int = 100) -> str:
    """JSON indented like ``json.dumps(indent=1)`` but with any value that fits on one line kept on
    one line (a list of numbers, a small object): the full settings stay readable in print."""
    flat = json.dumps(obj, ensure_ascii=False, default=str)
    if len(flat) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {compact_json(v, indent + 1, width).lstrip()}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + compact_json(v, indent + 1, width).lstrip() for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"

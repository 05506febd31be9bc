"""A feature atlas on disk, read lazily: what each neuron / transcoder feature responds to.

Torch-free (numpy + safetensors): the workbench, the report and ``circuitdesk atlas show`` read an
atlas without loading a model. An atlas is a folder:

``atlas.json``            what it is: format, model fingerprint, basis, corpus record, settings, sizes
``features.safetensors``  per layer ``l``: ``L{l}.top.value`` [F, k] (a window's largest activation),
                          ``L{l}.top.window`` [F, k] (its row in the window table, -1 = empty slot),
                          ``L{l}.top.acts`` [F, k, T] float16 (the activation at every token),
                          for signed bases the same for ``bottom`` (most negative windows),
                          ``L{l}.count`` [F, 2] (tokens with activation > 0 / < 0), ``L{l}.max``,
                          ``L{l}.min`` [F], ``L{l}.hist`` [F, 2, NB] (counts of |activation| per
                          log bin, positive / negative); ``windows.tokens`` [W, T] int32 (-1 =
                          padding) and ``windows.source`` [W, 3] (source, document, token offset)
``labels.json``           an automatic label per feature and sign (``auto_label``)
``vocab.json``            the text of every token id the windows hold

No pickle anywhere; every size is checked against the header before anything is read, and the
features file's sha256 against the one ``atlas.json`` records.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from core.errors import CircuitDeskError
from core.paths import data_dir, file_sha256

FORMAT = "circuitdesk-atlas"
VERSION = 1
FEATURES_FILE = "features.safetensors"
META_FILE = "atlas.json"
LABELS_FILE = "labels.json"
VOCAB_FILE = "vocab.json"
BUILD_DIR = "build"  # an unfinished build's checkpoint (removed when the atlas is complete)
MAX_JSON_BYTES = 256 << 20

# Histogram of |activation|: quarter-octave bins from 2^-8 to 2^8, plus one below and one above.
# Each edge is 2^(j/4) truncated to bfloat16 precision (7 mantissa bits), so that a float32's bin
# is a function of its top 16 bits alone (the build reads it from a 65,536-entry table).
BINS_PER_OCTAVE = 4
LOG2_RANGE = (-8, 8)
_EXACT_EDGES = 2.0 ** (np.arange(LOG2_RANGE[0] * BINS_PER_OCTAVE, LOG2_RANGE[1] * BINS_PER_OCTAVE + 1)
                       / BINS_PER_OCTAVE)
HIST_EDGES = (_EXACT_EDGES.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(
    np.float64)
N_BINS = len(HIST_EDGES) + 1  # bin j holds HIST_EDGES[j-1] <= |a| < HIST_EDGES[j]
QUANTILES = (0.5, 0.9, 0.99)
LABEL_TOKENS = 3  # tokens in an automatic label
LABEL_SHARE = 0.3  # ... each with at least this share of the first one's weight
LABEL_FLOOR = 0.2  # a token counts toward a label where the activation is at least this share of the peak


def hist_bin(magnitudes: np.ndarray) -> np.ndarray:
    """The histogram bin of each |activation| (searchsorted on ``HIST_EDGES``, right side)."""
    return np.searchsorted(HIST_EDGES, magnitudes, side="right")


def basis_key(basis: str, transcoders_sha256: str | None = None) -> str:
    """How an atlas names its basis: ``neurons``, or ``transcoders:<sha256 of their files>``."""
    return basis if basis == "neurons" else f"transcoders:{transcoders_sha256}"


def graph_basis_key(meta: dict) -> str | None:
    """The basis key of a graph (its ``meta``), or None where it cannot be known (a transcoder
    graph saved before transcoder sets were fingerprinted)."""
    if meta.get("basis", "neurons") == "neurons":
        return "neurons"
    digest = (meta.get("basis_info") or {}).get("sha256")
    return basis_key("transcoders", digest) if isinstance(digest, str) else None


def atlas_home() -> Path:
    """Where the workbench keeps the atlases it builds and looks for them first."""
    path = data_dir() / "atlases"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- what a feature looks like ---------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One top-activating window of a feature."""

    tokens: tuple[str, ...]
    activations: np.ndarray  # [len(tokens)] float32; 0 where not counted (the start token)
    value: float  # the window's extreme activation (max for top examples, min for bottom ones)
    at: int  # the token where it is reached
    source: str  # the corpus file's name
    document: int  # 0-based, within the file
    offset: int  # of the window's first token within the document

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def where(self) -> str:
        return f"{self.source}, document {self.document + 1}, token {self.offset + 1}"


@dataclass(frozen=True)
class FeatureCard:
    """A feature's dashboard: top examples, density, histogram, quantiles and label."""

    layer: int
    index: int
    unit: str  # "N" (neuron) or "F" (transcoder feature)
    label: str  # automatic label of its positive side ("" when it never fired)
    label_negative: str  # ... of its negative side (signed bases)
    tokens_seen: int
    count_positive: int
    count_negative: int
    max: float
    min: float
    signed: bool
    hist_positive: np.ndarray  # [N_BINS]
    hist_negative: np.ndarray
    top: tuple[Example, ...]
    bottom: tuple[Example, ...]
    corpus: str  # what the atlas was built from, in words

    @property
    def name(self) -> str:
        return f"L{self.layer}/{self.unit}{self.index}"

    @property
    def density(self) -> float:
        """Share of corpus tokens where the feature is positive."""
        return self.count_positive / self.tokens_seen if self.tokens_seen else 0.0

    @property
    def density_negative(self) -> float:
        return self.count_negative / self.tokens_seen if self.tokens_seen else 0.0

    def quantiles(self, sign: int = 1) -> dict[float, tuple[float, float]]:
        """For q in ``QUANTILES``: the bin [lo, hi] holding the q-quantile of the nonzero
        activations of that sign (inverted-CDF definition), from the exact histogram counts."""
        counts = self.hist_positive if sign > 0 else self.hist_negative
        extreme = abs(self.max if sign > 0 else self.min)
        return {q: _quantile_bin(counts, q, extreme) for q in QUANTILES} if counts.sum() else {}

    def to_json(self) -> dict:
        def ex(e: Example) -> dict:
            return {"text": e.text, "tokens": list(e.tokens), "activations": [round(float(a), 5) for a in e.activations],
                    "value": e.value, "at": e.at, "source": e.source,
                    "document": e.document, "offset": e.offset}

        return {
            "feature": self.name, "layer": self.layer, "index": self.index, "label": self.label,
            "label_negative": self.label_negative, "tokens_seen": self.tokens_seen, "density": self.density,
            "density_negative": self.density_negative, "max": self.max, "min": self.min,
            "quantiles": {str(q): list(b) for q, b in self.quantiles(1).items()},
            "histogram": {"edges": HIST_EDGES.tolist(), "positive": self.hist_positive.tolist(),
                          "negative": self.hist_negative.tolist()},
            "top": [ex(e) for e in self.top], "bottom": [ex(e) for e in self.bottom], "corpus": self.corpus,
        }

    def to_text(self, examples: int = 10, width: int = 100) -> str:
        """The dashboard for a terminal: examples with the activating tokens in [brackets]."""
        heading = self.label or ("(never positive on the corpus)" if self.signed else "(never active on the corpus)")
        if self.signed and self.label_negative:
            heading += f"   negative: {self.label_negative}"
        lines = [f"{self.name}  {heading}",
                 f"  built from {self.corpus}",
                 f"  density {self.density:.3%} of {self.tokens_seen:,} tokens; max {self.max:.4g}"]
        if self.signed:
            lines[-1] += f"; negative on {self.density_negative:.3%}, min {self.min:.4g}"
        qs = self.quantiles(1)
        if qs:
            lines.append("  nonzero quantiles: " + ", ".join(f"q{int(q * 100)} in [{lo:.3g}, {hi:.3g}]"
                                                            for q, (lo, hi) in qs.items()))
        lines.append("  histogram of positive activations:")
        lines += ["    " + row for row in histogram_rows(self.hist_positive)]
        for title, examples_of, sign in (("top examples", self.top, 1), ("most negative examples", self.bottom, -1)):
            if not examples_of:
                continue
            lines.append(f"  {title}:")
            for e in examples_of[:examples]:
                lines.append(f"    {e.value:+8.3f}  {highlighted(e, sign, width)}   ({e.where})")
        return "\n".join(lines)


def _quantile_bin(counts: np.ndarray, q: float, extreme: float) -> tuple[float, float]:
    n = int(counts.sum())
    rank = max(1, math.ceil(q * n))
    j = int(np.searchsorted(np.cumsum(counts), rank))
    lo = 0.0 if j == 0 else float(HIST_EDGES[j - 1])
    hi = extreme if j >= len(HIST_EDGES) else min(float(HIST_EDGES[j]), extreme)
    return (lo, hi)


def histogram_rows(counts: np.ndarray, width: int = 40) -> list[str]:
    """Text bars of the nonempty bins (merged to whole octaves)."""
    if not counts.sum():
        return ["(no activations)"]
    octaves: dict[int, int] = {}
    for j, c in enumerate(counts.tolist()):
        if c:
            lo = -math.inf if j == 0 else math.log2(HIST_EDGES[j - 1])
            octaves[int(max(lo, LOG2_RANGE[0] - 1) // 1)] = octaves.get(int(max(lo, LOG2_RANGE[0] - 1) // 1), 0) + c
    peak = max(octaves.values())
    return [f"{2.0 ** o:>9.4g} .. {2.0 ** (o + 1):<9.4g} {'#' * max(1, round(width * c / peak)):<{width}} {c:,}"
            for o, c in sorted(octaves.items())]


def highlighted(e: Example, sign: int = 1, width: int = 100) -> str:
    """An example on one line, around its extreme token, tokens with activation of that sign over
    a third of the extreme in [brackets], the extreme in [[double brackets]]."""
    strong = abs(e.value) / 3
    parts = []
    for i, (t, a) in enumerate(zip(e.tokens, e.activations)):
        t = t.replace("\n", "⏎")
        if i == e.at:
            t = f"[[{t}]]"
        elif a * sign > strong:
            t = f"[{t}]"
        parts.append(t)
    text_before = "".join(parts[:e.at])
    text_after = "".join(parts[e.at:])
    keep = max(10, width // 2)
    if len(text_before) > keep:
        text_before = "…" + text_before[-keep:]
    if len(text_after) > keep:
        text_after = text_after[:keep] + "…"
    return text_before + text_after


def auto_label(weights: dict[str, float]) -> str:
    """A short label from activation-weighted token frequencies (a token's weight: its highest
    activation in each top example, summed over the examples): the heaviest tokens (at most
    ``LABEL_TOKENS``, each with at least ``LABEL_SHARE`` of the first one's weight)."""
    ranked = sorted(((w, t) for t, w in weights.items() if w > 0), key=lambda x: (-x[0], x[1]))
    if not ranked:
        return ""
    first = ranked[0][0]
    shown = [_token_for_label(t) for w, t in ranked[:LABEL_TOKENS] if w >= LABEL_SHARE * first]
    return " · ".join(dict.fromkeys(shown))


def _token_for_label(token: str) -> str:
    stripped = token.strip()
    if stripped:
        return stripped
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(token[:1], repr(token))


# -- feature names ----------------------------------------------------------------------------------
_FEATURE = re.compile(r"^\s*L?(\d+)\s*[/_ ,:.]\s*[NF]?(\d+)\s*$", re.IGNORECASE)


def parse_feature(text: str) -> tuple[int, int]:
    """``L12/N340`` (or ``12/340``, ``L12 F340``, ``12_340``) as (layer, index)."""
    m = _FEATURE.match(text or "")
    if not m:
        raise CircuitDeskError(f"Cannot read the feature {text!r}; write it as layer/index, e.g. L12/N340.")
    return int(m.group(1)), int(m.group(2))


# -- the atlas -------------------------------------------------------------------------------------
class Atlas:
    """An opened atlas (``Atlas.open``): its record, labels and vocabulary in memory, feature
    arrays read lazily from ``features.safetensors`` (one feature's rows at a time)."""

    def __init__(self, path: Path, meta: dict, labels: dict, vocab: dict[int, str]) -> None:
        self.path = path
        self.meta = meta
        self.labels = labels
        self.vocab = vocab
        self._handle = None
        self._cards: dict[tuple[int, int], FeatureCard] = {}
        self._texts: dict[tuple[int, int], str] = {}

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Atlas":
        """Open the atlas folder ``path``; a missing, unfinished, corrupt or foreign folder gets one
        sentence (``verify``: compare the features file with its recorded sha256)."""
        path = Path(path).expanduser()
        meta = read_meta(path)
        features = _features_file(path, meta)
        if verify and file_sha256(features) != meta.get("features_sha256"):
            raise CircuitDeskError(f"The atlas {path} is damaged: {FEATURES_FILE} does not match its recorded "
                                   f"sha256; build it again.")
        labels = _read_json(path / LABELS_FILE, path)
        vocab_raw = _read_json(path / VOCAB_FILE, path)
        try:
            vocab = {int(k): str(v) for k, v in vocab_raw.items()}
        except (AttributeError, ValueError):
            raise CircuitDeskError(f"The atlas {path} is damaged: {VOCAB_FILE} is not a token table.") from None
        atlas = cls(path, meta, labels, vocab)
        atlas._check_layout()
        return atlas

    def _file(self):
        if self._handle is None:
            from safetensors import safe_open  # deferred: only when a feature is first read

            try:
                self._handle = safe_open(str(self.path / FEATURES_FILE), framework="numpy")
            except Exception as e:  # safetensors raises its own error types for a bad header
                raise CircuitDeskError(f"The atlas {self.path} is damaged: {FEATURES_FILE} cannot be read "
                                       f"({e}); build it again.") from None
        return self._handle

    def _check_layout(self) -> None:
        f = self._file()
        k, T = self.top_k, self.context
        names = set(f.keys())
        expected = {"windows.tokens", "windows.source"}
        for l, n in enumerate(self.features_per_layer):
            sides = ("top", "bottom") if self.signed else ("top",)
            shapes = {f"L{l}.count": [n, 2], f"L{l}.max": [n], f"L{l}.min": [n], f"L{l}.hist": [n, 2, N_BINS]}
            for s in sides:
                shapes.update({f"L{l}.{s}.value": [n, k], f"L{l}.{s}.window": [n, k], f"L{l}.{s}.acts": [n, k, T]})
            for name, shape in shapes.items():
                if name not in names or list(f.get_slice(name).get_shape()) != shape:
                    raise CircuitDeskError(f"The atlas {self.path} is damaged: {name} is missing or not {shape}; "
                                           f"build it again.")
            expected |= set(shapes)
        if list(f.get_slice("windows.tokens").get_shape())[1:] != [T]:
            raise CircuitDeskError(f"The atlas {self.path} is damaged: its window table is not {T} tokens wide.")
        lab = self.labels.get("top")
        if not isinstance(lab, list) or [len(x) for x in lab] != self.features_per_layer:
            raise CircuitDeskError(f"The atlas {self.path} is damaged: {LABELS_FILE} does not match its features.")

    def close(self) -> None:
        self._handle = None

    # -- what it is ----------------------------------------------------------------------------
    @property
    def model_sha256(self) -> str:
        return self.meta["model"]["sha256"]

    @property
    def basis(self) -> str:
        return self.meta["basis"]["key"]

    @property
    def unit(self) -> str:
        return "N" if self.basis == "neurons" else "F"

    @property
    def features_per_layer(self) -> list[int]:
        return list(self.meta["features_per_layer"])

    @property
    def n_layers(self) -> int:
        return len(self.meta["features_per_layer"])

    @property
    def signed(self) -> bool:
        return bool(self.meta["signed"])

    @property
    def top_k(self) -> int:
        return int(self.meta["settings"]["top_k"])

    @property
    def context(self) -> int:
        return int(self.meta["settings"]["context"])

    @property
    def corpus_text(self) -> str:
        return describe_corpus(self.meta["corpus"])

    def mismatch(self, model_sha256: str, basis: str) -> str | None:
        """Why this atlas cannot describe the nodes of a graph of that model and basis (None: it can)."""
        return mismatch_reason(self.meta, self.path, model_sha256, basis)

    # -- features ------------------------------------------------------------------------------
    def has(self, layer: int, index: int) -> bool:
        return 0 <= layer < self.n_layers and 0 <= index < self.features_per_layer[layer]

    def _need(self, layer: int, index: int) -> None:
        if not self.has(layer, index):
            raise CircuitDeskError(f"The atlas has no feature L{layer}/{self.unit}{index} (it has "
                                   f"{self.n_layers} layers of {max(self.features_per_layer, default=0)}).")

    def label(self, layer: int, index: int, sign: int = 1) -> str:
        """The automatic label ("" when there is none)."""
        if not self.has(layer, index):
            return ""
        side = self.labels.get("top" if sign > 0 or not self.signed else "bottom") or []
        return side[layer][index] if layer < len(side) else ""

    def card(self, layer: int, index: int, examples: int | None = None) -> FeatureCard:
        """The feature's dashboard (``examples``: at most that many per sign)."""
        self._need(layer, index)
        key = (layer, index)
        if key not in self._cards:
            self._cards[key] = self._read_card(layer, index)
        card = self._cards[key]
        if examples is not None:
            card = FeatureCard(**{**card.__dict__, "top": card.top[:examples], "bottom": card.bottom[:examples]})
        return card

    def _row(self, name: str, index: int) -> np.ndarray:
        return self._file().get_slice(name)[index:index + 1][0]

    def _read_card(self, layer: int, index: int) -> FeatureCard:
        p = f"L{layer}."
        count = self._row(p + "count", index)
        hist = self._row(p + "hist", index)
        return FeatureCard(
            layer=layer, index=index, unit=self.unit, label=self.label(layer, index, 1),
            label_negative=self.label(layer, index, -1) if self.signed else "",
            tokens_seen=int(self.meta["tokens_seen"]), count_positive=int(count[0]), count_negative=int(count[1]),
            max=float(self._row(p + "max", index)), min=float(self._row(p + "min", index)), signed=self.signed,
            hist_positive=hist[0].astype(np.int64), hist_negative=hist[1].astype(np.int64),
            top=self._examples(p + "top", index), bottom=self._examples(p + "bottom", index) if self.signed else (),
            corpus=self.corpus_text,
        )

    def _examples(self, prefix: str, index: int) -> tuple[Example, ...]:
        values = self._row(prefix + ".value", index)
        windows = self._row(prefix + ".window", index)
        acts = self._row(prefix + ".acts", index).astype(np.float32)
        sources = self.meta["corpus"].get("sources", [])
        out = []
        for v, w, a in zip(values.tolist(), windows.tolist(), acts):
            if w < 0:
                break
            ids = self._row("windows.tokens", w)
            n = int((ids >= 0).sum())
            src, doc, offset = (int(x) for x in self._row("windows.source", w))
            name = sources[src]["name"] if 0 <= src < len(sources) else "?"
            first = int(self.meta.get("first_pos", 0))  # the start token is not shown
            tokens = tuple(self.vocab.get(int(t), "�") for t in ids[first:n])
            shown = a[first:n].copy()
            at = int(np.argmax(shown)) if v > 0 else int(np.argmin(shown))
            out.append(Example(tokens, shown, float(v), at, name, doc, offset))
        return tuple(out)

    def text_of(self, layer: int, index: int) -> str:
        """Every example's text of a feature, for searching (lower case)."""
        key = (layer, index)
        if key not in self._texts:
            card = self.card(layer, index)
            self._texts[key] = "\n".join(e.text for e in card.top + card.bottom).lower()
        return self._texts[key]

    def search(self, text: str, features: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ``features`` whose label or example text contains ``text`` (case-insensitive)."""
        needle = text.lower().strip()
        if not needle:
            return []
        out = []
        for layer, index in features:
            if not self.has(layer, index):
                continue
            label = (self.label(layer, index, 1) + " " + self.label(layer, index, -1)).lower()
            if needle in label or needle in self.text_of(layer, index):
                out.append((layer, index))
        return out


def describe_corpus(corpus: dict) -> str:
    """The corpus record in words, e.g. "text sampled from the model itself (seed 0) and the
    bundled prompts, 41,230 tokens" or "3 files (notes.txt, …), 250,000 tokens"."""
    tokens = f"{int(corpus.get('tokens', 0)):,} tokens"
    if corpus.get("kind") == "model-sampled":
        return f"text sampled from the model itself (seed {corpus.get('seed', 0)}) and the bundled prompts, {tokens}"
    names = [s.get("name", "?") for s in corpus.get("sources", [])]
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"{len(names)} file{'s' * (len(names) != 1)} ({shown}), {tokens}"


def _read_json(path: Path, atlas: Path):
    if not path.is_file():
        raise CircuitDeskError(f"The atlas {atlas} has no {path.name}; build it again.")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CircuitDeskError(f"The atlas {atlas} is damaged: {path.name} is implausibly large.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CircuitDeskError(f"The atlas {atlas} is damaged: {path.name} is not valid JSON; build it again.") from None


def read_meta(path: Path) -> dict:
    """``atlas.json`` of the folder ``path``, checked to be a finished atlas of this format."""
    if not path.is_dir():
        raise CircuitDeskError(f"There is no atlas at {path}: the folder does not exist.")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        if (path / BUILD_DIR).is_dir():
            raise CircuitDeskError(f"The atlas at {path} is not finished; run the same build command again to "
                                   f"resume it.")
        raise CircuitDeskError(f"{path} is not a feature atlas (it has no {META_FILE}).")
    meta = _read_json(meta_file, path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CircuitDeskError(f"{path} is not a Circuit Desk feature atlas ({META_FILE} does not say so).")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CircuitDeskError(f"The atlas {path} was written by a newer Circuit Desk (format "
                               f"{meta.get('version')}); update Circuit Desk to read it.")
    try:
        ok = (isinstance(meta["model"]["sha256"], str) and isinstance(meta["basis"]["key"], str)
              and all(isinstance(n, int) and n >= 0 for n in meta["features_per_layer"])
              and int(meta["settings"]["top_k"]) >= 1 and int(meta["settings"]["context"]) >= 2
              and isinstance(meta["corpus"], dict) and int(meta["tokens_seen"]) >= 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CircuitDeskError(f"The atlas {path} is damaged: {META_FILE} lacks its model, basis or layout.")
    return meta


def _features_file(path: Path, meta: dict) -> Path:
    """The atlas' features file, checked to be there and of the size ``atlas.json`` records (a cheap
    check: the sha256 is compared only when the atlas is opened)."""
    features = path / FEATURES_FILE
    if not features.is_file():
        raise CircuitDeskError(f"The atlas {path} has no {FEATURES_FILE}; build it again.")
    if features.stat().st_size != meta.get("features_bytes"):
        raise CircuitDeskError(f"The atlas {path} is damaged: {FEATURES_FILE} is not the size it was "
                               f"written with; build it again.")
    return features


def mismatch_reason(meta: dict, path: Path, model_sha256: str, basis: str) -> str | None:
    model = meta["model"]
    if model["sha256"] != model_sha256:
        return (f"The atlas {path} was built for another model ({model.get('name', '?')}, sha256 "
                f"{model['sha256'][:12]}…), not the loaded one ({model_sha256[:12]}…); it is not used.")
    if meta["basis"]["key"] != basis:
        theirs, ours = meta["basis"]["key"].split(":")[0], basis.split(":")[0]
        what = f"the {theirs} basis" if theirs != ours else "other transcoders"
        return f"The atlas {path} describes {what}, not the graph's {ours}; it is not used."
    return None


def find_atlas(model_sha256: str, basis: str, folders: Iterable[str | Path] = ()) -> tuple[Path | None, list[str]]:
    """The newest finished atlas for this model and basis among ``folders`` (each an atlas or a
    folder of atlases) and ``atlas_home()``; with the reasons other atlases there were passed over."""
    seen, found, passed = set(), [], []
    for folder in [*map(Path, folders), atlas_home()]:
        folder = folder.expanduser()
        candidates = [folder] if (folder / META_FILE).is_file() else sorted(folder.glob(f"*/{META_FILE}"))
        for c in candidates:
            atlas = c if c.is_dir() else c.parent
            if atlas.resolve() in seen:
                continue
            seen.add(atlas.resolve())
            try:
                meta = read_meta(atlas)
                _features_file(atlas, meta)
            except CircuitDeskError as e:
                passed.append(str(e))
                continue
            reason = mismatch_reason(meta, atlas, model_sha256, basis)
            if reason:
                passed.append(reason)
            else:
                found.append((str(meta.get("created", "")), atlas))
    found.sort()
    return (found[-1][1] if found else None), passed

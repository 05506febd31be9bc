"""Build a feature atlas: one streaming pass over a corpus, bounded memory, resumable.

Every window (``context`` tokens: the start token, then the corpus's tokens) goes through the
model once, in batches; at every layer the activations of all features (MLP neurons, or the
transcoder features of a folder) update, per feature:

* a running top-k of windows by their largest activation (ties: the earlier window first), with
  the activation at every token of each kept window; signed neurons (gated MLPs, whose
  activations are as often negative) keep the k most negative windows too;
* how many tokens it is positive / negative on (density), its max and min;
* a histogram of |activation| over fixed log bins (``core.atlas.store.HIST_EDGES``), per sign.

The start token's position is not counted (as in attribution graphs, where its features are not
nodes) and padding never is. Memory is what the top-k, counts and histograms take (features × k ×
context), whatever the corpus size. The state is checkpointed every ``CHECKPOINT_SECONDS`` (or
less often where writing it takes more than a twentieth of that) and on
cancel; running the same build again resumes from the last checkpoint and gives the identical
atlas (batches are fixed by window number). Nothing is pickled: state and atlas are safetensors
and JSON.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import core
from core.atlas import corpus as corpora
from core.atlas.store import (
    BINS_PER_OCTAVE,
    LOG2_RANGE,
    BUILD_DIR,
    FEATURES_FILE,
    FORMAT,
    LABEL_FLOOR,
    LABEL_TOKENS,
    LABELS_FILE,
    META_FILE,
    N_BINS,
    VERSION,
    VOCAB_FILE,
    auto_label,
    basis_key,
    hist_bin,
    describe_corpus,
)
from core.attribution.attribute import start_token
from core.attribution.bases import body
from core.errors import CircuitDeskError
from core.jobs import Cancelled, JobContext
from core.paths import atomic_write, file_sha256
from core.settings import AtlasSettings

CHECKPOINT_SECONDS = 30.0
CHECKPOINT_SHARE = 0.05
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # which int16 of a float32 holds its top 16 bits
_STATE_FILE = "state.safetensors"
_PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class AtlasBuild:
    """What a finished build reports."""

    path: Path
    meta: dict
    resumed_from: int  # windows already scanned when this run began (0: a fresh build)
    seconds: float  # this run's time

    def to_json(self) -> dict:
        m = self.meta
        return {"atlas": str(self.path), "model": m["model"], "basis": m["basis"], "corpus": m["corpus"],
                "features": sum(m["features_per_layer"]), "tokens_seen": m["tokens_seen"],
                "size_bytes": m["size_bytes"], "resumed_from_window": self.resumed_from,
                "seconds": round(self.seconds, 2), "tokens_per_second": m["tokens_per_second"]}


# -- what is read at each layer ------------------------------------------------------------------------
class _Features:
    """Where a basis' feature activations are read: points to cache and how to turn them into
    activations [B, T, F] (neurons: the MLP's hidden activation; transcoders: their encoder)."""

    def __init__(self, model, transcoders: str | None) -> None:
        L = model.facts.n_layers
        self.tc = None
        if transcoders:
            from core.attribution.transcoders import load_transcoders  # deferred: only for a transcoder atlas

            self.tc = load_transcoders(transcoders, L, model.facts.d_model,
                                        device=getattr(model, "transcoders_device", model.device))
            self.points = [f"blocks.{l}.{self.tc.input_point}" for l in range(L)]
            self.per_layer = [t.d_transcoder for t in self.tc.layers]
            self.signed = False
            described = self.tc.describe()  # hashes the files once; their digest names the basis
            self.key = basis_key("transcoders", described["sha256"])
            self.describe = {"name": "transcoders", "key": self.key, **described}
        else:
            self.points = [f"blocks.{l}.mlp.post" for l in range(L)]
            self.per_layer = [model.facts.d_mlp] * L
            self.signed = bool(model.adapter.gated_mlp)  # SwiGLU/GeGLU neurons are as often negative
            self.key = basis_key("neurons")
            self.describe = {"name": "neurons", "key": self.key, "d_mlp": model.facts.d_mlp}

    def activations(self, l: int, cached: torch.Tensor) -> torch.Tensor:
        x = cached.float()
        return x if self.tc is None else self.tc.activate(l, self.tc.encode_pre(l, x)).to(x.device)


# -- the running statistics of one layer ----------------------------------------------------------------
def _bin_table() -> torch.Tensor:
    """Histogram slot of a float32 by its top 16 bits (sign, exponent, 7 mantissa bits): sign ·
    N_BINS + bin for nonzero values, 2·N_BINS (a spare slot, dropped) for ±0 and NaN. Exact, as
    every edge has zero low bits (``HIST_EDGES``)."""
    keys = np.arange(1 << 16, dtype=np.uint32)
    values = (keys & 0x7FFF) << 16
    magnitude = values.view(np.float32)
    unused = (values == 0) | np.isnan(magnitude)
    slot = (keys >> 15).astype(np.int64) * N_BINS + hist_bin(np.where(unused, 1.0, magnitude))
    slot[unused] = 2 * N_BINS
    # indexed by the signed 16-bit value: negative indices wrap to the upper half, as the unsigned key would
    return torch.from_numpy(slot.astype(np.int32))


class _LayerStats:
    """Top-k windows, extremes and histograms of one layer's F features (CPU tensors)."""

    SLOTS = 2 * N_BINS + 1  # per feature: positive bins, negative bins, the spare slot

    def __init__(self, F: int, k: int, T: int, signed: bool) -> None:
        self.F, self.k, self.T = F, k, T
        self.sides = ("top", "bottom") if signed else ("top",)
        self.t: dict[str, torch.Tensor] = {}
        for s in self.sides:
            self.t[f"{s}.score"] = torch.zeros(F, k)  # the window's extreme × sign; 0 = empty slot
            self.t[f"{s}.window"] = torch.full((F, k), -1, dtype=torch.int64)
            self.t[f"{s}.acts"] = torch.zeros(F, k, T, dtype=torch.float16)
        self.t["max"] = torch.full((F,), -math.inf)
        self.t["min"] = torch.full((F,), math.inf)
        self.t["hist"] = torch.zeros(F * self.SLOTS, dtype=torch.int64)
        self._offsets = torch.arange(F, dtype=torch.int32) * self.SLOTS

    def histogram(self) -> torch.Tensor:
        """[F, 2, N_BINS] counts (positive, negative)."""
        return self.t["hist"].view(self.F, self.SLOTS)[:, :2 * N_BINS].reshape(self.F, 2, N_BINS)

    def update(self, X: torch.Tensor, valid: torch.Tensor, windows: torch.Tensor, table: torch.Tensor) -> None:
        """Add one batch: activations X [B, T, F] (float32, CPU; overwritten), the counted positions
        valid [B, T], window numbers [B], the bin table (``_bin_table``)."""
        t = self.t
        X.masked_fill_(~valid[..., None], 0.0)  # uncounted positions: 0, which no statistic counts
        high = X.view(torch.int16)[..., _HIGH_HALF::2].int()  # each float's top 16 bits: the table's index
        batch = torch.bincount((table[high] + self._offsets).flatten(), minlength=self.F * self.SLOTS)
        t["hist"] += batch
        # zeros at counted positions: the spare slot's count less the uncounted positions (NaNs aside)
        zeros = batch.view(self.F, self.SLOTS)[:, -1] - int((~valid).sum())
        wmax, wmin = X.amax(1), X.amin(1)  # [B, F]: exact where > 0 (resp. < 0); a 0 may be padding
        self._extreme(t["max"], wmax.amax(0), zeros, X, valid, torch.amax, torch.maximum, -math.inf)
        self._extreme(t["min"], wmin.amin(0), zeros, X, valid, torch.amin, torch.minimum, math.inf)
        self._top("top", wmax, X, windows)
        if len(self.sides) == 2:
            self._top("bottom", wmin.neg(), X, windows)

    @staticmethod
    def _extreme(running, batch, zeros, X, valid, reduce, combine, fill) -> None:
        """Fold the batch's max (or min) into ``running``. Where the zero-padded batch value is 0 and
        no counted position is 0 (``zeros``), the 0 came from padding: recompute it over the counted
        positions only (a feature never positive, resp. never negative, in this batch)."""
        unsure = ((batch == 0) & (zeros <= 0)).nonzero().squeeze(1)
        if unsure.numel():
            cols = X[:, :, unsure].masked_fill(~valid[..., None], fill)
            batch[unsure] = reduce(cols.flatten(0, 1), 0)
        combine(running, batch, out=running)

    def _top(self, side: str, wmax: torch.Tensor, X: torch.Tensor, windows: torch.Tensor) -> None:
        """Merge the batch's windows into the running top-k of ``side`` (``wmax``: each window's
        extreme × sign [B, F]). Only positive extremes enter; ties keep the earlier window. Slots
        are unordered (``ranked`` sorts them): an entering window takes an evicted one's slot, so
        only the entering windows' activations are copied."""
        score, win, acts = self.t[f"{side}.score"], self.t[f"{side}.window"], self.t[f"{side}.acts"]
        need = (wmax > score.amin(1)).any(0).nonzero().squeeze(1)  # features a window of this batch enters
        if need.numel() == 0:
            return
        B, u, k = wmax.shape[0], need.numel(), self.k
        vals = torch.cat([score[need], wmax[:, need].T], 1)  # [u, k + B]
        wins = torch.cat([win[need], windows.expand(u, B)], 1)
        by_window = torch.argsort(wins, dim=1, stable=True)  # empty slots (-1) first: a 0 never enters
        order = by_window.gather(1, torch.argsort(vals.gather(1, by_window), dim=1, descending=True, stable=True))
        chosen = torch.zeros_like(vals, dtype=torch.bool).scatter_(1, order[:, :k], True)
        # evicted slots and entering windows, row by row in the same counts: pair them in order
        er, es = (~chosen[:, :k]).nonzero(as_tuple=True)
        nr, nb = chosen[:, k:].nonzero(as_tuple=True)
        f = need[er]
        score[f, es] = wmax[nb, f]
        win[f, es] = windows[nb]
        acts[f, es] = X[nb, :, f].to(torch.float16)

    def ranked(self, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score, window, acts) of ``side`` with each feature's slots sorted by score, then window."""
        score, win, acts = self.t[f"{side}.score"], self.t[f"{side}.window"], self.t[f"{side}.acts"]
        by_window = torch.argsort(win, dim=1, stable=True)
        order = by_window.gather(1, torch.argsort(score.gather(1, by_window), dim=1, descending=True, stable=True))
        return (score.gather(1, order), win.gather(1, order),
                acts.gather(1, order[..., None].expand(-1, -1, self.T)))


# -- the build ---------------------------------------------------------------------------------------
def build_atlas(model, out: str | Path, settings: AtlasSettings | None = None, corpus: list[str] | None = None,
                column: str = "text", overwrite: bool = False, ctx: JobContext | None = None) -> AtlasBuild:
    """Build (or resume) the atlas of ``model`` in the folder ``out`` from ``corpus`` (files or
    folders; None: the model-sampled default corpus). See the module docstring."""
    settings = settings or AtlasSettings()
    settings.validate()
    ctx = ctx or JobContext()
    started = time.perf_counter()
    out = _prepare_folder(out, overwrite)
    features = _Features(model, settings.transcoders)
    build = out / BUILD_DIR
    key = {"model": model.fingerprint.sha256, "basis": features.key, "column": column,
           "corpus": [str(Path(c).expanduser().resolve()) for c in corpus] if corpus else None,
           "settings": {k: v for k, v in settings.to_json().items() if k != "max_size_gb"}}
    plan = _read_plan(build, key, overwrite)
    first = start_token(model)
    T = settings.context
    content = T - (1 if first is not None else 0)
    if content < 1:
        raise CircuitDeskError("--context must leave room for at least one corpus token after the start token.")
    if plan is None:
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        plan = _plan(model, key, settings, corpus, column, content, features, build, ctx.sub(0.0, 0.25))
    else:
        _check_corpus_unchanged(plan)
    windows = np.load(build / "windows.npy", allow_pickle=False)
    _check_size(plan, settings)
    ctx.partial("estimate", {"bytes": plan["estimate_bytes"], "tokens": plan["corpus"]["tokens"],
                             "windows": int(windows.shape[0])})
    stats, next_batch, seen, scanned_seconds = _load_state(build, features, settings)
    resumed_from = min(next_batch * settings.batch_size, int(windows.shape[0]))
    tokens = np.memmap(build / "tokens.bin", dtype=np.int32, mode="r")
    scan = ctx.sub(0.25 if resumed_from == 0 else 0.0, 0.97)
    seen, scanned_seconds = _scan(model, features, stats, windows, tokens, first, settings, build, next_batch, seen,
                                  scanned_seconds, scan)
    ctx.progress(0.97, "Writing the atlas")
    meta = _finish(model, out, features, stats, windows, tokens, first, settings, plan, seen, scanned_seconds)
    del tokens
    shutil.rmtree(build, ignore_errors=True)
    ctx.progress(1.0, "Atlas written")
    return AtlasBuild(out, meta, resumed_from, time.perf_counter() - started)


def _prepare_folder(out: str | Path, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise CircuitDeskError(f"Cannot build an atlas at {out}: it is a file, not a folder.")
    if (out / META_FILE).exists():
        if not overwrite:
            raise CircuitDeskError(f"{out} already holds a finished atlas; choose another folder or pass --overwrite.")
        for name in (META_FILE, FEATURES_FILE, LABELS_FILE, VOCAB_FILE):
            (out / name).unlink(missing_ok=True)
    elif out.is_dir() and not (out / BUILD_DIR).is_dir() and any(out.iterdir()):
        raise CircuitDeskError(f"{out} is a folder with other files in it; give a new or empty folder for the atlas.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CircuitDeskError(f"Cannot create the atlas folder {out}: {e.strerror or e}.") from None
    if not os.access(out, os.W_OK):
        raise CircuitDeskError(f"Cannot write the atlas folder {out}: permission denied.")
    return out


def _read_plan(build: Path, key: dict, overwrite: bool) -> dict | None:
    """The unfinished build's plan when it is the same build (None: start afresh)."""
    path = build / _PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        same = plan["key"] == key
    except (OSError, ValueError, KeyError, TypeError):
        plan, same = None, False  # a checkpoint that cannot be read is not resumed: the build starts again
    if plan is not None and not same and not overwrite:
        theirs = plan["key"]
        what = next((w for w in ("model", "basis", "corpus", "column", "settings") if theirs.get(w) != key.get(w)), "")
        raise CircuitDeskError(f"{build.parent} holds an unfinished build of another {what}; run that build again "
                               f"to resume it, or pass --overwrite to start this one.")
    return plan if same else None


def _plan(model, key, settings: AtlasSettings, corpus, column, content, features: _Features, build: Path,
          ctx: JobContext) -> dict:
    """Read and tokenize the corpus into ``build`` and write the plan (what the build will read)."""
    if corpus:
        files = corpora.corpus_files(corpus)
        record = {"kind": "files"}
    else:
        files = [corpora.default_corpus(model, settings.sample_tokens, settings.seed, ctx.sub(0.0, 0.8))]
        record = {"kind": "model-sampled", "seed": settings.seed, "sample_tokens": settings.sample_tokens,
                  "prompts": list(corpora.SAMPLE_PROMPTS)}
    records = [corpora.source_record(f, "file" if corpus else "model-sampled") for f in files]
    if not corpus:  # examples name their source: say what it is rather than the cache file's name
        records[0]["name"] = f"model-sampled text (seed {settings.seed})"
    windows, total = corpora.tokenize_corpus(model, files, records, content, settings.tokens, build, column,
                                             ctx.sub(0.8 if not corpus else 0.0, 1.0))
    np.save(build / "windows.npy", windows, allow_pickle=False)
    record.update(sources=records, tokens=total, windows=int(windows.shape[0]))
    sides = 2 if features.signed else 1
    F = sum(features.per_layer)
    kept_windows = min(int(windows.shape[0]), F * sides * settings.top_k)
    estimate = (F * sides * settings.top_k * (settings.context * 2 + 8) + F * (2 * N_BINS * 4 + 24)
                + kept_windows * (settings.context * 4 + 24))
    plan = {"key": key, "corpus": record, "estimate_bytes": int(estimate)}
    atomic_write(build / _PLAN_FILE, lambda fh: fh.write(json.dumps(plan, indent=1).encode()))
    return plan


def _check_corpus_unchanged(plan: dict) -> None:
    for src in plan["corpus"]["sources"]:
        p = Path(src["path"])
        if not p.is_file() or p.stat().st_size != src["bytes"] or file_sha256(p) != src["sha256"]:
            raise CircuitDeskError(f"The corpus file {p} changed since this build began; pass --overwrite to "
                                   f"start again.")


def _check_size(plan: dict, settings: AtlasSettings) -> None:
    gb = plan["estimate_bytes"] / 1e9
    if gb > settings.max_size_gb:
        raise CircuitDeskError(f"The atlas would take about {gb:.1f} GB, more than --max-size-gb "
                               f"{settings.max_size_gb:g}; lower --top-k or --context, or raise --max-size-gb.")


def _load_state(build: Path, features: _Features, settings: AtlasSettings):
    stats = [_LayerStats(F, settings.top_k, settings.context, features.signed) for F in features.per_layer]
    path = build / _STATE_FILE
    if not path.is_file():
        return stats, 0, 0, 0.0
    from safetensors.torch import load_file  # deferred: only when resuming

    try:
        saved = load_file(str(path))
        for l, s in enumerate(stats):
            for name, tensor in s.t.items():
                got = saved[f"L{l}.{name}"]
                if got.shape != tensor.shape or got.dtype != tensor.dtype:
                    raise ValueError(name)
                s.t[name] = got
        progress = saved["progress"].tolist()
    except Exception:  # a checkpoint cut short by a crash: start the scan again (the corpus is kept)
        return [_LayerStats(F, settings.top_k, settings.context, features.signed) for F in features.per_layer], 0, 0, 0.0
    return stats, int(progress[0]), int(progress[1]), float(progress[2]) / 1000.0


def _save_state(build: Path, stats: list[_LayerStats], next_batch: int, seen: int, seconds: float) -> None:
    from safetensors.torch import save_file  # deferred: only when checkpointing

    tensors = {f"L{l}.{name}": t.contiguous() for l, s in enumerate(stats) for name, t in s.t.items()}
    tensors["progress"] = torch.tensor([next_batch, seen, int(seconds * 1000)], dtype=torch.int64)
    tmp = build / (_STATE_FILE + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, build / _STATE_FILE)


def window_batch(windows: np.ndarray, tokens: np.ndarray, rows: range, T: int, first: int | None):
    """Token ids [B, T] of windows ``rows`` (start token first, right-padded) and the counted
    positions [B, T] (content tokens only)."""
    B = len(rows)
    ids = np.zeros((B, T), dtype=np.int64)
    valid = np.zeros((B, T), dtype=bool)
    at = 0 if first is None else 1
    for b, w in enumerate(rows):
        start, length = int(windows[w, 3]), int(windows[w, 4])
        if first is not None:
            ids[b, 0] = first
            ids[b, length + 1:] = first
        ids[b, at:at + length] = tokens[start:start + length]
        valid[b, at:at + length] = True
    return torch.from_numpy(ids), torch.from_numpy(valid)


def _scan(model, features: _Features, stats, windows, tokens, first, settings: AtlasSettings, build: Path,
          next_batch: int, seen: int, seconds: float, ctx) -> tuple[int, float]:
    W, B, T = int(windows.shape[0]), settings.batch_size, settings.context
    n_batches = math.ceil(W / B)
    table = _bin_table()
    inst, net = model.instrument, body(model)
    total_tokens = int(windows[:, 4].sum())
    done_tokens = int(windows[:min(next_batch * B, W), 4].sum())
    run_start, run_tokens, last_save = time.perf_counter(), 0, time.perf_counter()
    interval = CHECKPOINT_SECONDS
    shown_percent = -1
    message = "Scanning the corpus"
    b = next_batch
    try:
        for b in range(next_batch, n_batches):
            rows = range(b * B, min((b + 1) * B, W))
            pct = int(100 * done_tokens / max(1, total_tokens))
            if pct != shown_percent and run_tokens:
                rate = run_tokens / (time.perf_counter() - run_start)
                left = (total_tokens - done_tokens) / max(rate, 1e-9)
                message = f"Scanning the corpus: {done_tokens:,} of {total_tokens:,} tokens, {rate:,.0f} tokens/s, " \
                          f"about {_duration(left)} left"
                shown_percent = pct
            ctx.progress(done_tokens / max(1, total_tokens), message)
            ids, valid = window_batch(windows, tokens, rows, T, first)
            with torch.no_grad(), inst.session(cache=features.points) as trace:
                net(input_ids=ids.to(model.device), use_cache=False)
            wins = torch.as_tensor(list(rows), dtype=torch.int64)
            for l, point in enumerate(features.points):
                X = features.activations(l, trace[point]).cpu().contiguous()
                stats[l].update(X, valid, wins, table)
                del trace.cache[point]
            n = int(valid.sum())
            seen += n
            done_tokens += n
            run_tokens += n
            if time.perf_counter() - last_save > interval:
                seconds += time.perf_counter() - last_save
                t = time.perf_counter()
                _save_state(build, stats, b + 1, seen, seconds)
                last_save = time.perf_counter()
                # a big model's state takes a while to write: spend at most CHECKPOINT_SHARE of the time on it
                interval = max(CHECKPOINT_SECONDS, (last_save - t) / CHECKPOINT_SHARE)
        b = n_batches
    except Cancelled:
        # raised by ``progress`` before batch ``b`` touched anything: the checkpoint resumes there (an
        # interrupt inside a batch saves nothing: the last checkpoint is the consistent state)
        _save_state(build, stats, b, seen, seconds + time.perf_counter() - last_save)
        raise
    seconds += time.perf_counter() - last_save
    return seen, seconds


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _finish(model, out: Path, features: _Features, stats, windows, tokens, first, settings: AtlasSettings,
            plan: dict, seen: int, seconds: float) -> dict:
    """Write features.safetensors, labels.json, vocab.json, then atlas.json (its presence marks the
    atlas finished)."""
    from safetensors.numpy import save_file  # deferred: only when writing an atlas

    T = settings.context
    used = torch.cat([s.t[f"{side}.window"].flatten() for s in stats for side in s.sides])
    used = torch.unique(used[used >= 0]).numpy()
    ids, valid = window_batch(windows, tokens, [int(w) for w in used], T, first)
    shown = valid.numpy().copy()  # the table keeps the window's tokens, the start token included
    shown[:, 0] |= first is not None
    table = np.where(shown, ids.numpy(), -1).astype(np.int32)
    vocab_ids = np.unique(table[table >= 0]).tolist()
    vocab = {int(i): model.tokenizer.decode([int(i)]) for i in vocab_ids}
    arrays: dict[str, np.ndarray] = {"windows.tokens": table,
                                     "windows.source": windows[used][:, :3].astype(np.int64).reshape(-1, 3)}
    labels: dict[str, list] = {"top": [], "bottom": []}
    for l, s in enumerate(stats):
        for side, sign in zip(s.sides, (1, -1)):
            score, win, acts = (x.numpy() for x in s.ranked(side))
            compact = np.where(win >= 0, np.searchsorted(used, win), -1).astype(np.int32)
            arrays[f"L{l}.{side}.value"] = (score * sign).astype(np.float32)
            arrays[f"L{l}.{side}.window"] = compact
            arrays[f"L{l}.{side}.acts"] = acts
            labels[side].append(_labels(acts, compact, table, vocab, sign))
        hist = s.histogram()
        arrays[f"L{l}.count"] = hist.sum(2).numpy()
        arrays[f"L{l}.max"] = s.t["max"].numpy().astype(np.float32)
        arrays[f"L{l}.min"] = s.t["min"].numpy().astype(np.float32)
        arrays[f"L{l}.hist"] = hist.clamp(max=2**31 - 1).numpy().astype(np.int32)
    if not features.signed:
        labels.pop("bottom")
    tmp = out / (FEATURES_FILE + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the writer makes it private; an atlas is shared like any saved file
    os.replace(tmp, out / FEATURES_FILE)
    atomic_write(out / LABELS_FILE, lambda fh: fh.write(json.dumps(labels, ensure_ascii=False).encode("utf-8")))
    atomic_write(out / VOCAB_FILE, lambda fh: fh.write(json.dumps({str(k): v for k, v in vocab.items()},
                                                                  ensure_ascii=False).encode("utf-8")))
    summary = model.summary()
    corpus = plan["corpus"]
    size = sum((out / f).stat().st_size for f in (FEATURES_FILE, LABELS_FILE, VOCAB_FILE))
    meta = {
        "format": FORMAT, "version": VERSION, "tool_version": core.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {k: summary[k] for k in ("name", "spec", "sha256", "family", "model_type", "n_layers", "d_model",
                                          "d_mlp", "n_params", "device", "dtype")},
        "basis": features.describe, "features_per_layer": features.per_layer, "signed": features.signed,
        "first_pos": 0 if first is None else 1, "start_token": first,
        "settings": settings.to_json(), "corpus": {**corpus, "description": describe_corpus(corpus)},
        "tokens_seen": int(seen), "windows_kept": int(len(used)),
        "histogram": {"log2_range": list(LOG2_RANGE), "bins_per_octave": BINS_PER_OCTAVE, "edges": "bfloat16-truncated"},
        "features_bytes": (out / FEATURES_FILE).stat().st_size, "features_sha256": file_sha256(out / FEATURES_FILE),
        "size_bytes": size, "scan_seconds": round(seconds, 3),
        "tokens_per_second": round(seen / seconds, 1) if seconds > 0 else None,
    }
    atomic_write(out / META_FILE, lambda fh: fh.write(json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8")))
    return meta


def _labels(acts: np.ndarray, windows: np.ndarray, table: np.ndarray, vocab: dict[int, str], sign: int) -> list[str]:
    """Each feature's automatic label from its examples (``acts`` [F, k, T] ranked, ``windows``
    [F, k] rows of ``table``): for each token, its highest activation (of that sign) in each
    example, over ``LABEL_FLOOR`` of the feature's peak, summed over the examples (so a token
    repeated within one window counts once; ``auto_label``). Vectorized over the layer."""
    F, k = acts.shape[:2]
    a = acts.astype(np.float32) * sign
    ids = np.where((windows >= 0)[..., None], table[np.maximum(windows, 0)] if len(table) else -1, -1)
    peak = a.max(axis=(1, 2), initial=0.0)
    keep = (a > 0) & (a >= LABEL_FLOOR * peak[:, None, None]) & (ids >= 0)
    f_idx, slot, _ = (x.astype(np.int64) for x in np.nonzero(keep))
    if f_idx.size == 0:
        return [""] * F
    V = int(ids.max()) + 1
    # the highest activation of each (feature, example, token) ...
    per_example = (f_idx * k + slot) * V + ids[keep]
    order = np.argsort(per_example, kind="stable")
    per_example, values = per_example[order], a[keep][order]
    starts = np.flatnonzero(np.r_[True, per_example[1:] != per_example[:-1]])
    best = np.maximum.reduceat(values, starts)
    first = per_example[starts]
    # ... summed over the feature's examples
    uniq, inverse = np.unique((first // (k * V)) * V + first % V, return_inverse=True)
    weight = np.bincount(inverse, weights=best)
    feature, token = uniq // V, uniq % V
    # by feature, heaviest token first: one sort of feature + a fraction below 1 falling with the weight
    order = np.argsort(feature + 0.5 / (1.0 + weight / weight.max()), kind="stable")
    feature, token, weight = feature[order], token[order], weight[order]
    starts = np.searchsorted(feature, np.arange(F))
    ends = np.searchsorted(feature, np.arange(F), side="right")
    out = []
    for f in range(F):
        weights: dict[str, float] = {}
        for j in range(starts[f], min(ends[f], starts[f] + 2 * LABEL_TOKENS)):
            text = vocab.get(int(token[j]), "")
            weights[text] = weights.get(text, 0.0) + float(weight[j])
        out.append(auto_label(weights))
    return out

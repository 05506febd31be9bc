"""The ``.cdesk`` session file: a zip of ``manifest.json``, ``arrays/*.npy`` and ``annotations.json``.

Safe to open when untrusted: only known member names, no paths, size limits before anything is
decompressed, ``numpy.load(allow_pickle=False)``, JSON only, a schema check, and the graph's
own consistency check. Writes are atomic (temporary file in the same folder, then rename), so
a failed or cancelled save never leaves a half-written session behind.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import core
from core.errors import CircuitDeskError
from core.graph import Graph
from core.paths import atomic_write

if TYPE_CHECKING:
    from core.circuits.discover import CircuitResult

FORMAT = "circuitdesk-session"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 2 * 1024**3  # any one array, uncompressed
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_JSON_BYTES = 64 * 1024**2
MAX_MEMBERS = 256
_ARRAY_NAME = re.compile(r"arrays/[A-Za-z0-9_]{1,64}\.npy")


@dataclass
class Session:
    """One analysis: an attribution graph (kind "attribution") or a component circuit ("circuit")."""

    manifest: dict
    graph: Graph | None = None
    annotations: dict = field(default_factory=dict)
    circuit: "CircuitResult | None" = None
    # [n_layers + 1, P]: the logit lens, P(target) read from each layer's residual stream (row 0:
    # the embeddings) on the prompt (circuits: the first pair's clean prompt); the target is
    # manifest["logit_lens"]. Optional: heatmaps for the report without the model.
    logit_lens: np.ndarray | None = None

    def payload(self):
        return self.graph if self.graph is not None else self.circuit


def new_manifest(kind: str, model_summary: dict, prompt: str, settings: dict, **extra) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": core.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": kind,
        "model": model_summary,
        "prompt": prompt,
        "settings": settings,
        **extra,
    }


def save_session(path: str | Path, session: Session) -> Path:
    """Write ``session`` to ``path`` atomically; returns the path."""
    path = Path(path).expanduser()
    if path.suffix != ".cdesk":
        raise CircuitDeskError(f"Session files end in .cdesk; got {path.name!r}.")
    if (session.graph is None) == (session.circuit is None):
        raise ValueError("a session holds exactly one of a graph or a circuit")
    key = "graph" if session.graph is not None else "circuit"
    manifest = dict(session.manifest, **{key: session.payload().header()})

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1, default=_json_default))
            z.writestr("annotations.json", json.dumps(session.annotations or {}, indent=1))
            arrays = dict(session.payload().arrays())
            if session.logit_lens is not None:
                arrays["logit_lens"] = np.asarray(session.logit_lens, np.float32)
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
                z.writestr(f"arrays/{name}.npy", buf.getvalue())

    atomic_write(path, write)
    return path


def load_session(path: str | Path) -> Session:
    """Open a session file, refusing anything that is not exactly what ``save_session`` writes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CircuitDeskError(f"The session file {path} does not exist.")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise CircuitDeskError(f"{path.name} has too many entries to be a session file.")
            names = {i.filename for i in infos}
            total = 0
            for info in infos:
                n = info.filename
                if n not in ("manifest.json", "annotations.json") and not _ARRAY_NAME.fullmatch(n):
                    raise CircuitDeskError(f"{path.name} contains an unexpected entry {n!r}; it is not a session file.")
                limit = MAX_JSON_BYTES if n.endswith(".json") else MAX_MEMBER_BYTES
                if info.file_size > limit:
                    raise CircuitDeskError(f"{path.name}: entry {n} is too large ({info.file_size} bytes).")
                total += info.file_size
            if total > MAX_TOTAL_BYTES:
                raise CircuitDeskError(f"{path.name} would expand to {total} bytes; refusing to open it.")
            if "manifest.json" not in names:
                raise CircuitDeskError(f"{path.name} has no manifest.json; it is not a Circuit Desk session.")
            manifest = _read_json(z, "manifest.json", path)
            annotations = _read_json(z, "annotations.json", path) if "annotations.json" in names else {}
            arrays = {}
            for n in names:
                if n.startswith("arrays/"):
                    with z.open(n) as fh:
                        data = fh.read(MAX_MEMBER_BYTES + 1)
                    arrays[n[len("arrays/"):-len(".npy")]] = np.load(io.BytesIO(data), allow_pickle=False)
    except zipfile.BadZipFile:
        raise CircuitDeskError(f"{path.name} is not a session file (not a zip archive).") from None
    except (ValueError, OSError, EOFError) as e:
        raise CircuitDeskError(f"{path.name} is damaged: {e}.") from None
    _check_manifest(manifest, path)
    annotations = annotations if isinstance(annotations, dict) else {}
    logit_lens = arrays.pop("logit_lens", None)
    if manifest["kind"] == "circuit":
        from core.circuits.discover import CircuitResult

        try:
            circuit = CircuitResult.from_parts(manifest["circuit"], arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CircuitDeskError(f"{path.name} holds an inconsistent circuit ({e}).") from None
        session = Session(manifest, annotations=annotations, circuit=circuit)
        layers = circuit.graph.n_layers
    else:
        try:
            graph = Graph.from_parts(manifest.get("graph", {}), arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise CircuitDeskError(f"{path.name} holds an inconsistent graph ({e}).") from None
        session = Session(manifest, graph, annotations)
        layers = graph.n_layers
    if logit_lens is not None:
        if (logit_lens.ndim != 2 or logit_lens.shape[0] != layers + 1 or logit_lens.dtype.kind != "f"
                or not isinstance(manifest.get("logit_lens"), dict)):
            raise CircuitDeskError(f"{path.name} holds an inconsistent logit lens (shape {logit_lens.shape}).")
        session.logit_lens = logit_lens
    return session


def _check_manifest(m, path: Path) -> None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CircuitDeskError(f"{path.name} is not a Circuit Desk session (wrong format marker).")
    v = m.get("format_version")
    if not isinstance(v, int) or v < 1:
        raise CircuitDeskError(f"{path.name} has an invalid format version.")
    if v > FORMAT_VERSION:
        raise CircuitDeskError(
            f"{path.name} was written by a newer Circuit Desk (format {v}; this is {core.__version__}, "
            f"format {FORMAT_VERSION}); update Circuit Desk to open it."
        )
    if m.get("kind") not in ("attribution", "circuit"):
        raise CircuitDeskError(f"{path.name} holds an unknown kind of analysis ({str(m.get('kind'))[:40]!r}).")
    payload = "circuit" if m.get("kind") == "circuit" else "graph"
    for key, typ in (("kind", str), ("model", dict), ("prompt", str), ("settings", dict), (payload, dict)):
        if not isinstance(m.get(key), typ):
            raise CircuitDeskError(f"{path.name}: the manifest has no valid {key!r}.")


def _read_json(z: zipfile.ZipFile, name: str, path: Path):
    with z.open(name) as fh:
        raw = fh.read(MAX_JSON_BYTES + 1)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CircuitDeskError(f"{path.name}: {name} is not valid JSON ({e}).") from None


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")

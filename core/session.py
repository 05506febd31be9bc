"""The ``.cdesk`` session file: a zip of ``manifest.json``, ``arrays/*.npy`` and ``annotations.json``.

Safe to open when untrusted (a session may come from anyone): only known member names, no paths,
size limits checked before anything is decompressed and again while reading (a member is read in
bounded chunks and refused past its declared size), ``numpy.load(allow_pickle=False)``, strict
JSON (no NaN/Infinity, bounded nesting), the manifest and the annotations validated into typed
objects (``core.manifest``, ``core.annotations``), and every array checked for dtype, shape,
finiteness and consistency with the rest. After ``load_session`` no code meets unvalidated data;
anything else is refused with one sentence.

The manifest records the sha256 of every other member (``members``). An edited member does not
stop the file from opening; ``Session.edited`` names it, and ``verify`` and the report say so.
Writes are atomic (temporary file in the same folder, then rename), so a failed or cancelled save
never leaves a half-written session behind.
"""

from __future__ import annotations

import hashlib
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
from core.annotations import Annotations
from core.errors import CircuitDeskError
from core.graph import Graph
from core.manifest import validate_manifest
from core.paths import atomic_write

if TYPE_CHECKING:
    from core.circuits.discover import CircuitResult

FORMAT = "circuitdesk-session"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 2 * 1024**3  # any one array, uncompressed
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_JSON_BYTES = 64 * 1024**2
MAX_MEMBERS = 256
READ_CHUNK = 1 << 20  # decompressed bytes per read: memory follows what a member really holds
_ARRAY_NAME = re.compile(r"arrays/[A-Za-z0-9_]{1,64}\.npy")


@dataclass
class Session:
    """One analysis: an attribution graph (kind "attribution") or a component circuit ("circuit")."""

    manifest: dict
    graph: Graph | None = None
    annotations: Annotations = field(default_factory=Annotations)
    circuit: "CircuitResult | None" = None
    # [n_layers + 1, P]: the logit lens, P(target) read from each layer's residual stream (row 0:
    # the embeddings) on the prompt (circuits: the first pair's clean prompt); the target is
    # manifest["logit_lens"]. Optional: heatmaps for the report without the model.
    logit_lens: np.ndarray | None = None
    # members whose bytes differ from the sha256 the manifest recorded when the file was saved (or
    # that are missing or new); None: the file records no member hashes (written before they existed)
    edited: tuple[str, ...] | None = ()

    def payload(self):
        return self.graph if self.graph is not None else self.circuit

    @property
    def n_nodes(self) -> int:
        """Nodes of the view annotations refer to (graph nodes, or the circuit's input/heads/MLPs/logits)."""
        return self.graph.n_nodes if self.graph is not None else len(self.circuit.graph.node_names)


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
    members = {}
    arrays = dict(session.payload().arrays())
    if session.logit_lens is not None:
        arrays["logit_lens"] = np.asarray(session.logit_lens, np.float32)
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        members[f"arrays/{name}.npy"] = buf.getvalue()
    try:  # json refuses NaN/Infinity here rather than write a session that cannot be opened again
        members["annotations.json"] = _json_bytes(session.annotations.to_json())
        manifest = _json_bytes(dict(session.manifest, **{key: session.payload().header()},
                                    members={n: hashlib.sha256(data).hexdigest() for n, data in members.items()}))
    except ValueError as e:
        raise CircuitDeskError(f"{path.name} was not saved: the analysis holds a number that is not finite ({e}).") from None

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("manifest.json", manifest)
            for name, data in members.items():
                z.writestr(name, data)

    atomic_write(path, write)
    return path


def load_session(path: str | Path) -> Session:
    """Open a session file, refusing anything that is not exactly what ``save_session`` writes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CircuitDeskError(f"The session file {path} does not exist.")
    where = path.name
    try:
        with zipfile.ZipFile(path) as z:
            raw = _read_members(z, where)
    except zipfile.BadZipFile as e:
        raise CircuitDeskError(f"{where} is not a session file or is damaged ({e}).") from None
    except (OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CircuitDeskError(f"{where} is damaged: {e}.") from None
    if "manifest.json" not in raw:
        raise CircuitDeskError(f"{where} has no manifest.json; it is not a Circuit Desk session.")
    manifest = _parse_json(raw.pop("manifest.json"), where, "manifest.json")
    _check_format(manifest, where)
    manifest = validate_manifest(manifest, f"{where}: manifest.json")
    edited = _edited_members(manifest.get("members"), raw)
    try:
        session = _load_payload(manifest, raw, where)
    except CircuitDeskError as err:
        if edited:  # say what was changed since saving: that is what broke it
            raise CircuitDeskError(f"{str(err).rstrip('.')}; edited after saving: {', '.join(edited)}.") from None
        raise
    session.edited = edited
    return session


def _load_payload(manifest: dict, raw: dict[str, bytes], where: str) -> Session:
    """The session of a validated ``manifest`` and its members' bytes; every member checked."""
    notes_raw = raw.pop("annotations.json", b"{}")
    _parse_json(notes_raw, where, "annotations.json")  # NaN, nesting and encoding refused alike
    arrays = {}
    for n, data in raw.items():
        try:
            arrays[n[len("arrays/"):-len(".npy")]] = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CircuitDeskError(f"{where} is damaged: {n} is not a valid array ({str(e)[:120]}).") from None
    logit_lens = arrays.pop("logit_lens", None)
    if manifest["kind"] == "circuit":
        from core.circuits.discover import CircuitResult  # deferred: imports torch; only circuit sessions need it

        try:
            circuit = CircuitResult.from_parts(manifest["circuit"], arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CircuitDeskError(f"{where} holds an inconsistent circuit ({_clause(e)}).") from None
        session = Session(manifest, circuit=circuit)
        layers = circuit.graph.n_layers
    else:
        try:
            graph = Graph.from_parts(manifest["graph"], arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise CircuitDeskError(f"{where} holds an inconsistent graph ({_clause(e)}).") from None
        vocab = manifest["model"].get("vocab_size")
        if vocab and graph.n_nodes and int(graph.index[graph.kind != 1].max(initial=0)) >= vocab:
            raise CircuitDeskError(f"{where} holds a token id outside the model's vocabulary ({vocab}).")
        session = Session(manifest, graph)
        layers = graph.n_layers
    if logit_lens is not None:
        info = manifest.get("logit_lens")
        if (info is None or logit_lens.ndim != 2 or logit_lens.shape != (layers + 1, len(info["tokens"]))
                or logit_lens.dtype.kind != "f" or not np.all((logit_lens >= 0) & (logit_lens <= 1))):
            raise CircuitDeskError(f"{where} holds an inconsistent logit lens (shape {logit_lens.shape}).")
        session.logit_lens = logit_lens
    session.annotations = Annotations.from_json(notes_raw, session.n_nodes, f"{where}: annotations.json")
    return session


def _read_members(z: zipfile.ZipFile, where: str) -> dict[str, bytes]:
    """Every member's bytes, checked against the limits before and while decompressing."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CircuitDeskError(f"{where} has too many entries to be a session file.")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise CircuitDeskError(f"{where} holds an entry twice; it is not a session file.")
    total = 0
    for info in infos:
        n = info.filename
        if n not in ("manifest.json", "annotations.json") and not _ARRAY_NAME.fullmatch(n):
            raise CircuitDeskError(f"{where} contains an unexpected entry {n[:80]!r}; it is not a session file.")
        limit = MAX_JSON_BYTES if n.endswith(".json") else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise CircuitDeskError(f"{where}: entry {n} is too large ({info.file_size} bytes).")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise CircuitDeskError(f"{where} would expand to {total} bytes; refusing to open it.")
    out = {}
    for info in infos:
        # zipfile stops a member at its declared size and then checks the CRC (a member whose header
        # understates it fails there), but read(n) decompresses up to n bytes first: small reads keep
        # memory at what the member declares, not at the read limit.
        data = bytearray()
        with z.open(info) as fh:
            while chunk := fh.read(READ_CHUNK):
                data += chunk
        out[info.filename] = bytes(data)
    return out


def _edited_members(recorded: dict | None, raw: dict[str, bytes]) -> tuple[str, ...] | None:
    if recorded is None:
        return None
    now = {n: hashlib.sha256(data).hexdigest() for n, data in raw.items()}
    return tuple(sorted(n for n in set(recorded) | set(now) if recorded.get(n) != now.get(n)))


def _check_format(m, where: str) -> None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CircuitDeskError(f"{where} is not a Circuit Desk session (wrong format marker).")
    v = m.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise CircuitDeskError(f"{where} has an invalid format version.")
    if v > FORMAT_VERSION:
        raise CircuitDeskError(
            f"{where} was written by a newer Circuit Desk (format {v}; this is {core.__version__}, "
            f"format {FORMAT_VERSION}); update Circuit Desk to open it."
        )


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json(raw: bytes, where: str, name: str):
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise CircuitDeskError(f"{where}: {name} is not valid JSON ({str(e)[:120]}).") from None
    except RecursionError:
        raise CircuitDeskError(f"{where}: {name} is nested too deeply to be a session file.") from None


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1, default=_json_default, allow_nan=False).encode("utf-8")


def _clause(e: BaseException) -> str:
    return str(e).rstrip(".")[:160] or type(e).__name__


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

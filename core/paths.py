"""Where Circuit Desk keeps its own files (cache, logs, settings). Overridable for tests and kiosks."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Mapping

import platformdirs

from core.errors import CircuitDeskError

APP = "circuitdesk"


def read_user_text(path: str | Path, what: str, max_bytes: int, utf8_fix: str = "") -> tuple[Path, str]:
    """(path, text) of a text file a user gave as ``what`` (e.g. "pair file"), at most ``max_bytes``;
    each problem (missing, too large, not UTF-8, unreadable) is one sentence naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CircuitDeskError(f"The {what} {path} does not exist.")
    if path.stat().st_size > max_bytes:
        raise CircuitDeskError(f"The {what} {path} is larger than {max_bytes // 1024**2} MB.")
    try:
        return path, path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CircuitDeskError(f"The {what} {path} is not UTF-8 text{utf8_fix}.") from None
    except OSError as e:
        raise CircuitDeskError(f"Cannot read {path}: {e.strerror or e}.") from None

def cache_dir() -> Path:
    """User cache dir (converted models, fingerprints); ``CIRCUITDESK_CACHE_DIR`` overrides it."""
    override = os.environ.get("CIRCUITDESK_CACHE_DIR")
    path = Path(override) if override else Path(platformdirs.user_cache_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_dir() -> Path:
    override = os.environ.get("CIRCUITDESK_LOG_DIR")
    path = Path(override) if override else Path(platformdirs.user_log_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """User settings shared by the GUI and the CLI (model folders); ``CIRCUITDESK_CONFIG_DIR`` overrides it."""
    override = os.environ.get("CIRCUITDESK_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    """User data dir (feature atlases); ``CIRCUITDESK_DATA_DIR`` overrides it."""
    override = os.environ.get("CIRCUITDESK_DATA_DIR")
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resources_dir() -> Path:
    """The data folder (demo prompts, task templates, example suite, export schema): ``resources/``
    beside the source tree, inside a frozen bundle, or ``share/circuitdesk/resources`` of the
    environment a wheel was installed into."""
    candidates = [Path(__file__).resolve().parent.parent / "resources"]
    if getattr(sys, "frozen", False):
        candidates.insert(0, Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "resources")
    candidates.append(Path(sys.prefix) / "share" / "circuitdesk" / "resources")
    for path in candidates:
        if (path / "demo_prompts.json").is_file():
            return path
    return candidates[0]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read now (``core.models.fingerprint.sha256_file`` remembers
    model files' digests; a report cites the file as it is)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write) -> Path:
    """Write a file whole or not at all: ``write(binary_file)`` fills a temporary file in the same
    folder, which then replaces ``path`` (permissions as a plain ``open`` would give, umask
    applied). Any failure or interruption removes the temporary file; OS errors become one
    sentence."""
    return atomic_write_all({path: write})[0]


def atomic_write_all(writes: Mapping[Path, Callable]) -> list[Path]:
    """Write several files all or nothing (a CSV pair, a summary's JSON and PDF): each
    ``write(binary_file)`` fills a temporary file beside its path; only when every one is complete
    are they renamed into place, with Ctrl-C and SIGTERM held back meanwhile (renames within a
    folder need no space, so nothing else can stop them half-way). Any failure before removes
    every temporary file and leaves the old files as they were; OS errors become one sentence."""
    paths = [Path(p) for p in writes]
    for path in paths:
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise CircuitDeskError(f"Cannot write {path}: the folder {folder} does not exist.")
        if path.is_dir():
            raise CircuitDeskError(f"Cannot write {path}: it is a folder.")
    umask = os.umask(0)
    os.umask(umask)
    temps: list[str] = []
    path = paths[0]
    try:
        for path, write in zip(paths, writes.values()):
            fd, tmp = tempfile.mkstemp(prefix=".~" + path.name, suffix=".tmp", dir=path.parent)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file is the user's usual kind
        with _signals_held():
            for path, tmp in zip(paths, temps):
                os.replace(tmp, path)
    except OSError as e:
        _remove(temps)
        raise CircuitDeskError(f"Cannot write {path}: {e.strerror or e}.") from None
    except BaseException:
        _remove(temps)
        raise
    return paths


def _remove(files: list[str]) -> None:
    for f in files:
        Path(f).unlink(missing_ok=True)


@contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM back until the block ends (then they act as usual): a set of renames
    is not left half done. Only where the OS allows it (POSIX, this thread); elsewhere a no-op."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

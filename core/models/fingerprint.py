"""Model fingerprints for report provenance: sha256 of every weight, config and tokenizer file.

Hashing gigabytes takes seconds, so digests are remembered per (path, size, mtime) in the user
cache dir; a file that changes on disk gets a new digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.paths import cache_dir, file_sha256

# Files whose content decides what the model computes.
FINGERPRINT_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.gguf",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)

_lock = threading.Lock()


@dataclass(frozen=True)
class Fingerprint:
    """sha256 per file and one combined digest over the sorted (name, digest) pairs."""

    files: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}\t{self.files[name]}\n".encode())
        return h.hexdigest()

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "files": dict(sorted(self.files.items()))}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, remembered per (absolute path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "sha256.json"
    with _lock:
        known = _read_store(store)
        if key in known:
            return known[key]
    digest = file_sha256(path, chunk)
    with _lock:
        known = _read_store(store)
        known[key] = digest
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, store)
    return digest


def _read_store(store: Path) -> dict[str, str]:
    try:
        data = json.loads(store.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def fingerprint_files(paths: list[Path]) -> Fingerprint:
    return Fingerprint({p.name: sha256_file(p) for p in sorted(paths)})


def fingerprint_folder(folder: Path) -> Fingerprint:
    files = {p for pattern in FINGERPRINT_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()}
    return fingerprint_files(sorted(files))

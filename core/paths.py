"""Where Circuit Desk keeps its own files (cache, logs, settings). Overridable for tests and kiosks."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "circuitdesk"


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


def resources_dir() -> Path:
    """The repository's data folder (demo prompts, later task suites)."""
    return Path(__file__).resolve().parent.parent / "resources"

"""Log file set-up shared by the CLI and the GUI: tracebacks go here, never into the user's face."""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from core.paths import log_dir

_configured: Path | None = None


def setup_logging() -> Path | None:
    """Log to ``<user log dir>/circuitdesk.log``; returns its path (None if the dir is unwritable)."""
    global _configured
    if _configured is not None:
        return _configured
    try:
        path = log_dir() / "circuitdesk.log"
        handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _configured = path
    return path

"""Exceptions that escape a Qt slot.

PySide6 hands an exception raised inside a slot to ``sys.excepthook`` and carries on; Python's
default hook prints it to stderr, where nobody using the app sees it. ``SlotErrorHook`` sends the
traceback to the log file and the user one sentence in the window's error dialog, then passes the
exception on to the hook that was there before — Python's (a developer still sees it on stderr)
or, in tests, pytest-qt's, which fails the test in which it happened.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

log = logging.getLogger(__name__)


class SlotErrorHook:
    def __init__(self, show_error: Callable[[str], None]) -> None:
        self._show_error = show_error
        self._previous = None

    def install(self) -> "SlotErrorHook":
        self._previous = sys.excepthook
        sys.excepthook = self
        return self

    def uninstall(self) -> None:
        if sys.excepthook is self:
            sys.excepthook = self._previous

    def __call__(self, etype, value, tb) -> None:
        if not issubclass(etype, KeyboardInterrupt):
            log.error("unhandled exception in the GUI", exc_info=(etype, value, tb))
            try:
                self._show_error(user_message(value))
            except Exception:  # the dialog itself failed: the log has both
                log.exception("could not show the error dialog")
        (self._previous or sys.__excepthook__)(etype, value, tb)


def user_message(exc: BaseException) -> str:
    """One sentence for an unexpected error (the traceback is in the log file)."""
    what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Internal error: {what[:200]} — the app keeps running; details are in the log file."

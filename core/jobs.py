"""The job protocol: progress reporting and cooperative cancellation for long computations.

A computation is a plain function that takes a ``JobContext`` and calls ``ctx.progress(f, msg)``
and ``ctx.check_cancelled()`` between steps (layers, batches). It never knows who runs it: the
CLI prints progress to stderr, the desktop relays it to a progress bar through queued signals,
tests pass a ``JobContext()`` that does nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


class Cancelled(Exception):
    """Raised inside a job when cancellation was requested; the job unwinds and returns nothing."""


@dataclass(frozen=True)
class Progress:
    fraction: float  # 0..1
    message: str
    elapsed: float  # seconds since the job started


ProgressCallback = Callable[[Progress], None]
PartialCallback = Callable[[str, object], None]


class JobContext:
    """What a running job sees of its runner: a progress sink and a cancellation flag.

    Progress is rate-limited: a report is forwarded only when the message changes, the fraction
    moved by at least ``min_step``, ``min_interval`` seconds passed, or the job reached 1.0.
    Thread-safe: ``cancel()`` may be called from any thread.
    """

    def __init__(
        self,
        on_progress: ProgressCallback | None = None,
        *,
        min_step: float = 0.01,
        min_interval: float = 0.1,
        on_partial: PartialCallback | None = None,
    ) -> None:
        self._on_progress = on_progress
        self._on_partial = on_partial
        self._cancel = threading.Event()
        self._min_step = min_step
        self._min_interval = min_interval
        self._start = time.monotonic()
        self._last: Progress | None = None
        self._last_time = 0.0

    # -- cancellation -------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if cancellation was requested. Call between steps."""
        if self._cancel.is_set():
            raise Cancelled()

    # -- progress -----------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (clamped to 0..1) and check for cancellation."""
        self.check_cancelled()
        if self._on_progress is None:
            return
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        last = self._last
        if (
            last is None
            or message != last.message
            or abs(fraction - last.fraction) >= self._min_step
            or now - self._last_time >= self._min_interval
            or (fraction >= 1.0 and last.fraction < 1.0)
        ):
            self._last = Progress(fraction, message, now - self._start)
            self._last_time = now
            self._on_progress(self._last)

    def partial(self, name: str, value: object) -> None:
        """Hand over a result that is ready before the job ends (a prediction before its graph),
        so that it can be shown at once; ``name`` says what it is. Ignored when nobody listens."""
        self.check_cancelled()
        if self._on_partial is not None:
            self._on_partial(name, value)

    def sub(self, start: float, stop: float, prefix: str = "") -> "SubContext":
        """A view of this context whose 0..1 maps onto [start, stop] of the parent's range
        (``prefix``: put before every message, e.g. the case of a batch)."""
        return SubContext(self, start, stop, prefix)


class SubContext:
    """A slice of a parent job's progress range, for a step of a larger job."""

    def __init__(self, parent: JobContext | "SubContext", start: float, stop: float, prefix: str = "") -> None:
        self._parent = parent
        self._start = start
        self._stop = stop
        self._prefix = prefix

    @property
    def cancelled(self) -> bool:
        return self._parent.cancelled

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()

    def progress(self, fraction: float, message: str = "") -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        if self._prefix:
            message = f"{self._prefix}: {message}" if message else self._prefix
        self._parent.progress(self._start + (self._stop - self._start) * fraction, message)

    def partial(self, name: str, value: object) -> None:
        self._parent.partial(name, value)

    def sub(self, start: float, stop: float, prefix: str = "") -> "SubContext":
        return SubContext(self, start, stop, prefix)

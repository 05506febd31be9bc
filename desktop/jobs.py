"""Runs core jobs on a thread pool and relays their progress and results to the GUI thread.

A job is ``fn(ctx) -> result`` (see ``core.jobs``). Signals (queued to the GUI thread):
started, progress(Progress), partial(name, value) (a result ready before the job ends),
returned(result), errored(message), aborted, finished.
One job at a time: starting a new one cancels the running one; ``shutdown()`` cancels and waits.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from core.errors import CircuitDeskError
from core.jobs import Cancelled, JobContext, Progress

log = logging.getLogger(__name__)


class JobHandle(QObject):
    started = Signal()
    progress = Signal(object)  # core.jobs.Progress
    partial = Signal(str, object)  # name, value: see JobContext.partial
    returned = Signal(object)
    errored = Signal(str)  # one sentence for the user
    aborted = Signal()
    finished = Signal()

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.ctx = JobContext(self._relay_progress, on_partial=self.partial.emit)
        self.done = False
        self.detail = ""  # what the job produced, in a few words (the jobs pane shows it)

    def _relay_progress(self, p: Progress) -> None:
        self.progress.emit(p)

    def cancel(self) -> None:
        self.ctx.cancel()


class _Runnable(QRunnable):
    def __init__(self, handle: JobHandle, fn: Callable[[JobContext], Any]) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self.handle = handle
        self.fn = fn

    def run(self) -> None:  # worker thread
        h = self.handle
        h.started.emit()
        try:
            result = self.fn(h.ctx)
            h.ctx.check_cancelled()
        except Cancelled:
            h.aborted.emit()
        except CircuitDeskError as err:
            log.info("job %s: %s", h.name, err)
            h.errored.emit(str(err))
        except Exception as exc:  # a bug; the user gets one line, the log gets the traceback
            log.error("job %s failed:\n%s", h.name, traceback.format_exc())
            h.errored.emit(f"Internal error: {exc} (details in the log file).")
        else:
            h.returned.emit(result)
        finally:
            h.done = True
            h.finished.emit()


class JobRunner(QObject):
    """Owns the worker pool; the window asks it to run one job at a time."""

    submitted = Signal(object)  # JobHandle, before it starts (the jobs pane lists it)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)  # one job per model; a new run waits for the cancelled one
        self.current: JobHandle | None = None

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.done

    def submit(self, name: str, fn: Callable[[JobContext], Any], detail: Callable[[Any], str] | None = None,
               **slots: Callable) -> JobHandle:
        """Start ``fn`` on the pool after cancelling whatever runs now.

        ``detail(result)``: a few words on what the job produced, for the jobs pane. ``slots`` maps
        signal names (progress=..., returned=...) to callables, connected before the job starts so
        that no signal is missed.
        """
        if self.busy:
            self.current.cancel()
        handle = JobHandle(name)
        if detail is not None:
            handle.returned.connect(lambda result: setattr(handle, "detail", detail(result)))
        for signal_name, slot in slots.items():
            getattr(handle, signal_name).connect(slot)
        self.current = handle
        self.submitted.emit(handle)
        self.pool.start(_Runnable(handle, fn))
        return handle

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Cancel the running job and wait for the pool to drain (window close)."""
        self.cancel()
        return self.pool.waitForDone(timeout_ms)

"""The status bar: a message, the running job's progress, elapsed time and Cancel; errors as a
one-sentence dialog (details are in the log file).

It follows the job runner by itself: every job the runner starts is shown until it ends, and only
the newest job's signals count (a cancelled job reports late).
"""

from __future__ import annotations

from PySide6.QtCore import QElapsedTimer, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QProgressBar, QToolButton

from desktop.jobs import JobHandle, JobRunner

CANCELLED, CANCELLING = "Cancelled", "Cancelling…"


class StatusBar(QObject):
    job_finished = Signal()  # the newest job ended (result, error or cancel) and the window shows it
    running_changed = Signal(bool)

    def __init__(self, window: QMainWindow, runner: JobRunner) -> None:
        super().__init__(window)
        self.window, self.runner = window, runner
        self.last_error: str | None = None  # the newest job's error (or the last refused action's)
        self.error_box: QMessageBox | None = None
        self.finish_note: str | None = None  # what to say when the job ends (else "Done in …")
        self.running = False
        bar = window.statusBar()
        self.label = QLabel("Ready")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        self.elapsed_label = QLabel("")
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        bar.addWidget(self.label, 1)
        bar.addPermanentWidget(self.elapsed_label)
        bar.addPermanentWidget(self.progress_bar)
        bar.addPermanentWidget(self.cancel_button)
        self._clock = QElapsedTimer()
        self._tick = QTimer(self)
        self._tick.setInterval(200)
        self._tick.timeout.connect(self._update_elapsed)
        runner.submitted.connect(self._watch)

    def say(self, text: str) -> None:
        self.label.setText(text)

    def cancel(self) -> None:
        if self.runner.busy:
            self.runner.cancel()
            self.say(CANCELLING)

    def show_error(self, message: str) -> None:
        """One sentence in a dialog (non-blocking); details are in the log file."""
        self.last_error = message
        self.say("Error: " + message)
        box = QMessageBox(QMessageBox.Icon.Warning, "Circuit Desk", message, QMessageBox.StandardButton.Ok,
                          self.window)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _=None: setattr(self, "error_box", None))
        self.error_box = box
        box.open()

    # -- the runner's jobs ------------------------------------------------------------------------
    def _watch(self, handle: JobHandle) -> None:
        replaced = self.running  # the runner cancelled it for this one

        def newest(slot):
            return lambda *args: slot(*args) if handle is self.runner.current else None

        handle.progress.connect(newest(self._progress))
        handle.errored.connect(newest(self.show_error))
        handle.aborted.connect(newest(lambda: self.say(CANCELLED)))
        handle.finished.connect(newest(self._finished))
        self.last_error, self.finish_note = None, None
        self._set_running(True, "Previous run cancelled; running…" if replaced else "Running…")

    def _progress(self, p) -> None:
        self.progress_bar.setValue(int(p.fraction * 1000))
        if p.message:
            self.say(p.message + "…")

    def _finished(self) -> None:
        seconds = self._clock.elapsed() / 1000
        message = self.label.text()
        self._set_running(False, message)
        if self.last_error is None and message not in (CANCELLED, CANCELLING):
            self.say(self.finish_note or f"Done in {seconds:.1f} s")
        self.finish_note = None
        self.job_finished.emit()

    def _set_running(self, running: bool, message: str) -> None:
        self.running = running
        self.say(message)
        self.progress_bar.setVisible(running)
        self.cancel_button.setVisible(running)
        if running:
            self.progress_bar.setValue(0)
            self._clock.start()
            self._tick.start()
            self._update_elapsed()
        else:
            self._tick.stop()
            self.elapsed_label.setText("")
        self.running_changed.emit(running)

    def _update_elapsed(self) -> None:
        self.elapsed_label.setText(f"{self._clock.elapsed() / 1000:.1f} s")

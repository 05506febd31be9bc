"""The jobs pane: every run of the session with its state, progress, time and outcome.

Rows are added when the runner starts a job and follow that job's signals; the newest is on top.
"""

from __future__ import annotations

from PySide6.QtCore import QElapsedTimer, Qt
from PySide6.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from desktop.jobs import JobHandle, JobRunner

COLUMNS = ("Job", "State", "Time", "Detail")
RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"


class JobsPane(QTableWidget):
    def __init__(self, runner: JobRunner) -> None:
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        header = self.horizontalHeader()
        for c in range(3):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.rows: list[JobHandle] = []  # newest first, as shown
        self._replaced: set[int] = set()  # ids of handles cancelled because a new job started
        runner.submitted.connect(self.add)

    def add(self, handle: JobHandle, detail: str = "") -> None:
        replaced = [h for h in self.rows if not h.done]  # the runner cancels these for the new job
        clock = QElapsedTimer()
        clock.start()
        self.insertRow(0)
        self.rows.insert(0, handle)
        for c, text in enumerate((handle.name, RUNNING, "", detail)):
            self.setItem(0, c, QTableWidgetItem(text))

        def row() -> int:
            return self.rows.index(handle)

        def set_state(state: str, detail: str | None = None) -> None:
            r = row()
            self.item(r, 1).setText(state)
            self.item(r, 2).setText(f"{clock.elapsed() / 1000:.1f} s")
            if detail is not None:
                self.item(r, 3).setText(detail)
                self.item(r, 3).setToolTip(detail)

        outcome: dict[str, tuple[str, str | None]] = {}
        handle.progress.connect(lambda p: set_state(f"{RUNNING} {p.fraction:.0%}", p.message or None))
        handle.errored.connect(lambda message: outcome.setdefault("end", (FAILED, message)))
        handle.aborted.connect(lambda: outcome.setdefault("end", (CANCELLED, self._why_cancelled(handle))))
        self._replaced.update(id(h) for h in replaced)
        handle.finished.connect(lambda: set_state(*outcome.get("end", (DONE, handle.detail))))

    def _why_cancelled(self, handle: JobHandle) -> str:
        return "replaced by a newer run" if id(handle) in self._replaced else "cancelled by you"

    def states(self) -> list[str]:
        """The State column, newest first (tests and the status line read it)."""
        return [self.item(r, 1).text() for r in range(self.rowCount())]

    def keyPressEvent(self, event) -> None:  # Delete clears finished rows
        if event.key() == Qt.Key.Key_Delete:
            for r in reversed(range(self.rowCount())):
                if self.rows[r].done:
                    self.removeRow(r)
                    del self.rows[r]
            return
        super().keyPressEvent(event)

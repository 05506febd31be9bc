"""The findings pane: the auditor's free text about the analysis on show (saved with the session).

Typing is committed to the shared state after a pause (not per keystroke) and whenever the
session is about to be saved; an edit not committed yet is never overwritten by a state change.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QTextCursor, QTextOption
from PySide6.QtWidgets import QPlainTextEdit

from core.annotations import MAX_FINDINGS
from core.selection import ANNOTATION, VIEW, Change, WorkbenchState

NAME = "findings"


class FindingsPane(QPlainTextEdit):
    notice = Signal(str)  # something the status bar should say

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__()
        self.state = state
        self.setPlaceholderText("Findings: what this circuit shows, what the interventions confirmed… "
                                "(saved with the session)")
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(400)
        self._timer.timeout.connect(self.commit)
        self.textChanged.connect(self._typed)
        state.subscribe(self.on_change)

    def on_change(self, change: Change) -> None:
        typing = self._timer.isActive()  # an edit not committed yet is never overwritten
        if (change.what in (VIEW, ANNOTATION) and change.source != NAME and not typing
                and self.toPlainText() != self.state.findings):
            self.blockSignals(True)
            self.setPlainText(self.state.findings)
            self.blockSignals(False)

    def commit(self) -> None:
        self._timer.stop()
        self.state.set_findings(self.toPlainText(), source=NAME)

    def _typed(self) -> None:
        if len(self.toPlainText()) > MAX_FINDINGS:  # typed or pasted past the cap: keep the start
            self.blockSignals(True)
            self.setPlainText(self.toPlainText()[:MAX_FINDINGS])
            self.moveCursor(QTextCursor.MoveOperation.End)
            self.blockSignals(False)
            self.notice.emit(f"Findings are limited to {MAX_FINDINGS:,} characters; the rest was not kept.")
        self._timer.start()

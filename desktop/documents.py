"""The analysis on show as a document: save, open, autosave and recovery, the recent list, the
unsaved flag and the window title.

A session file holds what is on show (``Analysis.session``) with the auditor's annotations
(``WorkbenchState.annotations``); opening one is a single state change.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMenu, QMessageBox

import core
from core.analysis import Analysis
from core.errors import CircuitDeskError
from core.selection import ANNOTATION, INTERVENTION, THRESHOLD, VIEW, Change, WorkbenchState
from core.session import load_session, save_session
from core.view import from_attribution, from_circuit
from desktop.jobs import JobRunner
from desktop.status import StatusBar

log = logging.getLogger(__name__)

AUTOSAVE_MS = 120_000  # unsaved work goes to the recovery file this often
RECENT_KEY, RECENT_COUNT = "session/recent", 8
NAME = "documents"


class Documents(QObject):
    about_to_save = Signal()  # panes holding uncommitted edits commit them now
    recovery_changed = Signal()  # the offer to recover unsaved work was taken up

    def __init__(self, window: QMainWindow, state: WorkbenchState, runner: JobRunner, status: StatusBar,
                 settings: QSettings, recent_menu: QMenu) -> None:
        super().__init__(window)
        self.window, self.state, self.runner, self.status = window, state, runner, status
        self.settings, self.recent_menu = settings, recent_menu
        self.session_path: str | None = None
        self.dirty = False
        self.recoverable = self.recovery_path.is_file()  # the last window closed with unsaved work
        self.autosave_timer = QTimer(self)
        self.autosave_timer.setInterval(AUTOSAVE_MS)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start()
        state.subscribe(self.on_change)
        self.fill_recent()
        if self.recoverable:
            status.say("Circuit Desk closed with unsaved work; File → Recover Unsaved Work brings it back.")

    def on_change(self, change: Change) -> None:
        if change.what == VIEW and change.source != NAME:
            self.session_path = None  # a new run is a new, unsaved analysis
        if change.what in (VIEW, ANNOTATION, THRESHOLD, INTERVENTION):
            self._set_dirty(True)

    # -- save and open -----------------------------------------------------------------------------
    def save(self, path: str | None = None, ask: bool = False) -> bool:
        """Save (Ctrl+S) to the session's file, or ask where (Save As, or the first save)."""
        if self.state.view is None:
            self.status.show_error("Nothing to save yet: run a trace or a circuit first.")
            return False
        if path is None and (ask or self.session_path is None):
            path, _ = QFileDialog.getSaveFileName(self.window, "Save session", self.session_path or "analysis.cdesk",
                                                  "Circuit Desk sessions (*.cdesk)")
            if not path:
                return False
            if not path.endswith(".cdesk"):
                path += ".cdesk"
        path = path or self.session_path
        try:
            save_session(path, self._session())
        except CircuitDeskError as err:
            self.status.show_error(str(err))
            return False
        self.session_path = str(path)
        self.remember(self.session_path)
        self._set_dirty(False)
        self.status.say(f"Saved {path}")
        return True

    def _session(self):
        self.about_to_save.emit()
        return self.state.analysis.session(self.state.annotations())

    def open(self, path: str | None = None, remember: bool = True) -> bool:
        """Open a .cdesk file: its graph, threshold, groups and pins (heatmaps need a re-run)."""
        if not self.may_discard("opening another session"):
            return False
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self.window, "Open session", "",
                                                  "Circuit Desk sessions (*.cdesk);;All files (*)")
            if not path:
                return False
        if self.runner.busy:
            self.status.show_error("A job is running; cancel it or wait before opening a session.")
            return False
        try:  # everything that can fail happens before anything on show changes
            session = load_session(path)
            view = from_attribution(session.graph) if session.graph is not None else from_circuit(session.circuit)
        except CircuitDeskError as err:
            self.status.show_error(str(err))
            return False
        self.session_path = str(path)
        self.state.show(Analysis(view=view, opened=session), source=NAME, annotations=session.annotations)
        if remember:
            self.remember(self.session_path)
        self._set_dirty(False)
        m = session.manifest.get("model", {})
        self.status.say(f"Opened {Path(path).name}: {session.manifest.get('kind')} of "
                        f"{m.get('name', 'a model')} — run again to see heatmaps and intervene")
        if session.edited:
            self.status.show_error(f"{Path(path).name} was changed after it was saved: {', '.join(session.edited)} "
                                   "no longer match the sha256 recorded in its manifest.")
        return True

    def unsaved_choice(self, why: str) -> str:
        """Ask what to do with unsaved work: "save", "discard" or "cancel" (tests replace this)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Circuit Desk",
                          f"The analysis on show has unsaved changes. Save them before {why}?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self.window)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        return {QMessageBox.StandardButton.Save: "save",
                QMessageBox.StandardButton.Discard: "discard"}.get(QMessageBox.StandardButton(answer), "cancel")

    def may_discard(self, why: str) -> bool:
        """True when the analysis on show may be replaced: saved, nothing to lose, or the user agrees."""
        if not self.dirty or self.state.view is None:
            return True
        choice = self.unsaved_choice(why)
        if choice == "save":
            return self.save()
        return choice == "discard"

    # -- autosave and recovery ---------------------------------------------------------------------
    @property
    def recovery_path(self) -> Path:
        """Where unsaved work is autosaved: beside this window's settings file."""
        return Path(self.settings.fileName()).with_suffix(".autosave.cdesk")

    def autosave(self) -> bool:
        """Write unsaved work to the recovery file (every AUTOSAVE_MS; quietly, it is a safety net)."""
        if not self.dirty or self.state.view is None:
            return False
        try:
            self.recovery_path.parent.mkdir(parents=True, exist_ok=True)
            save_session(self.recovery_path, self._session())
        except (CircuitDeskError, OSError):
            log.warning("autosave failed", exc_info=True)
            return False
        return True

    def recover(self) -> bool:
        """Open the autosaved work of a session that did not close cleanly (as unsaved work)."""
        if not self.recovery_path.is_file() or not self.open(str(self.recovery_path), remember=False):
            return False
        self.session_path = None
        self._set_dirty(True)
        self.recoverable = False
        self.recovery_changed.emit()
        return True

    def closed_cleanly(self) -> None:
        """The window closes with nothing unsaved (or discarded): nothing to recover next time."""
        self.autosave_timer.stop()
        self.recovery_path.unlink(missing_ok=True)

    # -- recent sessions ---------------------------------------------------------------------------
    def remember(self, path: str) -> None:
        recent = [p for p in (self.settings.value(RECENT_KEY) or []) if p != path]
        self.settings.setValue(RECENT_KEY, [path] + recent[: RECENT_COUNT - 1])
        self.fill_recent()

    def fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.value(RECENT_KEY) or []
        if isinstance(recent, str):
            recent = [recent]
        for p in recent:
            self.recent_menu.addAction(Path(p).name, lambda p=p: self.open(p)).setToolTip(p)
        self.recent_menu.setEnabled(bool(recent))

    def _set_dirty(self, dirty: bool) -> None:
        self.dirty = dirty
        name = Path(self.session_path).name if self.session_path else "untitled"
        title = f"Circuit Desk {core.__version__}"
        self.window.setWindowTitle(f"{name}{' *' if dirty else ''} — {title}" if self.state.view is not None else title)

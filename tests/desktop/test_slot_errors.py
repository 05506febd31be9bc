"""An exception escaping a slot: the user gets the one-sentence dialog, the log gets the traceback,
the app keeps running — and any test in which it happens fails."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from desktop.app import MainWindow
from desktop.logs import setup_logging
from desktop.slot_errors import SlotErrorHook

REPO = Path(__file__).resolve().parents[2]


def test_a_slot_that_raises_shows_the_error_dialog_and_logs_the_traceback(qtbot, tmp_path, monkeypatch):
    log_file = setup_logging()
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()

    def broken(*args):
        raise RuntimeError("the about box is broken")

    monkeypatch.setattr(QMessageBox, "about", broken)
    about = next(a for a in w.menuBar().actions()[-1].menu().actions() if "About" in a.text())
    with qtbot.captureExceptions() as caught:  # this test expects the exception: capture it here
        hook = SlotErrorHook(w.status.show_error).install()
        try:
            about.trigger()
        finally:
            hook.uninstall()
    assert [type(e[1]) for e in caught] == [RuntimeError]  # and passed on to the previous hook
    assert w.status.error_box is not None and w.status.error_box.isVisible()
    text = w.status.error_box.text()
    assert "the about box is broken" in text and "log file" in text and "Traceback" not in text
    logged = log_file.read_text()
    assert "Traceback" in logged and "RuntimeError: the about box is broken" in logged and "in broken" in logged
    w.status.error_box.done(0)
    w.actions["graph.fit"].setEnabled(True)
    w.actions["graph.fit"].trigger()  # the app keeps running
    assert w.isVisible()


def test_a_test_in_which_a_slot_raises_fails(tmp_path):
    """The app's hook passes exceptions on, so pytest-qt's capture still fails the test."""
    inner = tmp_path / "test_inner.py"
    inner.write_text(textwrap.dedent("""
        from PySide6.QtCore import QSettings
        from desktop.app import MainWindow
        from desktop.slot_errors import SlotErrorHook

        def test_raises_in_a_slot(qtbot, tmp_path):
            w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
            qtbot.addWidget(w)
            hook = SlotErrorHook(w.status.show_error).install()
            w.panel.run_button.clicked.connect(lambda: 1 / 0)
            w.panel.run_button.setEnabled(True)
            w.panel.prompt_edit.setPlainText("")  # the run itself stops at the empty prompt
            w.panel.run_button.click()
            hook.uninstall()
    """))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ZeroDivisionError" in out.stdout and "1 failed" in out.stdout

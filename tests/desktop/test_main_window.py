"""The main window offscreen: runs on worker threads, errors as dialogs, clean shutdown."""

import pytest
import threading
import time

from PySide6.QtCore import QSettings

from desktop.app import MainWindow


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.runner.shutdown()
    assert w.runner.pool.activeThreadCount() == 0  # no dangling worker


def start(qtbot, w, spec, prompt):
    from core.analysis import PREDICT

    w.panel.method_combo.setCurrentText(PREDICT)  # these tests are about jobs; traces: test_workbench.py
    w.panel.select_spec(spec)
    w.panel.device_combo.setCurrentText("cpu")
    w.panel.prompt_edit.setPlainText(prompt)
    w.actions["run.run"].trigger()
    return w.runner.current


def test_window_opens_with_panels_menus_and_demo_prompt(window):
    assert window.windowTitle().startswith("Circuit Desk")
    assert window.panel.spec == "default"
    assert window.panel.prompt_edit.toPlainText() == "The capital of France is"
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&Run", "&Graph", "&Tools", "&View", "&Help"]
    assert window.actions["run.run"].shortcut().toString() == "Ctrl+Return"
    assert window.actions["file.open_model_folder"].shortcut().toString() == "Ctrl+O"


# A job's `done` turns true on the worker before the window's queued slots have run; tests that
# look at the window wait on `run_finished`, which the window emits after updating itself.


def test_run_tiny_model_shows_predictions_with_progress(qtbot, window, tiny_folder):
    with qtbot.waitSignal(window.status.job_finished, timeout=60_000):
        start(qtbot, window, str(tiny_folder("mistral")), "the cat")
        assert window.status.progress_bar.isVisible() and window.panel.cancel_button.isEnabled()
    assert window.predictions.table.rowCount() == 10
    assert window.runs.last_prediction.top[0].token == window.predictions.tokens()[0]
    assert window.status.progress_bar.value() == 1000 and not window.status.progress_bar.isVisible()
    assert window.status.label.text().startswith("Done in")
    assert not window.panel.cancel_button.isEnabled()


def test_errors_become_dialogs_and_the_app_keeps_running(qtbot, window, tiny_folder, tmp_path):
    window.panel.prompt_edit.setPlainText("   ")
    window.actions["run.run"].trigger()
    assert window.status.error_box is not None and "prompt is empty" in window.status.error_box.text()
    window.status.error_box.done(0)
    assert window.runner.current is None  # nothing was started

    start(qtbot, window, str(tmp_path / "missing"), "the cat")
    qtbot.waitUntil(lambda: window.status.error_box is not None, timeout=30_000)
    assert "Model path not found" in window.status.error_box.text()
    assert "Traceback" not in window.status.error_box.text()
    window.status.error_box.done(0)

    with qtbot.waitSignal(window.status.job_finished, timeout=60_000):  # still works afterwards
        start(qtbot, window, str(tiny_folder("llama")), "the cat")
    assert window.predictions.table.rowCount() == 10
    assert window.status.label.text().startswith("Done in")
    assert window.status.last_error is None


def test_new_run_cancels_the_running_one(qtbot, window, tiny_folder, monkeypatch):
    import core.analysis_runs  # where the runs look predict_next up

    real = core.analysis_runs.predict_next

    running = threading.Event()

    def slow(model, prompt, top_k, ctx):
        running.set()
        for _ in range(200):
            ctx.check_cancelled()
            time.sleep(0.01)
        return real(model, prompt, top_k, ctx)

    monkeypatch.setattr(core.analysis_runs, "predict_next", slow)
    first = start(qtbot, window, str(tiny_folder("llama")), "the cat")
    assert running.wait(30)
    second = start(qtbot, window, str(tiny_folder("llama")), "the dog")
    assert window.status.label.text().startswith("Previous run cancelled")
    qtbot.waitUntil(lambda: first.done and second.done and window.runs.last_prediction is not None,
                    timeout=60_000)
    assert first.ctx.cancelled and not second.ctx.cancelled
    assert window.runs.last_prediction.prompt == "the dog"  # the cancelled run produced nothing
    qtbot.wait(50)  # let any late signal of the cancelled run arrive
    assert window.status.label.text().startswith("Done in")  # ...and it did not overwrite the status
    # the jobs pane lists both runs, newest first, and says why the first one stopped
    qtbot.waitUntil(lambda: window.jobs.states() == ["done", "cancelled"])
    assert window.jobs.item(1, 3).text() == "replaced by a newer run"
    assert window.jobs.item(0, 0).text() == "predict: the dog"


def test_closing_during_a_run_cancels_and_leaves_no_thread(qtbot, tmp_path, tiny_folder, monkeypatch):
    import core.analysis_runs  # where the runs look predict_next up

    running = threading.Event()

    def endless(model, prompt, top_k, ctx):
        running.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    monkeypatch.setattr(core.analysis_runs, "predict_next", endless)
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    handle = start(qtbot, w, str(tiny_folder("llama")), "the cat")
    assert running.wait(30)
    w.close()  # cancels and waits
    assert w.runner.pool.activeThreadCount() == 0
    assert handle.ctx.cancelled and handle.done
    qtbot.waitUntil(lambda: w.jobs.states() == ["cancelled"])
    assert w.jobs.item(0, 3).text() == "cancelled by you"


@pytest.mark.slow
def test_run_default_model_shows_paris(qtbot, window):
    with qtbot.waitSignal(window.status.job_finished, timeout=180_000):
        start(qtbot, window, "default", "The capital of France is")
    assert window.predictions.tokens()[0] == " Paris"
    assert "sha256" in window.panel.model_info.text()


def test_layout_is_saved_on_close(qtbot, tmp_path):
    path = str(tmp_path / "layout.ini")
    w = MainWindow(settings=QSettings(path, QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    w.close()
    assert QSettings(path, QSettings.Format.IniFormat).value("window/state") is not None


def test_example_prompts_fill_the_prompt_box(window):
    combo = window.panel.examples
    assert combo.count() >= 3
    index = combo.findText("Indirect object (IOI)")
    combo.activated.emit(index)
    assert window.panel.prompt_edit.toPlainText().startswith("When Mary and John")
    assert combo.currentIndex() == 0


def test_run_finished_is_emitted_once_per_run_after_the_ui_updates(qtbot, window, tiny_folder):
    with qtbot.waitSignal(window.status.job_finished, timeout=60_000):
        start(qtbot, window, str(tiny_folder("llama")), "the cat")
    assert window.status.label.text().startswith("Done in")


def test_a_model_folder_opened_by_dialog_is_listed_next_time(qtbot, tmp_path, tiny_folder, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    monkeypatch.setenv("CIRCUITDESK_CONFIG_DIR", str(tmp_path / "config"))
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    first = MainWindow(settings=settings)
    qtbot.addWidget(first)
    folder = str(tiny_folder("mistral"))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: folder)
    first.actions["file.open_model_folder"].trigger()
    assert first.panel.spec == folder
    later = MainWindow(settings=settings)  # a new start lists it with the default model
    qtbot.addWidget(later)
    specs = [later.panel.model_combo.itemData(i) for i in range(later.panel.model_combo.count())]
    assert folder in specs and specs[0] == "default"

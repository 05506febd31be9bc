"""The main window offscreen: runs on worker threads, errors as dialogs, clean shutdown."""

import pytest
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
    w.panel.select_spec(spec)
    w.panel.device_combo.setCurrentText("cpu")
    w.panel.prompt_edit.setPlainText(prompt)
    w.run()
    return w.runner.current


def test_window_opens_with_panels_menus_and_demo_prompt(window):
    assert window.windowTitle().startswith("Circuit Desk")
    assert window.panel.spec == "default"
    assert window.panel.prompt_edit.toPlainText() == "The capital of France is"
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&Run", "&View", "&Help"]
    assert window.run_action.shortcut().toString() == "Ctrl+Return"
    assert window.open_folder_action.shortcut().toString() == "Ctrl+O"


def test_run_tiny_model_shows_predictions_with_progress(qtbot, window, tiny_folder):
    progress = []
    handle = start(qtbot, window, str(tiny_folder("mistral")), "the cat")
    handle.progress.connect(progress.append)
    with qtbot.waitSignals([handle.returned, handle.finished], order="strict", timeout=60_000):
        pass
    assert window.predictions.table.rowCount() == 10
    assert window.last_prediction.top[0].token == window.predictions.tokens()[0]
    assert progress and progress[-1].fraction == 1.0
    assert window.status_label.text().startswith("Done in")
    assert not window.panel.cancel_button.isEnabled()


def test_errors_become_dialogs_and_the_app_keeps_running(qtbot, window, tiny_folder, tmp_path):
    window.panel.prompt_edit.setPlainText("   ")
    window.run()
    assert window.error_box is not None and "prompt is empty" in window.error_box.text()
    window.error_box.done(0)
    assert window.runner.current is None  # nothing was started

    handle = start(qtbot, window, str(tmp_path / "missing"), "the cat")
    with qtbot.waitSignal(handle.errored, timeout=30_000) as blocker:
        pass
    assert "Model path not found" in blocker.args[0]
    qtbot.waitUntil(lambda: window.error_box is not None)
    assert "Model path not found" in window.error_box.text()
    window.error_box.done(0)

    handle = start(qtbot, window, str(tiny_folder("llama")), "the cat")  # still works afterwards
    with qtbot.waitSignal(handle.returned, timeout=60_000):
        pass
    assert window.predictions.table.rowCount() == 10


def test_new_run_cancels_the_running_one(qtbot, window, tiny_folder, monkeypatch):
    import core.predict

    real = core.predict.predict_next

    def slow(model, prompt, top_k, ctx):
        for _ in range(200):
            ctx.check_cancelled()
            time.sleep(0.01)
        return real(model, prompt, top_k, ctx)

    monkeypatch.setattr(core.predict, "predict_next", slow)
    first = start(qtbot, window, str(tiny_folder("llama")), "the cat")
    with qtbot.waitSignal(first.started, timeout=10_000):
        pass
    second = start(qtbot, window, str(tiny_folder("llama")), "the dog")
    with qtbot.waitSignals([first.aborted, second.returned], timeout=60_000):
        pass
    assert window.last_prediction.prompt == "the dog"


def test_closing_during_a_run_cancels_and_leaves_no_thread(qtbot, tmp_path, tiny_folder, monkeypatch):
    import core.predict

    def endless(model, prompt, top_k, ctx):
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    monkeypatch.setattr(core.predict, "predict_next", endless)
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    handle = start(qtbot, w, str(tiny_folder("llama")), "the cat")
    with qtbot.waitSignal(handle.started, timeout=10_000):
        pass
    w.close()  # cancels and waits
    assert w.runner.pool.activeThreadCount() == 0
    assert handle.ctx.cancelled and handle.done


@pytest.mark.slow
def test_run_default_model_shows_paris(qtbot, window):
    handle = start(qtbot, window, "default", "The capital of France is")
    with qtbot.waitSignal(handle.returned, timeout=180_000):
        pass
    assert window.predictions.tokens()[0] == " Paris"
    assert "sha256" in window.panel.model_info.text()


def test_layout_is_saved_on_close(qtbot, tmp_path):
    path = str(tmp_path / "layout.ini")
    w = MainWindow(settings=QSettings(path, QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    w.close()
    assert QSettings(path, QSettings.Format.IniFormat).value("window/state") is not None

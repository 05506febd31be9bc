"""What a run shows while and after it runs: the model as it loads, the prediction and the logit
lens before the graph, one set of numbers, the jobs pane's names and details, cancelling through
the action and its key, and closing the window during a report."""

import threading
import time

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from core.analysis import PREDICTION


def test_predictions_agree_with_the_logit_node_and_say_what_they_read(workbench):
    w = workbench.graph()
    v = w.state.view
    target = w.state.analysis.trace.targets[0]
    top = w.runs.last_prediction.top[0]
    assert top.token_id == target.token_id
    assert top.probability == pytest.approx(target.probability, abs=1e-5)  # one number, not two
    assert "start token" in w.predictions.heading.text()
    assert w.predictions.table.item(0, 2).text() == f"{target.probability:.4f}"
    # the intervention's "before" is the same number again
    node = next(int(i) for i in v.visible_nodes() if w.inspector.intervenable(int(i)))
    w.state.select([node])
    with workbench.qtbot.waitSignal(w.status.job_finished, timeout=60_000):
        w.actions["graph.intervene"].trigger()
    assert w.state.intervention.prob_before == pytest.approx(target.probability, abs=1e-4)


def test_prediction_and_lens_are_shown_before_the_graph_is_done(workbench, monkeypatch):
    import core.analysis_runs as attribution  # where the runs look attribute up

    w = workbench.window()
    release = threading.Event()
    real = attribution.attribute

    def waits(*args, **kwargs):  # the graph takes until the test has looked at the window
        ctx = kwargs["ctx"]
        while not release.is_set():
            ctx.check_cancelled()
            time.sleep(0.01)
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "attribute", waits)
    with workbench.qtbot.waitSignal(w.runner.submitted):
        w.actions["run.run"].trigger()
    handle = w.runner.current
    with workbench.qtbot.waitSignal(handle.partial, check_params_cb=lambda name, _v: name == PREDICTION):
        pass
    workbench.qtbot.waitUntil(lambda: w.heatmap.lens is not None)
    assert w.predictions.table.rowCount() == 10 and w.state.view is None and w.runner.busy
    assert w.heatmap.image.image is not None and "logit lens" in w.heatmap.caption.text()
    assert "sha256" in w.panel.model_info.text()  # the model's facts as soon as it is loaded
    with workbench.qtbot.waitSignal(w.status.job_finished, timeout=60_000):
        release.set()
    assert w.state.view is not None


def test_the_first_run_says_the_model_is_loading(qtbot, tmp_path, tiny_folder):
    from PySide6.QtCore import QSettings

    from core.analysis import PREDICT
    from desktop.app import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    assert w.panel.model_info.text() == "No model loaded yet."
    w.panel.select_spec(str(tiny_folder("llama")))
    w.panel.method_combo.setCurrentText(PREDICT)
    with qtbot.waitSignal(w.status.job_finished, timeout=60_000):
        w.actions["run.run"].trigger()
        assert w.panel.model_info.text().startswith("Loading")
    assert "sha256" in w.panel.model_info.text()


def test_jobs_pane_names_the_task_and_details_the_outcome(workbench):
    w = workbench.circuit("induction")
    assert w.jobs.item(0, 0).text() == "circuit: Induction task"
    top = w.runs.last_prediction.top[0]
    assert w.jobs.item(0, 3).text().endswith(f"top {top.token!r} {top.probability:.4f}")
    assert " nodes, " in w.jobs.item(0, 3).text()
    pair = workbench.circuit("prompt")
    assert pair.jobs.item(0, 0).text().startswith("circuit: when mary and john") and " vs " in pair.jobs.item(0, 0).text()


@pytest.mark.parametrize("how", ["action", "shortcut"])
def test_cancel_stops_the_running_job(workbench, monkeypatch, how):
    import core.analysis_runs as attribution  # where the runs look attribute up

    w = workbench.window()
    assert not w.actions["run.cancel"].isEnabled()
    running = threading.Event()

    def endless(*args, **kwargs):
        running.set()
        while True:
            kwargs["ctx"].check_cancelled()
            time.sleep(0.01)

    monkeypatch.setattr(attribution, "attribute", endless)
    w.actions["run.run"].trigger()
    assert running.wait(30)
    workbench.qtbot.waitUntil(w.actions["run.cancel"].isEnabled)
    assert not w.actions["file.report"].isEnabled()  # nothing on show, and a job runs
    with workbench.qtbot.waitSignal(w.status.job_finished, timeout=30_000):
        if how == "action":
            w.actions["run.cancel"].trigger()
        else:
            w.activateWindow()
            workbench.qtbot.waitUntil(w.isActiveWindow)
            workbench.qtbot.keyClick(w, Qt.Key.Key_Escape)
    assert w.jobs.states()[0] == "cancelled" and w.status.label.text() == "Cancelled"
    assert not w.actions["run.cancel"].isEnabled()


def test_closing_the_window_during_a_report_cancels_it_and_leaves_no_file(workbench, monkeypatch, tmp_path):
    import desktop.report_pdf as report_pdf

    w = workbench.graph()
    session = tmp_path / "a.cdesk"
    assert w.documents.save(str(session))
    real_layout = report_pdf._Renderer.layout
    laid_out = threading.Event()

    def long_report(self, pieces):  # a report of thousands of pages: slow to draw
        pages = real_layout(self, pieces)
        laid_out.set()
        return pages * 500

    monkeypatch.setattr(report_pdf._Renderer, "layout", long_report)
    pdf = tmp_path / "out" / "r.pdf"
    pdf.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(pdf), ""))
    written = []
    w.exports.report_written.connect(written.append)
    w.actions["file.report"].trigger()
    handle = w.runner.current
    assert laid_out.wait(60)  # it is drawing the pages now
    w.close()  # cancels the report like any job, and waits for it
    assert handle.done and handle.ctx.cancelled and w.runner.pool.activeThreadCount() == 0
    workbench.qtbot.waitUntil(lambda: w.jobs.states()[0] == "cancelled")
    assert written == [] and list(pdf.parent.iterdir()) == []  # no PDF, no temporary


def test_circuit_and_graph_survive_save_open_report_through_the_actions(workbench, monkeypatch, tmp_path):
    """Ctrl+S a circuit (and a graph), open it in a new window with File → Open Session, and
    export its report with Ctrl+R: the PDF cites the file the window opened."""
    from pypdf import PdfReader

    from core.paths import file_sha256

    qtbot = workbench.qtbot
    for kind, make in (("circuit", lambda: workbench.circuit("prompt", "c.ini")),
                       ("graph", lambda: workbench.graph("g.ini"))):
        w = make()
        path = tmp_path / f"{kind}.cdesk"
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(path), ""))
        w.activateWindow()
        qtbot.waitUntil(w.isActiveWindow)
        qtbot.keySequence(w, w.actions["file.save"].shortcut())
        assert path.is_file() and not w.documents.dirty, w.status.last_error

        other = workbench.window(f"{kind}-reader.ini")
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
        other.actions["file.open_session"].trigger()
        assert other.state.view.kind == w.state.view.kind and other.state.view.labels == w.state.view.labels
        assert np.array_equal(other.state.view.weight, w.state.view.weight)
        pdf = tmp_path / f"{kind}.pdf"
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(pdf), ""))
        other.activateWindow()
        qtbot.waitUntil(other.isActiveWindow)
        with qtbot.waitSignal(other.exports.report_written, timeout=60_000):
            qtbot.keySequence(other, other.actions["file.report"].shortcut())
        qtbot.waitUntil(lambda: not other.runner.busy)
        flat = "".join("".join(p.extract_text().split()) for p in PdfReader(pdf).pages)
        assert file_sha256(path) in flat and other.status.last_error is None

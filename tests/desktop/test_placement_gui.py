"""Precision and placement in the window (issue 19's large models, from the GUI): the model loads as
the panel says (Precision; Offload with memory budgets); a run with the same model, device, precision
and placement reuses the loaded model and a change reloads it; ``circuitdesk gui`` flags fill the
panel; a bad budget is one sentence before anything loads."""

from __future__ import annotations

import shlex

import torch
from PySide6.QtCore import QPoint, Qt

from core.models.offload import is_offloaded
from desktop.cli import build_parser, main


def click(qtbot, box) -> None:
    """A click on a check box's indicator, as a person ticks it."""
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(8, box.height() // 2))


def test_precision_and_offload_chosen_in_the_panel_load_the_model_so(workbench, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDESK_CACHE_DIR", str(tmp_path / "cache"))  # where offloaded layers are written
    w = workbench.window()
    p = w.panel
    first = w.runs.model
    assert not p.form.isRowVisible(p.cpu_memory_edit)  # the budgets show with Offload only
    click(qtbot, p.offload_box)
    assert p.offload_box.isChecked() and p.form.isRowVisible(p.cpu_memory_edit)
    qtbot.keyClicks(p.cpu_memory_edit, "20KB")  # so small that layers go to disk
    p.dtype_combo.setCurrentText("bfloat16")
    workbench.run(w)
    m = w.runs.model
    assert m is not first and m.dtype == torch.bfloat16
    assert is_offloaded(m.device_map) and "disk" in m.device_map.values()
    assert "bfloat16" in p.model_info.text() and "on disk" in p.model_info.text()
    argv = shlex.split(w.state.analysis.command)  # the session's provenance recomputes it in bfloat16
    assert build_parser().parse_args(argv[1:]).dtype == "bfloat16"
    assert w.state.analysis.view is not None
    workbench.run(w)  # nothing changed: the loaded model is used again
    assert w.runs.model is m
    click(qtbot, p.offload_box)
    p.dtype_combo.setCurrentText("float32")
    workbench.run(w)  # another precision and placement: loaded again, whole, on the CPU
    assert w.runs.model is not m and w.runs.model.dtype == torch.float32
    assert not is_offloaded(w.runs.model.device_map) and "offloaded" not in p.model_info.text()


def test_a_bad_memory_budget_is_one_sentence_before_anything_loads(workbench, qtbot):
    w = workbench.window()
    click(qtbot, w.panel.offload_box)
    qtbot.keyClicks(w.panel.gpu_memory_edit, "lots")
    w.runs.model, w.runs.model_key = None, None
    w.actions["run.run"].trigger()
    assert w.status.last_error == "GPU memory takes a size such as 20GiB, 512MB or 64GB (got 'lots')."
    assert not w.runner.busy and w.runs.model is None
    click(qtbot, w.panel.offload_box)  # unticked, the budgets do not count (they are hidden)
    workbench.run(w)
    assert w.runs.model is not None and w.runs.model.dtype == torch.float32


def test_gui_command_line_fills_precision_and_placement(qtbot, monkeypatch):
    import desktop.app as app

    def windows():
        return [w for w in app.QApplication.topLevelWidgets() if isinstance(w, app.MainWindow)]

    before = set(map(id, windows()))
    shown = []
    monkeypatch.setattr(app.QApplication, "exec", lambda self=None: shown.extend(
        w for w in windows() if id(w) not in before) or 0)  # the window as it opens, instead of the event loop
    assert main(["gui", "--dtype", "float16", "--max-gpu-memory", "20GiB", "--max-cpu-memory", "64GB",
                 "--transcoders-device", "cpu"]) == 0
    (window,) = shown
    qtbot.addWidget(window)
    req = window.panel.request()
    assert req.dtype == "float16" and req.placement.offload  # a budget implies offloading, as on the command line
    assert (req.placement.max_gpu_memory, req.placement.max_cpu_memory, req.placement.transcoders_device) == \
        ("20GiB", "64GB", "cpu")

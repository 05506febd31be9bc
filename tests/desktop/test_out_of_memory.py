"""A run that would not fit, or that runs out of memory half-way, is one sentence in the window;
the app stays alive, nothing is half-shown or half-saved, and the next run works."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   MemoryError()])
def test_out_of_memory_mid_trace_leaves_the_app_alive(workbench, monkeypatch, error):
    from core.attribution import bases

    w = workbench.window()
    real = bases.NeuronBasis.contributions

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(bases.NeuronBasis, "contributions", boom)
    with workbench.qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        w.actions["run.run"].trigger()
    message = w.status.last_error
    assert message and message.startswith("Ran out of memory on cpu while computing attribution rows")
    assert "\n" not in message and "Traceback" not in message
    assert getattr(w.state.analysis, "view", None) is None  # no half-built graph (the lens, shown first, stays)
    # the same window runs again once memory is there
    monkeypatch.setattr(bases.NeuronBasis, "contributions", real)
    workbench.run(w)
    assert w.state.analysis.view is not None


def test_a_trace_over_the_memory_budget_is_refused_before_it_starts(workbench, monkeypatch):
    w = workbench.window()
    monkeypatch.setenv("CIRCUITDESK_MEMORY_GB", "0.00001")
    with workbench.qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        w.actions["run.run"].trigger()
    message = w.status.last_error
    assert message.startswith("This run needs about ") and "it would fit with" in message
    assert getattr(w.state.analysis, "view", None) is None

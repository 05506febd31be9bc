import gc

import pytest


@pytest.fixture(autouse=True)
def _collect_after_each_test(qapp):
    yield
    for w in qapp.topLevelWidgets():
        w.deleteLater()
    qapp.processEvents()
    gc.collect()


@pytest.fixture(autouse=True)
def _unsaved_work_is_discarded(monkeypatch):
    """Windows closed by a test (or its teardown) would otherwise wait on a modal question."""
    from desktop.app import MainWindow

    monkeypatch.setattr(MainWindow, "unsaved_choice", lambda self, why: "discard")

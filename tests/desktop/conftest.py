import gc

import pytest


@pytest.fixture(autouse=True)
def _collect_after_each_test(qapp):
    yield
    for w in qapp.topLevelWidgets():
        w.deleteLater()
    qapp.processEvents()
    gc.collect()

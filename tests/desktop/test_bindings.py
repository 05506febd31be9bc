"""Guards against a Qt binding that mishandles Python's reference counts.

PySide6 6.12.0 under Python 3.11 (where None and the bools are not immortal) drops one reference
to None for every void method call and to True/False for every signal emit; after a few minutes of
use the interpreter aborts with "deallocating None". The count of references must not drift.
"""

import gc
import sys

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel


class _Emitter(QObject):
    fired = Signal(object)


def _drift(call, n=500):
    gc.collect()
    before = sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)
    for _ in range(n):
        call()
    gc.collect()
    after = sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)
    return [a - b for a, b in zip(after, before)]


def test_void_calls_and_signals_keep_none_and_bools_alive(qapp):
    label = QLabel("x")
    emitter = _Emitter()
    emitter.fired.connect(lambda value: None)
    for call in (qapp.processEvents, lambda: label.setText("y"), label.update,
                 lambda: emitter.fired.emit(True), lambda: emitter.fired.emit(None)):
        # A few references come and go with Qt's own bookkeeping; a leak loses one per call.
        assert all(d > -50 for d in _drift(call)), (call, _drift(call))

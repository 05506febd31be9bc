"""Every menu action driven as a person drives it: through the QAction and through its shortcut
(key events on the window), in each state of the workbench; the effect of each is asserted."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QInputDialog


def activate(qtbot, w) -> None:
    """Shortcuts reach only the active window."""
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=5_000)


def two_nodes(w) -> list[int]:
    return [int(i) for i in w.state.view.visible_nodes()[:2]]


@pytest.mark.parametrize("how", ["action", "shortcut"])
def test_group_selection_groups_the_selected_nodes(qtbot, workbench, monkeypatch, how):
    w = workbench.graph()
    nodes = two_nodes(w)
    w.state.select(nodes)
    asked = []
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: asked.append(a) or ("subject", True))
    if how == "action":
        w.group_action.trigger()
    else:
        activate(qtbot, w)
        qtbot.keyClick(w, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier)
    assert len(asked) == 1
    assert [(g.label, set(g.nodes)) for g in w.state.groups] == [("subject", set(nodes))]
    assert [t.toPlainText() for t in w.graph_pane.labels] == ["⟨subject⟩"]

"""The start page: what a newcomer sees before there is any analysis — four ways in, each a
button that triggers the same action as the menu, replaced by the workspace once there is one."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget


class StartPage(QWidget):
    def __init__(self, steps: list[tuple[str, str, QAction]]) -> None:
        """``steps``: (button text, one line on what it does, the action it triggers)."""
        super().__init__()
        self.setObjectName("startPage")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(48, 48, 48, 48)
        layout.addStretch(1)
        title = QLabel("<h2>Circuit Desk</h2>Find the circuit a language model uses to answer a prompt: "
                       "an attribution graph of its neurons or a circuit of its heads and MLPs, "
                       "checked by intervening on it. Everything runs on this machine, offline.")
        title.setWordWrap(True)
        title.setMaximumWidth(640)
        layout.addWidget(title)
        layout.addSpacing(16)
        self.buttons: dict[str, QPushButton] = {}
        for text, what, action in steps:
            button = QPushButton(text)
            button.setMinimumWidth(260)
            button.setToolTip(action.toolTip())
            # the menu's action itself, so the button does exactly what the menu does
            button.clicked.connect(lambda _checked=False, a=action: a.trigger())
            self.buttons[text] = button
            note = QLabel(what)
            note.setWordWrap(True)
            note.setStyleSheet("color: #555")
            layout.addWidget(button, 0, Qt.AlignmentFlag.AlignLeft)
            layout.addWidget(note)
            layout.addSpacing(8)
        hint = QLabel("Or type a prompt on the left and press Run (Ctrl+Enter).")
        hint.setStyleSheet("color: #555")
        layout.addWidget(hint)
        layout.addStretch(2)

"""The Predictions tab: the model's top next tokens with their probabilities as bars."""

from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QHeaderView, QLabel, QStyledItemDelegate, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

BAR_TRACK, BAR_FILL, BAR_TEXT_ON, BAR_TEXT_OFF = "#eef1f5", "#3b78c2", "#ffffff", "#111111"


class ProbabilityDelegate(QStyledItemDelegate):
    """Draws a probability as a horizontal bar with its value."""

    def paint(self, painter: QPainter, option, index) -> None:
        value = index.data(Qt.ItemDataRole.UserRole)
        if value is None:
            return super().paint(painter, option, index)
        painter.save()
        rect = option.rect.adjusted(4, 4, -4, -4)
        painter.fillRect(rect, QColor(BAR_TRACK))
        bar = rect.adjusted(0, 0, -int(rect.width() * (1.0 - float(value))), 0)
        painter.fillRect(bar, QColor(BAR_FILL))
        # the value may straddle the bar's end: white where it lies on the bar, dark elsewhere
        text_rect, align = rect.adjusted(6, 0, -6, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight
        for clip, colour in ((bar, BAR_TEXT_ON), (rect.adjusted(bar.width(), 0, 0, 0), BAR_TEXT_OFF)):
            painter.setClipRect(clip)
            painter.setPen(QColor(colour))
            painter.drawText(text_rect, align, f"{float(value):.4f}")
        painter.restore()


class PredictionsView(QWidget):
    """Top-k next tokens with probabilities (the first workspace tab)."""

    def __init__(self) -> None:
        super().__init__()
        self.heading = QLabel("Run a prompt to see the model's next-token predictions.")
        self.heading.setWordWrap(True)
        self.heading.setTextFormat(Qt.TextFormat.RichText)
        self.heading.setObjectName("predictionsHeading")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["#", "Next token", "Probability"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setItemDelegateForColumn(2, ProbabilityDelegate(self.table))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addWidget(self.table)

    def show_prediction(self, model_name: str, prediction, sequence: str = "after the prompt as typed") -> None:
        """``sequence``: what the probabilities were computed on (the same prompt gives other
        numbers with and without a start token)."""
        self.heading.setText(
            f"<b>{escape(model_name)}</b><br>Next token {escape(sequence)} — "
            f"{len(prediction.prompt_tokens)} tokens: <tt>{escape(prediction.prompt)}</tt>"
        )
        self.table.setRowCount(len(prediction.top))
        for row, t in enumerate(prediction.top):
            self.table.setItem(row, 0, QTableWidgetItem(str(row + 1)))
            token = QTableWidgetItem(repr(t.token))
            token.setData(Qt.ItemDataRole.UserRole, t.token)
            token.setToolTip(f"token id {t.token_id}, logit {t.logit:.3f}")
            self.table.setItem(row, 1, token)
            prob = QTableWidgetItem()
            prob.setData(Qt.ItemDataRole.UserRole, t.probability)
            prob.setData(Qt.ItemDataRole.DisplayRole, f"{t.probability:.4f}")
            self.table.setItem(row, 2, prob)

    def tokens(self) -> list[str]:
        return [self.table.item(r, 1).data(Qt.ItemDataRole.UserRole) for r in range(self.table.rowCount())]

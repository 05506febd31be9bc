"""The Circuit Desk main window: model & prompt panel, workspace tabs, jobs in the status bar.

Start-up imports only Qt and torch-free parts of core, so the window shows before torch loads;
models load on a worker thread the first time a run needs them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QElapsedTimer, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence, QPainter, QTextCursor, QTextOption
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import core
from core.annotations import MAX_FINDINGS
from core.errors import CircuitDeskError
from core.models.catalog import DEFAULT_SPEC, list_models
from core.prompt import require_prompt
from core.selection import WorkbenchState
from desktop.graph_pane import GraphPane
from desktop.heatmap_pane import HeatmapPane
from desktop.inspector import Inspector
from desktop.jobs import JobRunner
from desktop.jobs_pane import JobsPane
from desktop.logs import setup_logging
from desktop.slot_errors import SlotErrorHook
from desktop.start_page import StartPage

log = logging.getLogger(__name__)

DEMO_PROMPT = "The capital of France is"
AUTOSAVE_MS = 120_000  # unsaved work goes to the recovery file this often
DEMO_CORRUPTED = "The capital of Italy is"  # for a component circuit of the demo prompt
OPEN_FOLDER = "__open_folder__"
OPEN_GGUF = "__open_gguf__"
ATTRIBUTION, CIRCUIT, PREDICT = "Attribution graph", "Component circuit", "Next-token prediction"
PROMPT_PAIR, PAIR_FILE = "prompt", "file"  # circuit sources besides the built-in tasks
MODEL, PREDICTION, LOGIT_LENS = "model", "prediction", "logit lens"  # a run's partial results, in order
# The built-in tasks of core.circuits.TASKS (named here: that module loads torch).
TASK_LABELS = {PROMPT_PAIR: "This prompt vs a corrupted one", "ioi": "Indirect object (IOI), generated",
               "greater-than": "Greater-than, generated", "induction": "Induction, generated",
               "factual": "Factual recall, generated", PAIR_FILE: "Pair file (.jsonl)…"}


@dataclass(frozen=True)
class RunRequest:
    spec: str
    device: str
    prompt: str
    top_k: int
    method: str = ATTRIBUTION
    target: str | None = None
    foil: str | None = None
    max_nodes: int = 1000
    transcoders: str | None = None  # attribution basis: a transcoder folder, or None for MLP neurons
    task: str = PROMPT_PAIR  # component circuits: PROMPT_PAIR, PAIR_FILE or a built-in task
    corrupted: str = ""
    pairs_file: str = ""
    scoring: str = "eap-ig"
    n_pairs: int = 32


# ---------------------------------------------------------------------------------------------
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
            f"<b>{_html(model_name)}</b><br>Next token {_html(sequence)} — "
            f"{len(prediction.prompt_tokens)} tokens: <tt>{_html(prediction.prompt)}</tt>"
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


def trace_prompt(model, req: RunRequest, ctx):
    """Worker-thread body of a trace: the prediction and the logit lens first (handed over at once
    as partial results), then the attribution graph and its drawable view (pruned here, not on
    the GUI thread). The prediction reads the traced sequence — the start token the trace prepends,
    then the prompt — so its numbers are the graph's logit nodes'."""
    from core.attribution import attribute
    from core.attribution.attribute import with_bos
    from core.attribution.targets import resolve_token
    from core.lens import lens
    from core.predict import encode_prompt, predict_ids
    from core.view import from_attribution

    ids = with_bos(model, encode_prompt(model, req.prompt))
    prediction = predict_ids(model, ids, req.prompt, req.top_k, ctx.sub(0.0, 0.02))
    ctx.partial(PREDICTION, prediction)
    target = resolve_token(model.tokenizer, req.target) if req.target else prediction.top[0].token_id
    data = lens(model, ids, target_id=target, ctx=ctx.sub(0.02, 0.1))
    ctx.partial(LOGIT_LENS, data)
    result = attribute(model, req.prompt, attribution_settings(req), ctx=ctx.sub(0.1, 1.0))
    ctx.check_cancelled()
    if result.targets[0].token_id != target:  # a near tie read differently: the lens follows the graph
        data = lens(model, result.ids, target_id=result.targets[0].token_id)
    return result, from_attribution(result.graph), data, prediction


@dataclass
class CircuitRun:
    """What a component-circuit run hands the window."""

    result: object  # core.circuits.CircuitResult
    ids: object  # torch [1, P]: the first pair's clean prompt (heatmaps, interventions)
    outputs_last: object  # numpy [n_sources, d]: what each component writes at its last position
    answer_id: int


def attribution_settings(req: RunRequest):
    from core.attribution import AttributionSettings

    return AttributionSettings(target=req.target, foil=req.foil, max_nodes=req.max_nodes, transcoders=req.transcoders)


def pair_source(req: RunRequest):
    """Where a circuit run's prompt pairs come from (``core.runs.PairSource``)."""
    from core.runs import PairSource

    if req.task == PROMPT_PAIR:
        return PairSource(prompt=req.prompt, corrupted=req.corrupted, answer=req.target or None,
                          counterfactual=req.foil or None)
    if req.task == PAIR_FILE:
        return PairSource(pairs_file=req.pairs_file, n_pairs=req.n_pairs)
    return PairSource(task=req.task, n_pairs=req.n_pairs)


def cli_command(req: RunRequest) -> str:
    """The headless command that regenerates a run's graph (provenance for its session file)."""
    from core.runs import circuit_command, trace_command

    if req.method == ATTRIBUTION:
        return trace_command(req.spec, req.prompt, attribution_settings(req))
    if req.method == CIRCUIT:
        from core.circuits import CircuitSettings

        return circuit_command(req.spec, pair_source(req), CircuitSettings(method=req.scoring))
    return ""


def job_name(req: RunRequest) -> str:
    """How the jobs pane lists a run: the method and what it ran on."""
    def short(text: str, n: int = 40) -> str:
        text = " ".join(text.split())
        return text if len(text) <= n else text[: n - 1] + "…"

    if req.method == CIRCUIT and req.task == PAIR_FILE:
        return f"circuit: pairs from {Path(req.pairs_file).name}"
    if req.method == CIRCUIT and req.task != PROMPT_PAIR:
        return f"circuit: {TASK_LABELS[req.task].removesuffix(', generated')} task"
    if req.method == CIRCUIT:
        return f"circuit: {short(req.prompt, 30)} vs {short(req.corrupted, 30)}"
    return f"{'predict' if req.method == PREDICT else 'trace'}: {short(req.prompt)}"


def result_detail(result) -> str:
    """A run's outcome in a few words, for the jobs pane's Detail column."""
    prediction = result[-1]
    top = prediction.top[0]
    said = f"top {top.token!r} {top.probability:.4f}"
    if len(result) == 2:
        return said
    view = result[2]
    return f"{len(view.visible_nodes())} nodes, {len(view.visible_edges())} edges shown; {said}"


def sequence_note(method: str) -> str:
    """What the Predictions tab's numbers were computed on (a trace prepends a start token)."""
    if method == ATTRIBUTION:
        return "after the traced sequence (start token + prompt), as the graph's logit nodes"
    if method == CIRCUIT:
        return "after the first pair's clean prompt as the circuit reads it, as the interventions"
    return "after the prompt as typed"


def check_request(req: RunRequest) -> None:
    """What can be checked before a model loads (a clear error instead of a wasted run)."""
    from core.errors import CircuitDeskError

    if req.method != CIRCUIT or req.task == PROMPT_PAIR:
        require_prompt(req.prompt)
    if req.method != CIRCUIT:
        return
    if req.task == PROMPT_PAIR and not req.corrupted.strip():
        raise CircuitDeskError("The corrupted prompt is empty; type the prompt to compare with "
                               "(same number of tokens, the detail that matters changed).")
    if req.task == PAIR_FILE and not req.pairs_file:
        raise CircuitDeskError("No pair file chosen; pick a .jsonl file of prompt pairs.")


def circuit_prompt(model, req: RunRequest, ctx):
    """Worker-thread body of a component circuit: pairs, edge scores and faithfulness curve, then
    heatmap data and the prediction for the first pair's clean prompt."""
    import torch

    from core.circuits import CircuitSettings, ComponentRunner, find_circuit
    from core.lens import lens
    from core.predict import predict_ids, predict_next
    from core.view import from_circuit

    # a prompt pair's default answer is the prompt's prediction
    typed = predict_next(model, req.prompt, req.top_k) if req.task == PROMPT_PAIR else None
    pairs = pair_source(req).load(model, typed)
    ctx.check_cancelled()
    first = pairs.pairs[0]
    ids = torch.tensor([first.clean])  # the first pair's clean prompt as the circuit reads it
    # shown at once, on the same sequence as the interventions' numbers
    prediction = predict_ids(model, ids, first.clean_text, req.top_k)
    ctx.partial(PREDICTION, prediction)
    data = lens(model, ids, target_id=first.answer[0], ctx=ctx.sub(0.0, 0.05))
    ctx.partial(LOGIT_LENS, data)
    result = find_circuit(model, pairs, CircuitSettings(method=req.scoring), ctx=ctx.sub(0.05, 1.0))
    outputs = ComponentRunner(model).sources(ids).outputs[:, 0, -1].float().cpu().numpy()
    return CircuitRun(result, ids, outputs, first.answer[0]), from_circuit(result), data, prediction


def render_svg(view, path: str, title: str = "") -> None:
    """A pyqtgraph view as SVG vectors: items draw their vector form (scatter symbols as paths,
    not the atlas pixmaps; no cached pixmaps) while the view is rendered."""
    from PySide6.QtCore import QRect, QRectF
    from PySide6.QtSvg import QSvgGenerator
    from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem

    size = view.viewport().size()
    gen = QSvgGenerator()
    gen.setFileName(path)
    gen.setSize(size)
    gen.setViewBox(QRect(0, 0, size.width(), size.height()))
    gen.setTitle(title)
    gen.setResolution(view.logicalDpiX())  # QPicture-cached items (axes) replay at the screen's DPI
    items = view.scene().items()
    caches = [(item, item.cacheMode()) for item in items]
    empty = [i for i in items if isinstance(i, QGraphicsPathItem) and i.isVisible() and i.path().isEmpty()]
    painter = QPainter()
    try:
        for item, _ in caches:
            item.setCacheMode(QGraphicsItem.CacheMode.NoCache)
            if hasattr(item, "setExportMode"):
                item.setExportMode(True, {"antialias": True, "painter": painter})
        for item in empty:  # an empty path would be written as d="", which readers reject
            item.hide()
        if not painter.begin(gen):
            raise OSError(f"cannot open {path} for writing")
        source = view.mapToScene(view.viewport().rect()).boundingRect()
        view.scene().render(painter, QRectF(0, 0, size.width(), size.height()), source)
    finally:
        if painter.isActive():
            painter.end()
        for item in empty:
            item.show()
        for item, mode in caches:
            item.setCacheMode(mode)
            if hasattr(item, "setExportMode"):
                item.setExportMode(False)


def demo_prompts() -> list[dict]:
    """Example prompts shipped in resources/ (an unreadable file just means no examples)."""
    import json

    from core.paths import resources_dir

    try:
        return list(json.loads((resources_dir() / "demo_prompts.json").read_text())["prompts"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("demo prompts unavailable", exc_info=True)
        return []


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
class ModelPanel(QWidget):
    """Model picker, device, prompt and the Run / Cancel buttons."""

    settings_changed = Signal()  # the method or pair source changed: the rows shown follow it

    def __init__(self) -> None:
        super().__init__()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model to trace: the embedded default, a Hugging Face folder or a .gguf file")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.device_combo.setToolTip("auto uses the GPU when there is one")
        self.examples = QComboBox()
        self.examples.setToolTip("Fill the prompt box with a classic circuit-tracing prompt")
        self.examples.addItem("Examples…", None)
        for demo in demo_prompts():
            self.examples.addItem(demo["name"], demo)
        self.examples.activated.connect(self._example_chosen)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("Type a prompt, e.g. The capital of France is")
        self.prompt_edit.setMinimumHeight(80)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 100)
        self.top_k.setValue(10)
        self.method_combo = QComboBox()
        self.method_combo.addItems([ATTRIBUTION, CIRCUIT, PREDICT])
        self.method_combo.setToolTip(
            "Attribution graph: the features/neurons behind the next token (circuit-tracer method).\n"
            "Component circuit: the heads and MLPs that matter, by patching clean vs corrupted prompts (EAP-IG).\n"
            "Next-token prediction: the model's top tokens only.")
        self.target_edit = QLineEdit()
        self.target_edit.setPlaceholderText("model's top tokens")
        self.target_edit.setToolTip("Token to explain, e.g. ' Paris' or #1234 (empty: the model's top token)")
        self.foil_edit = QLineEdit()
        self.foil_edit.setPlaceholderText("none")
        self.foil_edit.setToolTip("Contrast token: explain target − foil logit difference")
        self.max_nodes = QSpinBox()
        self.max_nodes.setRange(10, 20000)
        self.max_nodes.setSingleStep(100)
        self.max_nodes.setValue(1000)
        self.max_nodes.setToolTip("Most feature nodes computed in the graph")
        self.basis_combo = QComboBox()
        self.basis_combo.addItem("MLP neurons", None)
        self.basis_combo.addItem("Transcoders folder…", OPEN_FOLDER)
        self.basis_combo.setToolTip("Feature basis: the model's own MLP neurons (exact), or trained transcoders")
        self.basis_combo.activated.connect(self._basis_chosen)
        self.task_combo = QComboBox()
        for key, label in TASK_LABELS.items():
            self.task_combo.addItem(label, key)
        self.task_combo.setToolTip("Where the clean / corrupted prompt pairs come from")
        self.corrupted_edit = QLineEdit()
        self.corrupted_edit.setPlaceholderText("e.g. The capital of Italy is")
        self.corrupted_edit.setToolTip("The prompt with the detail that matters changed; same number of tokens")
        self.corrupted_edit.textChanged.connect(
            lambda text: self.corrupted_edit.setToolTip(text or "The prompt with the detail that matters changed"))
        self.pairs_file = ""
        self.pairs_label = QLabel("")
        self.pairs_label.setWordWrap(True)
        self.set_pairs_file("")
        self.scoring_combo = QComboBox()
        self.scoring_combo.addItems(["eap-ig", "eap"])
        self.scoring_combo.setToolTip("Edge scores: EAP-IG (integrated gradients, 5 steps) or EAP (one gradient)")
        self.n_pairs = QSpinBox()
        self.n_pairs.setRange(1, 1024)
        self.n_pairs.setValue(32)
        self.n_pairs.setToolTip("Prompt pairs to generate (or to read from the file)")
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the prompt (Ctrl+Enter)")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job (Esc)")
        self.cancel_button.setEnabled(False)
        self.model_info = QLabel("No model loaded yet.")
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        self.model_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.model_info.setObjectName("modelInfo")

        form = self.form = QFormLayout()
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("Pairs from", self.task_combo)
        form.addRow("Corrupted", self.corrupted_edit)
        form.addRow("", self.pairs_label)
        form.addRow("Target", self.target_edit)
        form.addRow("Foil", self.foil_edit)
        form.addRow("Basis", self.basis_combo)
        form.addRow("Max nodes", self.max_nodes)
        form.addRow("Scoring", self.scoring_combo)
        form.addRow("Pairs", self.n_pairs)
        form.addRow("Top-k", self.top_k)
        self.method_combo.currentTextChanged.connect(lambda _t: self._update_rows())
        self.task_combo.currentIndexChanged.connect(lambda _i: self._update_rows())
        self.task_combo.activated.connect(self._task_chosen)
        self._previous_task = 0
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(QLabel("Prompt"))
        prompt_row.addStretch(1)
        prompt_row.addWidget(self.examples)
        layout.addLayout(prompt_row)
        layout.addWidget(self.prompt_edit)
        layout.addLayout(buttons)
        layout.addWidget(self.model_info)
        layout.addStretch(1)
        self._update_rows()

    @property
    def method(self) -> str:
        return self.method_combo.currentText()

    @property
    def task(self) -> str:
        return self.task_combo.currentData()

    def _update_rows(self) -> None:
        """Show the settings the chosen method (and pair source) uses."""
        circuit = self.method == CIRCUIT
        pair = circuit and self.task == PROMPT_PAIR
        rows = {self.task_combo: circuit, self.corrupted_edit: pair, self.pairs_label: circuit and self.task == PAIR_FILE,
                self.target_edit: not circuit or pair, self.foil_edit: not circuit or pair,
                self.max_nodes: self.method == ATTRIBUTION, self.basis_combo: self.method == ATTRIBUTION,
                self.scoring_combo: circuit,
                self.n_pairs: circuit and not pair}
        for widget, visible in rows.items():
            self.form.setRowVisible(widget, visible)
        self.prompt_edit.setEnabled(not circuit or pair)
        if pair:
            self.target_edit.setToolTip("Answer to the clean prompt, e.g. ' Paris' (empty: the model's top token)")
            self.foil_edit.setToolTip("Answer to the corrupted prompt, e.g. ' Rome' (empty: the model's top token there)")
        else:
            self.target_edit.setToolTip("Token to explain, e.g. ' Paris' or #1234 (empty: the model's top token)")
            self.foil_edit.setToolTip("Contrast token: explain target − foil logit difference")
        self.settings_changed.emit()

    @property
    def transcoders(self) -> str | None:
        data = self.basis_combo.currentData()
        return None if data in (None, OPEN_FOLDER) else data

    def _basis_chosen(self, index: int) -> None:
        if self.basis_combo.itemData(index) == OPEN_FOLDER:
            folder = QFileDialog.getExistingDirectory(self, "Open a folder of transcoders")
            if folder:
                self.set_transcoders(folder)
            else:
                self.basis_combo.setCurrentIndex(0)

    def set_transcoders(self, folder: str | None) -> None:
        """Use the transcoders in ``folder`` (None: the neuron basis)."""
        if folder is None:
            self.basis_combo.setCurrentIndex(0)
            return
        index = self.basis_combo.findData(folder)
        if index < 0:
            self.basis_combo.insertItem(1, f"Transcoders: {Path(folder).name}", folder)
            self.basis_combo.setItemData(1, folder, Qt.ItemDataRole.ToolTipRole)
            index = 1
        self.basis_combo.setCurrentIndex(index)

    def _task_chosen(self, index: int) -> None:
        if self.task_combo.itemData(index) == PAIR_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Open a file of prompt pairs", "",
                                                  "Prompt pairs (*.jsonl);;All files (*)")
            if not path and not self.pairs_file:
                self.task_combo.setCurrentIndex(self._previous_task)
                return
            if path:
                self.set_pairs_file(path)
        self._previous_task = index

    def set_corrupted(self, text: str) -> None:
        """Fill the Corrupted box showing the start of the text (a QLineEdit shows its end after
        setText, where a long prompt differs least); the whole text is in the tooltip."""
        self.corrupted_edit.setText(text)
        self.corrupted_edit.setCursorPosition(0)

    def set_pairs_file(self, path: str) -> None:
        self.pairs_file = path
        self.pairs_label.setText(f"<tt>{_html(Path(path).name)}</tt>" if path else "no file chosen")
        self.pairs_label.setToolTip(path)

    def _example_chosen(self, index: int) -> None:
        demo = self.examples.itemData(index)
        if demo:
            self.prompt_edit.setPlainText(demo["prompt"])
            self.set_corrupted(demo.get("corrupted", ""))
        self.examples.setCurrentIndex(0)

    def set_models(self, entries: list[dict], current: str | None = None) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for e in entries:
            label = "Default — SmolLM2-135M-Instruct" if e["spec"] == DEFAULT_SPEC else e["name"]
            if "problem" in e:
                label += f" (unavailable: {e['problem']})"
            self.model_combo.addItem(label, e["spec"])
        self.model_combo.insertSeparator(self.model_combo.count())
        self.model_combo.addItem("Open model folder…", OPEN_FOLDER)
        self.model_combo.addItem("Open .gguf file…", OPEN_GGUF)
        if current:
            self.select_spec(current)
        self.model_combo.blockSignals(False)

    def select_spec(self, spec: str) -> None:
        index = self.model_combo.findData(spec)
        if index < 0:
            self.model_combo.insertItem(0, Path(spec).name or spec, spec)
            index = 0
        self.model_combo.setCurrentIndex(index)

    @property
    def spec(self) -> str:
        return self.model_combo.currentData() or DEFAULT_SPEC


# ---------------------------------------------------------------------------------------------
class MainWindow(QMainWindow):
    run_finished = Signal()  # the newest run ended (result, error or cancel); the UI is updated
    report_written = Signal(str)  # the PDF's path

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle(f"Circuit Desk {core.__version__}")
        self.settings = settings or QSettings("CircuitDesk", "CircuitDesk")
        self.runner = JobRunner(self)
        self.model = None  # LoadedModel of the last run (reused while spec/device stay the same)
        self.model_key: tuple[str, str] | None = None
        self.last_prediction = None
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self._previous_spec = DEFAULT_SPEC
        self._generation = 0  # increments per run; signals of older runs are ignored

        self.trace_result = None  # AttributionResult of the graph on show
        self.circuit_run: CircuitRun | None = None  # ...or the component circuit on show
        self.opened = None  # core.session.Session opened from a file (until the next run)
        self.session_path: str | None = None
        self.dirty = False
        self.intervention_log: list[dict] = []  # every intervention on the graph on show (saved with it)
        self._finish_note: str | None = None  # what the status bar says when a job ends (else "Done in …")
        self.lens_data = None  # core.lens.LensData of the run on show
        self._command = ""  # the CLI command that regenerates the graph on show
        self.state = WorkbenchState()
        self.panel = ModelPanel()
        self.predictions = PredictionsView()
        self.graph_pane = GraphPane(self.state)
        self.heatmap = HeatmapPane(self.state)
        self.inspector = Inspector(self.state)
        self.inspector.token_effects = self._token_effects
        self.inspector.interventions_available = lambda: self.trace_result is not None or self.circuit_run is not None
        self.inspector.intervention_requested.connect(self.run_intervention)
        self.workspace = QTabWidget()
        self.workspace.setDocumentMode(True)
        self.workspace.addTab(self.graph_pane, "Circuit graph")
        self.workspace.addTab(self.predictions, "Predictions")
        self.central = QStackedWidget()  # the start page until there is an analysis, then the workspace
        self.central.addWidget(self.workspace)
        self.setCentralWidget(self.central)

        def dock(title: str, name: str, widget, area, min_width: int = 0) -> QDockWidget:
            d = QDockWidget(title, self)
            d.setObjectName(name)
            d.setWidget(widget)
            if min_width:
                d.setMinimumWidth(min_width)
            self.addDockWidget(area, d)
            return d

        self.model_dock = dock("Model && prompt", "modelDock", self.panel, Qt.DockWidgetArea.LeftDockWidgetArea, 300)
        self.heatmap_dock = dock("Heatmap", "heatmapDock", self.heatmap, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.inspector_dock = dock("Inspector", "inspectorDock", self.inspector, Qt.DockWidgetArea.RightDockWidgetArea, 320)

        self.findings = QPlainTextEdit()
        self.findings.setPlaceholderText("Findings: what this circuit shows, what the interventions confirmed… "
                                         "(saved with the session)")
        self._findings_timer = QTimer(self)  # commit typing after a pause, not per keystroke
        self._findings_timer.setSingleShot(True)
        self._findings_timer.setInterval(400)
        self._findings_timer.timeout.connect(self._commit_findings)
        self.findings.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.findings.textChanged.connect(self._findings_typed)
        self.findings_dock = dock("Findings", "findingsDock", self.findings, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.jobs = JobsPane(self.runner)
        self.jobs_dock = dock("Jobs", "jobsDock", self.jobs, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.tabifyDockWidget(self.heatmap_dock, self.jobs_dock)
        self.tabifyDockWidget(self.heatmap_dock, self.findings_dock)
        self.heatmap_dock.raise_()
        self._build_status_bar()
        self._build_actions()
        self._build_start_page()
        self._fill_recent()
        self.state.subscribe(self._state_changed)
        self._autosave = QTimer(self)
        self._autosave.setInterval(AUTOSAVE_MS)
        self._autosave.timeout.connect(self.autosave)
        self._autosave.start()
        self._offer_recovery()
        self.panel.settings_changed.connect(self._update_actions)
        self.panel.set_models(list_models(), current=DEFAULT_SPEC)
        self.panel.model_combo.currentIndexChanged.connect(self._model_chosen)
        self.panel.run_button.clicked.connect(self.run)
        self.panel.cancel_button.clicked.connect(self.cancel)
        self.panel.prompt_edit.setPlainText(DEMO_PROMPT)
        self.panel.set_corrupted(DEMO_CORRUPTED)
        self.resize(1400, 900)
        self.resizeDocks([self.heatmap_dock], [300], Qt.Orientation.Vertical)
        self._restore_layout()

    # -- construction ------------------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.status_label = QLabel("Ready")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        self.elapsed_label = QLabel("")
        self.status_cancel = QToolButton()
        self.status_cancel.setText("Cancel")
        self.status_cancel.clicked.connect(self.cancel)
        self.status_cancel.hide()
        bar.addWidget(self.status_label, 1)
        bar.addPermanentWidget(self.elapsed_label)
        bar.addPermanentWidget(self.progress_bar)
        bar.addPermanentWidget(self.status_cancel)
        self._clock = QElapsedTimer()
        self._tick = QTimer(self)
        self._tick.setInterval(200)
        self._tick.timeout.connect(self._update_elapsed)

    def _build_actions(self) -> None:
        self._enablement: list[tuple[QAction, object]] = []
        has_view = lambda: self.state.view is not None  # noqa: E731
        idle = lambda: not self.runner.busy  # noqa: E731

        def action(text, slot, shortcut=None, menu=None, tip=None, enabled=None):
            """A menu action; ``enabled``: when it makes sense (re-evaluated by _update_actions)."""
            act = QAction(text, self)
            if enabled is not None:
                self._enablement.append((act, enabled))
            # triggered(bool) would hand its checked flag to a slot's first optional parameter
            # (group_selection's label, save_session's path): slots are called without arguments
            act.triggered.connect(lambda _checked=False: slot())
            if shortcut:
                act.setShortcut(QKeySequence(shortcut))
            if tip:
                act.setStatusTip(tip)
            if menu is not None:
                menu.addAction(act)
            self.addAction(act)
            return act

        file_menu = self.menuBar().addMenu("&File")
        self.open_session_action = action("Open &Session…", self.open_session, "Ctrl+Alt+O", file_menu,
                                          "Open a .cdesk session file")
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.save_action = action("&Save Session", self.save_session, QKeySequence.StandardKey.Save,
                                  file_menu, "Save the graph on show with its groups, pins and interventions",
                                  enabled=has_view)
        self.save_as_action = action("Save Session &As…", lambda: self.save_session(ask=True),
                                     QKeySequence.StandardKey.SaveAs, file_menu, enabled=has_view)
        self.recover_action = action("Recover &Unsaved Work", self.recover, None, file_menu,
                                     "Open what was autosaved before Circuit Desk last closed without saving")
        self.recover_action.setEnabled(False)
        file_menu.addSeparator()
        self.open_folder_action = action("Open Model &Folder…", self.open_model_folder, "Ctrl+O", file_menu)
        self.open_gguf_action = action("Open &GGUF File…", self.open_gguf_file, "Ctrl+Shift+O", file_menu)
        file_menu.addSeparator()
        self.export_graph_action = action("&Export Graph Image…", lambda: self.export_image("graph"), "Ctrl+E",
                                          file_menu, "Save the circuit graph as PNG or SVG (vector)", enabled=has_view)
        self.export_heatmap_action = action("Export &Heatmap Image…", lambda: self.export_image("heatmap"),
                                            "Ctrl+Shift+E", file_menu, "Save the heatmap as PNG or SVG (vector)",
                                            enabled=has_view)
        file_menu.addSeparator()
        self.report_action = action("Export &Report…", self.export_report, "Ctrl+R", file_menu,
                                    "Write the PDF audit report of the saved session",
                                    enabled=lambda: has_view() and idle())
        action("Auditor &Name…", self.ask_auditor, None, file_menu, "The name printed on report covers")
        file_menu.addSeparator()
        action("&Quit", self.close, QKeySequence.StandardKey.Quit, file_menu)

        run_menu = self.menuBar().addMenu("&Run")
        self.run_action = action("&Run Prompt", self.run, "Ctrl+Return", run_menu, "Run the prompt on the model")
        self.cancel_action = action("&Cancel", self.cancel, "Esc", run_menu, "Cancel the running job")
        self.cancel_action.setEnabled(False)
        run_menu.addSeparator()
        self.load_default_action = action("Load the &Default Model", self.load_default_model, None, run_menu,
                                          "Load SmolLM2-135M-Instruct and show its next-token predictions")
        self.demo_action = action("Trace the De&mo Prompt", self.run_demo, None, run_menu,
                                  f"The attribution graph of “{DEMO_PROMPT}” on the default model")
        run_menu.addSeparator()
        action("Focus &Prompt", lambda: self.panel.prompt_edit.setFocus(), "Ctrl+L", run_menu,
               enabled=self.panel.prompt_edit.isEnabled)  # a generated task has no prompt to type

        graph_menu = self.menuBar().addMenu("&Graph")
        self.fit_action = action("&Fit View", self.graph_pane.fit, "Ctrl+0", graph_menu, "Fit the graph in the pane",
                                 enabled=has_view)
        self.find_action = action("&Find Node…", self._focus_find, QKeySequence.StandardKey.Find, graph_menu,
                                  enabled=has_view)
        graph_menu.addSeparator()
        self.pin_action = action("&Pin Selection", lambda: self.state.pin(source="window"), "Ctrl+P", graph_menu,
                                 "Keep the selected nodes visible at any threshold", enabled=has_view)
        action("&Unpin All", lambda: self.state.unpin_all(source="window"), "Ctrl+Shift+P", graph_menu,
               enabled=has_view)
        self.group_action = action("&Group Selection…", self.group_selection, "Ctrl+G", graph_menu,
                                   "Group the selected nodes into a labelled supernode", enabled=has_view)
        action("U&ngroup", self.ungroup_selection, "Ctrl+Shift+G", graph_menu, "Break the selected supernode up again",
               enabled=has_view)
        action("Clear &Selection", lambda: self.state.clear_selection(source="window"), "Ctrl+Shift+A", graph_menu,
               enabled=has_view)
        graph_menu.addSeparator()
        self.intervene_action = action("Run &Intervention", self.inspector.request_intervention, "Ctrl+I", graph_menu,
                                       "Run the inspector's edit on the selected node",
                                       enabled=lambda: self.inspector.run_button.isEnabled() and idle())

        view_menu = self.menuBar().addMenu("&View")
        for d in (self.model_dock, self.heatmap_dock, self.inspector_dock, self.jobs_dock, self.findings_dock):
            view_menu.addAction(d.toggleViewAction())

        help_menu = self.menuBar().addMenu("&Help")
        action("&About Circuit Desk", self.about, None, help_menu)
        self._update_actions()

    def _build_start_page(self) -> None:
        self.start_page = StartPage([
            ("Load the default model", "SmolLM2-135M-Instruct, embedded: see what it predicts for the prompt.",
             self.load_default_action),
            ("Trace the demo prompt", f"The attribution graph of “{DEMO_PROMPT}” → “ Paris”: "
                                      "the neurons and paths behind the answer.", self.demo_action),
            ("Open a session…", "A .cdesk file saved here or by `circuitdesk trace` / `circuit` (Ctrl+Alt+O).",
             self.open_session_action),
            ("Open a model folder…", "A Hugging Face folder of your own model (Ctrl+O).", self.open_folder_action),
        ])
        self.central.insertWidget(0, self.start_page)
        self.central.setCurrentWidget(self.start_page)

    def load_default_model(self) -> None:
        """Start page: load the default model by running a next-token prediction on it."""
        self.panel.select_spec(DEFAULT_SPEC)
        self.panel.method_combo.setCurrentText(PREDICT)
        self.run_action.trigger()

    def run_demo(self) -> None:
        """Start page: the attribution graph of the demo prompt on the default model."""
        self.panel.select_spec(DEFAULT_SPEC)
        self.panel.method_combo.setCurrentText(ATTRIBUTION)
        self.panel.prompt_edit.setPlainText(DEMO_PROMPT)
        self.run_action.trigger()

    def _show_workspace(self) -> None:
        """The analysis replaces the start page (for good: it stays until the window closes)."""
        self.central.setCurrentWidget(self.workspace)

    def _update_actions(self) -> None:
        """Enable the actions that make sense now (after any change of what is on show or running)."""
        for act, enabled in self._enablement:
            act.setEnabled(bool(enabled()))

    # -- model choice --------------------------------------------------------------------------
    def _model_chosen(self, _index: int) -> None:
        data = self.panel.model_combo.currentData()
        if data == OPEN_FOLDER:
            self.open_model_folder()
        elif data == OPEN_GGUF:
            self.open_gguf_file()
        elif data:
            self._previous_spec = data

    def open_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a Hugging Face model folder")
        self._use_chosen_path(folder)

    def open_gguf_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model file", "", "GGUF models (*.gguf);;All files (*)")
        self._use_chosen_path(path)

    def _use_chosen_path(self, path: str) -> None:
        from core.models.catalog import add_model_path

        self.panel.model_combo.blockSignals(True)
        self.panel.select_spec(path or self._previous_spec)
        self.panel.model_combo.blockSignals(False)
        if path:
            self._previous_spec = path
            try:  # listed next time, here and by `circuitdesk models`
                add_model_path(path)
            except CircuitDeskError as err:
                log.info("model path not remembered: %s", err)

    # -- running ---------------------------------------------------------------------------------
    def request(self) -> RunRequest:
        p = self.panel
        return RunRequest(
            spec=p.spec,
            device=p.device_combo.currentText(),
            prompt=p.prompt_edit.toPlainText(),
            top_k=p.top_k.value(),
            method=p.method_combo.currentText(),
            target=p.target_edit.text() or None,
            foil=p.foil_edit.text() or None,
            max_nodes=p.max_nodes.value(),
            transcoders=p.transcoders,
            task=p.task,
            corrupted=p.corrupted_edit.text(),
            pairs_file=p.pairs_file,
            scoring=p.scoring_combo.currentText(),
            n_pairs=p.n_pairs.value(),
        )

    def run(self) -> None:
        req = self.request()
        try:
            check_request(req)
        except CircuitDeskError as err:
            self.show_error(str(err))
            return
        replaced = self.runner.busy
        self.last_error = None
        self._generation += 1
        generation = self._generation

        def current(slot):
            """Only the newest run may update the window (a cancelled one reports late)."""
            return lambda *args: slot(*args) if generation == self._generation else None

        key = (req.spec, req.device)
        model = self.model if self.model_key == key else None

        def job(ctx):
            from core.models import load_model
            from core.predict import predict_next

            share = 0.9 if model is None and req.method == PREDICT else (0.3 if model is None else 0.0)
            loaded = model or load_model(req.spec, device=req.device, ctx=ctx.sub(0.0, max(share, 0.01)))
            ctx.partial(MODEL, loaded)
            if req.method == PREDICT:
                return loaded, predict_next(loaded, req.prompt, req.top_k, ctx.sub(share, 1.0))
            work = circuit_prompt if req.method == CIRCUIT else trace_prompt
            return (loaded,) + work(loaded, req, ctx.sub(share, 1.0))

        self.runner.submit(
            job_name(req),
            job,
            detail=result_detail,
            progress=current(self._on_progress),
            partial=current(lambda name, value: self._on_partial(key, req.method, name, value)),
            returned=current(lambda result: self._on_result(key, result, cli_command(req))),
            errored=current(self.show_error),
            aborted=current(self._on_aborted),
            finished=current(self._on_finished),
        )
        self._set_running(True, "Previous run cancelled; running…" if replaced else "Running…")
        if model is None:  # the first run of a model loads it first: say so where its facts appear
            self.panel.model_info.setText(f"Loading <b>{_html(self.panel.model_combo.currentText())}</b>"
                                          f" on {_html(req.device)}…")

    def cancel(self) -> None:
        if self.runner.busy:
            self.runner.cancel()
            self.status_label.setText("Cancelling…")

    def _set_running(self, running: bool, message: str) -> None:
        self.status_label.setText(message)
        self.progress_bar.setVisible(running)
        self.status_cancel.setVisible(running)
        self.panel.cancel_button.setEnabled(running)
        self.cancel_action.setEnabled(running)
        self._update_actions()
        if running:
            self.progress_bar.setValue(0)
            self._clock.start()
            self._tick.start()
            self._update_elapsed()
        else:
            self._tick.stop()
            self.elapsed_label.setText("")

    def _update_elapsed(self) -> None:
        self.elapsed_label.setText(f"{self._clock.elapsed() / 1000:.1f} s")

    def _on_progress(self, p) -> None:
        self.progress_bar.setValue(int(p.fraction * 1000))
        if p.message:
            self.status_label.setText(p.message + "…")

    def _on_partial(self, key, method: str, name: str, value) -> None:
        """Show what a run has ready before it ends: the loaded model, the prediction, the lens."""
        if name == MODEL:
            self.model, self.model_key = value, key
            self._show_model_info(value)
        elif name == PREDICTION:
            self._show_workspace()
            self.last_prediction = value
            self.predictions.show_prediction(self.model.name, value, sequence_note(method))
        elif name == LOGIT_LENS and self.state.view is None:  # else the lens of the graph on show stays
            self.heatmap.set_lens(value)
            self.heatmap.redraw()

    def _on_result(self, key, result, command: str = "") -> None:
        model = result[0]
        self.model, self.model_key = model, key
        self._show_workspace()
        if len(result) == 2:
            self.last_prediction = result[1]
            self.predictions.show_prediction(model.name, result[1], sequence_note(PREDICT))
            self.workspace.setCurrentWidget(self.predictions)
        else:
            _, traced, view, lens_data, prediction = result
            self.last_prediction = prediction
            self.predictions.show_prediction(model.name, prediction,
                                             sequence_note(CIRCUIT if isinstance(traced, CircuitRun) else ATTRIBUTION))
            self.heatmap.set_lens(lens_data)
            self.lens_data = lens_data
            circuit = isinstance(traced, CircuitRun)
            self.trace_result, self.circuit_run = (None, traced) if circuit else (traced, None)
            self.opened, self.intervention_log, self._command = None, [], command
            self.state.show(view, source="window")
            self.workspace.setCurrentWidget(self.graph_pane)
        self._show_model_info(model)

    def _show_model_info(self, model) -> None:
        f = model.facts
        self.panel.model_info.setText(
            f"<b>{_html(model.name)}</b><br>{f.family} · {f.n_layers} layers · {f.n_heads} heads "
            f"({f.n_kv_heads} kv) · d_model {f.d_model} · {f.n_params / 1e6:.1f}M params<br>"
            f"device {model.device} · {str(model.dtype).removeprefix('torch.')}<br>"
            f"sha256 <tt>{model.fingerprint.sha256[:16]}…</tt>"
        )

    # -- graph actions -------------------------------------------------------------------------------
    def _focus_find(self) -> None:
        self.workspace.setCurrentWidget(self.graph_pane)
        self.graph_pane.find_edit.setFocus()
        self.graph_pane.find_edit.selectAll()

    def group_selection(self, label: str | None = None) -> None:
        if len(self.state.selected) < 2:
            self.status_label.setText("Select at least two nodes to group (shift-click adds to the selection).")
            return
        if label is None:
            label, ok = QInputDialog.getText(self, "Group nodes", "Label for the supernode:")
            if not ok:
                return
        if self.state.group(label, source="window") is None:
            self.status_label.setText("Nothing grouped: give a label, and pick nodes not already in a group.")

    # -- session files ---------------------------------------------------------------------------
    def _session(self):
        """The graph on show as a core.session.Session (manifest, payload, annotations)."""
        from core.session import Session, new_manifest

        model = self.model
        self._commit_findings()
        notes = self.state.annotations(self.intervention_log)
        if self.opened is not None:  # re-saving an opened session keeps its manifest and payload
            o = self.opened
            return Session(o.manifest, o.graph, notes, o.circuit, o.logit_lens)
        summary = model.summary()
        if self.circuit_run is not None:
            r = self.circuit_run.result
            prompt = r.pairs[0]["clean"] if r.pairs else ""
            session = Session(new_manifest("circuit", summary, prompt, r.settings, task=r.task, stats=r.stats,
                                           command=self._command), annotations=notes, circuit=r)
        else:
            t = self.trace_result
            manifest = new_manifest("attribution", summary, t.prompt, t.graph.meta.get("settings", {}),
                                    targets=[x.to_json() for x in t.targets], stats=t.stats, command=self._command)
            session = Session(manifest, t.graph, notes)
        if self.lens_data is not None:  # the heatmap's logit lens, for the report
            from core.runs import add_logit_lens

            add_logit_lens(session, model, None, self.lens_data.target_id, lens_data=self.lens_data)
        return session

    def save_session(self, path: str | None = None, ask: bool = False) -> bool:
        """Save (Ctrl+S) to the session's file, or ask where (Save As, or the first save)."""
        from core.session import save_session

        if self.state.view is None:
            self.show_error("Nothing to save yet: run a trace or a circuit first.")
            return False
        if path is None and (ask or self.session_path is None):
            path, _ = QFileDialog.getSaveFileName(self, "Save session", self.session_path or "analysis.cdesk",
                                                  "Circuit Desk sessions (*.cdesk)")
            if not path:
                return False
            if not path.endswith(".cdesk"):
                path += ".cdesk"
        path = path or self.session_path
        try:
            save_session(path, self._session())
        except CircuitDeskError as err:
            self.show_error(str(err))
            return False
        self.session_path = str(path)
        self._remember(self.session_path)
        self._set_dirty(False)
        self.status_label.setText(f"Saved {path}")
        return True

    def open_session(self, path: str | None = None, remember: bool = True) -> bool:
        """Open a .cdesk file: its graph, threshold, groups and pins (heatmaps need a re-run)."""
        from core.session import load_session
        from core.view import from_attribution, from_circuit

        if not self.may_discard("opening another session"):
            return False
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open session", "", "Circuit Desk sessions (*.cdesk);;All files (*)")
            if not path:
                return False
        if self.runner.busy:
            self.show_error("A job is running; cancel it or wait before opening a session.")
            return False
        try:  # everything that can fail happens before anything on show changes
            session = load_session(path)
            view = from_attribution(session.graph) if session.graph is not None else from_circuit(session.circuit)
        except CircuitDeskError as err:
            self.show_error(str(err))
            return False
        self._generation += 1  # a late signal of an earlier run must not overwrite this
        self.trace_result, self.circuit_run, self.opened, self.lens_data = None, None, session, None
        self.intervention_log = list(session.annotations.interventions)
        self.heatmap.set_lens(None)
        self.state.show(view, source="window", annotations=session.annotations)
        self.session_path = str(path)
        if remember:
            self._remember(self.session_path)
        self._set_dirty(False)
        self.workspace.setCurrentWidget(self.graph_pane)
        m = session.manifest.get("model", {})
        self.status_label.setText(f"Opened {Path(path).name}: {session.manifest.get('kind')} of "
                                  f"{m.get('name', 'a model')} — run again to see heatmaps and intervene")
        if session.edited:
            self.show_error(f"{Path(path).name} was changed after it was saved: {', '.join(session.edited)} "
                            "no longer match the sha256 recorded in its manifest.")
        return True

    def unsaved_choice(self, why: str) -> str:
        """Ask what to do with unsaved work: "save", "discard" or "cancel" (tests replace this)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Circuit Desk",
                          f"The analysis on show has unsaved changes. Save them before {why}?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        return {QMessageBox.StandardButton.Save: "save",
                QMessageBox.StandardButton.Discard: "discard"}.get(QMessageBox.StandardButton(answer), "cancel")

    def may_discard(self, why: str) -> bool:
        """True when the analysis on show may be replaced: saved, nothing to lose, or the user agrees."""
        if not self.dirty or self.state.view is None:
            return True
        choice = self.unsaved_choice(why)
        if choice == "save":
            return self.save_session()
        return choice == "discard"

    # -- autosave and recovery ---------------------------------------------------------------------
    @property
    def recovery_path(self) -> Path:
        """Where unsaved work is autosaved: beside this window's settings file."""
        return Path(self.settings.fileName()).with_suffix(".autosave.cdesk")

    def autosave(self) -> bool:
        """Write unsaved work to the recovery file (every AUTOSAVE_MS; quietly, it is a safety net)."""
        from core.session import save_session

        if not self.dirty or self.state.view is None:
            return False
        try:
            self.recovery_path.parent.mkdir(parents=True, exist_ok=True)
            save_session(self.recovery_path, self._session())
        except (CircuitDeskError, OSError):
            log.warning("autosave failed", exc_info=True)
            return False
        return True

    def _offer_recovery(self) -> None:
        if not self.recovery_path.is_file():
            return
        self.recover_action.setEnabled(True)
        self.status_label.setText("Circuit Desk closed with unsaved work; File → Recover Unsaved Work brings it back.")

    def recover(self) -> bool:
        """Open the autosaved work of a session that did not close cleanly (as unsaved work)."""
        if not self.recovery_path.is_file() or not self.open_session(str(self.recovery_path), remember=False):
            return False
        self.session_path = None
        self._set_dirty(True)
        self.recover_action.setEnabled(False)
        return True

    def _remember(self, path: str) -> None:
        recent = [p for p in (self.settings.value("session/recent") or []) if p != path]
        self.settings.setValue("session/recent", [path] + recent[:7])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.value("session/recent") or []
        if isinstance(recent, str):
            recent = [recent]
        for p in recent:
            self.recent_menu.addAction(Path(p).name, lambda p=p: self.open_session(p)).setToolTip(p)
        self.recent_menu.setEnabled(bool(recent))

    def _findings_typed(self) -> None:
        if len(self.findings.toPlainText()) > MAX_FINDINGS:  # typed or pasted past the cap: keep the start
            self.findings.blockSignals(True)
            self.findings.setPlainText(self.findings.toPlainText()[:MAX_FINDINGS])
            self.findings.moveCursor(QTextCursor.MoveOperation.End)
            self.findings.blockSignals(False)
            self.status_label.setText(f"Findings are limited to {MAX_FINDINGS:,} characters; the rest was not kept.")
        self._findings_timer.start()

    def _commit_findings(self) -> None:
        self._findings_timer.stop()
        self.state.set_findings(self.findings.toPlainText(), source="findings")

    def _set_dirty(self, dirty: bool) -> None:
        self.dirty = dirty
        name = Path(self.session_path).name if self.session_path else "untitled"
        has_view = self.state.view is not None
        self.setWindowTitle(f"{name}{' *' if dirty else ''} — Circuit Desk {core.__version__}" if has_view
                            else f"Circuit Desk {core.__version__}")

    def _state_changed(self, change) -> None:
        from core.selection import ANNOTATION, HOVER, INTERVENTION, THRESHOLD, VIEW

        if change.what == VIEW and change.source == "window" and self.opened is None:
            self.session_path = None  # a new run is a new, unsaved analysis
        if change.what == VIEW and self.state.view is not None:
            self._show_workspace()
        typing = self._findings_timer.isActive()  # an edit not committed yet is never overwritten
        if (change.what in (VIEW, ANNOTATION) and change.source != "findings" and not typing
                and self.findings.toPlainText() != self.state.findings):
            self.findings.blockSignals(True)
            self.findings.setPlainText(self.state.findings)
            self.findings.blockSignals(False)
        if change.what in (VIEW, ANNOTATION, THRESHOLD, INTERVENTION):
            self._set_dirty(True)
        if change.what != HOVER:  # hovering changes nothing an action depends on (and comes often)
            self._update_actions()

    def export_image(self, pane: str, path: str | None = None) -> bool:
        """Save the graph or heatmap pane as PNG (pixels at 2× screen size) or SVG (vectors)."""
        widget = self.graph_pane if pane == "graph" else self.heatmap
        plot = widget.plot.getPlotItem()
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, f"Export the {pane}", f"{pane}.png",
                                                  "PNG image (*.png);;SVG vector image (*.svg)")
            if not path:
                return False
        suffix = Path(path).suffix.lower()
        if suffix not in (".png", ".svg"):
            self.show_error(f"Cannot export to '{Path(path).name}': choose a .png or .svg file name.")
            return False
        if pane == "graph":
            self.graph_pane.settle()  # every drawn edge, not the pan preview
        tmp = Path(path).with_suffix(".tmp" + suffix)
        try:
            if suffix == ".svg":
                render_svg(widget.plot, str(tmp), title=f"Circuit Desk {pane}")
            else:
                from pyqtgraph.exporters import ImageExporter

                exporter = ImageExporter(plot)
                exporter.parameters()["width"] = int(plot.sceneBoundingRect().width() * 2)
                exporter.export(str(tmp))
            if not tmp.exists():
                raise OSError(f"nothing was written to {tmp.parent}")
            tmp.replace(path)  # whole file or nothing
        except OSError as err:
            tmp.unlink(missing_ok=True)
            self.show_error(f"Cannot write {path}: {getattr(err, 'strerror', None) or err}.")
            return False
        self.status_label.setText(f"Saved {path}")
        return True

    def ask_auditor(self) -> None:
        from desktop.report_pdf import AUDITOR_KEY

        name, ok = QInputDialog.getText(self, "Auditor name", "Name printed on the cover of audit reports:",
                                        text=str(self.settings.value(AUDITOR_KEY, "") or ""))
        if ok:
            self.settings.setValue(AUDITOR_KEY, name.strip())

    def export_report(self, path: str | None = None) -> bool:
        """Write the PDF audit report (Ctrl+R) of the session file, saving the session first: the
        report cites the file by its sha256, so it must hold exactly what is on show."""
        from desktop.report_pdf import AUDITOR_KEY

        if self.state.view is None:
            self.show_error("Nothing to report yet: run a trace or a circuit first.")
            return False
        if self.runner.busy:
            self.show_error("A job is running; cancel it or wait before exporting a report.")
            return False
        if (self.session_path is None or self.dirty) and not self.save_session():
            self.status_label.setText("The report is made from the saved session; save it to export a report.")
            return False
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export audit report",
                                                  str(Path(self.session_path).with_suffix(".pdf")), "PDF (*.pdf)")
            if not path:
                return False
        if not path.lower().endswith(".pdf"):
            path += ".pdf"
        session_path, auditor = self.session_path, str(self.settings.value(AUDITOR_KEY, "") or "")

        def job(ctx):
            from core.report import build_report
            from core.session import load_session
            from desktop.report_pdf import write_pdf

            ctx.progress(0.1, "Building the report")
            report = build_report(load_session(session_path), session_path, auditor=auditor)
            ctx.check_cancelled()
            ctx.progress(0.5, "Drawing the pages")
            return write_pdf(report, path, ctx=ctx)

        def done(out):
            hint = "" if auditor else "; no auditor name on the cover (File → Auditor Name…)"
            self._finish_note = f"Wrote {out}{hint}"
            self.report_written.emit(str(out))

        self.runner.submit(f"report: {Path(path).name}", job, progress=self._on_progress, returned=done,
                           errored=self.show_error, aborted=self._on_aborted, finished=self._on_finished)
        self._set_running(True, "Writing the report…")
        return True

    def ungroup_selection(self) -> None:
        labels = {g.label for n in self.state.selected if (g := self.state.group_of(n)) is not None}
        if not labels:
            self.status_label.setText("Select a supernode to ungroup it.")
        for label in sorted(labels):
            self.state.ungroup(label, source="window")

    def _token_effects(self, view, node: int):
        """Tokens a node promotes/suppresses: a neuron's output direction, or what a circuit's
        head / MLP wrote at the last prompt position, read through the unembedding."""
        if self.model is None:
            return None
        from core.lens import direction_effects, neuron_effects

        try:
            if view.kind == "circuit" and self.circuit_run is not None:
                out = self.circuit_run.outputs_last
                if node >= len(out):
                    return None  # the logits node
                import torch

                effects = direction_effects(self.model, torch.from_numpy(out[node]))
                effects.note = "what this component writes at the last position, through the unembedding"
                return effects
            g = view.source
            from core.graph import FEATURE

            if view.kind != "attribution" or int(g.kind[node]) != FEATURE or self.trace_result is None:
                return None
            layer, index = int(g.layer[node]), int(g.index[node])
            tc = self.trace_result.transcoders
            if tc is None:
                return neuron_effects(self.model, layer, index)
            effects = direction_effects(self.model, tc.layers[layer].W_dec[index].sum(0))
            effects.note = "the feature's decoder (summed over the layers it writes to), through the unembedding"
            return effects
        except Exception:  # the inspector still shows the node's facts
            log.warning("token effects failed", exc_info=True)
            return None

    def _intervention_job(self, request):
        """(job, description) for the inspector's request on the graph on show (or an error)."""
        from core.errors import CircuitDeskError
        from core.graph import ERROR
        from core.interventions import Intervention, intervene

        node, mode, value, freeze, every = request
        model, view = self.model, self.state.view
        if view is not None and view.kind == "circuit" and self.circuit_run is not None:
            run = self.circuit_run
            if freeze == "replacement":
                raise CircuitDeskError("The replacement model belongs to attribution graphs; "
                                       "for a circuit's head choose freeze none or attention.")
            layer, head = view.cell_of(node)
            iv = Intervention("head", int(layer), int(head), None, mode, value)

            def job(ctx):
                return intervene(model, run.ids, [iv], freeze=freeze, target_id=run.answer_id, ctx=ctx)

            return job
        trace = self.trace_result
        if trace is None or view is None:
            raise CircuitDeskError("Interventions need a traced graph; run a trace first.")
        g = view.source
        kind = "error" if int(g.kind[node]) == ERROR else ("feature" if g.meta.get("basis") != "neurons" else "neuron")
        iv = Intervention(kind, int(g.layer[node]), int(g.index[node]),
                          None if every else (int(g.pos[node]),), mode, value)

        def job(ctx):
            return intervene(model, trace.ids, [iv], freeze=freeze, target_id=trace.targets[0].token_id,
                             transcoders=trace.transcoders, errors=trace.errors, write_point=trace.write_point,
                             ctx=ctx)

        return job

    def run_intervention(self, request) -> None:
        if self.model is None:
            self.show_error("Interventions need a traced graph; run a trace first.")
            return
        if self.runner.busy:
            self.show_error("A job is running; cancel it or wait before intervening.")
            return
        try:
            job = self._intervention_job(request)
        except CircuitDeskError as err:
            self.show_error(str(err))
            return
        generation = self._generation

        def done(result):
            if generation == self._generation:
                self.intervention_log.append(result.to_json())
                self.state.set_intervention(result, source="window")

        name = f"intervene: {self.state.view.labels[request[0]]} ({request[1]})"
        self.runner.submit(name, job, progress=self._on_progress, returned=done, errored=self.show_error,
                           aborted=self._on_aborted, finished=self._on_finished)
        self._set_running(True, "Intervening…")

    def _on_aborted(self) -> None:
        self.status_label.setText("Cancelled")

    def _on_finished(self) -> None:
        seconds = self._clock.elapsed() / 1000
        message = self.status_label.text()
        self._set_running(False, message)
        if self.last_error is None and message not in ("Cancelled", "Cancelling…"):
            self.status_label.setText(self._finish_note or f"Done in {seconds:.1f} s")
        self._finish_note = None
        self.run_finished.emit()

    def show_error(self, message: str) -> None:
        """One sentence in a dialog (non-blocking); details are in the log file."""
        self.last_error = message
        self.status_label.setText("Error: " + message)
        box = QMessageBox(QMessageBox.Icon.Warning, "Circuit Desk", message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _=None: setattr(self, "error_box", None))
        self.error_box = box
        box.open()

    def about(self) -> None:
        QMessageBox.about(
            self,
            "About Circuit Desk",
            f"Circuit Desk {core.__version__}<br>Circuit tracing for open-weight language models, offline.",
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def _restore_layout(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event) -> None:
        if not self.may_discard("closing"):
            event.ignore()
            return
        self._autosave.stop()
        self.recovery_path.unlink(missing_ok=True)  # a clean exit: nothing to recover
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        if self.runner.busy:
            self.status_label.setText("Cancelling the running job…")
        self.runner.shutdown()
        super().closeEvent(event)


# ---------------------------------------------------------------------------------------------
def run_gui(
    model: str | None = None,
    prompt: str | None = None,
    device: str = "auto",
    method: str = "attribution",
    corrupted: str | None = None,
    trace: bool = False,
    screenshot: str | None = None,
    quit_after_trace: bool = False,
) -> int:
    setup_logging()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Circuit Desk")
    app.setOrganizationName("CircuitDesk")
    window = MainWindow()
    errors = SlotErrorHook(window.show_error).install()  # an exception in a slot: dialog + log
    if model:
        window.panel.select_spec(model)
    if prompt is not None:
        window.panel.prompt_edit.setPlainText(prompt)
    if device:
        window.panel.device_combo.setCurrentText(device)
    window.panel.method_combo.setCurrentText({"circuit": CIRCUIT, "predict": PREDICT}.get(method, ATTRIBUTION))
    if corrupted is not None:
        window.panel.set_corrupted(corrupted)
    window.show()

    def after_run() -> None:
        if screenshot:
            QApplication.processEvents()  # let the layout settle before taking the picture
            window.grab().save(screenshot)
        if quit_after_trace:
            app.exit(0 if window.last_error is None else 1)

    if trace:
        window.run_finished.connect(after_run)  # connected before the run starts: nothing is missed
        QTimer.singleShot(0, window.run)
    elif screenshot:
        QTimer.singleShot(300, after_run)
    try:
        return app.exec()
    finally:
        errors.uninstall()

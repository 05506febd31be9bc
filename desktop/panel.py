"""The model & prompt panel: which model, which method and its settings, the prompt; Run and Cancel.

``request()`` reads the panel as a ``core.analysis.RunRequest``; ``apply(request)`` shows one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from html import escape
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.analysis import ATTRIBUTION, CIRCUIT, METHODS, PAIR_FILE, PAIR_SOURCES, PROMPT_PAIR, RunRequest
from core.chat import read_messages
from core.errors import CircuitDeskError
from core.models.catalog import DEFAULT_SPEC, add_model_path
from core.paths import resources_dir
from core.settings import (
    ATTRIBUTION_SETTINGS,
    CHAT_SETTINGS,
    CIRCUIT_SETTINGS,
    PAIR_SOURCE_SETTINGS,
    PLACEMENT_SETTINGS,
    PRECISIONS,
    PREDICT_SETTINGS,
    PlacementSettings,
    Setting,
    by_name,
)

log = logging.getLogger(__name__)

OPEN_FOLDER = "__open_folder__"
OPEN_GGUF = "__open_gguf__"
# the settings the panel shows, as declared once in core.settings (labels, ranges, choices, tips)
_TRACE, _CIRCUIT, _PAIRS, _PREDICT, _CHAT, _PLACE = (by_name(d) for d in (ATTRIBUTION_SETTINGS, CIRCUIT_SETTINGS,
                                                                             PAIR_SOURCE_SETTINGS, PREDICT_SETTINGS,
                                                                             CHAT_SETTINGS, PLACEMENT_SETTINGS))


def setting_spin_box(setting: Setting) -> QSpinBox:
    """A spin box for a declared integer setting: its range, step, starting value and tooltip."""
    box = QSpinBox()
    box.setRange(int(setting.minimum), int(setting.maximum))
    box.setSingleStep(int(setting.step or 1))
    box.setValue(int(setting.initial))
    box.setToolTip(setting.tooltip or setting.help)
    box.setGroupSeparatorShown(setting.maximum is not None and setting.maximum >= 10_000)
    return box


def setting_check_box(setting: Setting, text: str = "") -> QCheckBox:
    """A check box for a declared switch: its starting state and tooltip."""
    box = QCheckBox(text)
    box.setChecked(bool(setting.initial))
    box.setToolTip(setting.tooltip or setting.help)
    return box


def setting_line_edit(setting: Setting, placeholder: str = "") -> QLineEdit:
    """A text field for a declared text setting: its starting text and tooltip."""
    edit = QLineEdit(setting.initial or "")
    edit.setPlaceholderText(placeholder)
    edit.setToolTip(setting.tooltip or setting.help)
    return edit


def demo_prompts() -> list[dict]:
    """Example prompts shipped in resources/ (an unreadable file just means no examples)."""
    try:
        return list(json.loads((resources_dir() / "demo_prompts.json").read_text())["prompts"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("demo prompts unavailable", exc_info=True)
        return []



class ModelPanel(QWidget):
    """Model picker, device, method settings, prompt and the Run / Cancel buttons."""

    settings_changed = Signal()  # the method or pair source changed: the rows shown follow it

    def __init__(self) -> None:
        super().__init__()
        self._previous_spec = DEFAULT_SPEC  # what the model box shows again when a file dialog is cancelled
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model to trace: the embedded default, a Hugging Face folder or a .gguf file")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.device_combo.setToolTip("auto uses the GPU when there is one")
        self.dtype_combo = QComboBox()
        self.dtype_combo.addItems(list(PRECISIONS))
        self.dtype_combo.setToolTip("float32: exact (the graph's completeness identity holds to ~1e-5); bfloat16 "
                                    "or float16 halve the weights' memory, for large models on a GPU")
        self.offload_box = setting_check_box(_PLACE["offload"], "layers that do not fit the GPU")
        self.offload_box.toggled.connect(lambda _on: self._update_rows())
        self.gpu_memory_edit = setting_line_edit(_PLACE["max_gpu_memory"], "what is free, e.g. 20GiB")
        self.cpu_memory_edit = setting_line_edit(_PLACE["max_cpu_memory"], "what is free, e.g. 64GB")
        self.transcoders_device_combo = QComboBox()
        self.transcoders_device_combo.addItems(list(_PLACE["transcoders_device"].offered))
        self.transcoders_device_combo.setCurrentText(_PLACE["transcoders_device"].initial)
        self.transcoders_device_combo.setToolTip(_PLACE["transcoders_device"].tooltip)
        self.examples = QComboBox()
        self.examples.setToolTip("Fill the prompt box with a classic circuit-tracing prompt")
        self.examples.addItem("Examples…", None)
        for demo in demo_prompts():
            self.examples.addItem(demo["name"], demo)
        self.examples.activated.connect(self._example_chosen)
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("Type a prompt, e.g. The capital of France is")
        self.prompt_edit.setMinimumHeight(80)
        self.top_k = setting_spin_box(_PREDICT["top_k"])
        self.chat_box = setting_check_box(_CHAT["chat"], "in the model's chat template")
        self.chat_box.toggled.connect(self._chat_toggled)
        self.system_edit = setting_line_edit(_CHAT["system"], "none")
        self.messages_file = ""  # a conversation opened from a JSON file (File → Open Conversation…)
        self.conversation_label = QLabel("")
        self.conversation_label.setWordWrap(True)
        self.clear_conversation = QPushButton("Clear")
        self.clear_conversation.setToolTip("Forget the conversation and type a prompt again")
        self.clear_conversation.clicked.connect(lambda: self.set_conversation(""))
        self.conversation_row = QWidget()
        conversation_row = QHBoxLayout(self.conversation_row)
        conversation_row.setContentsMargins(0, 0, 0, 0)
        conversation_row.addWidget(self.conversation_label, 1)
        conversation_row.addWidget(self.clear_conversation)
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
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
        self.max_nodes = setting_spin_box(_TRACE["max_nodes"])
        self.basis_combo = QComboBox()
        self.basis_combo.addItem("MLP neurons", None)
        self.basis_combo.addItem("Transcoders folder…", OPEN_FOLDER)
        self.basis_combo.setToolTip("Feature basis: the model's own MLP neurons (exact), or trained transcoders")
        self.basis_combo.activated.connect(self._basis_chosen)
        self.basis_combo.currentIndexChanged.connect(lambda _i: self._update_rows())
        self.task_combo = QComboBox()
        for key, label in PAIR_SOURCES.items():
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
        scoring = _CIRCUIT["method"]
        self.scoring_combo = QComboBox()
        self.scoring_combo.addItems(list(scoring.offered))
        self.scoring_combo.setCurrentText(scoring.initial)
        self.scoring_combo.setToolTip(scoring.tooltip or scoring.help)
        self.n_pairs = setting_spin_box(_PAIRS["n_pairs"])
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
        form.addRow("Precision", self.dtype_combo)
        form.addRow(_PLACE["offload"].label, self.offload_box)
        form.addRow(_PLACE["max_gpu_memory"].label, self.gpu_memory_edit)
        form.addRow(_PLACE["max_cpu_memory"].label, self.cpu_memory_edit)
        form.addRow("Method", self.method_combo)
        form.addRow(_CHAT["chat"].label, self.chat_box)
        form.addRow(_CHAT["system"].label, self.system_edit)
        form.addRow(_CHAT["messages"].label, self.conversation_row)
        form.addRow(_PAIRS["task"].label, self.task_combo)
        form.addRow(_PAIRS["corrupted"].label, self.corrupted_edit)
        form.addRow("", self.pairs_label)
        form.addRow(_TRACE["target"].label, self.target_edit)
        form.addRow(_TRACE["foil"].label, self.foil_edit)
        form.addRow(_TRACE["transcoders"].label, self.basis_combo)
        form.addRow(_PLACE["transcoders_device"].label, self.transcoders_device_combo)
        form.addRow(_TRACE["max_nodes"].label, self.max_nodes)
        form.addRow(scoring.label, self.scoring_combo)
        form.addRow(_PAIRS["n_pairs"].label, self.n_pairs)
        form.addRow(_PREDICT["top_k"].label, self.top_k)
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
        self.model_combo.currentIndexChanged.connect(self._model_chosen)

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
                self.n_pairs: circuit and not pair,
                self.chat_box: not circuit, self.system_edit: not circuit and self.chat_box.isChecked(),
                self.conversation_row: not circuit and bool(self.messages_file),
                self.gpu_memory_edit: self.offload_box.isChecked(), self.cpu_memory_edit: self.offload_box.isChecked(),
                self.transcoders_device_combo: self.method == ATTRIBUTION and self.transcoders is not None}
        for widget, visible in rows.items():
            self.form.setRowVisible(widget, visible)
        self.prompt_edit.setEnabled((not circuit or pair) and (circuit or not self.messages_file))
        if pair:
            self.target_edit.setToolTip("Answer to the clean prompt, e.g. ' Paris' (empty: the model's top token)")
            self.foil_edit.setToolTip("Answer to the corrupted prompt, e.g. ' Rome' (empty: the model's top token there)")
        else:
            self.target_edit.setToolTip("Token to explain, e.g. ' Paris' or #1234 (empty: the model's top token)")
            self.foil_edit.setToolTip("Contrast token: explain target − foil logit difference")
        self.settings_changed.emit()

    @property
    def dtype(self) -> str:
        return self.dtype_combo.currentText()

    @property
    def placement(self) -> PlacementSettings:
        """Where the model's layers go: a memory budget counts only with Offload ticked (the box shows them)."""
        offload = self.offload_box.isChecked()
        return PlacementSettings(offload=offload,
                                 max_gpu_memory=(self.gpu_memory_edit.text().strip() or None) if offload else None,
                                 max_cpu_memory=(self.cpu_memory_edit.text().strip() or None) if offload else None,
                                 transcoders_device=self.transcoders_device_combo.currentText())

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
        self.pairs_label.setText(f"<tt>{escape(Path(path).name)}</tt>" if path else "no file chosen")
        self.pairs_label.setToolTip(path)

    # -- chat form -----------------------------------------------------------------------------------
    def _chat_toggled(self, checked: bool) -> None:
        if not checked and self.messages_file:  # a conversation is chat: unticking Chat goes back to the prompt
            self.set_conversation("")
        self._update_rows()

    def open_conversation(self) -> bool:
        """Ask for a JSON file of messages and trace that conversation (raises ``CircuitDeskError``
        when the file is not one); False when the dialog was cancelled."""
        path, _ = QFileDialog.getOpenFileName(self, "Open a conversation (JSON messages)", "",
                                              "Conversations (*.json);;All files (*)")
        if not path:
            return False
        self.set_conversation(path)
        return True

    def set_conversation(self, path: str) -> None:
        """Trace the conversation in ``path`` (read and checked now), with Chat on; "" goes back to
        the prompt box."""
        if not path:
            self.messages_file = ""
            self.conversation_label.setText("")
            self.conversation_label.setToolTip("")
            self._update_rows()
            return
        conv = read_messages(path)
        self.messages_file = path
        self.conversation_label.setText(f"<tt>{escape(Path(path).name)}</tt> — {escape(conv.summary(40))}")
        self.conversation_label.setToolTip(path + "\n\n" + "\n".join(
            f"{m.role}: {m.content if len(m.content) < 200 else m.content[:199] + '…'}" for m in conv.messages))
        if self.method == CIRCUIT:
            self.method_combo.setCurrentText(ATTRIBUTION)
        self.chat_box.setChecked(True)
        self._update_rows()

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

    # -- the run it asks for -----------------------------------------------------------------------
    def request(self) -> RunRequest:
        """The run the panel shows, as a request."""
        return RunRequest(
            spec=self.spec, device=self.device_combo.currentText(), prompt=self.prompt_edit.toPlainText(),
            top_k=self.top_k.value(), method=self.method, target=self.target_edit.text() or None,
            foil=self.foil_edit.text() or None, max_nodes=self.max_nodes.value(), transcoders=self.transcoders,
            task=self.task, corrupted=self.corrupted_edit.text(), pairs_file=self.pairs_file,
            scoring=self.scoring_combo.currentText(), n_pairs=self.n_pairs.value(), chat=self.chat_box.isChecked(),
            system=self.system_edit.text(), messages_file=self.messages_file, dtype=self.dtype,
            placement=self.placement)

    def apply(self, req: RunRequest) -> None:
        """Show ``req`` in the panel (``request()`` then gives it back)."""
        self.select_spec(req.spec)
        self.device_combo.setCurrentText(req.device)
        self.show_placement(req.dtype, req.placement)
        self.prompt_edit.setPlainText(req.prompt)
        self.top_k.setValue(req.top_k)
        self.method_combo.setCurrentText(req.method)
        self.target_edit.setText(req.target or "")
        self.foil_edit.setText(req.foil or "")
        self.max_nodes.setValue(req.max_nodes)
        self.set_transcoders(req.transcoders)
        if req.pairs_file:
            self.set_pairs_file(req.pairs_file)
        self.task_combo.setCurrentIndex(self.task_combo.findData(req.task))
        self._previous_task = self.task_combo.currentIndex()
        self.set_corrupted(req.corrupted)
        self.scoring_combo.setCurrentText(req.scoring)
        self.n_pairs.setValue(req.n_pairs)
        self.system_edit.setText(req.system)
        if req.messages_file != self.messages_file:
            self.set_conversation(req.messages_file)
        self.chat_box.setChecked(req.chat or bool(req.messages_file))

    def show_placement(self, dtype: str, placement: PlacementSettings) -> None:
        """Show a precision and a placement (a memory budget ticks Offload, as on the command line)."""
        self.dtype_combo.setCurrentText(dtype)
        self.offload_box.setChecked(placement.offloaded)
        self.gpu_memory_edit.setText(placement.max_gpu_memory or "")
        self.cpu_memory_edit.setText(placement.max_cpu_memory or "")
        self.transcoders_device_combo.setCurrentText(placement.transcoders_device)

    def ask(self, **changes) -> None:
        """Change some of the settings shown (``RunRequest`` field names)."""
        self.apply(replace(self.request(), **changes))

    def set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)

    # -- model choice --------------------------------------------------------------------------------
    def _model_chosen(self, _index: int) -> None:
        data = self.model_combo.currentData()
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
        self.model_combo.blockSignals(True)
        self.select_spec(path or self._previous_spec)
        self.model_combo.blockSignals(False)
        if path:
            self._previous_spec = path
            try:  # listed next time, here and by `circuitdesk models`
                add_model_path(path)
            except CircuitDeskError as err:
                log.info("model path not remembered: %s", err)

    def show_loading(self, req: RunRequest) -> None:
        """The first run of a model loads it first: say so where its facts appear."""
        how = f"{req.device}, {req.dtype}" + (", offloading what does not fit" if req.placement.offloaded else "")
        self.model_info.setText(f"Loading <b>{escape(self.model_combo.currentText())}</b> ({escape(how)})…")

    def show_model(self, model) -> None:
        f = model.facts
        self.model_info.setText(
            f"<b>{escape(model.name)}</b><br>{f.family} · {f.n_layers} layers · {f.n_heads} heads "
            f"({f.n_kv_heads} kv) · d_model {f.d_model} · {f.n_params / 1e6:.1f}M params<br>"
            f"device {model.device} · {str(model.dtype).removeprefix('torch.')}{escape(_placed(model))}<br>"
            f"sha256 <tt>{model.fingerprint.sha256[:16]}…</tt>"
        )


def _placed(model) -> str:
    """Where an offloaded model's parts are (" · offloaded: 30 on cuda:0, 2 on cpu"); "" when all on one device."""
    from core.models.offload import describe, is_offloaded  # deferred: torch is loaded once a model is

    if not is_offloaded(model.device_map):
        return ""
    return " · offloaded: " + ", ".join(f"{n} on {dev}" for dev, n in describe(model.device_map).items())

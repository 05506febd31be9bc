"""The Circuit Desk main window: composition only. It makes the shared state, the job runner and
the parts of the workbench, puts them in their places and wires them; what each part does lives
in its own module:

* ``desktop.panel`` (model & prompt), ``desktop.runs`` (runs and interventions),
  ``desktop.predictions``, ``desktop.graph_pane``, ``desktop.heatmap_pane``, ``desktop.inspector``,
  ``desktop.findings``, ``desktop.jobs_pane``, ``desktop.suggestions`` (suggested groups) — the
  panes read ``core.selection.WorkbenchState``;
* ``desktop.documents`` (save, open, autosave, recovery, recent, title), ``desktop.exports``
  (images, PDF report), ``desktop.status`` (progress, cancel, errors), ``desktop.atlas`` (the
  feature atlas of the graph on show: found, opened, built);
* ``desktop.actions``: every menu command as a declaration; menus and enablement derive from it.

Start-up imports only Qt and torch-free parts of core, so the window shows before torch loads;
models load on a worker thread the first time a run needs them.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtWidgets import QApplication, QDockWidget, QMainWindow, QStackedWidget, QTabWidget

import core
from core.analysis import ATTRIBUTION, CIRCUIT, PREDICT
from core.errors import CircuitDeskError
from core.models.catalog import DEFAULT_SPEC, list_models
from core.selection import HOVER, VIEW, WorkbenchState
from core.settings import PlacementSettings
from desktop.actions import DEMO_CORRUPTED, DEMO_PROMPT, Actions
from desktop.atlas import AtlasController
from desktop.comparison import ComparisonController
from desktop.documents import Documents
from desktop.exports import Exports
from desktop.findings import FindingsPane
from desktop.graph_pane import GraphPane
from desktop.heatmap_pane import HeatmapPane
from desktop.inspector import Inspector
from desktop.jobs import JobRunner
from desktop.jobs_pane import JobsPane
from desktop.logs import setup_logging
from desktop.panel import ModelPanel
from desktop.predictions import PredictionsView
from desktop.runs import GRAPH_TAB, PREDICTIONS_TAB, RunController
from desktop.slot_errors import SlotErrorHook
from desktop.start_page import StartPage
from desktop.status import StatusBar
from desktop.suggestions import SuggestionsDialog

GUI_METHODS = {"attribution": ATTRIBUTION, "circuit": CIRCUIT, "predict": PREDICT}  # `circuitdesk gui --method`


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle(f"Circuit Desk {core.__version__}")
        self.settings = settings or QSettings("CircuitDesk", "CircuitDesk")
        self.state = WorkbenchState()
        self.runner = JobRunner(self)

        # the panes
        self.panel = ModelPanel()
        self.predictions = PredictionsView()
        self.graph_pane = GraphPane(self.state)
        self.heatmap = HeatmapPane(self.state)
        self.inspector = Inspector(self.state)
        self.findings = FindingsPane(self.state)
        self.jobs = JobsPane(self.runner)
        self.suggestions = SuggestionsDialog(self.state, self)  # Graph → Suggest Groups… (non-modal)
        self.workspace = QTabWidget()
        self.workspace.setDocumentMode(True)
        self.workspace.addTab(self.graph_pane, "Circuit graph")
        self.workspace.addTab(self.predictions, "Predictions")
        self.central = QStackedWidget()  # the start page until there is an analysis, then the workspace
        self.central.addWidget(self.workspace)
        self.setCentralWidget(self.central)
        left, bottom, right = (Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.BottomDockWidgetArea,
                               Qt.DockWidgetArea.RightDockWidgetArea)
        self.model_dock = self._dock("Model && prompt", "modelDock", self.panel, left, 300)
        self.heatmap_dock = self._dock("Heatmap", "heatmapDock", self.heatmap, bottom)
        self.inspector_dock = self._dock("Inspector", "inspectorDock", self.inspector, right, 320)
        self.findings_dock = self._dock("Findings", "findingsDock", self.findings, bottom)
        self.jobs_dock = self._dock("Jobs", "jobsDock", self.jobs, bottom)
        # the inspector runs the window's full height (a feature's atlas card is tall); the heatmap
        # sits under the graph whose columns it shares
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.heatmap_dock, self.jobs_dock)
        self.tabifyDockWidget(self.heatmap_dock, self.findings_dock)
        self.heatmap_dock.raise_()

        # the parts that act: status bar, runs, documents, exports, and the menus' actions
        self.actions = Actions(self)
        self.actions.add_docks((self.model_dock, self.heatmap_dock, self.inspector_dock, self.jobs_dock,
                                self.findings_dock))
        self.status = StatusBar(self, self.runner)
        self.runs = RunController(self.state, self.panel, self.predictions, self.runner, self.status)
        self.documents = Documents(self, self.state, self.runner, self.status, self.settings, self.actions.recent_menu)
        self.comparisons = ComparisonController(self, self.documents, self.status)
        self.atlas = AtlasController(self, self.state, self.runner, self.status, self.settings, self.runs, self.panel)
        self.exports = Exports(self, self.state, {"graph": self.graph_pane, "heatmap": self.heatmap}, self.documents,
                               self.runner, self.status, self.settings)
        self.start_page = StartPage([
            ("Load the default model", "SmolLM2-135M-Instruct, embedded: see what it predicts for the prompt.",
             self.actions["run.load_default"]),
            ("Trace the demo prompt", f"The attribution graph of “{DEMO_PROMPT}” → “ Paris”: "
                                      "the neurons and paths behind the answer.", self.actions["run.demo"]),
            ("Open a session…", "A .cdesk file saved here or by `circuitdesk trace` / `circuit` (Ctrl+Alt+O).",
             self.actions["file.open_session"]),
            ("Open a model folder…", "A Hugging Face folder of your own model (Ctrl+O).",
             self.actions["file.open_model_folder"]),
        ])
        self.central.insertWidget(0, self.start_page)
        self.central.setCurrentWidget(self.start_page)

        # wiring: user actions go to the state or a controller; panes follow the state
        self.panel.run_button.clicked.connect(self.runs.run)
        self.panel.cancel_button.clicked.connect(self.status.cancel)
        self.inspector.intervention_requested.connect(self.runs.intervene)
        self.runs.tab_wanted.connect(self._show_tab)
        self.comparisons.tab_wanted.connect(self._show_tab)
        self.findings.notice.connect(self.status.say)
        self.suggestions.notice.connect(self.status.say)
        self.documents.about_to_save.connect(self.findings.commit)
        self.documents.recovery_changed.connect(self.actions.update)
        self.status.running_changed.connect(self.panel.set_running)
        self.status.running_changed.connect(lambda _running: self.actions.update())
        self.panel.settings_changed.connect(self.actions.update)
        self.state.subscribe(self._state_changed)
        self.actions.update()

        self.panel.set_models(list_models(), current=DEFAULT_SPEC)
        self.panel.prompt_edit.setPlainText(DEMO_PROMPT)
        self.panel.set_corrupted(DEMO_CORRUPTED)
        self.resize(1400, 900)
        self.resizeDocks([self.heatmap_dock], [300], Qt.Orientation.Vertical)
        self._restore_layout()

    def _dock(self, title: str, name: str, widget, area, min_width: int = 0) -> QDockWidget:
        d = QDockWidget(title, self)
        d.setObjectName(name)
        d.setWidget(widget)
        if min_width:
            d.setMinimumWidth(min_width)
        self.addDockWidget(area, d)
        return d

    def _state_changed(self, change) -> None:
        if change.what == VIEW and self.state.view is not None:
            self._show_tab("")
        if change.what != HOVER:  # hovering changes nothing an action depends on (and comes often)
            self.actions.update()

    def _show_tab(self, tab: str) -> None:
        """The workspace replaces the start page (for good), on the tab a result is best seen in."""
        self.central.setCurrentWidget(self.workspace)
        widget = {GRAPH_TAB: self.graph_pane, PREDICTIONS_TAB: self.predictions}.get(tab)
        if widget is not None:
            self.workspace.setCurrentWidget(widget)

    # -- lifecycle ---------------------------------------------------------------------------------
    def _restore_layout(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event) -> None:
        if not self.documents.may_discard("closing"):
            event.ignore()
            return
        self.documents.closed_cleanly()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        if self.runner.busy:
            self.status.say("Cancelling the running job…")
        self.runner.shutdown()
        self.atlas.shutdown()
        super().closeEvent(event)


# ---------------------------------------------------------------------------------------------
def run_gui(
    model: str | None = None,
    prompt: str | None = None,
    chat=None,
    device: str = "auto",
    method: str = "attribution",
    corrupted: str | None = None,
    trace: bool = False,
    screenshot: str | None = None,
    quit_after_trace: bool = False,
    comparison: str | None = None,
    dtype: str = "float32",
    placement=None,
) -> int:
    setup_logging()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Circuit Desk")
    app.setOrganizationName("CircuitDesk")
    window = MainWindow()
    errors = SlotErrorHook(window.status.show_error).install()  # an exception in a slot: dialog + log
    if model:
        window.panel.select_spec(model)
    if prompt is not None:
        window.panel.prompt_edit.setPlainText(prompt)
    if chat is not None:  # core.settings.ChatSettings: --chat, --system, --messages
        window.panel.chat_box.setChecked(chat.chat)
        window.panel.system_edit.setText(chat.system or "")
        if chat.messages:
            try:
                window.panel.set_conversation(chat.messages)
            except CircuitDeskError as err:
                window.status.show_error(str(err))
    if device:
        window.panel.device_combo.setCurrentText(device)
    window.panel.show_placement(dtype, placement or PlacementSettings())  # --dtype, --offload, --max-gpu-memory, …
    window.panel.method_combo.setCurrentText(GUI_METHODS.get(method, ATTRIBUTION))
    if corrupted is not None:
        window.panel.set_corrupted(corrupted)
    window.show()
    if comparison is not None:  # in its own window, over the workbench (a bad file: the error dialog)
        window.comparisons.open(comparison)

    def after_run() -> None:
        if screenshot:
            QApplication.processEvents()  # let the layout settle before taking the picture
            shown = window.comparisons.window
            (shown if comparison is not None and shown is not None else window).grab().save(screenshot)
        if quit_after_trace:
            app.exit(0 if window.status.last_error is None else 1)

    if trace:
        window.status.job_finished.connect(after_run)  # connected before the run starts: nothing is missed
        QTimer.singleShot(0, window.actions["run.run"].trigger)
    elif screenshot:
        QTimer.singleShot(300, after_run)
    try:
        return app.exec()
    finally:
        errors.uninstall()

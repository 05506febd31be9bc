"""The workbench's commands as data: one declaration per action (id, text, shortcut, menu, tip,
handler, and *when* it is enabled as a predicate of the window's state), in the style of
napari's ``qactions``. The menus are built from the declarations and enablement is derived
from the predicates (``Actions.update``), never set by hand; a test can then trigger every
action in every state.

Handlers and predicates receive the main window, the composition root, and reach the part they
need through it (``w.documents``, ``w.runs``, ``w.state``, ...); this module never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QInputDialog, QMainWindow, QMenu, QMessageBox

import core
from core.analysis import ATTRIBUTION, PREDICT
from core.errors import CircuitDeskError
from core.models.catalog import DEFAULT_SPEC

DEMO_PROMPT = "The capital of France is"
DEMO_CORRUPTED = "The capital of Italy is"  # for a component circuit of the demo prompt
MENUS = ("&File", "&Run", "&Graph", "&Tools", "&View", "&Help")
RECENT = "Open &Recent"  # the File menu's submenu of recent sessions (filled by the documents)

Handler = Callable[[QMainWindow], object]
Predicate = Callable[[QMainWindow], bool]


def showing(w) -> bool:
    return w.state.view is not None


def attribution_shown(w) -> bool:
    return w.state.view is not None and w.state.view.kind == "attribution"


def idle(w) -> bool:
    return not w.runner.busy


@dataclass(frozen=True)
class ActionSpec:
    id: str
    text: str
    menu: str  # one of MENUS
    handler: Handler
    shortcut: str | QKeySequence.StandardKey | None = None
    tip: str = ""
    enabled: Predicate | None = None  # None: always
    section: int = 0  # a separator goes between sections of one menu


# -- handlers that are more than one call -----------------------------------------------------------
def load_default_model(w) -> None:
    """Start page: load the default model by running a next-token prediction on it."""
    w.panel.ask(spec=DEFAULT_SPEC, method=PREDICT)
    w.actions["run.run"].trigger()


def run_demo(w) -> None:
    """Start page: the attribution graph of the demo prompt on the default model."""
    w.panel.ask(spec=DEFAULT_SPEC, method=ATTRIBUTION, prompt=DEMO_PROMPT)
    w.actions["run.run"].trigger()


def open_conversation(w) -> None:
    """Trace a conversation: a JSON file of messages, put to the model in its chat template."""
    try:
        opened = w.panel.open_conversation()
    except CircuitDeskError as err:
        w.status.show_error(str(err))
        return
    if opened:
        w.status.say("Conversation opened: Run traces the assistant's next token (or the first token of its "
                     "final answer, when the conversation ends with one).")


def focus_find(w) -> None:
    w.workspace.setCurrentWidget(w.graph_pane)
    w.graph_pane.find_edit.setFocus()
    w.graph_pane.find_edit.selectAll()


def group_selection(w, label: str | None = None) -> None:
    if len(w.state.selected) < 2:
        w.status.say("Select at least two nodes to group (shift-click adds to the selection).")
        return
    if label is None:
        label, ok = QInputDialog.getText(w, "Group nodes", "Label for the supernode:")
        if not ok:
            return
    if w.state.group(label, source="window") is None:
        w.status.say("Nothing grouped: give a label, and pick nodes not already in a group.")


def ungroup_selection(w) -> None:
    labels = {g.label for n in w.state.selected if (g := w.state.group_of(n)) is not None}
    if not labels:
        w.status.say("Select a supernode to ungroup it.")
    for label in sorted(labels):
        w.state.ungroup(label, source="window")


def about(w) -> None:
    QMessageBox.about(w, "About Circuit Desk",
                      f"Circuit Desk {core.__version__}<br>Circuit tracing for open-weight language models, offline.")


Keys = QKeySequence.StandardKey
ACTIONS: tuple[ActionSpec, ...] = (
    # File
    ActionSpec("file.open_session", "Open &Session…", "&File", lambda w: w.documents.open(), "Ctrl+Alt+O",
               "Open a .cdesk session file"),
    ActionSpec("file.save", "&Save Session", "&File", lambda w: w.documents.save(), Keys.Save,
               "Save the graph on show with its groups, pins and interventions", showing),
    ActionSpec("file.save_as", "Save Session &As…", "&File", lambda w: w.documents.save(ask=True), Keys.SaveAs,
               enabled=showing),
    ActionSpec("file.recover", "Recover &Unsaved Work", "&File", lambda w: w.documents.recover(), None,
               "Open what was autosaved before Circuit Desk last closed without saving",
               lambda w: w.documents.recoverable),
    ActionSpec("file.open_conversation", "Open &Conversation…", "&File", open_conversation, "Ctrl+Shift+M",
               "Trace a chat conversation: a JSON file of {role, content} messages, in the model's chat template"),
    ActionSpec("file.open_comparison", "Open Co&mparison…", "&File", lambda w: w.comparisons.open(), "Ctrl+Alt+C",
               "Browse a behaviour comparison written by circuitdesk compare (its comparison.json): the nodes that "
               "differ between groups or model versions, and each case's own graph"),
    ActionSpec("file.open_model_folder", "Open Model &Folder…", "&File", lambda w: w.panel.open_model_folder(),
               "Ctrl+O", section=1),
    ActionSpec("file.open_gguf", "Open &GGUF File…", "&File", lambda w: w.panel.open_gguf_file(), "Ctrl+Shift+O",
               section=1),
    ActionSpec("file.export_graph", "&Export Graph Image…", "&File", lambda w: w.exports.image("graph"), "Ctrl+E",
               "Save the circuit graph as PNG or SVG (vector)", showing, section=2),
    ActionSpec("file.export_heatmap", "Export &Heatmap Image…", "&File", lambda w: w.exports.image("heatmap"),
               "Ctrl+Shift+E", "Save the heatmap as PNG or SVG (vector)", showing, section=2),
    ActionSpec("file.report", "Export &Report…", "&File", lambda w: w.exports.report(), "Ctrl+R",
               "Write the PDF audit report of the saved session", lambda w: showing(w) and idle(w), section=3),
    ActionSpec("file.auditor", "Auditor &Name…", "&File", lambda w: w.exports.ask_auditor(), None,
               "The name printed on report covers", section=3),
    ActionSpec("file.quit", "&Quit", "&File", lambda w: w.close(), Keys.Quit, section=4),
    # Run
    ActionSpec("run.run", "&Run Prompt", "&Run", lambda w: w.runs.run(), "Ctrl+Return", "Run the prompt on the model"),
    ActionSpec("run.cancel", "&Cancel", "&Run", lambda w: w.status.cancel(), "Esc", "Cancel the running job",
               lambda w: w.runner.busy),
    ActionSpec("run.load_default", "Load the &Default Model", "&Run", load_default_model, None,
               "Load SmolLM2-135M-Instruct and show its next-token predictions", section=1),
    ActionSpec("run.demo", "Trace the De&mo Prompt", "&Run", run_demo, None,
               f"The attribution graph of “{DEMO_PROMPT}” on the default model", section=1),
    ActionSpec("run.focus_prompt", "Focus &Prompt", "&Run", lambda w: w.panel.prompt_edit.setFocus(), "Ctrl+L",
               enabled=lambda w: w.panel.prompt_edit.isEnabled(), section=2),  # a generated task has no prompt
    # Graph
    ActionSpec("graph.fit", "&Fit View", "&Graph", lambda w: w.graph_pane.fit(), "Ctrl+0", "Fit the graph in the pane",
               showing),
    ActionSpec("graph.find", "&Find Node…", "&Graph", focus_find, Keys.Find, enabled=showing),
    ActionSpec("graph.pin", "&Pin Selection", "&Graph", lambda w: w.state.pin(source="window"), "Ctrl+P",
               "Keep the selected nodes visible at any threshold", showing, section=1),
    ActionSpec("graph.unpin_all", "&Unpin All", "&Graph", lambda w: w.state.unpin_all(source="window"),
               "Ctrl+Shift+P", enabled=showing, section=1),
    ActionSpec("graph.group", "&Group Selection…", "&Graph", group_selection, "Ctrl+G",
               "Group the selected nodes into a labelled supernode", showing, section=1),
    ActionSpec("graph.ungroup", "U&ngroup", "&Graph", ungroup_selection, "Ctrl+Shift+G",
               "Break the selected supernode up again", showing, section=1),
    ActionSpec("graph.suggest_groups", "Suggest Gr&oups…", "&Graph", lambda w: w.suggestions.present(), "Ctrl+Alt+G",
               "Propose supernodes: nodes at one token, a few layers apart, whose edges are alike",
               attribution_shown, section=1),
    ActionSpec("graph.clear_selection", "Clear &Selection", "&Graph",
               lambda w: w.state.clear_selection(source="window"), "Ctrl+Shift+A", enabled=showing, section=1),
    ActionSpec("graph.intervene", "Run &Intervention", "&Graph", lambda w: w.inspector.request_intervention(),
               "Ctrl+I", "Run the inspector's edit on the selected node",
               lambda w: w.inspector.run_button.isEnabled() and idle(w), section=2),
    # Tools
    ActionSpec("tools.open_atlas", "&Open Feature Atlas…", "&Tools", lambda w: w.atlas.open_dialog(), "Ctrl+Alt+A",
               "Describe the graph's features with the atlas in a folder (built for the graph's model and basis)",
               attribution_shown),
    ActionSpec("tools.build_atlas", "&Build Feature Atlas…", "&Tools", lambda w: w.atlas.build_dialog(),
               "Ctrl+Shift+B",
               "Build the atlas of what each neuron (or transcoder feature) of the panel's model responds to, "
               "from a corpus or from text the model writes itself", idle),
    # Help
    ActionSpec("help.about", "&About Circuit Desk", "&Help", about),
)


class Actions:
    """The window's QActions, built from ``ACTIONS`` into its menu bar (``w.actions[id]``)."""

    def __init__(self, window: QMainWindow, specs: tuple[ActionSpec, ...] = ACTIONS) -> None:
        self.window, self.specs = window, specs
        self.menus: dict[str, QMenu] = {title: window.menuBar().addMenu(title) for title in MENUS}
        self.recent_menu: QMenu | None = None
        self._qactions: dict[str, QAction] = {}
        last_section: dict[str, int] = {}
        for spec in specs:
            menu = self.menus[spec.menu]
            if spec.menu in last_section and spec.section != last_section[spec.menu]:
                menu.addSeparator()
            last_section[spec.menu] = spec.section
            self._qactions[spec.id] = self._build(spec, menu)
            if spec.id == "file.open_session":
                self.recent_menu = menu.addMenu(RECENT)

    def _build(self, spec: ActionSpec, menu: QMenu) -> QAction:
        act = QAction(spec.text, self.window)
        # triggered(bool) would hand its checked flag to the handler: handlers get the window only
        act.triggered.connect(lambda _checked=False, spec=spec: spec.handler(self.window))
        if spec.shortcut:
            act.setShortcut(QKeySequence(spec.shortcut))
        if spec.tip:
            act.setStatusTip(spec.tip)
        menu.addAction(act)
        self.window.addAction(act)  # shortcuts work with the menu bar hidden too
        return act

    def __getitem__(self, action_id: str) -> QAction:
        return self._qactions[action_id]

    def add_docks(self, docks) -> None:
        """The View menu: a show/hide toggle for each dock."""
        for d in docks:
            self.menus["&View"].addAction(d.toggleViewAction())

    def update(self) -> None:
        """Enable the actions that make sense now (after any change of what is on show or running)."""
        for spec in self.specs:
            if spec.enabled is not None:
                self._qactions[spec.id].setEnabled(bool(spec.enabled(self.window)))

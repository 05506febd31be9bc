"""Every menu action driven as a person drives it: through the QAction and through its shortcut
(key events on the window), in each state of the workbench; the effect of each is asserted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from pypdf import PdfReader
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
import shiboken6
from PySide6.QtWidgets import QApplication, QDockWidget, QFileDialog, QInputDialog, QMessageBox

from core.paths import file_sha256


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
        w.actions["graph.group"].trigger()
    else:
        activate(qtbot, w)
        qtbot.keyClick(w, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier)
    assert len(asked) == 1
    assert [(g.label, set(g.nodes)) for g in w.state.groups] == [("subject", set(nodes))]
    assert [t.toPlainText() for t in w.graph_pane.labels] == ["⟨subject⟩"]


# ---------------------------------------------------------------------------------------------
# Every action of every menu, in every state

NOTHING, RECOVERY, GRAPH, CIRCUIT, TASK, OPENED = ("nothing on show", "unsaved work to recover", "attribution graph",
                                                   "circuit of a prompt pair", "circuit of a built-in task",
                                                   "opened session")
STATES = (NOTHING, RECOVERY, GRAPH, CIRCUIT, TASK, OPENED)
ALL = frozenset(STATES)
SHOWING = frozenset({GRAPH, CIRCUIT, TASK, OPENED})  # a graph or circuit is on show
RAN = frozenset({GRAPH, CIRCUIT, TASK})  # ...made by a run here: the model is loaded for it


class Trial:
    """One action fired once (through the QAction or its shortcut) in a fresh window."""

    def __init__(self, world: "World", state: str, action_path: str, how: str) -> None:
        self.world, self.state, self.path, self.how = world, state, action_path, how
        self.qtbot, self.monkeypatch, self.tmp = world.qtbot, world.monkeypatch, world.tmp_path
        self.w = world.build(state)
        self.action = dict(menu_actions(self.w))[action_path]
        self.n = world.next_number()

    def answer(self, cls, name: str, fn) -> list:
        """Answer a static dialog; returns the list of the calls it received."""
        calls = []
        self.monkeypatch.setattr(cls, name, lambda *a, **k: calls.append(a) or fn(*a))
        return calls

    def fire(self) -> None:
        if self.how == "action":
            self.action.trigger()
        else:
            activate(self.qtbot, self.w)
            self.qtbot.keySequence(self.w, self.action.shortcut())

    def file(self, stem: str, suffix: str) -> Path:
        return self.tmp / f"{stem}-{self.n}{suffix}"


class World:
    """Windows in each state, built fresh for every trial (a tiny-model run takes ~0.1 s)."""

    def __init__(self, workbench, qtbot, monkeypatch, tmp_path) -> None:
        self.workbench, self.qtbot, self.monkeypatch, self.tmp_path = workbench, qtbot, monkeypatch, tmp_path
        self._count = 0
        self._session: Path | None = None
        self._atlas: Path | None = None
        self.comparison: Path | None = None  # a comparison folder (the session's comparison_dir)
        self.windows = []

    @property
    def atlas(self) -> Path:
        """A feature atlas of the tiny llama model (built once, outside the folders searched)."""
        if self._atlas is None:
            from core.atlas.build import build_atlas
            from core.settings import AtlasSettings

            corpus = self.corpus
            self._atlas = build_atlas(self.workbench._model(), self.tmp_path / "atlas-of-tiny",
                                      AtlasSettings(context=8, top_k=3), corpus=[str(corpus)]).path
        return self._atlas

    @property
    def corpus(self) -> Path:
        """A small corpus of the tiny model's words."""
        path = self.tmp_path / "corpus.txt"
        if not path.exists():
            path.write_text("the cat and the dog went to the store . when mary and john went to paris , "
                            "john gave a drink to mary . the capital of france is paris .\n" * 3)
        return path

    def next_number(self) -> int:
        self._count += 1
        return self._count

    @property
    def session_file(self) -> Path:
        """A saved attribution-graph session (made once, by another window with its own settings)."""
        if self._session is None:
            maker = self.workbench.graph("maker.ini", register=False)
            self._session = self.tmp_path / "shared.cdesk"
            assert maker.documents.save(str(self._session))
            self.dispose(maker)
        return self._session

    def build(self, state: str):
        wb, n = self.workbench, self.next_number()
        settings = f"s{n}.ini"  # each window its own settings: its recent list is its own
        if state == NOTHING:
            w = wb.window(settings, register=False)
        elif state == RECOVERY:  # a window that crashed with unsaved work left its autosave behind
            crashed = wb.graph(settings, register=False)
            assert crashed.documents.autosave()
            crashed.documents.autosave_timer.stop()
            crashed.hide()
            self.windows.append(crashed)
            w = wb.window(settings, register=False)
        elif state == GRAPH:
            w = wb.graph(settings, register=False)
        elif state == CIRCUIT:
            w = wb.circuit("prompt", settings, register=False)
        elif state == TASK:
            w = wb.circuit("induction", settings, register=False)
        else:
            w = wb.window(settings, register=False)
            assert w.documents.open(str(self.session_file))
        self.windows.append(w)
        return w

    def dispose_all(self) -> None:
        for w in self.windows:
            if shiboken6.isValid(w):
                self.dispose(w)
        self.windows.clear()
        QApplication.processEvents()  # the deleteLater()s happen here

    def dispose(self, w) -> None:
        """Close the window (as the app does: cancels and waits for its jobs) and free it now."""
        w.close()
        w.runner.shutdown()
        w.deleteLater()


def menu_actions(w) -> list[tuple[str, object]]:
    """(path, QAction) of every entry of every menu and submenu, e.g. 'File/Open Recent/a.cdesk'."""
    def name(text: str) -> str:
        return text.replace("&&", "\0").replace("&", "").replace("\0", "&")

    found = []

    def walk(menu, prefix: str) -> None:
        for act in menu.actions():
            if act.isSeparator():
                continue
            path = f"{prefix}/{name(act.text())}"
            if act.menu() is not None:
                found.append((path, act))  # the submenu itself: enabled or not
                walk(act.menu(), path)
            else:
                found.append((path, act))

    for top in w.menuBar().actions():
        walk(top.menu(), name(top.text()))
    return found


def case_key(path: str) -> str:
    """Recent-file entries are one case, whatever the file."""
    return "File/Open Recent/*" if path.startswith("File/Open Recent/") else path


# -- what each action must do (prepare; fire; assert) -------------------------------------------
def select_first(t: Trial, n: int = 1) -> list[int]:
    nodes = [int(i) for i in t.w.state.view.visible_nodes()[:n]]
    t.w.state.select(nodes)
    return nodes


def reopened(t: Trial, path: Path):
    """The file opened in a new window (as a person would after a restart)."""
    other = t.world.workbench.window(f"reopen-{t.n}.ini", register=False)
    t.world.windows.append(other)
    assert other.documents.open(str(path)), other.status.last_error
    return other


def check_open_session(t: Trial) -> None:
    path = t.world.session_file
    calls = t.answer(QFileDialog, "getOpenFileName", lambda *a: (str(path), ""))
    t.fire()
    assert len(calls) == 1 and t.w.documents.session_path == str(path) and t.w.state.analysis.opened is not None
    assert t.w.state.view is not None and t.w.windowTitle().startswith("shared.cdesk —")


def check_open_comparison(t: Trial) -> None:
    w = t.w
    if w.comparisons.window is not None:  # opened by the previous firing
        w.comparisons.window.close()
    calls = t.answer(QFileDialog, "getOpenFileName", lambda *a: (str(t.world.comparison / "comparison.json"), ""))
    t.fire()
    cw = w.comparisons.window
    assert len(calls) == 1 and cw.isVisible() and "tiny-study" in cw.title.text() and cw.table.model().rowCount()
    assert w.status.last_error is None


def check_open_recent(t: Trial) -> None:
    t.fire()  # no dialog: the path is the entry's
    assert t.w.documents.session_path == str(t.world.session_file) and t.w.state.view is not None


def check_save(t: Trial, ask: bool) -> None:
    w = t.w
    node = select_first(t)[0]
    t.w.actions["graph.pin"].trigger()  # something to save
    path = t.file("saved", ".cdesk")
    calls = t.answer(QFileDialog, "getSaveFileName", lambda *a: (str(path), ""))
    first = w.documents.session_path
    t.fire()
    if not ask and first is not None:  # Ctrl+S on an opened file writes it in place
        assert calls == [] and w.documents.session_path == first
        path = Path(first)
    else:
        assert len(calls) == 1 and w.documents.session_path == str(path)
    assert path.is_file() and not w.documents.dirty and w.windowTitle().startswith(path.name + " —")
    other = reopened(t, path)
    assert other.state.view.kind == w.state.view.kind and other.state.view.labels == w.state.view.labels
    assert node in other.state.pinned


def check_recover(t: Trial) -> None:
    t.fire()
    assert t.w.state.view is not None and t.w.documents.dirty and t.w.documents.session_path is None
    assert not t.action.isEnabled()  # recovered once


def check_open_folder(t: Trial) -> None:
    t.w.panel.select_spec("default")
    folder = t.world.workbench.spec
    t.answer(QFileDialog, "getExistingDirectory", lambda *a: folder)
    t.fire()
    assert t.w.panel.spec == folder


def check_open_gguf(t: Trial) -> None:
    path = t.file("model", ".gguf")
    path.write_bytes(b"GGUF")
    t.answer(QFileDialog, "getOpenFileName", lambda *a: (str(path), ""))
    t.fire()
    assert t.w.panel.spec == str(path)


def check_open_conversation(t: Trial) -> None:
    path = t.file("conversation", ".json")
    path.write_text('[{"role": "user", "content": "the cat"}]', encoding="utf-8")
    t.answer(QFileDialog, "getOpenFileName", lambda *a: (str(path), ""))
    t.fire()
    p = t.w.panel
    assert p.messages_file == str(path) and p.chat_box.isChecked() and not p.prompt_edit.isEnabled()
    assert p.request().chat_settings().messages == str(path) and t.w.status.last_error is None


def check_export_image(pane: str):
    def check(t: Trial) -> None:
        path = t.file(pane, ".png")
        t.answer(QFileDialog, "getSaveFileName", lambda *a: (str(path), ""))
        t.fire()
        assert not QImage(str(path)).isNull() and t.w.status.last_error is None
    return check


def check_report(t: Trial) -> None:
    w = t.w
    session, pdf = t.file("reported", ".cdesk"), t.file("report", ".pdf")
    asked = t.answer(QFileDialog, "getSaveFileName",
                     lambda *a: (str(session if "session" in a[1].lower() else pdf), ""))
    with t.qtbot.waitSignal(w.exports.report_written, timeout=60_000) as sig:
        t.fire()
    t.qtbot.waitUntil(lambda: not w.runner.busy)
    assert sig.args == [str(pdf)] and w.status.last_error is None
    assert len(asked) == (1 if t.state == OPENED else 2)  # an opened, unchanged session is not saved again
    cited = Path(w.documents.session_path)
    flat = "".join("".join(p.extract_text().split()) for p in PdfReader(pdf).pages)
    assert file_sha256(cited) in flat


def check_auditor(t: Trial) -> None:
    from desktop.report_pdf import AUDITOR_KEY

    t.answer(QInputDialog, "getText", lambda *a: ("A. Auditor", True))
    t.fire()
    assert t.w.settings.value(AUDITOR_KEY) == "A. Auditor"


def check_quit(t: Trial) -> None:
    t.fire()
    assert not t.w.isVisible()


def check_run(t: Trial) -> None:
    w = t.w
    with t.qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        t.fire()
    assert w.status.last_error is None, w.status.last_error
    assert w.state.view is not None and w.state.analysis.opened is None and w.jobs.states()[0] == "done"
    want = "circuit" if t.state in (CIRCUIT, TASK) else "attribution"
    assert w.state.view.kind == want


def check_start(method: str):
    """Load the Default Model / Trace the Demo Prompt: the default model (here the tiny one) runs."""
    def check(t: Trial) -> None:
        import desktop.actions
        from core.analysis import PREDICT

        t.monkeypatch.setattr(desktop.actions, "DEFAULT_SPEC", t.world.workbench.spec)
        with t.qtbot.waitSignal(t.w.status.job_finished, timeout=120_000):
            t.fire()
        w = t.w
        assert w.status.last_error is None, w.status.last_error
        assert w.panel.spec == t.world.workbench.spec and w.panel.method == method
        assert w.central.currentWidget() is w.workspace  # the start page made way
        if method == PREDICT:
            assert w.workspace.currentWidget() is w.predictions and w.predictions.table.rowCount() == 10
        else:
            assert w.state.view.kind == "attribution" and w.state.analysis.trace.prompt == desktop.actions.DEMO_PROMPT
    return check


def check_focus_prompt(t: Trial) -> None:
    t.w.graph_pane.plot.setFocus()
    t.fire()
    t.qtbot.waitUntil(t.w.panel.prompt_edit.hasFocus, timeout=5_000)


def check_fit(t: Trial) -> None:
    v, vb = t.w.state.view, t.w.graph_pane.plot.getViewBox()
    vb.setRange(xRange=(100, 101), yRange=(100, 101), padding=0)
    t.fire()
    (x0, x1), (y0, y1) = vb.viewRange()
    assert x0 <= v.x.min() and x1 >= v.x.max() and y0 <= v.y.min() and y1 >= v.y.max()


def check_find(t: Trial) -> None:
    t.w.workspace.setCurrentWidget(t.w.predictions)
    t.fire()
    assert t.w.workspace.currentWidget() is t.w.graph_pane
    t.qtbot.waitUntil(t.w.graph_pane.find_edit.hasFocus, timeout=5_000)


def check_pin(t: Trial) -> None:
    nodes = select_first(t, 2)
    t.fire()
    assert set(t.w.state.pinned) == set(nodes)


def check_unpin(t: Trial) -> None:
    t.w.state.pin(select_first(t, 2))
    t.fire()
    assert t.w.state.pinned == ()


def check_group(t: Trial) -> None:
    for g in list(t.w.state.groups):  # grouped by the previous firing
        t.w.state.ungroup(g.label)
    nodes = select_first(t, 2)
    t.answer(QInputDialog, "getText", lambda *a: ("pair", True))
    t.fire()
    assert [(g.label, set(g.nodes)) for g in t.w.state.groups] == [("pair", set(nodes))]


def check_ungroup(t: Trial) -> None:
    nodes = select_first(t, 2)
    t.w.state.group("pair")
    t.w.state.select(nodes[:1])
    t.fire()
    assert t.w.state.groups == []


def check_suggest_groups(t: Trial) -> None:
    from core.grouping import suggest_groups

    dialog = t.w.suggestions
    dialog.close()  # opened by the previous firing
    t.fire()
    assert dialog.isVisible() and dialog.info.text()
    expected = suggest_groups(t.w.state.view, t.w.state.groups)
    assert [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())] == [s.label for s in expected]


def check_clear_selection(t: Trial) -> None:
    select_first(t, 2)
    t.fire()
    assert t.w.state.selected == ()


def select_intervenable(t: Trial) -> None:
    w = t.w
    if w.state.view is None:
        return
    node = next((int(i) for i in w.state.view.visible_nodes() if w.inspector.intervenable(int(i))), None)
    if node is None:  # an opened session: nothing is intervenable without its model; select any node
        node = int(w.state.view.visible_nodes()[0])
    w.state.select([node])


def check_intervention(t: Trial) -> None:
    w = t.w
    with t.qtbot.waitSignal(w.status.job_finished, timeout=60_000):
        t.fire()
    assert w.status.last_error is None, w.status.last_error
    assert w.state.intervention is not None and "→" in w.inspector.result.text()


def check_dock_toggle(t: Trial) -> None:
    dock = next(d for d in t.w.findChildren(QDockWidget) if d.toggleViewAction() is t.action)
    hidden = dock.isHidden()
    t.fire()
    assert dock.isHidden() != hidden


def check_open_atlas(t: Trial) -> None:
    w = t.w
    w.state.set_atlas(None, "")  # opened by the previous firing
    calls = t.answer(QFileDialog, "getExistingDirectory", lambda *a: str(t.world.atlas))
    t.fire()
    assert len(calls) == 1
    t.qtbot.waitUntil(lambda: w.state.atlas is not None, timeout=30_000)
    assert w.state.atlas.path == t.world.atlas.resolve() and w.status.error_box is None


def check_build_atlas(t: Trial) -> None:
    w, out = t.w, t.file("atlas", "")
    t.answer(QFileDialog, "getOpenFileNames", lambda *a: ([str(t.world.corpus)], ""))
    t.answer(QFileDialog, "getExistingDirectory", lambda *a: str(out))
    t.fire()
    d = w.atlas.dialog
    t.qtbot.waitUntil(d.isVisible)
    d.spins["context"].setValue(8)
    d.add_files_button.click()
    d.browse_button.click()
    with t.qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        d.build_button.click()
    assert w.status.last_error is None, w.status.last_error
    assert (out / "atlas.json").is_file() and w.jobs.states()[0] == "done"
    if t.state in (GRAPH, OPENED):  # a graph of the tiny model is on show: the new atlas describes it
        t.qtbot.waitUntil(lambda: w.state.atlas is not None and w.state.atlas.path == out.resolve(), timeout=30_000)


def check_about(t: Trial) -> None:
    import core

    calls = t.answer(QMessageBox, "about", lambda *a: None)
    t.fire()
    assert len(calls) == 1 and core.__version__ in calls[0][2]


@dataclass(frozen=True)
class Case:
    enabled_in: frozenset
    check: Callable[[Trial], None]
    prepare: Callable[[Trial], None] | None = None  # what enables it (a selection), before the check
    fresh: bool = False  # its shortcut is tried in a new window (the action changed what it needs)


CASES = {
    "File/Open Session…": Case(ALL, check_open_session, fresh=True),
    "File/Open Recent": Case(frozenset({OPENED}), lambda t: None),  # the submenu; its entries below
    "File/Open Recent/*": Case(frozenset({OPENED}), check_open_recent, fresh=True),
    "File/Save Session": Case(SHOWING, lambda t: check_save(t, ask=False)),
    "File/Save Session As…": Case(SHOWING, lambda t: check_save(t, ask=True)),
    "File/Recover Unsaved Work": Case(frozenset({RECOVERY}), check_recover, fresh=True),
    "File/Open Conversation…": Case(ALL, check_open_conversation),
    "File/Open Comparison…": Case(ALL, check_open_comparison),
    "File/Open Model Folder…": Case(ALL, check_open_folder),
    "File/Open GGUF File…": Case(ALL, check_open_gguf),
    "File/Export Graph Image…": Case(SHOWING, check_export_image("graph")),
    "File/Export Heatmap Image…": Case(SHOWING, check_export_image("heatmap")),
    "File/Export Report…": Case(SHOWING, check_report, fresh=True),
    "File/Auditor Name…": Case(ALL, check_auditor),
    "File/Quit": Case(ALL, check_quit, fresh=True),
    "Run/Run Prompt": Case(ALL, check_run),
    "Run/Cancel": Case(frozenset(), lambda t: None),  # only while a job runs: test_cancel_…
    "Run/Load the Default Model": Case(ALL, check_start("Next-token prediction")),
    "Run/Trace the Demo Prompt": Case(ALL, check_start("Attribution graph")),
    "Run/Focus Prompt": Case(ALL - {TASK}, check_focus_prompt),  # a generated task has no prompt
    "Graph/Fit View": Case(SHOWING, check_fit),
    "Graph/Find Node…": Case(SHOWING, check_find),
    "Graph/Pin Selection": Case(SHOWING, check_pin),
    "Graph/Unpin All": Case(SHOWING, check_unpin),
    "Graph/Group Selection…": Case(SHOWING, check_group),
    "Graph/Ungroup": Case(SHOWING, check_ungroup),
    "Graph/Suggest Groups…": Case(frozenset({GRAPH, OPENED}), check_suggest_groups),  # attribution graphs only
    "Graph/Clear Selection": Case(SHOWING, check_clear_selection),
    "Graph/Run Intervention": Case(RAN, check_intervention, prepare=select_intervenable),
    "Tools/Open Feature Atlas…": Case(frozenset({GRAPH, OPENED}), check_open_atlas),  # attribution graphs only
    "Tools/Build Feature Atlas…": Case(ALL, check_build_atlas),
    "View/Model & prompt": Case(ALL, check_dock_toggle),
    "View/Heatmap": Case(ALL, check_dock_toggle),
    "View/Inspector": Case(ALL, check_dock_toggle),
    "View/Jobs": Case(ALL, check_dock_toggle),
    "View/Findings": Case(ALL, check_dock_toggle),
    "Help/About Circuit Desk": Case(ALL, check_about),
}


@pytest.mark.parametrize("state", STATES)
def test_every_menu_action_in_each_state(state, workbench, qtbot, monkeypatch, tmp_path, comparison_dir):
    """Each entry of each menu, found by walking the menu bar (a new action without a case here
    fails): disabled where it makes no sense (its shortcut then does nothing), and where enabled,
    fired through the QAction and through its shortcut, with its effect asserted each time."""
    workbench.reuse_runs(monkeypatch)
    world = World(workbench, qtbot, monkeypatch, tmp_path)
    world.comparison = comparison_dir
    probe = world.build(state)
    actions = menu_actions(probe)
    assert not {case_key(p) for p, _ in actions} - set(CASES), "menu actions without a test case"
    ways = {p: ("action",) if a.shortcut().isEmpty() else ("action", "shortcut") for p, a in actions}
    world.dispose(probe)
    for path, hows in ways.items():
        case = CASES[case_key(path)]
        t = None
        for how in hows:
            with monkeypatch.context() as patched:
                world.monkeypatch = patched
                if t is None or case.fresh:
                    t = Trial(world, state, path, how)
                else:  # the same window again: each check prepares what it needs
                    t.how, t.monkeypatch, t.n = how, patched, world.next_number()
                if case.prepare:
                    case.prepare(t)
                enabled = state in case.enabled_in
                assert t.action.isEnabled() == enabled, f"{path} should be {'en' if enabled else 'dis'}abled"
                if enabled:
                    case.check(t)
                elif how == "shortcut":  # its keys do nothing either
                    with qtbot.assertNotEmitted(t.action.triggered):
                        t.fire()
            world.monkeypatch = monkeypatch
        world.dispose_all()

import gc

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from core.analysis import model_key

PROMPT = "the cat and the dog"  # five tokens: a tiny-model trace takes a fraction of a second
CLEAN = "when mary and john went to the store , john gave a drink to"
CORRUPTED = "when mary and john went to the store , mary gave a drink to"


@pytest.fixture(autouse=True)
def _collect_after_each_test(qapp):
    yield
    for w in qapp.topLevelWidgets():
        w.deleteLater()
    qapp.processEvents()
    gc.collect()


@pytest.fixture(autouse=True)
def _unsaved_work_is_discarded(monkeypatch):
    """Windows closed by a test (or its teardown) would otherwise wait on a modal question."""
    from desktop.documents import Documents

    monkeypatch.setattr(Documents, "unsaved_choice", lambda self, why: "discard")


@pytest.fixture(autouse=True)
def _dialogs_never_block(monkeypatch):
    """A modal dialog a test did not answer (by monkeypatching it) fails the test instead of
    waiting for a click that never comes. Raised inside a slot, pytest-qt reports it."""

    def unanswered(*args, **kwargs):
        raise AssertionError(f"a modal dialog was opened that the test does not answer: {args[1:3]}")

    for cls, names in ((QFileDialog, ("getOpenFileName", "getSaveFileName", "getExistingDirectory")),
                       (QInputDialog, ("getText", "getInt", "getDouble", "getItem")),
                       (QMessageBox, ("about", "question", "information", "warning", "critical"))):
        for name in names:
            monkeypatch.setattr(cls, name, unanswered)


class Workbench:
    """Builds main windows in the states the GUI tests drive (every state from a fresh window;
    the tiny model is loaded once per test session and handed to each window)."""

    def __init__(self, qtbot, tmp_path, tiny_folder, tiny_model) -> None:
        self.qtbot, self.tmp_path = qtbot, tmp_path
        self.spec = str(tiny_folder("llama"))
        self._model = lambda: tiny_model("llama")

    def window(self, settings: str = "s.ini", register: bool = True):
        """A shown window on the tiny model (``register``: closed by qtbot after the test; else the
        caller disposes of it, and whatever is left is deleted after the test anyway)."""
        from desktop.app import MainWindow

        w = MainWindow(settings=QSettings(str(self.tmp_path / settings), QSettings.Format.IniFormat))
        if register:
            self.qtbot.addWidget(w)
        w.show()
        w.panel.select_spec(self.spec)
        w.panel.device_combo.setCurrentText("cpu")
        w.panel.prompt_edit.setPlainText(PROMPT)
        w.panel.max_nodes.setValue(100)
        w.runs.model, w.runs.model_key = self._model(), model_key(self.spec, "cpu")  # loaded once, not per window
        return w

    def run(self, w) -> None:
        with self.qtbot.waitSignal(w.status.job_finished, timeout=120_000):
            w.actions["run.run"].trigger()
        assert w.status.last_error is None, w.status.last_error

    def graph(self, settings: str = "s.ini", register: bool = True):
        w = self.window(settings, register)
        self.run(w)
        return w

    def circuit(self, task: str = "prompt", settings: str = "s.ini", register: bool = True):
        from core.analysis import CIRCUIT, PROMPT_PAIR

        w = self.window(settings, register)
        p = w.panel
        p.method_combo.setCurrentText(CIRCUIT)
        p.task_combo.setCurrentIndex(p.task_combo.findData(task))
        if task == PROMPT_PAIR:
            p.prompt_edit.setPlainText(CLEAN)
            p.corrupted_edit.setText(CORRUPTED)
            p.target_edit.setText(" mary")
            p.foil_edit.setText(" john")
        else:
            p.n_pairs.setValue(4)
        self.run(w)
        return w


    def reuse_runs(self, monkeypatch) -> None:
        """Windows that run the same request share its result (each gets its own view of it), so
        tests that need many fresh windows in one state pay for one trace."""
        import core.analysis_runs as runs
        from core.analysis import LOGIT_LENS, PREDICTION
        from core.view import from_attribution, from_circuit

        def remembered(real, view_of):
            cache = {}

            def run(model, req, ctx):
                if req not in cache:
                    cache[req] = real(model, req, ctx)
                traced, _view, data, prediction = cache[req]
                ctx.partial(PREDICTION, prediction)
                ctx.partial(LOGIT_LENS, data)
                return traced, view_of(traced), data, prediction
            return run

        monkeypatch.setattr(runs, "trace_prompt", remembered(runs.trace_prompt, lambda r: from_attribution(r.graph)))
        monkeypatch.setattr(runs, "circuit_prompt", remembered(runs.circuit_prompt, lambda r: from_circuit(r.result)))


@pytest.fixture
def workbench(qtbot, tmp_path, tiny_folder, tiny_model):
    return Workbench(qtbot, tmp_path, tiny_folder, tiny_model)


ATTRIBUTION_WORDS = ("cat", "dog", "red", "blue", "one", "two")
CIRCUIT_WORDS = ("cat", "dog", "red", "blue", "green")


@pytest.fixture(scope="session")
def comparison_dir(tiny_folder, tmp_path_factory):
    """A behaviour comparison written once per session by ``run_study``: six attribution cases in two
    groups and four circuit cases, on the tiny llama (model A) and a tiny llama of another seed (model
    B), so it has two sections, both contrasts, checks, circuit edge changes and every case's session."""
    from tiny_models import make_tiny_model

    from core.audit import load_suite
    from core.behaviour.study import run_study
    from core.settings import CompareSettings

    root = tmp_path_factory.mktemp("comparison")
    model_b = make_tiny_model("llama", root / "llama_b", seed=1)
    w = ATTRIBUTION_WORDS
    lines = ['name = "tiny-study"', f'model = "{tiny_folder("llama")}"', 'device = "cpu"', "[defaults]", "max_nodes = 30"]
    for i, word in enumerate(w):
        lines += ["[[cases]]", f'name = "c{i}"', f'prompt = "the {word} and the {w[(i + 3) % len(w)]} is"',
                  f'group = "{"x" if i % 2 else "y"}"']
    c = CIRCUIT_WORDS
    for i in range(4):
        lines += ["[[cases]]", f'name = "p{i}"', 'method = "circuit"', f'prompt = "the {c[i]} and the {c[i + 1]} is"',
                  f'corrupted = "the {c[i]} and the {c[(i + 2) % len(c)]} is"', f'answer = "{c[i + 1]}"',
                  f'counterfactual = "{c[(i + 2) % len(c)]}"', 'scoring = "eap"', "top_n = 20",
                  f'group = "{"x" if i % 2 else "y"}"']
    suite = root / "suite.toml"
    suite.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "out"
    run_study(load_suite(suite), out, CompareSettings(permutations=200, checks=1, model_b=str(model_b)))
    return out

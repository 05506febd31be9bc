"""The feature atlas in the workbench: which atlas describes the graph on show, and the Tools
menu's Open Feature Atlas… and Build Feature Atlas….

* Whenever an attribution graph is shown, the atlas of its model (sha256) and basis is looked for
  in ``atlas_home()`` and the folders the user named (remembered in the settings), opened on a
  worker of its own (opening checks a file's sha256; it never waits on, or cancels, a run) and set
  on the state (``WorkbenchState.set_atlas``); an atlas of another model is never used.
* The status bar carries a line saying which atlas is in use, or how to build one.
* A build is a job on the window's runner (progress, ETA, cancel; building again into the folder
  of a cancelled build resumes it); a finished atlas is opened and used when it matches the graph
  on show.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QObject, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
)

from core.analysis import MODEL, model_key
from core.atlas.store import (
    BUILD_DIR,
    META_FILE,
    Atlas,
    atlas_home,
    find_atlas,
    graph_basis_key,
    mismatch_reason,
    read_meta,
)
from core.errors import CircuitDeskError
from core.models.catalog import DEFAULT_SPEC
from core.selection import ATLAS, VIEW, Change, WorkbenchState
from core.settings import ATLAS_SETTINGS, AtlasSettings, by_name
from desktop.jobs import JobRunner
from desktop.panel import setting_spin_box
from desktop.status import StatusBar

log = logging.getLogger(__name__)

NAME = "atlas"
FOLDERS_KEY = "atlas/folders"  # atlas folders (or folders of atlases) the user named
LAST_BUILD_KEY = "atlas/last_build"  # the last build asked for (the dialog offers it again to resume it)
MAX_FOLDERS = 20
NO_ATLAS = "No feature atlas for this model — Tools → Build Feature Atlas…"
SAMPLED_CORPUS = "text sampled from the model itself (fixed seed) and the bundled prompts"
# what Add Files… offers: the formats core.atlas.corpus reads (TEXT_SUFFIXES; not imported: it loads torch)
CORPUS_FILTER = "Text corpora (*.txt *.text *.md *.rst *.jsonl *.csv *.tsv);;All files (*)"
DIALOG_SETTINGS = ("context", "top_k", "tokens", "sample_tokens")  # the build dialog's fields (ATLAS_SETTINGS)
NOTE_WIDTH = 680  # the status bar's atlas line is elided to this many pixels (in full in its tooltip)


def graph_key(analysis) -> tuple[str, str] | None:
    """(model sha256, basis key) of the attribution graph on show; None for anything else or where
    the basis cannot be known (a transcoder graph saved before transcoders were fingerprinted)."""
    view = None if analysis is None else analysis.view
    if view is None or view.kind != "attribution" or view.source is None:
        return None
    sha = analysis.model_summary.get("sha256")
    basis = graph_basis_key(view.source.meta)
    return (sha, basis) if isinstance(sha, str) and sha and basis is not None else None


def atlas_note(atlas: Atlas) -> str:
    """The status bar's line for an atlas in use: which one, and what it was built from (in short;
    the inspector's card says it in full)."""
    corpus = atlas.meta["corpus"]
    if corpus.get("kind") == "model-sampled":
        words = f"text sampled from the model and the bundled prompts, {int(corpus.get('tokens', 0)):,} tokens"
    else:
        words = atlas.corpus_text
    return f"Feature atlas {atlas.path.name}: {words}"


def _stamp(path: Path) -> tuple:
    """What changes when an atlas folder is rebuilt (its record and features file)."""
    meta, features = (path / META_FILE).stat(), (path / "features.safetensors").stat()
    return meta.st_mtime_ns, meta.st_size, features.st_mtime_ns, features.st_size


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


@dataclass(frozen=True)
class BuildRequest:
    """What the build dialog asks for (frozen: it crosses to the worker)."""

    spec: str
    device: str
    settings: AtlasSettings
    corpus: tuple[str, ...]  # files and folders; () = the model-sampled default corpus
    out: str

    def to_json(self) -> dict:
        return {**asdict(self), "corpus": list(self.corpus)}

    @classmethod
    def from_json(cls, data) -> "BuildRequest | None":
        """A request remembered in the settings (None where it cannot be read: it is only an offer)."""
        try:
            data = json.loads(data) if isinstance(data, str) else None
            req = cls(str(data["spec"]), str(data["device"]), AtlasSettings(**data["settings"]),
                      tuple(str(c) for c in data["corpus"]), str(data["out"]))
            req.settings.validate()
            return req
        except (TypeError, ValueError, KeyError, CircuitDeskError):
            return None


def folder_state(out: str) -> tuple[bool, str]:
    """Whether an atlas can be built into the folder ``out``, and what the dialog says about it."""
    if not out.strip():
        return False, "Choose the folder the atlas is written to."
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        return False, f"{path} is a file; choose a folder."
    if (path / META_FILE).is_file():
        return False, f"{path} already holds a finished atlas; choose another folder."
    if (path / BUILD_DIR).is_dir():
        return True, "This folder holds an unfinished build: building with the same settings and corpus resumes it."
    if path.is_dir() and any(path.iterdir()):
        return False, f"{path} has other files in it; choose a new or empty folder."
    return True, "A new folder." if not path.exists() else "An empty folder."


def default_out(spec: str, transcoders: str | None) -> Path:
    """A new folder under ``atlas_home()`` named from the model and the basis (the folder of an
    unfinished build of that name is offered again: building there resumes it)."""
    model = "default" if spec == DEFAULT_SPEC else Path(spec).stem or Path(spec).name
    basis = "neurons" if not transcoders else f"transcoders-{Path(transcoders).name}"
    base = atlas_home() / _slug(f"{model}-{basis}")
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if folder_state(str(path))[0]:
            return path
    return base


# -- the dialog -------------------------------------------------------------------------------------
class AtlasBuildDialog(QDialog):
    """Tools → Build Feature Atlas…: the settings (declared in ``core.settings.ATLAS_SETTINGS``),
    the corpus (files and folders; none: text sampled from the model) and the output folder.
    ``build_requested`` carries the ``BuildRequest`` when the user presses Build."""

    build_requested = Signal(object)

    def __init__(self, parent, spec: str, device: str, model_text: str, transcoders: str | None,
                 offer: BuildRequest | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Build Feature Atlas")
        self.spec, self.device, self.transcoders = spec, device, transcoders
        declared = by_name(ATLAS_SETTINGS)
        self.spins = {name: setting_spin_box(declared[name]) for name in DIALOG_SETTINGS}
        form = QFormLayout()
        model = QLabel(model_text)
        model.setToolTip(spec)
        form.addRow("Model", model)
        basis = QLabel("MLP neurons" if not transcoders else f"Transcoders: {Path(transcoders).name}")
        basis.setToolTip("The basis of the model & prompt panel" + (f": {transcoders}" if transcoders else ""))
        form.addRow("Basis", basis)
        for name, spin in self.spins.items():
            label = QLabel(declared[name].label)
            label.setBuddy(spin)
            label.setToolTip(spin.toolTip())
            form.addRow(label, spin)

        corpus_box = QGroupBox("Corpus")
        self.corpus = QListWidget()
        self.corpus.setToolTip("Text files (.txt, .md, .jsonl with a text field, .csv with a text column) and "
                               "folders of them; Delete removes the selected entries")
        self.corpus.setMinimumHeight(70)
        self.corpus.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.corpus_note = QLabel("")
        self.corpus_note.setWordWrap(True)
        add_files = self.add_files_button = QPushButton("Add &Files…")
        add_folder = self.add_folder_button = QPushButton("Add F&older…")
        self.remove_button = QPushButton("&Remove")
        add_files.clicked.connect(self.add_files)
        add_folder.clicked.connect(self.add_folder)
        self.remove_button.clicked.connect(self.remove_selected)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self.corpus, self.remove_selected,
                  context=Qt.ShortcutContext.WidgetShortcut)
        self.corpus.itemSelectionChanged.connect(self._update)
        buttons = QHBoxLayout()
        for b in (add_files, add_folder, self.remove_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        inner = QVBoxLayout(corpus_box)
        inner.addWidget(self.corpus)
        inner.addLayout(buttons)
        inner.addWidget(self.corpus_note)

        self.out_edit = QLineEdit()
        self.out_edit.setToolTip("The folder the atlas is written to (Circuit Desk finds atlases in its own "
                                 f"folder, {atlas_home()}, and in folders you opened)")
        self.out_edit.textChanged.connect(lambda _t: self._update())
        browse = self.browse_button = QPushButton("&Browse…")
        browse.clicked.connect(self.browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(browse)
        out_label = QLabel("O&utput folder")
        out_label.setBuddy(self.out_edit)
        self.out_note = QLabel("")
        self.out_note.setWordWrap(True)
        out_form = QFormLayout()
        out_form.addRow(out_label, out_row)
        out_form.addRow("", self.out_note)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.build_button = self.buttons.addButton("&Build", QDialogButtonBox.ButtonRole.AcceptRole)
        self.build_button.setToolTip("Build the atlas as a background job (cancel it from the status bar; "
                                     "building again into the same folder resumes it)")
        self.buttons.accepted.connect(self._build)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(corpus_box)
        layout.addLayout(out_form)
        layout.addWidget(self.buttons)
        for button in (add_files, add_folder, self.remove_button, browse):  # Enter anywhere builds, never adds
            button.setAutoDefault(False)
        self.build_button.setDefault(True)  # (once in the dialog: a button's default is its dialog's)

        if offer is not None:  # the last build, unfinished in its folder: offered as it was, to resume
            for name, spin in self.spins.items():
                spin.setValue(int(getattr(offer.settings, name)))
            for c in offer.corpus:
                self.corpus.addItem(c)
            self.out_edit.setText(offer.out)
        else:
            self.out_edit.setText(str(default_out(spec, transcoders)))
        self.resize(620, self.sizeHint().height())
        self._update()

    # -- corpus and folder ------------------------------------------------------------------------
    def corpus_paths(self) -> list[str]:
        return [self.corpus.item(r).text() for r in range(self.corpus.count())]

    def add_paths(self, paths) -> None:
        have = set(self.corpus_paths())
        for p in paths:
            if p and p not in have:
                self.corpus.addItem(p)
                have.add(p)
        self._update()

    def add_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add corpus files", "", CORPUS_FILTER)
        self.add_paths(paths)

    def add_folder(self) -> None:
        self.add_paths([QFileDialog.getExistingDirectory(self, "Add a folder of text files")])

    def remove_selected(self) -> None:
        for item in self.corpus.selectedItems():
            self.corpus.takeItem(self.corpus.row(item))
        self._update()

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the atlas", self.out_edit.text())
        if folder:
            self.out_edit.setText(folder)

    def _update(self) -> None:
        empty = self.corpus.count() == 0
        self.corpus_note.setText(f"Empty: the atlas is built from {SAMPLED_CORPUS}." if empty else
                                 f"{self.corpus.count()} file{'s' * (self.corpus.count() != 1)} or folder"
                                 f"{'s' * (self.corpus.count() != 1)}; folders are read for text files.")
        self.spins["sample_tokens"].setEnabled(empty)
        self.remove_button.setEnabled(bool(self.corpus.selectedItems()))
        ok, note = folder_state(self.out_edit.text())
        self.out_note.setText(note)
        self.out_note.setStyleSheet("" if ok else "color: #b91c1c")
        self.build_button.setEnabled(ok)

    # -- build ------------------------------------------------------------------------------------
    def request(self) -> BuildRequest:
        values = {name: spin.value() for name, spin in self.spins.items()}
        settings = replace(AtlasSettings(), transcoders=self.transcoders, **values)
        return BuildRequest(self.spec, self.device, settings, tuple(self.corpus_paths()),
                            str(Path(self.out_edit.text().strip()).expanduser()))

    def _build(self) -> None:
        ok, note = folder_state(self.out_edit.text())
        if not ok:
            self.out_note.setText(note)
            return
        request = self.request()
        try:
            request.settings.validate()
        except CircuitDeskError as err:
            self.out_note.setText(str(err))
            self.out_note.setStyleSheet("color: #b91c1c")
            return
        self.accept()
        self.build_requested.emit(request)


# -- the controller ---------------------------------------------------------------------------------
class AtlasController(QObject):
    """Finds, opens and builds the atlas of the graph on show (see the module docstring)."""

    def __init__(self, window: QMainWindow, state: WorkbenchState, runner: JobRunner, status: StatusBar,
                 settings: QSettings, runs, panel) -> None:
        super().__init__(window)
        self.window, self.state, self.runner, self.status = window, state, runner, status
        self.settings, self.runs, self.panel = settings, runs, panel
        self.opener = JobRunner(self)  # opening atlases: its own worker (a run is never cancelled for one)
        self.dialog: AtlasBuildDialog | None = None
        self.build_handle = None  # the JobHandle of the build running (or last run)
        self.last_build: BuildRequest | None = None
        self._cache: dict[Path, tuple[tuple, Atlas]] = {}  # atlases opened this session, by folder
        self._generation = 0  # increments per look-up; an older look-up's atlas is not used
        self.note_label = QLabel("")
        self.note_label.setObjectName("atlasNote")
        self.note_label.setStyleSheet("color: #444")
        window.statusBar().addPermanentWidget(self.note_label)
        self._full_note = ""
        state.subscribe(self.on_change)
        status.job_finished.connect(self._job_finished)
        app = QCoreApplication.instance()
        if app is not None:  # quitting without closing the window (--quit-after-trace): stop the opener first
            app.aboutToQuit.connect(self.shutdown)

    # -- the graph on show ---------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        if change.what == VIEW:  # the state takes no writes while it delivers: look once it is done
            QTimer.singleShot(0, self, self.refresh)
        elif change.what == ATLAS:
            self._show_note(self.state.atlas_note)

    def folders(self) -> list[str]:
        value = self.settings.value(FOLDERS_KEY) or []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    def remember(self, folder: Path) -> None:
        """Look in ``folder`` from now on (unless it is the atlases' own folder)."""
        folder = Path(folder).resolve()
        if folder.parent == atlas_home().resolve():
            return
        folders = [f for f in self.folders() if f != str(folder)]
        self.settings.setValue(FOLDERS_KEY, [str(folder)] + folders[:MAX_FOLDERS - 1])

    def refresh(self) -> None:
        """Use the atlas that matches the graph on show (found, opened off the GUI thread), or say
        that there is none."""
        self._generation += 1
        key = graph_key(self.state.analysis)
        if key is None:
            view = self.state.view
            unknown = view is not None and view.kind == "attribution"
            self.state.set_atlas(None, "This graph does not record which transcoders it used; no feature atlas "
                                       "can be matched to it." if unknown else "", source=NAME)
            return
        current = self.state.atlas
        if current is not None and current.mismatch(*key) is None:
            return
        try:
            path, passed = find_atlas(*key, self.folders())
        except OSError as err:  # an unreadable folder named earlier
            path, passed = None, [f"Cannot look for atlases: {err.strerror or err}."]
        if passed:
            log.info("atlases passed over: %s", passed)
        if path is None:
            self.state.set_atlas(None, NO_ATLAS, source=NAME)
            self.note_label.setToolTip("\n".join([NO_ATLAS, "Looked in " + ", ".join([str(atlas_home())]
                                                                                      + self.folders()), *passed]))
            return
        self.use(path, key)

    def _cached(self, path: Path) -> Atlas | None:
        hit = self._cache.get(path)
        try:
            return hit[1] if hit is not None and hit[0] == _stamp(path) else None
        except OSError:
            return None

    def use(self, path: Path, key: tuple[str, str], remember: bool = False, loud: bool = False) -> None:
        """Open the atlas at ``path`` (on the opener's worker unless it is open already) and use it
        if the graph on show is still of ``key``'s model and basis. ``loud``: a refusal is a dialog."""
        path = Path(path).expanduser()
        generation = self._generation

        def done(atlas: Atlas) -> None:
            try:
                self._cache[atlas.path] = (_stamp(atlas.path), atlas)
            except OSError:
                pass
            if remember:
                self.remember(atlas.path)
            # a look-up overtaken by a newer one is dropped; what the user opened is used while it matches
            if (loud or generation == self._generation) and graph_key(self.state.analysis) == key:
                self.state.set_atlas(atlas, atlas_note(atlas), source=NAME)
                if loud:
                    self.status.say(f"Using the feature atlas {atlas.path}")

        def failed(message: str) -> None:
            if loud:
                self.status.show_error(message)
            elif generation == self._generation:
                self.state.set_atlas(None, message, source=NAME)

        cached = self._cached(path.resolve()) if path.is_dir() else None
        if cached is not None and cached.mismatch(*key) is None:
            done(cached)
            return

        view = self.state.view
        features = sorted({view.feature_of(i) for i in view.feature_nodes()}) if view is not None else []

        def job(ctx):
            meta = read_meta(path)  # foreign or unfinished: one sentence before any hashing
            reason = mismatch_reason(meta, path, *key)
            if reason:
                raise CircuitDeskError(reason)
            ctx.check_cancelled()
            atlas = Atlas.open(path.resolve())
            # read the graph's features here, while the atlas is the worker's alone: the inspector
            # and Find then never wait for the disk
            for f in features:
                ctx.check_cancelled()
                if atlas.has(*f):
                    atlas.text_of(*f)
            return atlas

        if not loud:
            self._show_note(f"Opening the feature atlas {path.name}…")
        self.opener.submit(f"open atlas {path.name}", job, returned=done, errored=failed)

    # -- Tools → Open Feature Atlas… -----------------------------------------------------------------
    def open_dialog(self) -> None:
        key = graph_key(self.state.analysis)
        if key is None:
            self.status.show_error("Show an attribution graph first: an atlas describes the features of a graph's "
                                   "model and basis.")
            return
        folder = QFileDialog.getExistingDirectory(self.window, "Open a feature atlas (its folder)", str(atlas_home()))
        if folder:
            self._generation += 1
            self.use(Path(folder), key, remember=True, loud=True)

    # -- Tools → Build Feature Atlas… ----------------------------------------------------------------
    def build_dialog(self) -> AtlasBuildDialog:
        """Show the build dialog (window-modal; Build starts the job)."""
        spec, device, transcoders = self.panel.spec, self.panel.device_combo.currentText(), self.panel.transcoders
        # the last build of this model, when it was cancelled: offered as it was (building resumes it)
        offer = self.last_build or BuildRequest.from_json(self.settings.value(LAST_BUILD_KEY))
        resumable = (offer is not None
                     and (offer.spec, offer.device, offer.settings.transcoders) == (spec, device, transcoders)
                     and (Path(offer.out) / BUILD_DIR).is_dir() and not (Path(offer.out) / META_FILE).exists())
        if self.dialog is not None:
            self.dialog.deleteLater()
        self.dialog = AtlasBuildDialog(self.window, spec, device, self.panel.model_combo.currentText(), transcoders,
                                       offer if resumable else None)
        self.dialog.build_requested.connect(self.build)
        self.dialog.open()
        return self.dialog

    def build(self, req: BuildRequest) -> None:
        """Build (or resume) the atlas ``req`` asks for, as a job on the runner."""
        if self.runner.busy:
            self.status.show_error("A job is running; cancel it or wait before building an atlas.")
            return
        self.last_build = req
        self.settings.setValue(LAST_BUILD_KEY, json.dumps(req.to_json()))
        dtype, placement = self.panel.dtype, self.panel.placement  # as a run of the panel would load it
        key = model_key(req.spec, req.device, dtype, placement)
        model = self.runs.model if self.runs.model_key == key else None

        def job(ctx):
            from core.atlas.build import build_atlas  # deferred: torch loads with the first job, not at start

            loaded = model
            if loaded is None:
                from core.models import load_model  # deferred: as above

                loaded = load_model(req.spec, device=req.device, dtype=dtype, placement=placement,
                                    ctx=ctx.sub(0.0, 0.05))
                ctx.partial(MODEL, loaded)
            work = ctx.sub(0.05, 1.0) if model is None else ctx
            return build_atlas(loaded, req.out, req.settings, list(req.corpus) or None, ctx=work)

        def partial(name: str, value) -> None:
            if name == MODEL:
                self.runs.model, self.runs.model_key = value, key
                self.panel.show_model(value)
            elif name == "estimate":
                self._show_note(f"Building a feature atlas of about {value['bytes'] / 1e6:,.0f} MB from "
                                f"{value['tokens']:,} tokens ({value['windows']:,} windows)")

        self.build_handle = self.runner.submit(f"atlas: {Path(req.out).name}", job, detail=build_detail,
                                               partial=partial, returned=self._built)
        self._show_note(f"Building the feature atlas {Path(req.out).name}…")

    def _built(self, result) -> None:
        self.remember(result.path)
        resumed = f", resumed after {result.resumed_from:,} windows" if result.resumed_from else ""
        self.status.finish_note = f"Atlas written to {result.path}{resumed}."
        key = graph_key(self.state.analysis)
        if key is not None and result.meta["model"]["sha256"] == key[0] and result.meta["basis"]["key"] == key[1]:
            self._generation += 1
            self.use(result.path, key)

    def _job_finished(self) -> None:
        """The runner's newest job ended: a cancelled build says how to resume; the atlas line returns."""
        h = self.build_handle
        if h is None or h is not self.runner.current:
            return
        self.build_handle = None
        if h.ctx.cancelled:
            self.status.say("Atlas build cancelled; Tools → Build Feature Atlas… into the same folder resumes it.")
        self._show_note(self.state.atlas_note)

    # -- the status bar's line -----------------------------------------------------------------------
    def _show_note(self, text: str) -> None:
        self._full_note = text
        fm = self.note_label.fontMetrics()
        self.note_label.setText(fm.elidedText(text, Qt.TextElideMode.ElideRight, NOTE_WIDTH))
        tip = text if self.state.atlas is None else f"{text}\n{self.state.atlas.path}"
        self.note_label.setToolTip(tip)
        self.note_label.setVisible(bool(text))

    @property
    def note(self) -> str:
        """The status bar's atlas line, in full."""
        return self._full_note

    def shutdown(self) -> None:
        self.opener.shutdown()


def build_detail(result) -> str:
    """A finished build in a few words, for the jobs pane."""
    m = result.meta
    return (f"{sum(m['features_per_layer']):,} features, {m['tokens_seen']:,} tokens, "
            f"{m['size_bytes'] / 1e6:,.1f} MB")

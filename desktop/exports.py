"""What leaves the workbench as a file besides the session: pane images (PNG pixels, SVG vectors)
and the PDF audit report (written on a worker from the saved session, which it cites by sha256).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QRect, QRectF, QSettings, Signal
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QFileDialog, QGraphicsItem, QGraphicsPathItem, QInputDialog, QMainWindow

from core.selection import WorkbenchState
from core.session import load_session
from desktop.documents import Documents
from desktop.jobs import JobRunner
from desktop.status import StatusBar


class Exports(QObject):
    report_written = Signal(str)  # the PDF's path

    def __init__(self, window: QMainWindow, state: WorkbenchState, panes: dict, documents: Documents,
                 runner: JobRunner, status: StatusBar, settings: QSettings) -> None:
        """``panes``: the exportable panes by name ("graph", "heatmap"), each with a ``plot``."""
        super().__init__(window)
        self.window, self.state, self.panes, self.documents = window, state, panes, documents
        self.runner, self.status, self.settings = runner, status, settings

    def image(self, pane: str, path: str | None = None) -> bool:
        """Save the graph or heatmap pane as PNG (pixels at 2× screen size) or SVG (vectors)."""
        widget = self.panes[pane]
        plot = widget.plot.getPlotItem()
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.window, f"Export the {pane}", f"{pane}.png",
                                                  "PNG image (*.png);;SVG vector image (*.svg)")
            if not path:
                return False
        suffix = Path(path).suffix.lower()
        if suffix not in (".png", ".svg"):
            self.status.show_error(f"Cannot export to '{Path(path).name}': choose a .png or .svg file name.")
            return False
        if hasattr(widget, "settle"):
            widget.settle()  # every drawn edge, not the pan preview
        tmp = Path(path).with_suffix(".tmp" + suffix)
        try:
            if suffix == ".svg":
                render_svg(widget.plot, str(tmp), title=f"Circuit Desk {pane}")
            else:
                from pyqtgraph.exporters import ImageExporter  # deferred: off the window's start-up path

                exporter = ImageExporter(plot)
                exporter.parameters()["width"] = int(plot.sceneBoundingRect().width() * 2)
                exporter.export(str(tmp))
            if not tmp.exists():
                raise OSError(f"nothing was written to {tmp.parent}")
            tmp.replace(path)  # whole file or nothing
        except OSError as err:
            tmp.unlink(missing_ok=True)
            self.status.show_error(f"Cannot write {path}: {getattr(err, 'strerror', None) or err}.")
            return False
        self.status.say(f"Saved {path}")
        return True

    def ask_auditor(self) -> None:
        from desktop.report_pdf import AUDITOR_KEY  # deferred: the report modules load when first used

        name, ok = QInputDialog.getText(self.window, "Auditor name", "Name printed on the cover of audit reports:",
                                        text=str(self.settings.value(AUDITOR_KEY, "") or ""))
        if ok:
            self.settings.setValue(AUDITOR_KEY, name.strip())

    def report(self, path: str | None = None) -> bool:
        """Write the PDF audit report (Ctrl+R) of the session file, saving the session first: the
        report cites the file by its sha256, so it must hold exactly what is on show."""
        from core.report import build_report  # deferred: the report modules load when first used
        from desktop.report_pdf import AUDITOR_KEY, write_pdf  # deferred: as above

        docs = self.documents
        if self.state.view is None:
            self.status.show_error("Nothing to report yet: run a trace or a circuit first.")
            return False
        if self.runner.busy:
            self.status.show_error("A job is running; cancel it or wait before exporting a report.")
            return False
        if (docs.session_path is None or docs.dirty) and not docs.save():
            self.status.say("The report is made from the saved session; save it to export a report.")
            return False
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.window, "Export audit report",
                                                  str(Path(docs.session_path).with_suffix(".pdf")), "PDF (*.pdf)")
            if not path:
                return False
        if not path.lower().endswith(".pdf"):
            path += ".pdf"
        session_path, auditor = docs.session_path, str(self.settings.value(AUDITOR_KEY, "") or "")
        atlas = self.state.atlas  # the atlas that describes the graph on show (None: the report says there is none)

        def job(ctx):
            ctx.progress(0.1, "Building the report")
            report = build_report(load_session(session_path), session_path, auditor=auditor, atlas=atlas)
            ctx.check_cancelled()
            ctx.progress(0.5, "Drawing the pages")
            return write_pdf(report, path, ctx=ctx)

        def done(out):
            hint = "" if auditor else "; no auditor name on the cover (File → Auditor Name…)"
            self.status.finish_note = f"Wrote {out}{hint}"
            self.report_written.emit(str(out))

        self.runner.submit(f"report: {Path(path).name}", job, returned=done)
        self.status.say("Writing the report…")
        return True


def render_svg(view, path: str, title: str = "") -> None:
    """A pyqtgraph view as SVG vectors: items draw their vector form (scatter symbols as paths,
    not the atlas pixmaps; no cached pixmaps) while the view is rendered."""
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

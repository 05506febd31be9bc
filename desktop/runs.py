"""Runs and interventions: the panel's request becomes a job on the runner, and what it hands back
(the loaded model, the prediction, the heatmap data, then the ``Analysis``) goes on show.

The loaded model is kept for the next run of the same model on the same device, in the same precision
and placement.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from core.analysis import LOGIT_LENS, MODEL, PREDICT, PREDICTION, Analysis, InterventionRequest, sequence_note
from core.errors import CircuitDeskError
from core.selection import WorkbenchState
from desktop.jobs import JobRunner
from desktop.panel import ModelPanel
from desktop.predictions import PredictionsView
from desktop.status import StatusBar

NAME = "runs"
WORKSPACE, GRAPH_TAB, PREDICTIONS_TAB = "", "graph", "predictions"  # where a result is best seen


class RunController(QObject):
    tab_wanted = Signal(str)  # WORKSPACE (any tab), GRAPH_TAB or PREDICTIONS_TAB

    def __init__(self, state: WorkbenchState, panel: ModelPanel, predictions: PredictionsView, runner: JobRunner,
                 status: StatusBar) -> None:
        super().__init__(panel)
        self.state, self.panel, self.predictions, self.runner, self.status = state, panel, predictions, runner, status
        self.model = None  # LoadedModel of the last run (reused while its RunRequest.model_key stays the same)
        self.model_key: tuple | None = None
        self.last_prediction = None
        self._generation = 0  # increments per run; signals of older runs are ignored

    def run(self) -> None:
        """Run what the panel asks for (cancelling a run in progress)."""
        req = self.panel.request()
        try:
            req.check()
        except CircuitDeskError as err:
            self.status.show_error(str(err))
            return
        self._generation += 1
        generation = self._generation

        def current(slot):
            """Only the newest run may update the window (a cancelled one reports late)."""
            return lambda *args: slot(*args) if generation == self._generation else None

        key = req.model_key
        model = self.model if self.model_key == key else None

        def job(ctx):
            from core.analysis_runs import run_request  # deferred: torch loads with the first run, not at start

            return run_request(req, model, ctx)

        self.runner.submit(req.job_name(), job, detail=result_detail,
                           partial=current(lambda name, value: self._partial(key, req, name, value)),
                           returned=current(lambda result: self._result(key, req, result)))
        if model is None:
            self.panel.show_loading(req)

    def _partial(self, key, req, name: str, value) -> None:
        """Show what a run has ready before it ends: the loaded model, the prediction, the lens."""
        if name == MODEL:
            self.model, self.model_key = value, key
            self.panel.show_model(value)
        elif name == PREDICTION:
            self.last_prediction = value
            self.predictions.show_prediction(self.model.name, value,
                                             sequence_note(req.method, req.chat_settings().chat))
            self.tab_wanted.emit(WORKSPACE)
        elif name == LOGIT_LENS and self.state.view is None:  # else the lens of the graph on show stays
            self.state.show(Analysis(lens=value, model=self.model), source=NAME)

    def _result(self, key, req, result) -> None:
        analysis = result if isinstance(result, Analysis) else None
        model, prediction = (analysis.model, analysis.prediction) if analysis else result
        self.model, self.model_key, self.last_prediction = model, key, prediction
        self.predictions.show_prediction(model.name, prediction, sequence_note(
            analysis.method if analysis else PREDICT, req.chat_settings().chat))
        if analysis:
            self.state.show(analysis, source=NAME)
        self.tab_wanted.emit(GRAPH_TAB if analysis else PREDICTIONS_TAB)
        self.panel.show_model(model)

    # -- interventions -------------------------------------------------------------------------------
    def intervene(self, request: InterventionRequest) -> None:
        """Run the inspector's edit on the analysis on show (its result joins the analysis' log)."""
        analysis = self.state.analysis
        if analysis is None or not analysis.can_intervene:
            self.status.show_error("Interventions need a traced graph; run a trace first.")
            return
        if self.runner.busy:
            self.status.show_error("A job is running; cancel it or wait before intervening.")
            return
        from core.analysis_runs import intervention_job  # deferred: torch is loaded with the model

        try:
            job = intervention_job(analysis, request)
        except CircuitDeskError as err:
            self.status.show_error(str(err))
            return

        def done(result):
            if self.state.analysis is analysis:  # still on show
                self.state.set_intervention(result, source=NAME)

        name = f"intervene: {analysis.view.labels[request.node]} ({request.mode})"
        self.runner.submit(name, job, returned=done)
        self.status.say("Intervening…")


def result_detail(result) -> str:
    """A run's outcome in a few words, for the jobs pane's Detail column."""
    prediction = result.prediction if isinstance(result, Analysis) else result[1]
    top = prediction.top[0]
    said = f"top {top.token!r} {top.probability:.4f}"
    if not isinstance(result, Analysis):
        return said
    view = result.view
    return f"{len(view.visible_nodes())} nodes, {len(view.visible_edges())} edges shown; {said}"

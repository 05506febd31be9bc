"""The window's parts as data: the panel's request round-trips through apply() and through the
command line it regenerates, and every menu action comes from one declaration whose predicate
decides its enablement."""

from __future__ import annotations

import shlex

import pytest
from PySide6.QtWidgets import QMenu

from core.analysis import ATTRIBUTION, CIRCUIT, PAIR_FILE, PREDICT, PROMPT_PAIR, RunRequest
from core.settings import (AttributionSettings, ChatSettings, CircuitSettings, PairSource, PlacementSettings,
                           settings_from_args)
from desktop.actions import ACTIONS
from desktop.cli import build_parser

REQUESTS = [
    RunRequest("default", "cpu", "The capital of France is", 7, ATTRIBUTION, " Paris", " Rome", 250),
    RunRequest("default", "auto", "a b c", 10, ATTRIBUTION, transcoders="/tmp/tc"),
    RunRequest("/models/x", "cpu", "when mary and john", 5, CIRCUIT, " mary", " john", task=PROMPT_PAIR,
               corrupted="when john and mary", scoring="eap"),
    RunRequest("default", "cpu", "", 10, CIRCUIT, task="ioi", n_pairs=12),
    RunRequest("default", "cpu", "", 10, CIRCUIT, task=PAIR_FILE, pairs_file="/data/pairs.jsonl", n_pairs=3),
    RunRequest("default", "cpu", "hello", 3, PREDICT),
    RunRequest("default", "cpu", "The capital of France is", 10, ATTRIBUTION, chat=True, system="Answer in one word."),
    RunRequest("default", "cpu", "hello", 3, PREDICT, chat=True),
    RunRequest("default", "cuda", "x y", 10, ATTRIBUTION, transcoders="/tmp/tc", dtype="bfloat16",
               placement=PlacementSettings(offload=True, max_gpu_memory="20GiB", max_cpu_memory="64GB",
                                           transcoders_device="cpu")),
    RunRequest("default", "cuda", "", 10, CIRCUIT, task="ioi", dtype="float16", placement=PlacementSettings(offload=True)),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: f"{r.method}-{r.task}{'-chat' * r.chat}")
def test_the_panel_shows_a_request_and_gives_it_back(qtbot, req):
    from desktop.panel import ModelPanel

    panel = ModelPanel()
    qtbot.addWidget(panel)
    panel.apply(req)
    assert panel.request() == req


@pytest.mark.parametrize("req", [r for r in REQUESTS if r.method != PREDICT],
                         ids=lambda r: f"{r.method}-{r.task}{'-chat' * r.chat}")
def test_a_panel_request_regenerates_as_a_command_with_the_same_settings(req):
    """GUI → command line → settings: what the session's `command` would recompute is what ran."""
    argv = shlex.split(req.command())
    assert argv[:2] == ["circuitdesk", "trace" if req.method == ATTRIBUTION else "circuit"]
    args = build_parser().parse_args(argv[1:])
    assert args.model == req.spec and args.dtype == req.dtype  # where the weights lived does not change results
    if req.method == ATTRIBUTION:
        assert args.prompt == req.prompt
        assert settings_from_args(AttributionSettings, args) == req.attribution_settings()
        assert settings_from_args(ChatSettings, args) == req.chat_settings()
    else:
        assert settings_from_args(CircuitSettings, args) == req.circuit_settings()
        assert settings_from_args(PairSource, args) == req.pair_source()


def test_every_menu_action_is_one_declaration_and_its_predicate_enables_it(workbench):
    w = workbench.window()
    declared = {spec.id: spec for spec in ACTIONS}
    assert len(declared) == len(ACTIONS), "two declarations share an id"
    docks = {d.toggleViewAction() for d in (w.model_dock, w.heatmap_dock, w.inspector_dock, w.jobs_dock,
                                           w.findings_dock)}

    def menu_actions(menu: QMenu):
        for a in menu.actions():
            if a.menu() is not None:
                yield from menu_actions(a.menu())
            elif not a.isSeparator() and a not in docks and a.parent() is not w.documents.recent_menu:
                yield a

    in_menus = [a for m in w.actions.menus.values() for a in menu_actions(m)]
    assert sorted(map(id, in_menus)) == sorted(id(w.actions[i]) for i in declared)  # each once, none by hand
    for state in ("start", "graph"):
        if state == "graph":
            workbench.run(w)
        for spec in ACTIONS:
            want = True if spec.enabled is None else bool(spec.enabled(w))
            assert w.actions[spec.id].isEnabled() == want, (state, spec.id)
    # a change of what is on show re-derives them: with the graph gone, the graph actions are off
    w.state.show(None)
    assert not w.actions["file.save"].isEnabled() and not w.actions["graph.pin"].isEnabled()

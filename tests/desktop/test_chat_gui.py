"""Chat form in the workbench, driven as a person drives it: tick Chat, type a system message, run;
open a conversation through File → Open Conversation… (its shortcut's action), run, clear it."""

from __future__ import annotations

import json
import shlex

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QFileDialog

from core.analysis import model_key
from core.chat import Conversation, Message
from core.errors import CircuitDeskError
from core.models import load_model
from core.predict import encode_chat
from core.settings import ChatSettings, settings_from_args
from desktop.cli import build_parser
from tiny_models import CHAT_TEMPLATE

PROMPT = "the capital of france is"
CONVERSATION = [{"role": "user", "content": "the cat and the dog"}, {"role": "assistant", "content": "red"},
                {"role": "user", "content": "the capital of france is"}, {"role": "assistant", "content": "paris"}]


@pytest.fixture(scope="module")
def chat_model(chat_folder):
    return load_model(chat_folder(CHAT_TEMPLATE), device="cpu")


@pytest.fixture
def window(workbench, chat_folder, chat_model):
    w = workbench.window()
    spec = str(chat_folder(CHAT_TEMPLATE))
    w.panel.select_spec(spec)
    w.panel.prompt_edit.setPlainText(PROMPT)
    w.runs.model, w.runs.model_key = chat_model, model_key(spec, "cpu")
    return w


def click(qtbot, widget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=QPoint(8, widget.height() // 2))


def expected_tokens(model, messages) -> list[str]:
    ids = model.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    return [model.tokenizer.decode([i]) for i in ids["input_ids"]]


def test_ticking_chat_traces_the_prompt_as_a_user_message(qtbot, window, workbench, chat_model):
    w, p = window, window.panel
    assert not p.form.isRowVisible(p.system_edit)  # the system message belongs to the chat form
    click(qtbot, p.chat_box)
    assert p.chat_box.isChecked() and p.form.isRowVisible(p.system_edit)
    qtbot.keyClicks(p.system_edit, "the cat")
    workbench.run(w)
    messages = [{"role": "system", "content": "the cat"}, {"role": "user", "content": PROMPT}]
    graph = w.state.view.source
    assert graph.tokens == expected_tokens(chat_model, messages)  # the template's tokens ...
    labels = {t for _, t in w.graph_pane.plot.getAxis("bottom")._tickLevels[0]}
    assert {"<bos>", "system", "<eos>", "assistant"} <= labels  # ... on the graph's token axis, special ones whole
    assert "chat template" in w.predictions.heading.text()  # the predictions say what sequence they read
    session = w.state.analysis.session(w.state.annotations)
    assert session.manifest["chat"]["messages"] == messages
    args = build_parser().parse_args(shlex.split(session.manifest["command"])[1:])
    assert settings_from_args(ChatSettings, args) == ChatSettings(chat=True, system="the cat") and args.prompt == PROMPT
    # unticked, the same prompt is traced raw again (a start token, then the text)
    click(qtbot, p.chat_box)
    assert not p.form.isRowVisible(p.system_edit)
    workbench.run(w)
    assert w.state.view.source.tokens[1:] == PROMPT.split()


def test_open_conversation_action_traces_the_final_answer(qtbot, window, workbench, chat_model, tmp_path, monkeypatch):
    w, p = window, window.panel
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(CONVERSATION), encoding="utf-8")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    action = w.actions["file.open_conversation"]
    assert action.shortcut().toString() == "Ctrl+Shift+M"
    action.trigger()
    assert p.messages_file == str(path) and p.chat_box.isChecked()
    assert p.form.isRowVisible(p.conversation_row) and "conv.json" in p.conversation_label.text()
    assert not p.prompt_edit.isEnabled()  # the conversation replaces the prompt box
    workbench.run(w)
    conv = Conversation(tuple(Message(**m) for m in CONVERSATION))
    answer = encode_chat(chat_model, conv).answer_id
    assert chat_model.tokenizer.decode([answer]) == "paris"
    trace = w.state.analysis.trace
    assert [t.token_id for t in trace.targets] == [answer]  # why did it answer "paris"
    assert w.state.view.source.tokens == expected_tokens(chat_model, CONVERSATION[:-1])
    assert f"--messages {path}" in w.state.analysis.command
    # Clear goes back to the prompt box
    click(qtbot, p.clear_conversation)
    assert p.messages_file == "" and p.prompt_edit.isEnabled() and not p.form.isRowVisible(p.conversation_row)


def test_a_bad_conversation_file_is_one_sentence_and_changes_nothing(window, tmp_path, monkeypatch):
    w, p = window, window.panel
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"role": "robot", "content": "hi"}]), encoding="utf-8")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    w.actions["file.open_conversation"].trigger()
    assert "has the role 'robot'" in w.status.last_error
    assert p.messages_file == "" and not p.chat_box.isChecked() and p.prompt_edit.isEnabled()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))  # cancelled: nothing happens
    w.status.last_error = None
    w.actions["file.open_conversation"].trigger()
    assert w.status.last_error is None and p.messages_file == ""


def test_chat_on_a_model_without_a_template_says_so(qtbot, workbench):
    w = workbench.window()  # the tiny model has no chat template
    click(qtbot, w.panel.chat_box)
    with qtbot.waitSignal(w.status.job_finished, timeout=120_000):
        w.actions["run.run"].trigger()
    assert "has no chat template" in w.status.last_error
    assert w.state.view is None  # nothing half-shown


def test_gui_command_line_chat_options_fill_the_panel(qtbot, chat_folder, tmp_path, monkeypatch):
    import desktop.app as app

    path = tmp_path / "conv.json"
    path.write_text(json.dumps(CONVERSATION[:3]), encoding="utf-8")
    before = set(map(id, _windows(app)))
    shown = []
    monkeypatch.setattr(app.QApplication, "exec", lambda self=None: shown.extend(
        w for w in _windows(app) if id(w) not in before) or 0)  # the window as it opens, instead of the event loop
    args = build_parser().parse_args(["gui", "--messages", str(path), "--system", "be brief"])
    assert app.run_gui(chat=settings_from_args(ChatSettings, args)) == 0
    (window,) = shown
    qtbot.addWidget(window)  # closed after the test, as the app closes it (its workers stopped)
    req = window.panel.request()
    assert (req.chat, req.system, req.messages_file) == (True, "be brief", str(path))
    # checked before a run: --system cannot go before a file that starts with a system message of its own
    path.write_text(json.dumps([{"role": "system", "content": "x"}, *CONVERSATION[:1]]), encoding="utf-8")
    with pytest.raises(CircuitDeskError, match="already starts with a system message"):
        req.check()


def _windows(app):
    return [w for w in app.QApplication.topLevelWidgets() if isinstance(w, app.MainWindow)]

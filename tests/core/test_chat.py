"""Chat-formatted prompts: a conversation is traced exactly as the model's own chat template renders
it (the tokenizer's apply_chat_template is the reference), a final assistant answer becomes the
target, and every bad conversation or missing template is one sentence."""

import json

import numpy as np
import pytest

from core.attribution import AttributionSettings, attribute
from core.attribution.attribute import _special_ids, traced_ids, with_bos
from core.chat import Conversation, Message, conversation, read_messages
from core.errors import CircuitDeskError
from core.graph import FEATURE
from core.models import load_model
from core.predict import encode_chat, predict_next
from core.runs import attribution_session, trace_command
from core.session import load_session, save_session
from core.settings import ChatSettings
from core.verify import verify_session
from tiny_models import CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE

SYSTEM = "the cat"
TURNS = [{"role": "user", "content": "the capital of france is"}, {"role": "assistant", "content": "paris"},
         {"role": "user", "content": "the capital of london is"}]


def reference_ids(tokenizer, messages, **options) -> list[int]:
    """The tokenizer's own rendering and tokenization of a conversation."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)
    return list(out["input_ids"])


@pytest.fixture(scope="module")
def chat_model(chat_folder):
    loaded = {}

    def get(template: str = CHAT_TEMPLATE):
        if template not in loaded:
            loaded[template] = load_model(chat_folder(template), device="cpu")
        return loaded[template]

    return get


def conv(messages) -> Conversation:
    return Conversation(tuple(Message(m["role"], m["content"]) for m in messages))


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE], ids=["starts-with-bos", "plain-start"])
def test_the_traced_ids_are_the_templates_own(chat_model, template):
    m = chat_model(template)
    messages = [{"role": "system", "content": SYSTEM}, *TURNS]
    expected = reference_ids(m.tokenizer, messages, add_generation_prompt=True)
    assert encode_chat(m, conv(messages)).ids[0].tolist() == expected
    # nothing prepended: a template that starts with its start token keeps it once, one that does not stays as is
    assert traced_ids(m, conv(messages))[0].tolist() == expected
    res = attribute(m, conv(messages), AttributionSettings(max_nodes=20))
    assert res.ids[0].tolist() == expected and res.graph.token_ids == expected
    assert res.graph.tokens == [m.tokenizer.decode([i]) for i in expected]
    assert res.prompt == m.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    starts_special = expected[0] in _special_ids(m)
    assert starts_special == (template == CHAT_TEMPLATE)
    ids = traced_ids(m, conv(messages))
    assert (with_bos(m, ids).shape[1] == ids.shape[1]) == starts_special  # with_bos itself would add one to a plain start
    # the start position holds no feature nodes when it is the template's special token
    if starts_special:
        assert 0 not in set(res.graph.pos[res.graph.kind == FEATURE].tolist())
    assert res.stats["max_completeness_error"] < 1e-3


def test_chat_prompt_is_the_user_message_after_the_system_one(chat_model):
    m = chat_model()
    chat = conversation("the capital of france is", ChatSettings(chat=True, system=SYSTEM))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "the capital of france is"}]
    assert chat.to_json() == messages
    expected = reference_ids(m.tokenizer, messages, add_generation_prompt=True)
    prediction = predict_next(m, chat)
    assert prediction.prompt_tokens == tuple(m.tokenizer.decode([i]) for i in expected)
    assert conversation("the capital of france is", ChatSettings()) is None  # raw prompt: no chat form


def test_a_conversation_ending_with_an_answer_explains_that_answers_first_token(chat_model, tmp_path):
    m = chat_model()
    messages = [*TURNS, {"role": "assistant", "content": "london city"}]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps({"messages": messages}), encoding="utf-8")
    session, res = attribution_session(m, "tiny", None, AttributionSettings(max_nodes=20),
                                       chat=ChatSettings(messages=str(path)))
    context = reference_ids(m.tokenizer, messages[:-1], add_generation_prompt=True)
    whole = reference_ids(m.tokenizer, messages)
    assert whole[: len(context)] == context
    answer = whole[len(context)]
    assert m.tokenizer.decode([answer]) == "london"
    assert res.ids[0].tolist() == context  # traced up to the start of the answer
    assert [t.token_id for t in res.targets] == [answer]
    assert session.manifest["settings"]["target"] == f"#{answer}"
    assert session.manifest["chat"] == {"messages": messages}
    assert "--messages" in session.manifest["command"] and "--prompt" not in session.manifest["command"]
    # a target given explicitly wins over the answer
    _, other = attribution_session(m, "tiny", None, AttributionSettings(max_nodes=20, target="paris"),
                                   chat=ChatSettings(messages=str(path)))
    assert [t.token for t in other.targets] == ["paris"]


def test_a_model_without_a_chat_template_says_so(tiny_model):
    m = tiny_model("llama")
    assert not m.tokenizer.chat_template
    chat = conversation("the capital of france is", ChatSettings(chat=True))
    with pytest.raises(CircuitDeskError, match=r"has no chat template .*without --chat"):
        attribute(m, chat, AttributionSettings(max_nodes=10))
    with pytest.raises(CircuitDeskError, match="has no chat template"):
        predict_next(m, chat)


def test_a_template_that_refuses_the_conversation_is_one_sentence(chat_folder):
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system messages') }}"
              "{% endif %}{{ m['content'] }} {% endfor %}")
    m = load_model(chat_folder(strict), device="cpu")
    with pytest.raises(CircuitDeskError, match=r"chat template of .* refused this conversation \(no system messages\)"):
        encode_chat(m, conv([{"role": "system", "content": "the"}, {"role": "user", "content": "the"}]))


@pytest.mark.parametrize("content, sentence", [
    ('{"role": "user", "content": "hi"}', "must hold a list of messages"),
    ("[]", "holds no messages"),
    ('["hi"]', "message 1 is not an object"),
    ('[{"role": "user"}]', "message 1 has no 'content'"),
    ('[{"content": "x"}]', "message 1 has no 'role'"),
    ('[{"role": "tool", "content": "x"}]', "message 1 has the role 'tool'; a role is one of system, user, assistant"),
    ('[{"role": "user", "content": 3}]', '"content" must be text'),
    ('[{"role": "user", "content": "  "}]', "message 1 (user) is empty"),
    ('[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "only the first message may be"),
    ('[{"role": "system", "content": "b"}]', "only a system message"),
    ('[{"role": "assistant", "content": "b"}]', "no user message before it"),
    ('[{"role": "user", "content": "\\ud800"}]', "not valid UTF-8"),
    ("[{'role': 'user'}]", "is not valid JSON"),
    ("[" * 100_000, "nested too deeply"),
])
def test_bad_message_files_are_one_sentence(tmp_path, content, sentence):
    path = tmp_path / "conv.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CircuitDeskError, match="^[^\n]*$") as err:
        read_messages(path)
    assert sentence in str(err.value)


def test_message_files_that_cannot_be_read(tmp_path):
    with pytest.raises(CircuitDeskError, match="does not exist"):
        read_messages(tmp_path / "missing.json")
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"role": "user", "content": "café"}]'.encode("latin-1"))
    with pytest.raises(CircuitDeskError, match="is not UTF-8 text"):
        read_messages(latin)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(TURNS), encoding="utf-8")
    assert read_messages(ok).to_json() == TURNS  # a plain list is read as {"messages": [...]} is
    with_system = tmp_path / "sys.json"
    with_system.write_text(json.dumps([{"role": "system", "content": "x"}, *TURNS]), encoding="utf-8")
    with pytest.raises(CircuitDeskError, match="already starts with a system message"):
        conversation(None, ChatSettings(messages=str(with_system), system="y"))
    with pytest.raises(CircuitDeskError, match="not both"):
        conversation("a prompt", ChatSettings(messages=str(ok)))
    with pytest.raises(CircuitDeskError, match="add --chat"):
        conversation("a prompt", ChatSettings(system="y"))
    with pytest.raises(CircuitDeskError, match="The prompt is empty"):
        conversation(" ", ChatSettings(chat=True))
    assert conversation(None, ChatSettings(messages=str(ok), system="y")).system == "y"


def test_verify_recomputes_a_chat_session_from_its_messages(chat_model, chat_folder, tmp_path):
    m = chat_model()
    path = tmp_path / "conv.json"
    path.write_text(json.dumps([*TURNS, {"role": "assistant", "content": "london"}]), encoding="utf-8")
    session, res = attribution_session(m, str(chat_folder(CHAT_TEMPLATE)), None, AttributionSettings(max_nodes=20),
                                       chat=ChatSettings(messages=str(path), system=SYSTEM))
    save_session(tmp_path / "chat.cdesk", session)
    path.unlink()  # verify reads the conversation the session recorded, not the file
    loaded = load_session(tmp_path / "chat.cdesk")
    assert loaded.manifest["chat"]["messages"][0] == {"role": "system", "content": SYSTEM}
    report = verify_session(loaded)
    assert report.ok, report.problems
    assert report.compared == loaded.graph.n_edges > 0
    # the recorded conversation is what verify renders: another one does not give this graph
    loaded.manifest["chat"]["messages"][1]["content"] = "the capital of paris is"
    report = verify_session(loaded)
    assert not report.ok and "chat template" in report.problems[0]
    np.testing.assert_array_equal(loaded.graph.token_ids, res.graph.token_ids)


def test_the_regenerate_command_names_the_chat_form():
    import shlex

    from desktop.cli import build_parser

    settings = AttributionSettings(max_nodes=5)
    for chat, prompt in ((ChatSettings(chat=True), "hi there"), (ChatSettings(chat=True, system="-be brief"), "x"),
                         (ChatSettings(messages="my chats/c.json"), None),
                         (ChatSettings(messages="c.json", system="s"), None)):
        words = shlex.split(trace_command("default", prompt, settings, chat=chat))
        args = build_parser().parse_args(words[1:])
        assert (args.prompt, args.chat, args.system, args.messages) == (prompt, True, chat.system, chat.messages)
    raw = trace_command("default", "hi", settings)
    assert "--chat" not in raw and "--no-chat" not in raw  # a raw prompt's command is as before


@pytest.mark.slow
def test_default_model_chat_is_its_own_template(default_model):
    m = default_model
    assert m.tokenizer.chat_template  # read from the GGUF's metadata
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = reference_ids(m.tokenizer, messages, add_generation_prompt=True)
    ids = traced_ids(m, conv(messages))[0].tolist()
    assert ids == expected
    assert expected[0] in _special_ids(m) and ids.count(expected[0]) == expected.count(expected[0])  # no double start
    assert m.tokenizer.decode(expected).endswith("<|im_end|>\n<|im_start|>assistant\n")  # the generation prompt
    with_answer = conv([*messages, {"role": "assistant", "content": "Paris"}])
    whole = reference_ids(m.tokenizer, with_answer.to_json())
    assert encode_chat(m, with_answer).answer_id == whole[len(expected)]
    assert m.tokenizer.decode([whole[len(expected)]]).strip() == "Paris"


def test_template_tokens_read_as_labels():
    from core.view import short_token

    assert short_token("<|im_start|>", 8) == "<|im_start|>"  # a special token whole, though longer than n
    assert short_token("<|start_header_id|>", 10) == "<|start_h…|>"  # cut inside its brackets
    assert short_token("\n", 8) == "⏎" and short_token(" extraordinarily", 8) == " extrao…"

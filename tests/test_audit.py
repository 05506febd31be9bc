"""Batch audits: a suite with a bad case still gives every good case's session and report."""

import json
import os
import subprocess
import sys

import pytest

from core.audit import load_suite, run_suite
from core.errors import CircuitDeskError
from core.paths import resources_dir
from core.session import load_session

PROMPT = "when mary and john went to the store , john gave a drink to"


def suite_text(model: str) -> str:
    return f"""
name = "three cases"
model = "{model}"
device = "cpu"
auditor = "T. Tester"

[defaults]
max_nodes = 30
n_pairs = 3

[[cases]]
name = "names"
prompt = "{PROMPT}"

[[cases]]
name = "two-token target"
prompt = "{PROMPT}"
target = "mary john"

[[cases]]
name = "induction"
method = "circuit"
task = "induction"
scoring = "eap"
top_n = 5
"""


def test_audit_with_a_bad_case_writes_the_good_ones_and_says_why(tiny_folder, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(suite_text(tiny_folder("llama")))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "desktop.cli", "audit", str(suite), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=os.environ)
    assert proc.returncode == 1, proc.stderr  # completed, with a failure
    assert sorted(p.name for p in out.iterdir()) == ["induction.cdesk", "induction.pdf", "names.cdesk", "names.pdf",
                                                     "summary.json", "summary.pdf"]
    summary = json.loads((out / "summary.json").read_text())
    by_name = {c["name"]: c for c in summary["cases"]}
    assert [c["status"] for c in summary["cases"]] == ["ok", "failed", "ok"]
    assert "2 tokens" in by_name["two-token-target"]["error"]
    assert (summary["cases_ok"], summary["cases_failed"]) == (2, 1)
    # the summary's figures are the sessions' own
    names = load_session(out / "names.cdesk")
    assert by_name["names"]["result"]["pruned_replacement_score"] == names.manifest["stats"]["pruned_replacement_score"]
    assert names.manifest["settings"]["max_nodes"] == 30  # [defaults] applied
    induction = load_session(out / "induction.cdesk")
    assert by_name["induction"]["result"]["circuit_faithfulness"] == induction.circuit.circuit_faithfulness
    assert int(induction.circuit.circuit.sum()) <= 5 and len(induction.circuit.pairs) == 3
    assert by_name["induction"]["command"].startswith("circuitdesk circuit --model ")
    # progress and each case's outcome on stderr; one line saying the suite had failures
    assert "[2/3] two-token-target: FAILED" in proc.stderr and "[3/3] induction: ok" in proc.stderr
    assert "1 of 3 cases failed" in proc.stderr
    from pypdf import PdfReader

    cover = PdfReader(out / "names.pdf").pages[0].extract_text()
    assert "T. Tester".replace(" ", "") in cover.replace("\t", "").replace(" ", "")


def test_case_command_regenerates_the_same_session(tiny_folder, tmp_path):
    """The command a case records, run as is, gives the same graph (the reproducibility promise)."""
    import shlex

    import numpy as np

    suite = tmp_path / "suite.toml"
    suite.write_text(f'model = "{tiny_folder("llama")}"\ndevice = "cpu"\n[[cases]]\nname = "a"\nprompt = "{PROMPT}"\n'
                     'max_nodes = 20\n')
    summary = run_suite(load_suite(suite), tmp_path / "out")
    command = shlex.split(summary["cases"][0]["command"])
    assert command[:2] == ["circuitdesk", "trace"]
    proc = subprocess.run([sys.executable, "-m", "desktop.cli", *command[1:], "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    a, b = load_session(tmp_path / "out" / "a.cdesk").graph, load_session(tmp_path / "a.cdesk").graph
    assert np.array_equal(a.src, b.src) and np.allclose(a.weight, b.weight, atol=1e-6)


@pytest.mark.parametrize("text, expect", [
    ("model = 'default'\n", "lists no cases"),
    ("model = 'default'\n[[cases]\n", "not valid TOML"),
    ("modle = 'default'\n[[cases]]\nprompt = 'x'\n", "unknown suite setting 'modle'"),
    ("[defaults]\nmax_node = 3\n[[cases]]\nprompt = 'x'\n", "unknown setting 'max_node' in [defaults]"),
    ("model = 3\n[[cases]]\nprompt = 'x'\n", "'model' must be text"),
])
def test_a_broken_suite_is_one_sentence(tmp_path, text, expect):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(CircuitDeskError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        load_suite(path)
    with pytest.raises(CircuitDeskError, match="does not exist"):
        load_suite(tmp_path / "absent.toml")


def test_bad_cases_fail_alone_with_their_reason(tiny_folder, tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(f"""model = "{tiny_folder('llama')}"
device = "cpu"
[[cases]]
name = "typo"
prompt = "the cat"
max_node = 3
[[cases]]
name = "wrong type"
prompt = "the cat"
max_nodes = "many"
[[cases]]
name = "circuit setting on a trace"
prompt = "the cat"
task = "ioi"
[[cases]]
name = "empty"
prompt = "  "
[[cases]]
name = "no pairs"
method = "circuit"
pairs = "missing.jsonl"
[[cases]]
name = "empty"
method = "magic"
""")
    summary = run_suite(load_suite(suite), tmp_path / "out")
    errors = {c["name"]: c["error"] for c in summary["cases"]}
    assert "Unknown setting 'max_node'" in errors["typo"]
    assert "must be a number" in errors["wrong-type"]
    assert 'belongs to method = "circuit"' in errors["circuit-setting-on-a-trace"]
    assert "empty" in errors["empty"].lower()
    assert "missing.jsonl does not exist" in errors["no-pairs"]
    assert "Unknown method 'magic'" in errors["empty-6"]  # names are made unique
    assert summary["cases_ok"] == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json"]


def test_example_suite_reads(tmp_path):
    suite = load_suite(resources_dir() / "suites" / "example.toml")
    assert len(suite.cases) == 3 and suite.model == "default"
    assert {suite.case(k).get("method", "attribution") for k in range(3)} == {"attribution", "circuit"}
    assert suite.case(0)["max_nodes"] == 200 and "max_nodes" not in suite.case(1)


def test_summary_json_and_pdf_are_written_all_or_nothing(tiny_folder, tmp_path, monkeypatch):
    """The disk fills when summary.pdf is written: the previous run's summary.json and summary.pdf
    stay as they were, byte for byte, and no temporary file is left (before, a new summary.json
    ended up beside the old summary.pdf)."""
    import errno
    import tempfile

    import core.paths

    suite = tmp_path / "suite.toml"
    suite.write_text(f'model = "{tiny_folder("llama")}"\ndevice = "cpu"\n[[cases]]\nname = "a"\nprompt = "{PROMPT}"\n'
                     'max_nodes = 10\n')
    out = tmp_path / "out"
    out.mkdir()
    old = {out / "summary.json": b'{"suite": "last week"}', out / "summary.pdf": b"%PDF-1.4 last week"}
    for path, data in old.items():
        path.write_bytes(data)
    real = tempfile.mkstemp

    def disk_full_for_summary_pdf(*args, prefix="", **kwargs):
        if prefix.startswith(".~summary.pdf"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(core.paths.tempfile, "mkstemp", disk_full_for_summary_pdf)
    with pytest.raises(CircuitDeskError, match=r"Cannot write .*summary\.pdf: No space left on device\."):
        run_suite(load_suite(suite), out, render=lambda report: b"%PDF-1.4 " + report.title.encode())
    assert {p: p.read_bytes() for p in out.iterdir() if p.name.startswith("summary")} == old
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert (out / "a.pdf").read_bytes().startswith(b"%PDF")  # the case's own report was written


def test_audit_cases_in_chat_form(chat_folder, tmp_path):
    """A case may trace its prompt as a chat (chat, system) or a conversation file (messages, relative
    to the suite); the sessions record the conversation and the command regenerates it."""
    from tiny_models import CHAT_TEMPLATE

    (tmp_path / "conv.json").write_text(json.dumps([{"role": "user", "content": "the capital of france is"},
                                                    {"role": "assistant", "content": "paris"}]), encoding="utf-8")
    suite = tmp_path / "suite.toml"
    suite.write_text(f"""
model = "{chat_folder(CHAT_TEMPLATE)}"
device = "cpu"
[defaults]
max_nodes = 20
[[cases]]
name = "chat"
prompt = "the capital of france is"
chat = true
system = "the cat"
[[cases]]
name = "conversation"
messages = "conv.json"
""")
    summary = run_suite(load_suite(suite), tmp_path / "out")
    assert [c["status"] for c in summary["cases"]] == ["ok", "ok"], [c.get("error") for c in summary["cases"]]
    chat = load_session(tmp_path / "out" / "chat.cdesk").manifest
    assert chat["chat"]["messages"] == [{"role": "system", "content": "the cat"},
                                        {"role": "user", "content": "the capital of france is"}]
    assert "--chat --system 'the cat'" in chat["command"]
    conversation = summary["cases"][1]
    assert conversation["result"]["target"] == "paris"  # the conversation's final answer is the target
    assert f"--messages {tmp_path / 'conv.json'}" in conversation["command"]


def test_the_behaviour_example_suite_reads_and_its_labels_are_not_settings():
    from core.audit import run_case
    from core.behaviour.study import group_key, suite_settings
    from core.settings import CompareSettings

    suite = load_suite(resources_dir() / "suites" / "capitals_right_wrong.toml")
    assert len(suite.cases) == 32 and all(c["answers"] for c in suite.cases)
    settings = CompareSettings(**suite_settings(suite))
    settings.validate()
    assert settings.groups == "correct" and settings.checks == 3
    from core.behaviour.study import CaseRecord

    records = [CaseRecord(c["name"], "attribution", answers=list(c["answers"])) for c in suite.cases]
    assert group_key(records, settings) == "correct"
    # audit runs the same suite: a case's answers/group/labels are labels, not unknown settings
    with pytest.raises(Exception) as err:
        run_case(None, "default", suite, {**suite.case(0), "group": "x", "labels": {"t": "y"}, "bogus": 1}, None)
    assert "Unknown setting 'bogus'" in str(err.value)

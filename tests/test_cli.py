"""The circuitdesk command as a user runs it: a real subprocess, exit codes, stdout/stderr."""

import json
import os
import subprocess
import sys

import pytest

import core


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "desktop.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"circuitdesk {core.__version__}"


def test_usage_error_exits_2():
    out = run("predict")  # --prompt missing
    assert out.returncode == 2 and "--prompt" in out.stderr
    assert run("frobnicate").returncode == 2


def test_models_json_lists_default_and_configured_folders(tiny_folder, tmp_path):
    (tmp_path / "junk").mkdir()
    env = {"CIRCUITDESK_MODELS": os.pathsep.join([str(tiny_folder("gpt2")), str(tmp_path / "absent")])}
    out = run("models", "--json", env=env)
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)["models"]
    assert entries[0]["spec"] == "default" and entries[0]["family"] == "llama"
    by_spec = {e["spec"]: e for e in entries}
    assert by_spec[str(tiny_folder("gpt2"))]["family"] == "gpt2"
    assert by_spec[str(tmp_path / "absent")]["problem"] == "path not found"


def test_models_add_and_remove_remember_paths(tiny_folder, tmp_path):
    env = {"CIRCUITDESK_CONFIG_DIR": str(tmp_path / "config"), "CIRCUITDESK_MODELS": ""}
    folder = str(tiny_folder("qwen2"))
    out = run("models", "--add", folder, "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert [e["family"] for e in json.loads(out.stdout)["models"] if e["spec"] == folder] == ["qwen2"]
    assert folder in (tmp_path / "config" / "model_folders.json").read_text()
    out = run("models", "--json", env=env)  # remembered
    assert folder in [e["spec"] for e in json.loads(out.stdout)["models"]]
    out = run("models", "--add", str(tmp_path / "nowhere"), env=env)
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = run("models", "--remove", folder, "--json", env=env)
    assert out.returncode == 0 and folder not in [e["spec"] for e in json.loads(out.stdout)["models"]]
    out = run("models", "--remove", folder, env=env)
    assert out.returncode == 1 and "not in the configured model paths" in out.stderr


def test_predict_tiny_model_json(tiny_folder):
    out = run("predict", "--model", str(tiny_folder("gemma3")), "--prompt", "the cat", "--top-k", "4",
              "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # exactly one JSON object on stdout
    assert len(data["top"]) == 4 and data["model"]["family"] == "gemma3"
    assert len(data["model"]["sha256"]) == 64
    probs = [t["probability"] for t in data["top"]]
    assert probs == sorted(probs, reverse=True)


@pytest.mark.slow
def test_predict_default_model_says_paris():
    out = run("predict", "--model", "default", "--prompt", "The capital of France is", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["top"][0]["token"] == " Paris"
    assert data["model"]["n_params"] > 100_000_000


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--model", "/no/such/model", "--prompt", "x"], "Model path not found"),
        (["--model", "TINY", "--prompt", ""], "prompt is empty"),
        (["--model", "TINY", "--prompt", "the " * 100], "reads at most 64"),
        (["--model", "TINY", "--prompt", "x", "--device", "quantum"], "Unknown device 'quantum'"),
        (["--model", "TINY", "--prompt", "x", "--dtype", "int3"], "Unknown dtype 'int3'"),
        (["--model", "TINY", "--prompt", "x", "--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_bad_inputs_exit_1_with_one_line(tiny_folder, args, expect):
    args = [str(tiny_folder("llama")) if a == "TINY" else a for a in args]
    out = run("predict", *args)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
    assert len(errors) == 1 and expect in errors[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_text_that_is_not_utf8_is_one_sentence(tiny_folder, tmp_path):
    """Text read from a file in another encoding reaches Python as lone surrogates, which no
    tokenizer takes: an argument's bytes (``--prompt "$(cat latin1.txt)"``) or a pair file's
    unpaired ``\\ud800`` escape."""
    model, out_file = str(tiny_folder("llama")), str(tmp_path / "x.cdesk")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"clean": "when mary \\ud800 and", "corrupted": "when john and mary", '
                     '"answer": " mary", "counterfactual": " john"}\n')
    cases = [
        (["predict", "--model", model, "--prompt", b"the cat \xe9t\xe9"],
         "The prompt is not valid UTF-8 text (the byte 0xe9 at character 9); convert the file it came from to UTF-8."),
        (["trace", "--model", model, "--prompt", "the cat", "--target", b"\xe9", "--out", out_file],
         "The target token is not valid UTF-8 text (the byte 0xe9 at character 1)"),
        (["circuit", "--model", model, "--prompt", "when mary and john", "--corrupted", b"when john and \xff",
          "--out", out_file], "The corrupted prompt is not valid UTF-8 text (the byte 0xff at character 15)"),
        (["circuit", "--model", model, "--pairs", str(pairs), "--out", out_file],
         "p.jsonl line 1 (clean prompt): The prompt is not valid UTF-8 text (an unpaired surrogate U+D800 at "
         "character 11)"),
    ]
    for args, message in cases:
        out = run(*args)
        errors = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
        assert out.returncode == 1 and len(errors) == 1 and message in errors[0], out.stderr
        assert "internal error" not in out.stderr and not (tmp_path / "x.cdesk").exists()


# -- trace -----------------------------------------------------------------------------------------
def test_trace_tiny_model_json_and_session(tiny_folder, tmp_path):
    from core.session import load_session

    out_file = tmp_path / "g.cdesk"
    out = run("trace", "--model", str(tiny_folder("llama")), "--prompt", "when mary and john went to the store",
              "--max-nodes", "40", "--batch-size", "8", "--out", str(out_file), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    for key in ("model", "prompt", "targets", "nodes", "edges", "pruned_nodes", "pruned_edges", "replacement_score",
                "completeness_score", "max_completeness_error", "backward_passes", "seconds", "estimated_peak_bytes",
                "identity_tolerance"):
        assert key in summary, key
    assert summary["max_completeness_error"] <= summary["identity_tolerance"]
    assert len(summary["model"]["sha256"]) == 64
    assert summary["max_completeness_error"] <= 1e-4
    session = load_session(out_file)
    g = session.graph
    assert (g.n_nodes, g.n_edges) == (summary["nodes"], summary["edges"])
    assert int(g.node_mask.sum()) == summary["pruned_nodes"] and int(g.edge_mask.sum()) == summary["pruned_edges"]
    assert session.manifest["model"]["sha256"] == summary["model"]["sha256"]
    assert session.manifest["command"].startswith("circuitdesk trace --model ")
    # the session exports for other tools, from the command line
    out = run("export", str(out_file), "--format", "neuronpedia", "--out", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "g.json")]
    assert len(json.loads((tmp_path / "g.json").read_text())["nodes"]) == summary["pruned_nodes"]
    out = run("export", str(out_file), "--format", "csv", "--out", str(tmp_path / "missing" / "g.csv"))
    assert out.returncode == 1 and out.stderr.strip().endswith("does not exist.")
    # ...gives its PDF audit report (auditor from the command line)...
    out = run("report", str(out_file), "--out", str(tmp_path / "g.pdf"), "--auditor", "Q. Auditor")
    assert out.returncode == 0, out.stderr
    from pypdf import PdfReader

    cover = PdfReader(tmp_path / "g.pdf").pages[0].extract_text()
    assert "Q." in cover and summary["model"]["sha256"] in cover
    out = run("report", str(out_file), "--out", str(tmp_path / "g.txt"))
    assert out.returncode == 1 and "must end in .pdf" in out.stderr
    # ...and re-computes to the same graph with the model on disk
    out = run("verify", str(out_file), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["compared"] == summary["edges"] and report["max_rel_deviation"] <= 1e-4


def test_trace_bad_inputs_say_one_sentence_and_write_nothing(tiny_folder, tmp_path):
    model = str(tiny_folder("llama"))
    cases = [
        (["--target", "zebra"], "not in the model's vocabulary"),
        (["--target", "john mary"], "2 tokens"),
        (["--max-nodes", "0"], "--max-nodes must be at least 1"),
        (["--transcoders", str(tmp_path / "none")], "does not exist"),
        (["--memory-gb", "0.00001"], "allowed by the --memory-gb budget; it would fit with"),
        (["--memory-gb", "-2"], "--memory-gb must be positive"),
    ]
    for extra, message in cases:
        out_file = tmp_path / "x.cdesk"
        out = run("trace", "--model", model, "--prompt", "when mary and john", "--out", str(out_file), *extra)
        assert out.returncode == 1 and message in out.stderr, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
        assert errors == [out.stderr.splitlines()[-1]] and "Traceback" not in out.stderr
        assert not out_file.exists()
    out = run("trace", "--model", model, "--prompt", "x", "--out", str(tmp_path / "missing" / "x.cdesk"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = run("trace", "--model", model, "--prompt", "x", "--out", str(tmp_path / "x.txt"))
    assert out.returncode == 1 and ".cdesk" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no temporary files left behind


def test_trace_a_conversation_from_the_command_line(chat_folder, tiny_folder, tmp_path):
    """--messages: the conversation in the model's chat template, its final answer explained; the
    session verifies, and bad chat input is one sentence with nothing written."""
    from core.session import load_session
    from tiny_models import CHAT_TEMPLATE

    model = str(chat_folder(CHAT_TEMPLATE))
    conv = tmp_path / "conv.json"
    messages = [{"role": "user", "content": "the capital of france is"}, {"role": "assistant", "content": "paris"}]
    conv.write_text(json.dumps({"messages": messages}), encoding="utf-8")
    out_file = tmp_path / "c.cdesk"
    out = run("trace", "--model", model, "--messages", str(conv), "--system", "the cat", "--max-nodes", "20",
              "--out", str(out_file), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["prompt_tokens"] == ["<bos>", "system", ":", "the", "cat", "<eos>", "user", ":", "the", "capital",
                                        "of", "france", "is", "<eos>", "assistant", ":"]  # the template's own tokens
    assert [t["token"] for t in summary["targets"]] == ["paris"]
    assert summary["chat"]["messages"] == [{"role": "system", "content": "the cat"}, *messages]
    assert load_session(out_file).manifest["command"].split("--messages ")[1].startswith(str(conv))
    out = run("verify", str(out_file))
    assert out.returncode == 0 and "verified: the session matches" in out.stdout, out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "user", "content": ""}]', encoding="utf-8")
    for args, message in (
        (["--model", model, "--messages", str(bad)], "bad.json, message 1 (user) is empty"),
        (["--model", str(tiny_folder("llama")), "--prompt", "the cat", "--chat"], "has no chat template"),
        (["--model", model, "--prompt", "the cat", "--system", "be brief"], "add --chat"),
    ):
        for command in ("trace", "predict"):
            extra = ["--out", str(tmp_path / "x.cdesk")] if command == "trace" else []
            out = run(command, *args, *extra)
            errors = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
            assert out.returncode == 1 and len(errors) == 1 and message in errors[0], out.stderr
            assert not (tmp_path / "x.cdesk").exists()
    for args in ([], ["--prompt", "x", "--messages", str(conv)]):  # one of the two, exactly: a usage error
        out = run("trace", "--model", model, *args, "--out", str(tmp_path / "x.cdesk"))
        assert out.returncode == 2 and "--messages" in out.stderr


@pytest.mark.slow
def test_trace_default_model_finds_paris_and_mary(tmp_path):
    out_file = tmp_path / "paris.cdesk"
    out = run("trace", "--model", "default", "--prompt", "The capital of France is", "--max-nodes", "200",
              "--out", str(out_file), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["targets"][0]["token"] == " Paris" and out_file.is_file()
    assert summary["max_completeness_error"] <= 1e-4
    out = run("trace", "--model", "default", "--prompt", "When Mary and John went to the store, John gave a drink to",
              "--max-nodes", "64", "--out", str(tmp_path / "ioi.cdesk"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["targets"][0]["token"] == " Mary"


# -- circuit ---------------------------------------------------------------------------------------
def test_circuit_tiny_model_json_and_session(tiny_folder, tmp_path):
    from core.session import load_session

    out_file = tmp_path / "c.cdesk"
    out = run("circuit", "--model", str(tiny_folder("llama")), "--task", "induction", "--n-pairs", "6",
              "--method", "eap-ig", "--steps", "2", "--batch-size", "4", "--out", str(out_file), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    for key in ("task", "method", "n_pairs", "edges_total", "baseline_metric", "faithfulness", "cpr", "cmd",
                "top_edges", "seconds", "model"):
        assert key in summary, key
    assert summary["task"] == "induction" and summary["method"] == "eap-ig" and summary["n_pairs"] == 6
    assert summary["edges_total"] == 110 and len(summary["model"]["sha256"]) == 64
    assert summary["faithfulness"]["100%"] == pytest.approx(1.0, abs=1e-4)
    assert summary["empty_circuit_metric"] == pytest.approx(summary["corrupted_metric"], abs=1e-4)
    session = load_session(out_file)
    c = session.circuit
    assert session.graph is None and session.manifest["kind"] == "circuit"
    assert c.graph.n_edges == summary["edges_total"] and int(c.circuit.sum()) == summary["circuit_edges"]
    assert c.top_edges(1)[0]["edge"] == summary["top_edges"][0]["edge"]
    assert c.curve.cpr == pytest.approx(summary["cpr"])
    assert session.manifest["command"].startswith("circuitdesk circuit --model ")


def test_circuit_bad_inputs_say_one_sentence(tiny_folder, tmp_path):
    model = str(tiny_folder("llama"))
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"clean": "when mary and john", "corrupted": "when john and mary", '
                     '"answer": " mary", "counterfactual": " john"}\n'
                     '{"clean": "when mary and john", "corrupted": "when john and", '
                     '"answer": " mary", "counterfactual": " john"}\n')
    out_file = tmp_path / "x.cdesk"
    cases = [
        (["--pairs", str(pairs)], "p.jsonl line 2: the clean and corrupted prompts are 5 and 4 tokens"),
        (["--pairs", str(tmp_path / "none.jsonl")], "does not exist"),
        (["--task", "induction", "--top-n", "-1"], "--top-n must be 0 or more"),
        (["--task", "induction", "--steps", "0"], "at least 1 step"),
        (["--task", "induction", "--n-pairs", "0"], "--n-pairs must be at least 1"),
    ]
    for extra, message in cases:
        out = run("circuit", "--model", model, "--out", str(out_file), *extra)
        assert out.returncode == 1 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and not out_file.exists()
    out = run("circuit", "--model", model, "--task", "ioi", "--pairs", str(pairs), "--out", str(out_file))
    assert out.returncode == 2  # usage: a task or a pair file, not both


def test_sigterm_while_a_session_is_written_cleans_up_and_exits_1(tiny_folder, tmp_path):
    """``kill -TERM`` is handled as Ctrl-C is: the half-written temporary file beside the output is
    removed, one sentence says so, exit 1 (before, the process died and left ``.~x.cdesk….tmp``).
    The session writer is slowed down so that the signal lands while it writes."""
    import signal
    import time

    slow_writer = (
        "import sys, time, zipfile\n"
        "real_writestr = zipfile.ZipFile.writestr\n"
        "def slow_writestr(*args, **kwargs):\n"
        "    print('writing the session', file=sys.stderr, flush=True)\n"
        "    time.sleep(60)\n"
        "    return real_writestr(*args, **kwargs)\n"
        "zipfile.ZipFile.writestr = slow_writestr\n"
        "from desktop.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", slow_writer, "trace", "--model", str(tiny_folder("llama")),
                             "--prompt", "the cat", "--device", "cpu", "--max-nodes", "10",
                             "--out", str(out_dir / "x.cdesk")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if not line or line.startswith("writing the session"):
            break
    assert lines[-1].startswith("writing the session"), "".join(lines)
    assert [p.name for p in out_dir.iterdir()][0].startswith(".~x.cdesk")  # the temporary file exists now
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert [line for line in stderr.splitlines() if line.startswith("circuitdesk:")] == ["circuitdesk: terminated."]
    assert "Traceback" not in stderr and stdout == ""
    assert list(out_dir.iterdir()) == []


def test_out_of_memory_mid_trace_is_one_line_and_writes_nothing(tiny_folder, tmp_path):
    """The allocator running out half-way (simulated in the gradient rows): exit 1, one sentence
    that says what ran out and what to try, no session file and no temporary file."""
    oom = (
        "import sys, torch\n"
        "from core.attribution import bases\n"
        "def boom(*args, **kwargs):\n"
        "    raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n"
        "bases.NeuronBasis.contributions = boom\n"
        "from desktop.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", oom, "trace", "--model", str(tiny_folder("llama")), "--prompt",
                          "when mary and john", "--max-nodes", "10", "--out", str(tmp_path / "x.cdesk")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
    assert len(errors) == 1 and errors[0].startswith("circuitdesk: Ran out of memory on cpu while computing "
                                                     "attribution rows"), out.stderr
    assert "try " in errors[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_trace_default_model_in_chat_form(default_model, tmp_path):
    """The README's chat example: the default model's own template (from its GGUF), one start token."""
    out = run("trace", "--model", "default", "--chat", "--prompt", "What is the capital of France?",
              "--max-nodes", "50", "--out", str(tmp_path / "chat.cdesk"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = default_model.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                      add_generation_prompt=True)["input_ids"]
    assert summary["prompt_tokens"] == [default_model.tokenizer.decode([i]) for i in ids]
    assert summary["prompt_tokens"][0] == "<|im_start|>" and summary["prompt_tokens"][1] != "<|im_start|>"
    assert summary["chat"]["messages"] == messages


def _compare_suite(tiny_folder, tmp_path, extra=()):
    words = ["cat", "dog", "red", "blue", "green", "one"]
    lines = ['name = "cli compare"', f'model = "{tiny_folder("llama")}"', "[defaults]", "max_nodes = 20",
             "[compare]", "permutations = 100", "checks = 1", *extra]
    for i, w in enumerate(words):
        lines += ["[[cases]]", f'name = "c{i}"', f'prompt = "the {w} and the two"', f'group = "{"x" if i % 2 else "y"}"']
    suite = tmp_path / "suite.toml"
    suite.write_text("\n".join(lines) + "\n")
    return suite


def test_compare_json_summary_and_flags_over_the_suite(tiny_folder, tmp_path):
    suite = _compare_suite(tiny_folder, tmp_path)
    out = run("compare", str(suite), "--out", str(tmp_path / "out"), "--no-pdf", "--json", "--checks", "0",
              "--correction", "holm")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["groups"] == {"key": "group", "a": "x", "b": "y"} and summary["cases_ok"] == 6
    (section,) = summary["sections"]
    (contrast,) = section["contrasts"]
    assert contrast["correction"] == "holm" and contrast["permutations"] == 20  # 6 choose 3, exactly
    assert section["checks"] == [] and summary["findings"]
    doc = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert doc["settings"]["checks"] == 0 and doc["settings"]["permutations"] == 100  # the suite's, then the flag
    assert not (tmp_path / "out" / "comparison.pdf").exists()
    assert all((tmp_path / "out" / c["runs"]["a"]["session"]).is_file() for c in doc["cases"])


@pytest.mark.parametrize("args, expect, code", [
    (["--executor", "ray"], "needs the cluster's --address", 1),
    (["--group-a", "x"], "both --group-a and --group-b", 1),
    (["--groups", "topic"], "No case has the label 'topic'", 1),
    (["--correction", "sidak"], "invalid choice", 2),
    (["--permutations", "5"], "at least 100", 1),
])
def test_compare_bad_settings_say_one_sentence_and_run_nothing(tiny_folder, tmp_path, args, expect, code):
    suite = _compare_suite(tiny_folder, tmp_path)
    out = run("compare", str(suite), "--out", str(tmp_path / "out"), "--no-pdf", *args)
    assert out.returncode == code and expect in out.stderr
    assert not (tmp_path / "out" / "a").exists()


def test_compare_a_bad_compare_table_or_missing_suite(tiny_folder, tmp_path):
    suite = _compare_suite(tiny_folder, tmp_path, extra=['colour = "red"'])
    out = run("compare", str(suite), "--out", str(tmp_path / "out"))
    assert out.returncode == 1 and "Unknown setting 'colour' in [compare]" in out.stderr
    out = run("compare", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out"))
    assert out.returncode == 1 and "does not exist" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_compare_bad_outputs_and_whole_numbers_are_one_sentence(tiny_folder, tmp_path):
    suite = _compare_suite(tiny_folder, tmp_path)
    (tmp_path / "taken").write_text("x")
    out = run("compare", str(suite), "--out", str(tmp_path / "taken"), "--no-pdf")
    assert out.returncode == 1 and "is a file; give --out a folder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 2  # the suite's line, then the sentence
    suite.write_text(suite.read_text().replace("checks = 1", "checks = 1.5"))
    out = run("compare", str(suite), "--out", str(tmp_path / "out"), "--no-pdf")
    assert out.returncode == 1 and "[compare] checks must be a whole number (got 1.5)" in out.stderr


@pytest.mark.slow
def test_the_readme_behaviour_audit_on_the_default_model(tmp_path):
    """The README's example, as written (checks and permutations fewer, no PDF, to keep it short): the
    default model's wrong capitals against its right ones."""
    out = run("compare", "resources/suites/capitals_right_wrong.toml", "--out", str(tmp_path / "study"), "--no-pdf",
              "--checks", "1", "--permutations", "1000", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["cases_ok"] == 32 and summary["groups"] == {"key": "correct", "a": "wrong", "b": "correct"}
    (section,) = summary["sections"]
    (contrast,) = section["contrasts"]
    assert contrast["n_a"] >= 5 and contrast["n_b"] >= 5 and contrast["n_a"] + contrast["n_b"] == 32
    assert contrast["keys_compared"] > 100 and not contrast["exact"] and contrast["permutations"] == 1000
    (check,) = section["checks"]
    assert set(check["groups"]) == {"wrong", "correct"}
    assert summary["models"]["a"]["name"].startswith("SmolLM2-135M")


def test_compare_and_audit_take_the_placement_flags(tiny_folder, tmp_path):
    """Layers offloaded to disk (a tiny CPU budget) give the same study as the plain run."""
    suite = _compare_suite(tiny_folder, tmp_path)
    plain = run("compare", str(suite), "--out", str(tmp_path / "plain"), "--no-pdf", "--json", "--checks", "1")
    offloaded = run("compare", str(suite), "--out", str(tmp_path / "off"), "--no-pdf", "--json", "--checks", "1",
                    "--max-cpu-memory", "60KB")
    assert plain.returncode == 0 and offloaded.returncode == 0, offloaded.stderr
    a, b = json.loads(plain.stdout), json.loads(offloaded.stdout)
    (ca,), (cb,) = a["sections"][0]["contrasts"], b["sections"][0]["contrasts"]
    assert [r["key"] for r in ca["top"]] == [r["key"] for r in cb["top"]]
    for ra, rb in zip(ca["top"], cb["top"]):
        assert rb["mean_a"] == pytest.approx(ra["mean_a"], rel=1e-4, abs=1e-7)
    ga, gb = a["sections"][0]["checks"][0]["groups"], b["sections"][0]["checks"][0]["groups"]
    assert set(ga) == set(gb)
    for g in ga:
        assert gb[g]["mean_delta"] == pytest.approx(ga[g]["mean_delta"], rel=1e-4, abs=1e-7)
        assert gb[g]["answer_changed"] == ga[g]["answer_changed"]
    out = run("audit", str(suite), "--out", str(tmp_path / "audit"), "--no-pdf", "--max-cpu-memory", "lots")
    assert out.returncode == 1 and "--max-cpu-memory takes a size" in out.stderr

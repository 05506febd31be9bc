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

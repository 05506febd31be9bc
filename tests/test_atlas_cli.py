"""``circuitdesk atlas build`` / ``atlas show`` as a user runs them: real subprocesses, exit codes,
one JSON object with --json, one sentence for every bad input, Ctrl-C saves and the same command
resumes."""

import json
import os
import signal
import subprocess
import sys
import time

from test_cli import run

from tiny_models import WORDS


def corpus(path, n=400):
    import random

    r = random.Random(1)
    path.write_text(" ".join(r.choice(WORDS) for _ in range(n)))
    return path


def test_build_then_show_a_feature(tiny_folder, tmp_path):
    text = corpus(tmp_path / "c.txt")
    out = run("atlas", "build", "--model", str(tiny_folder("llama")), "--corpus", str(text), "--context", "8",
              "--top-k", "3", "--device", "cpu", "--out", str(tmp_path / "atlas"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["tokens_seen"] == 400 and summary["features"] == 2 * 64 and summary["resumed_from_window"] == 0
    assert summary["corpus"]["sources"][0]["sha256"] and "atlas: about" in out.stderr
    shown = run("atlas", "show", str(tmp_path / "atlas"), "--feature", "L1/N7")
    assert shown.returncode == 0 and shown.stdout.startswith("L1/N7") and "density" in shown.stdout
    as_json = json.loads(run("atlas", "show", str(tmp_path / "atlas"), "--feature", "1/7", "--json").stdout)
    assert as_json["feature"] == "L1/N7" and len(as_json["top"]) <= 3
    summary_text = run("atlas", "show", str(tmp_path / "atlas"))
    assert summary_text.returncode == 0 and "2 layers × 64 features" in summary_text.stdout
    again = run("atlas", "build", "--model", str(tiny_folder("llama")), "--corpus", str(text), "--context", "8",
                "--out", str(tmp_path / "atlas"))
    assert again.returncode == 1 and "already holds a finished atlas" in again.stderr


def test_bad_inputs_are_one_sentence(tiny_folder, tmp_path):
    model = str(tiny_folder("llama"))
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    cases = [
        (["atlas", "build", "--model", model, "--corpus", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "a")],
         "does not exist"),
        (["atlas", "build", "--model", model, "--corpus", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "b")],
         "is not JSON"),
        (["atlas", "build", "--model", model, "--top-k", "0", "--out", str(tmp_path / "c")], "--top-k must be"),
        (["atlas", "show", str(tmp_path / "nowhere")], "does not exist"),
        (["atlas", "show", str(tmp_path)], "not a feature atlas"),
    ]
    for args, expect in cases:
        out = run(*args)
        lines = [line for line in out.stderr.splitlines() if line.startswith("circuitdesk:")]
        assert out.returncode == 1 and len(lines) == 1 and expect in lines[0], (args, out.stderr)
        assert "Traceback" not in out.stderr
    text = corpus(tmp_path / "c.txt")
    built = run("atlas", "build", "--model", model, "--corpus", str(text), "--context", "8", "--out", str(tmp_path / "ok"))
    assert built.returncode == 0, built.stderr
    out = run("atlas", "show", str(tmp_path / "ok"), "--feature", "L9/N0")
    assert out.returncode == 1 and "has no feature L9/N0" in out.stderr
    out = run("atlas", "show", str(tmp_path / "ok"), "--feature", "neuron five")
    assert out.returncode == 1 and "layer/index" in out.stderr
    assert run("atlas").returncode == 2  # an action is required


def test_ctrl_c_saves_the_build_and_the_same_command_resumes(tiny_folder, tmp_path):
    """The first Ctrl-C stops at the next batch with a checkpoint; the same command resumes there.
    Each batch is slowed down so that the signal lands mid-scan."""
    text = corpus(tmp_path / "c.txt", n=2000)
    slow = (
        "import sys, time\n"
        "from core.atlas import build\n"
        "real = build._LayerStats.update\n"
        "def slow(self, *a):\n"
        "    print('batch', file=sys.stderr, flush=True); time.sleep(0.2); return real(self, *a)\n"
        "build._LayerStats.update = slow\n"
        "from desktop.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["atlas", "build", "--model", str(tiny_folder("llama")), "--corpus", str(text), "--context", "8",
            "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "atlas")]
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.stderr.readline().strip() != "batch":
        pass
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "run the same command again to resume" in stderr, stderr
    assert "Traceback" not in stderr and not (tmp_path / "atlas" / "atlas.json").exists()
    out = run(*args, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["resumed_from_window"] > 0

"""Safety boundaries: no network ever, core never imports Qt, the real default model and GGUF."""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import CircuitDeskError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_hf_offline_variables_are_set_by_importing_core():
    import os

    import core  # noqa: F401

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_load_and_predict_tiny_model_with_sockets_blocked(no_network, tiny_folder, tmp_path):
    from core.models import load_model
    from core.predict import predict_next

    folder = tmp_path / "m"
    shutil.copytree(tiny_folder("qwen3"), folder)  # fresh path: nothing cached for it
    m = load_model(folder, device="cpu")
    assert len(predict_next(m, "the cat", top_k=3).top) == 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9))  # the block is real


@pytest.mark.slow
def test_default_model_load_and_predict_with_sockets_blocked(no_network):
    from core.models import load_model
    from core.predict import predict_next

    m = load_model("default", device="cpu")
    top = predict_next(m, "The capital of France is", top_k=3).top
    assert top[0].token == " Paris" and 0.6 < top[0].probability < 0.9
    assert m.facts.family == "llama" and m.facts.n_layers == 30 and m.facts.tied_embeddings
    assert m.fingerprint.files == {"SmolLM2-135M-Instruct.Q4_1.gguf": m.fingerprint.files[m.source.name]}


@pytest.mark.slow
def test_default_model_ioi_prompt(default_model):
    from core.predict import predict_next

    top = predict_next(default_model, "When Mary and John went to the store, John gave a drink to", top_k=3).top
    assert top[0].token == " Mary" and top[0].probability > 0.8


def test_truncated_gguf_fails_with_a_clear_sentence(tmp_path):
    from core.models import default_gguf_path, load_model

    src = default_gguf_path()
    broken = tmp_path / "broken.gguf"
    with open(src, "rb") as f:
        broken.write_bytes(f.read(4 << 20))  # header + part of the tensor table/data
    with pytest.raises(CircuitDeskError) as info:
        load_model(broken, device="cpu")
    text = str(info.value)
    assert "truncated or corrupt" in text and "broken.gguf" in text and "\n" not in text


def test_file_with_gguf_name_but_other_content_is_refused(tmp_path):
    from core.models import load_model

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(CircuitDeskError, match="not a GGUF file"):
        load_model(fake, device="cpu")


def test_core_never_imports_qt_or_desktop():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "core").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import core.models.loader, core.predict, core.instrument\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'desktop', 'shiboken6')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    # And statically, so a lazy import inside a function is caught too.
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text()
        for banned in ("PySide6", "pyqtgraph", "from desktop", "import desktop"):
            assert banned not in text, f"{path} mentions {banned}"


def test_gui_start_path_does_not_import_torch():
    code = "import sys, desktop.app, desktop.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_trust_remote_code_is_never_enabled():
    """And every ``from_pretrained`` says ``trust_remote_code=False`` itself: left unset, transformers
    would ask on stdin whether to run a folder's code."""
    import ast

    calls = 0
    for path in list((ROOT / "core").rglob("*.py")) + list((ROOT / "desktop").rglob("*.py")):
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                calls += 1
                trust = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
                assert len(trust) == 1 and isinstance(trust[0], ast.Constant) and trust[0].value is False, \
                    f"{path.name} line {node.lineno}: from_pretrained without trust_remote_code=False"
    assert calls >= 4  # the folder and GGUF loaders' tokenizer and model


@pytest.mark.slow
def test_default_gguf_converts_into_an_empty_cache_then_reuses_it(tmp_path, monkeypatch):
    """The conversion path itself (a warm user cache would otherwise hide it)."""
    from core.jobs import JobContext
    from core.models import load_model
    from core.predict import predict_next

    monkeypatch.setenv("CIRCUITDESK_CACHE_DIR", str(tmp_path))
    messages = []
    m = load_model("default", device="cpu", ctx=JobContext(lambda p: messages.append(p.message)))
    assert any("Converting GGUF" in msg for msg in messages)
    converted = list((tmp_path / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").stat().st_size > 500e6
    assert not any(p.name.startswith(".convert-") for p in (tmp_path / "gguf").iterdir())  # no temp left
    assert predict_next(m, "The capital of France is", top_k=1).top[0].token == " Paris"
    messages.clear()
    again = load_model("default", device="cpu", ctx=JobContext(lambda p: messages.append(p.message)))
    assert not any("Converting" in msg for msg in messages)
    assert again.fingerprint.sha256 == m.fingerprint.sha256

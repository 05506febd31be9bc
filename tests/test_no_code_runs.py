"""Files from anyone never run code and never ask on stdin: a model folder's custom code (auto_map
and a Python file), a GGUF beside such a folder, a transcoder config.yaml with Python tags, a
session holding a pickle, a suite naming a hostile model. Each plants code that would write a
marker file if it ran, answers "y" to any question, and checks that the marker never appears."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import CircuitDeskError
from tiny_models import make_tiny_gguf

ROOT = Path(__file__).resolve().parents[1]


def _plant_code(folder: Path, marker: Path) -> None:
    """evil.py (imported if custom code ran) + auto_map in config.json and tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    for name, changes in {
        "config.json": {"model_type": "evil", "architectures": ["EvilModel"],
                        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}},
        "tokenizer_config.json": {"tokenizer_class": "EvilTokenizer",
                                  "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}},
    }.items():
        path = folder / name
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(changes)
        path.write_text(json.dumps(data))


@pytest.fixture
def says_yes(monkeypatch):
    """Answer "y" to any question asked on stdin, and record that it was asked."""
    asked = []

    def answer(prompt=""):
        asked.append(prompt)
        return "y"

    monkeypatch.setattr("builtins.input", answer)
    return asked


def test_gguf_beside_a_folder_with_custom_code_runs_none_of_it(tmp_path):
    """The issue's reproduction: ``echo y | circuitdesk predict --model DIR/evil.gguf``."""
    folder, marker = tmp_path / "dir", tmp_path / "MARKER"
    folder.mkdir()
    gguf = make_tiny_gguf(folder / "evil.gguf")
    _plant_code(folder, marker)
    env = {**os.environ, "CIRCUITDESK_CACHE_DIR": str(tmp_path / "cache"),  # not converted before
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "desktop.cli", "predict", "--model", str(gguf),
                          "--prompt", "the cat", "--device", "cpu", "--json"],
                         input="y\n" * 4, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert not marker.exists()
    # the GGUF alone is read: it converts and predicts, and nobody is asked anything
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"]["family"] == "llama"
    assert "custom code" not in out.stderr and "[y/N]" not in out.stderr
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache" / "gguf").iterdir())  # no private folder left


def test_transformers_never_asks_even_when_a_call_leaves_trust_unset(tiny_folder, tmp_path, says_yes):
    """The backstop behind the explicit ``trust_remote_code=False``: once Circuit Desk has set up
    transformers, a nested call that leaves it unset refuses instead of asking on stdin."""
    from transformers import AutoTokenizer

    from core.models.loader import _configure_transformers

    folder, marker = tmp_path / "m", tmp_path / "MARKER"
    shutil.copytree(tiny_folder("llama"), folder)
    _plant_code(folder, marker)
    _configure_transformers()
    with pytest.raises(ValueError, match="custom code"):
        AutoTokenizer.from_pretrained(folder, local_files_only=True)  # trust_remote_code not given
    assert says_yes == [] and not marker.exists()


@pytest.mark.parametrize("planted, expect", [
    ({"config.json"}, "its auto_map names custom code, which Circuit Desk never runs"),
    ({"tokenizer_config.json"}, "tokenizer_config.json has an auto_map), which Circuit Desk never runs"),
    ({"config.json:tokenizer"}, "config.json has an auto_map), which Circuit Desk never runs"),
    ({"config.json:llama"}, None),  # a standard model_type: built-in code, auto_map ignored
    ({"tokenizer_config.json:standard"}, None),  # a standard tokenizer class: loads, auto_map ignored
], ids=["model-type-custom", "tokenizer-class-custom", "tokenizer-in-config", "auto-map-leftover",
        "tokenizer-auto-map-leftover"])
def test_model_folder_with_custom_code_never_runs_it(tiny_folder, tmp_path, says_yes, planted, expect):
    from core.models import load_model

    folder, marker = tmp_path / "m", tmp_path / "MARKER"
    shutil.copytree(tiny_folder("llama"), folder)
    keep = {n: (folder / n).read_text() for n in ("config.json", "tokenizer_config.json")}
    _plant_code(folder, marker)
    (what,) = planted
    if what == "config.json":  # model_type 'evil': only the custom code would know it
        (folder / "tokenizer_config.json").write_text(keep["tokenizer_config.json"])
    elif what == "tokenizer_config.json":
        (folder / "config.json").write_text(keep["config.json"])
    elif what == "config.json:tokenizer":  # the tokenizer class named in config.json instead
        cfg = json.loads(keep["config.json"])
        cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
        (folder / "config.json").write_text(json.dumps(cfg))
        tok = json.loads(keep["tokenizer_config.json"])
        tok.pop("tokenizer_class", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    elif what == "config.json:llama":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "llama"
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "tokenizer_config.json").write_text(keep["tokenizer_config.json"])
    else:
        (folder / "config.json").write_text(keep["config.json"])
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    if expect is None:
        assert load_model(folder, device="cpu").facts.family == "llama"
    else:
        with pytest.raises(CircuitDeskError) as info:
            load_model(folder, device="cpu")
        text = str(info.value)
        assert expect in text and "\n" not in text
    assert not marker.exists() and says_yes == []


def test_transcoder_config_with_python_tags_is_one_sentence_and_runs_nothing(tmp_path):
    from core.attribution.transcoders import load_transcoders

    marker = tmp_path / "MARKER"
    for n, tag in enumerate([f"!!python/object/apply:os.system ['touch {marker}']",
                             "!!python/name:os.system", f"!!python/object/new:pathlib.Path ['{marker}']"]):
        folder = tmp_path / f"tc{n}"
        folder.mkdir()
        (folder / "config.yaml").write_text(f"feature_input_hook: mlp.hook_in\nactivation: {tag}\n")
        with pytest.raises(CircuitDeskError) as info:
            load_transcoders(folder, n_layers=2, d_model=32)
        text = str(info.value)
        assert "\n" not in text and text.endswith(".") and "config.yaml" in text and "Python" in text
    assert not marker.exists()


def test_session_holding_a_pickle_is_refused_and_runs_nothing(tiny_model, tmp_path):
    from core.attribution import AttributionSettings
    from core.runs import attribution_session
    from core.session import load_session, save_session

    marker = tmp_path / "MARKER"
    session, _ = attribution_session(tiny_model("llama"), "tiny", "the cat", AttributionSettings(max_nodes=5))
    good = save_session(tmp_path / "good.cdesk", session)

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    buf = io.BytesIO()
    np.save(buf, np.array([Payload()], dtype=object), allow_pickle=True)
    assert b"exec" in buf.getvalue()  # a real pickle inside the .npy
    bad = tmp_path / "bad.cdesk"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, buf.getvalue() if name == "arrays/activation.npy" else zin.read(name))
    with pytest.raises(CircuitDeskError) as info:
        load_session(bad)
    assert "\n" not in str(info.value) and "bad.cdesk" in str(info.value)
    assert not marker.exists()


def test_suite_naming_a_model_with_custom_code_runs_none_of_it(tiny_folder, tmp_path, says_yes):
    from core.audit import load_suite, run_suite

    folder, marker = tmp_path / "m", tmp_path / "MARKER"
    shutil.copytree(tiny_folder("llama"), folder)
    _plant_code(folder, marker)
    suite = tmp_path / "suite.toml"
    suite.write_text('model = "m"\ndevice = "cpu"\n[[cases]]\nprompt = "the cat"\n')
    with pytest.raises(CircuitDeskError, match="never runs"):
        run_suite(load_suite(suite), tmp_path / "out")
    assert not marker.exists() and says_yes == []


@pytest.mark.parametrize("key", ["attn_implementation", "_attn_implementation"])
def test_attention_kernel_named_in_config_is_not_fetched(tiny_folder, tmp_path, key):
    """config.json may name a Hub kernel ("org/repo") as its attention: code that the `kernels`
    package would fetch and run. The model loads with plain attention instead (then the
    instrumentation's own), and the `kernels` package is never imported."""
    from core.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_folder("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = "kernels-community/flash-attn"
    (folder / "config.json").write_text(json.dumps(cfg))
    m = load_model(folder, device="cpu")
    assert m.hf.config._attn_implementation == "circuitdesk" and "kernels" not in sys.modules

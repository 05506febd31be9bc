"""benchmarks/gpu.py at its tiny scale, in process: the GPU benchmark cannot rot unnoticed between
the rare sessions that have a GPU."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_attribution_case_reports_its_figures(gpu):
    lines = []
    r = gpu.run_case("llama-64", "tiny", "cpu", say=lines.append)
    assert r["ok"] and r["dtype"] == "bfloat16"
    assert r["traced_tokens"] == r["tokens"] == gpu.CASES["llama-64"].tiny["tokens"]
    assert r["max_completeness_error"] <= r["identity_tolerance"]
    assert r["feature_rows"] == gpu.CASES["llama-64"].tiny["max_nodes"]
    assert r["n_params"] == sum(p.numel() for p in gpu.build_model("llama-3-8b", "tiny", "cpu").hf.parameters())
    assert any("Done" in line for line in lines)
    assert "within the tolerance" in gpu.describe(r)


def test_longest_prompt_stops_with_the_preflight_sentence(gpu):
    from core.attribution import AttributionSettings
    from core.attribution.attribute import make_basis, memory_estimate

    p = gpu.CASES["gemma-longest"].tiny
    model = gpu.build_model("gemma-2-2b", "tiny", "cpu")
    settings = AttributionSettings(max_nodes=p["max_nodes"])
    fits = memory_estimate(model, 64, settings, make_basis(model, settings)).total <= p["memory_gb"] * 1024 ** 3
    r = gpu.run_case("gemma-longest", "tiny", "cpu", length=64, say=lambda s: None)
    assert r["ok"] == fits
    if not fits:
        assert r["stopped_by"] == "pre-flight" and r["error"].startswith("This run needs about")
    beyond = gpu.run_case("gemma-longest", "tiny", "cpu", length=2 * model.facts.context_length, say=lambda s: None)
    assert not beyond["ok"] and beyond["stopped_by"] == "context"


def test_eap_ig_case_runs_the_ioi_task(gpu):
    r = gpu.run_case("eap-ig-ioi", "tiny", "cpu", say=lambda s: None)
    p = gpu.CASES["eap-ig-ioi"].tiny
    assert r["ok"] and r["n_pairs"] == p["n_pairs"]
    assert r["backward_passes"] > 0 and 0 < r["circuit_edges"] <= r["edges"]


def test_word_tokenizer_has_the_configs_vocabulary(gpu):
    vocab = gpu.SHAPES["llama-3-8b"][1]["vocab_size"]
    assert len(gpu.word_tokenizer(vocab)) == vocab


def test_building_in_bf16_leaves_the_default_dtype_alone(gpu):
    model = gpu.build_model("gemma-2-2b", "tiny", "cpu")
    assert {p.dtype for p in model.hf.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32

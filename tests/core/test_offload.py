"""Models larger than memory: a model whose layers accelerate offloaded to disk (weights on the meta
device, loaded per forward pass) gives the same attribution graphs, lens, predictions and circuits
as the same model loaded plainly; transcoders memory-mapped from their files give the same graph
as transcoders read into memory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.attribution import AttributionSettings, attribute
from core.attribution.transcoders import load_transcoders
from core.circuits import CircuitSettings, find_circuit
from core.circuits.tasks import PairSet, TokenPair
from core.errors import CircuitDeskError
from core.interventions import Intervention, intervene
from core.lens import lens, neuron_effects
from core.models import load_model
from core.models.offload import is_offloaded
from core.predict import predict_next
from core.runs import attribution_session
from core.session import load_session, save_session
from core.settings import PlacementSettings, memory_bytes

PROMPT = "when mary and john went to the store , john gave a drink to"
ALL = AttributionSettings(max_nodes=10**6, batch_size=16, candidate_share=1.0, max_candidates=10**9)

# Explicit maps: some layers in CPU memory, the others on disk (the CPU is the execution device).
# GPT-2's unembedding is tied to its token embedding, so both stay together.
DEVICE_MAPS = {
    "llama": {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.norm": "disk", "lm_head": "disk"},
    "gpt2": {"transformer.wte": "cpu", "lm_head": "cpu", "transformer.wpe": "disk", "transformer.drop": "cpu",
             "transformer.h.0": "disk", "transformer.h.1": "cpu", "transformer.ln_f": "disk"},
}
# A CPU budget too small for the decoder layers: accelerate's own plan puts them on disk.
SMALL_CPU = PlacementSettings(max_cpu_memory="60KB")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("CIRCUITDESK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def offloaded(tiny_folder):
    """(family, how) -> a tiny model with layers on disk: "map" (explicit) or "budget" (planned)."""
    cache = {}

    def get(family: str, how: str):
        if (family, how) not in cache:
            if how == "map":
                cache[family, how] = load_model(tiny_folder(family), device="cpu", device_map=DEVICE_MAPS[family])
            else:
                cache[family, how] = load_model(tiny_folder(family), device="cpu", placement=SMALL_CPU)
        return cache[family, how]

    return get


def _pairs(model, n: int, seq: int = 7) -> PairSet:
    """Token pairs that differ in one position, with random answer/counterfactual tokens."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        clean = [1] + [rng.randrange(4, 50) for _ in range(seq - 1)]
        corrupted = list(clean)
        corrupted[rng.randrange(1, seq)] = rng.randrange(4, 50)
        a, c = rng.sample(range(4, 50), 2)
        out.append(TokenPair(tuple(clean), tuple(corrupted), (a,), (c,), f"pair {i}", "", ""))
    return PairSet("test", out)


def _on_disk(model) -> list[str]:
    return [n for n, p in model.hf.named_parameters() if p.device.type == "meta"]


@pytest.mark.parametrize("attention", ["pattern", "q/k"])
@pytest.mark.parametrize("how", ["map", "budget"])
@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_offloaded_model_gives_the_same_attribution_graph(fam, how, attention, tiny_model, offloaded, monkeypatch):
    """Also with the bias-only pass holding attention by its queries and keys (as on long prompts),
    cached on the offloaded layers' devices."""
    import importlib

    engine = importlib.import_module("core.attribution.attribute")
    monkeypatch.setattr(engine, "attention_by_qk", lambda facts, n: attention == "q/k")
    plain, off = tiny_model(fam), offloaded(fam, how)
    # really offloaded: decoder-layer weights live on disk, not in the module
    assert is_offloaded(off.device_map) and "disk" in off.device_map.values()
    assert any(".mlp." in n for n in _on_disk(off)) and not _on_disk(plain)
    assert off.device == torch.device("cpu")
    a, b = attribute(plain, PROMPT, ALL), attribute(off, PROMPT, ALL)
    ga, gb = a.graph, b.graph
    for name in ("kind", "layer", "pos", "index", "src", "dst"):
        np.testing.assert_array_equal(getattr(ga, name), getattr(gb, name), err_msg=name)
    scale = np.abs(ga.weight).max()
    np.testing.assert_allclose(gb.weight, ga.weight, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(gb.value, ga.value, rtol=1e-6, atol=1e-6)
    for key in ("completeness_score", "replacement_score", "pruned_completeness_score"):
        assert b.stats[key] == pytest.approx(a.stats[key], abs=1e-6)
    assert b.stats["max_completeness_error"] <= b.stats["identity_tolerance"]
    np.testing.assert_array_equal(ga.node_mask, gb.node_mask)
    # and the weights are still where accelerate keeps them (nothing was loaded for good)
    assert _on_disk(off) == _on_disk(offloaded(fam, how))


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_offloaded_model_gives_the_same_lens_predictions_and_circuit(fam, tiny_model, offloaded):
    plain, off = tiny_model(fam), offloaded(fam, "map")
    pa, pb = predict_next(plain, PROMPT, top_k=5), predict_next(off, PROMPT, top_k=5)
    assert [t.token for t in pa.top] == [t.token for t in pb.top]
    np.testing.assert_allclose([t.probability for t in pb.top], [t.probability for t in pa.top], rtol=1e-5)

    ids = torch.tensor([plain.tokenizer(PROMPT).input_ids])
    la, lb = lens(plain, ids), lens(off, ids)
    np.testing.assert_allclose(lb.lens_prob, la.lens_prob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lb.patterns, la.patterns, rtol=1e-5, atol=1e-7)
    assert lb.lens_top == la.lens_top
    ea, eb = neuron_effects(plain, 1, 3), neuron_effects(off, 1, 3)  # reads an offloaded down-projection
    assert [t for t, _ in eb.promoted] == [t for t, _ in ea.promoted]
    np.testing.assert_allclose([v for _, v in eb.promoted], [v for _, v in ea.promoted], rtol=1e-5)

    edits = [Intervention("neuron", layer=1, index=3, positions=(2,), mode="scale", value=4.0),
             Intervention("head", layer=0, index=1, mode="zero")]
    for freeze in ("none", "attention"):
        ia, ib = intervene(plain, ids, edits, freeze=freeze), intervene(off, ids, edits, freeze=freeze)
        torch.testing.assert_close(ib.logits_after, ia.logits_after, rtol=1e-5, atol=1e-5)
        assert ia.prob_after != ia.prob_before

    pairs = _pairs(plain, 4)
    settings = CircuitSettings(method="eap-ig", steps=2, batch_size=4, top_n=10)
    ca, cb = find_circuit(plain, pairs, settings), find_circuit(off, pairs, settings)
    assert np.abs(ca.scores).max() > 0
    np.testing.assert_allclose(cb.scores, ca.scores, rtol=1e-5, atol=1e-6 * np.abs(ca.scores).max())
    np.testing.assert_array_equal(cb.circuit, ca.circuit)
    assert cb.circuit_faithfulness == pytest.approx(ca.circuit_faithfulness, abs=1e-5)


def test_offload_that_fits_loads_plainly(tiny_folder, tiny_model):
    """--offload on a machine without CUDA whose CPU holds every layer: a plain CPU model."""
    m = load_model(tiny_folder("llama"), device="cpu", placement=PlacementSettings(offload=True))
    assert m.device_map == {"": "cpu"} and not is_offloaded(m.device_map) and not _on_disk(m)
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(m.hf(ids).logits, tiny_model("llama").hf(ids).logits, rtol=0, atol=0)
    assert m.summary()["device_map"] == {"": "cpu"}


def test_device_map_is_recorded_in_the_session(offloaded, tmp_path):
    off = offloaded("llama", "budget")
    session, _ = attribution_session(off, "tiny", PROMPT, AttributionSettings(max_nodes=20))
    path = save_session(tmp_path / "a.cdesk", session)
    recorded = load_session(path).manifest["model"]
    assert recorded["device_map"] == off.device_map and "disk" in recorded["device_map"].values()


def test_bad_budgets_are_one_sentence(tiny_folder):
    assert memory_bytes("20GiB") == 20 * 2**30 and memory_bytes("512MB") == 512 * 10**6
    assert memory_bytes("1.5kb") == 1500 and memory_bytes("4096") == 4096
    for bad in ("lots", "-1GB", "0", "12XB", "nan", ""):
        with pytest.raises(CircuitDeskError, match="--max-cpu-memory takes a size"):
            load_model(tiny_folder("llama"), device="cpu", placement=PlacementSettings(max_cpu_memory=bad))
    with pytest.raises(CircuitDeskError, match="--max-gpu-memory needs a GPU"):
        load_model(tiny_folder("llama"), device="cpu", placement=PlacementSettings(max_gpu_memory="1GB"))
    with pytest.raises(CircuitDeskError, match="--transcoders-device"):
        PlacementSettings(transcoders_device="gpu7").validate()


def test_cli_offloads_with_a_cpu_budget(tiny_folder, capsys):
    from desktop.cli import main

    folder = str(tiny_folder("llama"))
    base = ["predict", "--model", folder, "--prompt", PROMPT, "--device", "cpu", "--top-k", "3", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(base + ["--max-cpu-memory", "60KB"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert "device_map" not in plain["model"] and "disk" in off["model"]["device_map"].values()
    assert [t["token"] for t in off["top"]] == [t["token"] for t in plain["top"]]
    assert main(base + ["--max-cpu-memory", "plenty"]) == 1  # one sentence on stderr, exit 1
    assert "--max-cpu-memory takes a size" in capsys.readouterr().err


# -- transcoders that do not fit ------------------------------------------------------------------------
def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def _write_transcoders(folder: Path, model, d_tc: int = 48, seed: int = 3) -> Path:
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    d = model.facts.d_model
    for i in range(model.facts.n_layers):
        save_file({"W_enc": torch.randn(d_tc, d, generator=gen) * 0.3, "b_enc": torch.randn(d_tc, generator=gen) * 0.1,
                   "W_dec": torch.randn(d_tc, d, generator=gen) * 0.2, "b_dec": torch.randn(d, generator=gen) * 0.1,
                   "W_skip": torch.randn(d, d, generator=gen) * 0.05},
                  str(folder / f"layer_{i}.safetensors"))
    return folder


def test_memory_mapped_transcoders_give_the_same_graph(tiny_model, tiny_folder, tmp_path):
    model = tiny_model("llama")
    folder = _write_transcoders(tmp_path / "tc", model)
    L, d = model.facts.n_layers, model.facts.d_model
    mapped = load_transcoders(folder, L, d, mapped=True)
    read = load_transcoders(folder, L, d, mapped=False)
    # the mapped encoder is the file's own pages, not a copy in memory
    if Path("/proc/self/maps").exists():
        ranges = _mapped_ranges((folder / "layer_0.safetensors").resolve())
        ptr = mapped.layers[0].W_enc.data_ptr()
        assert any(lo <= ptr < hi for lo, hi in ranges)
    for a, b in zip(mapped.layers, read.layers):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name

    settings = AttributionSettings(transcoders=str(folder), max_nodes=10**6, batch_size=16)
    from core.attribution.attribute import TranscoderBasis

    g_read = attribute(model, PROMPT, settings, basis=TranscoderBasis(model, read)).graph
    on_cpu = load_model(tiny_folder("llama"), device="cpu", placement=PlacementSettings(transcoders_device="cpu"))
    res = attribute(on_cpu, PROMPT, settings)  # loads them the --transcoders-device cpu way
    g_cpu = res.graph
    assert res.transcoders.device == torch.device("cpu")
    for name in ("kind", "layer", "pos", "index", "src", "dst"):
        np.testing.assert_array_equal(getattr(g_cpu, name), getattr(g_read, name), err_msg=name)
    np.testing.assert_allclose(g_cpu.weight, g_read.weight, rtol=0, atol=1e-6 * np.abs(g_read.weight).max())
    assert res.stats["max_completeness_error"] <= res.stats["identity_tolerance"]


def test_bf16_transcoder_files_map_and_convert(tmp_path, tiny_model):
    model = tiny_model("llama")
    folder = _write_transcoders(tmp_path / "tc32", model)
    half = tmp_path / "tc16"
    half.mkdir()
    from safetensors.torch import load_file

    for f in folder.glob("layer_*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(half / f.name))
    L, d = model.facts.n_layers, model.facts.d_model
    mapped, read = load_transcoders(half, L, d, mapped=True), load_transcoders(half, L, d, mapped=False)
    for a, b in zip(mapped.layers, read.layers):
        assert a.W_enc.dtype == torch.float32 and torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_dec, b.W_dec)



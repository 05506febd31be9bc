"""Long prompts within memory: the pre-flight estimate refuses what will not fit (with what would),
an out-of-memory error mid-run is one sentence with nothing written, transcoder candidates are
capped exactly, and the partial influence is computed without copying every row."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.attribution import AttributionSettings, attribute
from core.attribution.attribute import _Rows, memory_estimate, make_basis
from core.errors import CircuitDeskError
from core.graph import FEATURE
from core.memory import GB, attribution_estimate, is_out_of_memory, memory_guard

sys.path.insert(0, str(Path(__file__).parent))
from test_attribution import _check_completeness, _random_plt, _write_plt  # noqa: E402

PROMPT = "when mary and john went to the store , john gave a drink to"


def test_preflight_refuses_a_run_over_the_budget_and_says_what_fits(tiny_model):
    m = tiny_model("llama")
    settings = AttributionSettings(max_nodes=10**6, max_candidates=10**6)
    n_tokens = 15
    need = memory_estimate(m, n_tokens, settings, make_basis(m, settings)).total
    budget_gb = need / GB / 3
    with pytest.raises(CircuitDeskError) as err:
        attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, max_candidates=10**6, memory_gb=budget_gb))
    text = str(err.value)
    assert text.startswith("This run needs about ") and "allowed by the --memory-gb budget" in text
    assert "it would fit with" in text and text.count(".") <= 3  # one sentence (numbers have dots)
    # what it proposes does fit: run with the first fix and the same budget
    fix = text.split("it would fit with ", 1)[1].split(",")[0].rstrip(".")
    flag, value = fix.split()
    assert flag in ("--max-nodes", "--max-candidates", "--batch-size")
    import dataclasses

    smaller = dataclasses.replace(settings, memory_gb=budget_gb, **{flag[2:].replace("-", "_"): int(value)})
    res = attribute(m, PROMPT, smaller)
    assert res.stats["estimated_peak_bytes"] <= budget_gb * GB


def test_budget_from_the_environment(tiny_model, monkeypatch):
    m = tiny_model("gpt2")
    monkeypatch.setenv("CIRCUITDESK_MEMORY_GB", "0.000001")
    with pytest.raises(CircuitDeskError, match="allowed by the CIRCUITDESK_MEMORY_GB budget"):
        attribute(m, PROMPT, AttributionSettings(max_nodes=50))
    monkeypatch.setenv("CIRCUITDESK_MEMORY_GB", "lots")
    with pytest.raises(CircuitDeskError, match="is not a number of gigabytes"):
        attribute(m, PROMPT, AttributionSettings(max_nodes=50))
    with pytest.raises(CircuitDeskError, match="--memory-gb must be positive"):
        attribute(m, PROMPT, AttributionSettings(memory_gb=-1.0))


def test_estimate_grows_with_nodes_and_tokens_not_with_the_width_times_positions():
    from types import SimpleNamespace

    facts = SimpleNamespace(n_layers=30, d_model=576, d_mlp=1536, n_heads=9, n_kv_heads=3, d_head=64, vocab_size=49152)
    est = lambda p, nodes, cand=65536: attribution_estimate(facts, p, max_nodes=nodes, batch=1,  # noqa: E731
                                                            candidates=cand).total
    assert est(256, 1000) < est(1024, 1000) < est(1024, 4000)
    # the row buffer is bounded by the candidates: 4x the positions do not make it 4x the width
    rows = lambda p: attribution_estimate(facts, p, max_nodes=1000, batch=1,  # noqa: E731
                                          candidates=65536).phases["the gradient rows"]["rows"]
    assert rows(1024) < 2 * rows(256)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 123 bytes."),
                                   MemoryError()])
def test_out_of_memory_mid_run_is_one_sentence(tiny_model, monkeypatch, error):
    m = tiny_model("llama")
    from core.attribution import bases

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(bases.NeuronBasis, "contributions", boom)
    with pytest.raises(CircuitDeskError) as err:
        attribute(m, PROMPT, AttributionSettings(max_nodes=20))
    text = str(err.value)
    assert text.startswith("Ran out of memory on cpu while computing attribution rows") and "try " in text
    assert "\n" not in text
    # the model still works afterwards
    monkeypatch.undo()
    assert attribute(m, PROMPT, AttributionSettings(max_nodes=20)).stats["feature_rows"] == 20


def test_other_errors_pass_through_the_guard():
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError):
        with memory_guard("cpu", "try less"):
            raise ValueError("a bug")


def test_transcoder_candidates_capped_exactly(tiny_model, tmp_path):
    """Over ``max_candidates`` active transcoder features: the top ones by total effect are the
    nodes, every other one's write is in its error node, the identity stays exact; under the cap
    the graph is the uncapped one."""
    m = tiny_model("llama")
    folder = _write_plt(tmp_path / "plt", _random_plt(m, d_tc=64))
    full = attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, transcoders=str(folder)))
    pool = full.stats["active_features"]
    same = attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, transcoders=str(folder), max_candidates=pool))
    assert np.array_equal(same.graph.src, full.graph.src) and np.allclose(same.graph.weight, full.graph.weight)
    cap = pool // 3
    res = attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, transcoders=str(folder), max_candidates=cap))
    g = res.graph
    assert res.stats["candidates"] == cap == (g.kind == FEATURE).sum() and res.stats["candidate_pool"] == pool
    _check_completeness(res)
    # errors hold the folded features: error + candidates' decoder writes = the capped-out remainder
    key = lambda gr: {(int(gr.layer[i]), int(gr.pos[i]), int(gr.index[i])): float(gr.activation[i])  # noqa: E731
                      for i in np.flatnonzero(gr.kind == FEATURE)}
    kept, every = key(g), key(full.graph)
    assert set(kept) < set(every)
    tc = res.transcoders
    for l in range(m.facts.n_layers):
        folded = torch.zeros_like(res.errors[l])
        for (ll, p, i), a in every.items():
            if ll == l and (ll, p, i) not in kept:
                folded[p] += a * tc.layers[l].W_dec[i, 0]
        assert torch.allclose(res.errors[l] - full.errors[l], folded, atol=1e-4)
    # the kept ones have the largest |activation x decoder . gradient| effects: the strongest full-graph
    # direct effect on the logits among the folded ones is not above the kept ones' strongest
    assert len(kept) == cap


def test_partial_influence_equals_propagating_over_every_column():
    torch.manual_seed(0)
    n_active, n_logits, n_rest = 300, 3, 20
    rows = _Rows(60, n_active, n_rest)
    rows.add(torch.arange(n_active + n_rest, n_active + n_rest + n_logits),
             [(0, torch.randn(n_logits, n_active))], torch.randn(n_logits, n_rest))
    for _ in range(5):  # feature rows read only features of earlier "layers" (lower index): a DAG
        nodes = torch.randperm(n_active - 50)[:10] + 50
        chunk = torch.randn(10, n_active) * (torch.arange(n_active)[None] < nodes[:, None] - 20)
        rows.add(nodes, [(0, chunk)], torch.randn(10, n_rest))
    w = torch.tensor([0.5, 0.3, 0.2])
    # reference: circuit-tracer's iteration, every column every step
    n = rows.n
    magnitude = rows.val[:n].abs()
    norm = rows.abs_total[:n].float().clamp(min=1e-8)
    feature_row = rows.node[:n] < n_active
    q = torch.zeros(n)
    q[:n_logits] = w
    total = torch.zeros(n_active)
    for _ in range(1000):
        col = (q / norm) @ magnitude
        if not col.any():
            break
        total += col
        q = torch.zeros(n)
        q[feature_row] = col[rows.node[:n][feature_row]]
    assert torch.allclose(rows.feature_influence(w, n_logits), total, rtol=1e-5, atol=1e-9)


def test_out_of_memory_while_scoring_a_circuit_is_one_sentence(tiny_model, monkeypatch):
    from core.circuits import CircuitSettings, discover, find_circuit
    import random

    from core.circuits.tasks import induction_pairs

    m = tiny_model("gpt2")
    pairs = induction_pairs(m, 4, random.Random(0), length=4, repeat=2)

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(discover, "score_edges", boom)
    with pytest.raises(CircuitDeskError, match=r"^Ran out of memory on cpu while scoring edges with eap; "
                                               r"try --batch-size 1, --dtype bfloat16 or --offload\.$"):
        find_circuit(m, pairs, CircuitSettings(method="eap", batch_size=4))


def test_position_blocks_give_each_features_write_dot_its_gradient():
    from core.attribution.bases import PositionBlocks

    torch.manual_seed(1)
    B, P, d = 3, 120, 8
    g = torch.randn(B, P, d)
    even = torch.tensor([1, 1, 1, 2, 4, 4, 5, 5, 5, 7])
    crowded = torch.tensor([0] * 100 + list(range(1, 90)) + [95] * 30 + [119] * 7)  # one position fires 100
    for pos in (even, crowded):
        vectors = torch.randn(pos.numel(), d)
        blocks = PositionBlocks.build(pos, vectors, "cpu")
        assert torch.allclose(blocks.apply(g), (g[:, pos] * vectors).sum(-1), atol=1e-5)
        # padding stays within about twice the vectors, however crowded a position is
        padded = sum(block.shape[0] * block.shape[2] for _, block, _ in blocks.tiers)
        assert padded <= 2 * pos.numel() + 64 * len(blocks.tiers)
    assert len(PositionBlocks.build(even, torch.randn(10, d), "cpu").tiers) == 1
    assert len(PositionBlocks.build(crowded, torch.randn(crowded.numel(), d), "cpu").tiers) > 1


def test_a_gpu_takes_the_largest_batch_the_budget_holds():
    from core.attribution.attribute import ROW_BATCH_TOKENS, gpu_tokens_per_pass, row_batch

    settings = AttributionSettings(batch_size=64)
    # plenty of memory: every copy the setting asks for
    assert row_batch(settings, 1024, gpu_tokens_per_pass(1024, settings, lambda t: True)) == 64
    # a budget for 8 copies of a 1024-token prompt
    tokens = gpu_tokens_per_pass(1024, settings, lambda t: t <= 8 * 1024)
    assert row_batch(settings, 1024, tokens) == 8
    # never fewer than the CPU's cap, which the pre-flight then judges
    assert gpu_tokens_per_pass(1024, settings, lambda t: False) == ROW_BATCH_TOKENS
    assert row_batch(settings, 1024) == 1 and row_batch(settings, 16) == 32


def test_reports_of_transcoder_graphs_name_their_candidates_when_capped(tiny_model, tmp_path):
    """A transcoder graph under the cap is the reference's (no candidate sentence); over it, the
    report says how many features were kept and what they carry."""
    from core.report import Paragraph, build_report
    from core.runs import attribution_session
    from core.session import save_session

    m = tiny_model("llama")
    folder = str(_write_plt(tmp_path / "plt", _random_plt(m, d_tc=64)))
    texts = []
    for cap in (10**6, 40):
        session, res = attribution_session(m, "tiny", PROMPT, AttributionSettings(transcoders=folder,
                                                                                  max_candidates=cap))
        path = save_session(tmp_path / f"cap{cap}.cdesk", session)
        report = build_report(session, path)
        texts.append(" ".join(b.text for b in report.blocks if isinstance(b, Paragraph)))
    assert "Candidate transcoder features" not in texts[0]
    assert f"Candidate transcoder features: the 40 of {res.stats['candidate_pool']:,} active" in texts[1]

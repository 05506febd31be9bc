"""Reduced precision: attribution graphs of bfloat16 and float16 models keep the completeness
identity within the tolerance derived from the dtype's epsilon (``core.attribution.precision``),
row by row against each row's own magnitude; the graph and its report say which precision that was.
Lens and circuits run at those precisions on the CPU too."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.attribution import AttributionSettings, attribute
from core.attribution.precision import identity_tolerance, unit_roundoff
from core.circuits import CircuitSettings, find_circuit
from core.circuits.tasks import PairSet, TokenPair
from core.graph import FEATURE, LOGIT
from core.lens import lens
from core.models import load_model
from core.report import Facts, build_report
from core.runs import attribution_session
from core.session import save_session

PROMPT = "when mary and john went to the store , john gave a drink to"
ALL = AttributionSettings(max_nodes=10**6, batch_size=16, candidate_share=1.0, max_candidates=10**9)
REDUCED = (torch.bfloat16, torch.float16)


@pytest.fixture(scope="module")
def at_precision(tiny_folder):
    cache = {}

    def get(family: str, dtype: torch.dtype):
        if (family, dtype) not in cache:
            cache[family, dtype] = load_model(tiny_folder(family), device="cpu", dtype=dtype)
        return cache[family, dtype]

    return get


def test_tolerance_follows_the_dtype_epsilon():
    for L in (1, 2, 30):
        f32 = identity_tolerance(torch.float32, L)
        for dtype in REDUCED:
            assert identity_tolerance(dtype, L) / f32 == pytest.approx(torch.finfo(dtype).eps / torch.finfo(torch.float32).eps)
        assert identity_tolerance(torch.float32, 4 * L + 1) / f32 == pytest.approx(math.sqrt((8 * L + 4) / (2 * L + 2)))
    assert unit_roundoff(torch.bfloat16) == 2.0**-8 and unit_roundoff(torch.float16) == 2.0**-11


@pytest.mark.parametrize("dtype", REDUCED, ids=str)
@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma2"])
def test_identity_holds_within_the_tolerance_of_the_precision(fam, dtype, at_precision):
    model = at_precision(fam, dtype)
    assert next(model.hf.parameters()).dtype == dtype
    res = attribute(model, PROMPT, ALL)
    g = res.graph
    tol = identity_tolerance(dtype, model.facts.n_layers)
    prec = g.meta["precision"]
    assert prec == {"dtype": str(dtype).removeprefix("torch."), "eps": torch.finfo(dtype).eps,
                    "identity_tolerance": tol, "identity_holds": True}
    assert res.stats["identity_tolerance"] == tol
    assert 0 < res.stats["max_completeness_error"] <= tol
    # row by row, against the row's own magnitude: Σ|A[t, s]| (every edge of the full graph) + |constant|
    rc = g.meta["row_check"]
    nodes, value, const = np.array(rc["node"]), np.array(rc["value"]), np.array(rc["constant"])
    total = np.bincount(g.dst, weights=g.weight.astype(np.float64), minlength=g.n_nodes)[nodes]
    magnitude = np.bincount(g.dst, weights=np.abs(g.weight.astype(np.float64)), minlength=g.n_nodes)[nodes]
    assert sorted(nodes.tolist()) == np.flatnonzero((g.kind == FEATURE) | (g.kind == LOGIT)).tolist()
    err = np.abs(value - total - const)
    # the graph's edges are float32: their own rounding (≤ u32 per edge) is allowed on top
    slack = magnitude * torch.finfo(torch.float32).eps
    assert np.all(err <= tol * (magnitude + np.abs(const)) + slack)
    # the precision matters: the same rows at float32 would not meet a float32 tolerance here
    assert res.stats["max_completeness_error"] > identity_tolerance(torch.float32, model.facts.n_layers)


def test_the_report_says_at_which_precision_the_identity_holds(at_precision, tmp_path):
    model = at_precision("llama", torch.bfloat16)
    session, res = attribution_session(model, "tiny", PROMPT, AttributionSettings(max_nodes=50), "bfloat16")
    path = save_session(tmp_path / "bf16.cdesk", session)
    report = build_report(session, path)
    facts = dict(row for block in report.blocks if isinstance(block, Facts) for row in block.rows)
    note = facts["Largest completeness error"]
    err, tol = res.stats["max_completeness_error"], res.stats["identity_tolerance"]
    assert f"to {err:.1e}" in note and "at bfloat16" in note and f"{tol:.1e}" in note


@pytest.mark.parametrize("dtype", REDUCED, ids=str)
def test_lens_and_circuits_run_at_reduced_precision(dtype, at_precision, tiny_model):
    model, f32 = at_precision("llama", dtype), tiny_model("llama")
    ids = torch.tensor([model.tokenizer(PROMPT).input_ids])
    lo, hi = lens(model, ids), lens(f32, ids)
    assert np.isfinite(lo.lens_prob).all()
    # probabilities agree with float32 to what the precision allows (softmax of logits with error ~ u·|logit|)
    assert np.abs(lo.lens_prob - hi.lens_prob).max() < 50 * unit_roundoff(dtype)
    pairs = PairSet("t", [TokenPair((1, 5, 9, 12, 7), (1, 5, 20, 12, 7), (30,), (31,), "p", "", "")])
    res = find_circuit(model, pairs, CircuitSettings(method="eap-ig", steps=2, top_n=5))
    assert np.isfinite(res.scores).all() and np.abs(res.scores).max() > 0

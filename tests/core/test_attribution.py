"""Attribution graphs against exact references: the completeness identity (values vs gradient rows
vs an independent bias-only pass), brute-force perturbation of the frozen model, the replacement
model's exactness, transcoder layouts, pruning and scores, interventions, bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.attribution import AttributionSettings, attribute, frozen_patches, frozen_points
from core.attribution.transcoders import load_transcoders
from core.errors import CircuitDeskError
from core.graph import EMBEDDING, ERROR, FEATURE, LOGIT, find_threshold, graph_scores, prune
from core.jobs import Cancelled, JobContext

PROMPT = "when mary and john went to the store , john gave a drink to"
# every neuron a candidate, every feature a row (tiny models)
ALL = AttributionSettings(max_nodes=10**6, batch_size=16, candidate_share=1.0, max_candidates=10**9)


def _check_completeness(res, tol=1e-4):
    rc = res.graph.meta["row_check"]
    value, const, total = (np.array(rc[k]) for k in ("value", "constant", "sum"))
    assert len(value) == res.stats["feature_rows"] + len(res.targets)
    # the identity, row by row: value(t) = Σ_s A[t, s] + constant(t)
    err = np.abs(value - total - const)
    assert np.all(err <= tol * np.maximum(1.0, np.abs(value))), err.max()
    assert res.stats["max_completeness_error"] <= tol


@pytest.fixture(scope="module")
def neuron_graphs(tiny_model):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = attribute(tiny_model(family), PROMPT, ALL)
        return cache[family]

    return get


def test_completeness_identity_neurons_every_family(family, neuron_graphs):
    res = neuron_graphs(family)
    _check_completeness(res)
    g = res.graph
    # the graph's edges are the rows: summing each row's edges gives the stored sums
    sums = np.bincount(g.dst, weights=g.weight.astype(np.float64), minlength=g.n_nodes)
    rows = np.flatnonzero((g.kind == FEATURE) | (g.kind == LOGIT))
    rc = res.graph.meta["row_check"]
    # with every feature selected, a row's column id is its graph node index
    nodes = np.array(rc["node"])
    assert sorted(nodes.tolist()) == rows.tolist()
    const = np.array(rc["constant"])
    err = np.abs(g.value[nodes].astype(np.float64) - sums[nodes] - const)
    assert np.all(err <= 1e-4 * np.maximum(1.0, np.abs(g.value[nodes]))), err.max()
    # every row's value is a real model quantity: logits against the model's actual logits
    m_logits = np.array([t.probability for t in res.targets])
    assert np.allclose(g.activation[g.kind == LOGIT], m_logits)


def test_start_position_is_a_constant_every_family(family, neuron_graphs):
    """circuit-tracer's convention: the start token's features are not nodes, its error nodes are
    zero (its MLP outputs are constants), its token node remains (the identity above is exact)."""
    res = neuron_graphs(family)
    g = res.graph
    assert res.ids[0, 0] == 1  # the tiny tokenizer's <bos>, prepended
    assert not np.any((g.kind == FEATURE) & (g.pos == 0))
    assert torch.all(res.errors[:, 0] == 0)
    start_errors = np.flatnonzero((g.kind == ERROR) & (g.pos == 0))
    assert len(start_errors) == g.n_layers and not np.isin(g.src, start_errors).any()
    start_token = np.flatnonzero((g.kind == EMBEDDING) & (g.pos == 0))[0]
    assert not np.any(g.src == start_token)  # the start token's embedding is a constant too (by default)
    assert not np.any((g.kind == ERROR) & (g.pos == 0) & g.node_mask)  # never in the pruned graph
    top = np.argsort(-g.influence)[:5]
    assert not np.any((g.kind[top] == ERROR) & (g.pos[top] == 0))


def test_logit_values_are_the_models_demeaned_logits(family, tiny_model, neuron_graphs):
    if family == "gemma2":
        pytest.skip("Gemma 2 soft-caps its final logits; the linear value is the pre-cap logit")
    m = tiny_model(family)
    res = neuron_graphs(family)
    with torch.no_grad():
        logits = m.hf(res.ids).logits[0, -1].double()
    g = res.graph
    for node, t in zip(np.flatnonzero(g.kind == LOGIT), res.targets):
        assert g.value[node] == pytest.approx(float(logits[t.token_id] - logits.mean()), abs=1e-4)


def _frozen_run(m, ids, clean, patches):
    """The frozen (replacement) model with every MLP write held at its clean value, plus edits."""
    with torch.no_grad(), m.instrument.session(patch={**frozen_patches(clean), **patches},
                                               cache=["final_norm", "blocks.*.mlp.post"]) as tr:
        m.hf(input_ids=ids, use_cache=False)
    return tr


@pytest.mark.parametrize("fam", ["llama", "qwen2", "gemma2", "gpt2"])
def test_edges_equal_brute_force_perturbation(fam, tiny_model, neuron_graphs):
    _brute_force_edges(tiny_model(fam), neuron_graphs(fam))


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_start_token_node_as_the_reference_keeps(fam, tiny_model):
    """--start-token-node: the start token's embedding is a node (circuit-tracer), its edges are
    what removing it changes, and the identity stays exact."""
    res = attribute(tiny_model(fam), PROMPT, dataclasses.replace(ALL, start_token_node=True))
    _check_completeness(res)
    g = res.graph
    assert np.any(g.src == np.flatnonzero((g.kind == EMBEDDING) & (g.pos == 0))[0])
    _brute_force_edges(tiny_model(fam), res, extra_sources=np.flatnonzero((g.kind == EMBEDDING) & (g.pos == 0)))


def _brute_force_edges(m, res, extra_sources=()):
    g, ids = res.graph, res.ids
    L = m.facts.n_layers
    with torch.no_grad():
        _, clean = m.instrument.forward(ids, cache=frozen_points(m) + ["blocks.*.mlp.out", "blocks.0.resid_pre"]
                                        + (["pos_embed"] if m.adapter.pos_embed else []))
    held = {f"blocks.{l}.mlp.out": clean[f"blocks.{l}.mlp.out"] for l in range(L)}
    W_U = m.hf.get_submodule(m.adapter.unembed).weight.detach().double()
    base = _frozen_run(m, ids, clean, held)

    def target_value(tr, t):
        if g.kind[t] == LOGIT:
            d = W_U[g.index[t]] - W_U.mean(0)
            return float(tr["final_norm"][0, -1].double() @ d)
        return float(tr[f"blocks.{g.layer[t]}.mlp.post"][0, g.pos[t], g.index[t]])

    W_down = [m.hf.get_submodule(m.adapter.layers)[l].get_submodule(m.adapter.mlp).get_submodule(m.adapter.down_proj)
              for l in range(L)]
    rng = np.random.default_rng(0)
    checked = 0
    # sample sources of every kind (the start token's embedding is a constant unless given), compare every row
    # they feed
    kinds = [np.flatnonzero(g.kind == FEATURE), np.flatnonzero(g.kind == ERROR),
             np.flatnonzero((g.kind == EMBEDDING) & (g.pos > 0))]
    sources = np.concatenate([rng.choice(k, size=min(6, len(k)), replace=False) for k in kinds]
                             + [np.asarray(extra_sources, dtype=int)])
    for s in sources:
        l, p = int(g.layer[s]), int(g.pos[s])
        if g.kind[s] == EMBEDDING:
            r0 = clean["blocks.0.resid_pre"].clone()
            r0[0, p] = clean["pos_embed"].reshape(r0.shape)[0, p] if m.adapter.pos_embed else 0  # token removed
            edit = {"blocks.0.resid_pre": r0}
        else:
            out = held[f"blocks.{l}.mlp.out"].clone()
            if g.kind[s] == FEATURE:
                w = W_down[l].weight.detach()
                col = w[g.index[s]] if m.adapter.conv1d else w[:, g.index[s]]
                out[0, p] -= g.activation[s] * col
            else:
                out[0, p] -= res.errors[l, p]
            edit = {f"blocks.{l}.mlp.out": out}
        tr = _frozen_run(m, ids, clean, {**held, **edit})
        targets = np.flatnonzero((g.kind == LOGIT) | ((g.kind == FEATURE) & ((g.layer > l) | (g.pos >= p) & (g.layer > l))))
        for t in rng.choice(targets, size=min(12, len(targets)), replace=False):
            brute = target_value(base, t) - target_value(tr, t)
            hit = np.flatnonzero((g.src == s) & (g.dst == t))
            edge = float(g.weight[hit[0]]) if len(hit) else 0.0
            assert edge == pytest.approx(brute, abs=1e-5, rel=1e-4), (g.label(s), g.label(t))
            checked += 1
    assert checked > 50


def test_replacement_model_reproduces_the_model_at_the_prompt(family, tiny_model):
    m = tiny_model(family)
    ids = m.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits, clean = m.instrument.forward(ids, cache=frozen_points(m))
        held, _ = m.instrument.forward(ids, patch=frozen_patches(clean))
    assert (held - logits).abs().max() <= 1e-5


def test_neuron_error_nodes_hold_only_biases(tiny_model, neuron_graphs):
    for fam in ("gpt2", "llama"):
        m = tiny_model(fam)
        res = neuron_graphs(fam)
        # position 0 is the start token, whose neurons are folded into its error node
        for l in range(m.facts.n_layers):
            b = m.hf.get_submodule(m.adapter.layers)[l].get_submodule(m.adapter.mlp).get_submodule(m.adapter.down_proj)
            bias = torch.zeros(m.facts.d_model) if getattr(b, "bias", None) is None else b.bias.detach()
            assert torch.allclose(res.errors[l, 1:], bias.expand_as(res.errors[l, 1:]), atol=1e-5)
        assert res.stats["replacement_score"] > 0.0


def test_pruning_keeps_the_stated_fractions_and_scores_are_ordered(family, neuron_graphs):
    g = neuron_graphs(family).graph
    pr = prune(g, 0.8, 0.98)
    infl = pr.node_influence
    by_threshold = infl >= find_threshold(infl, 0.8)
    assert infl[by_threshold].sum() >= 0.8 * infl.sum() - 1e-9
    assert np.all(pr.node_mask[(g.kind == EMBEDDING) | (g.kind == LOGIT)])
    assert np.all(pr.node_mask <= (by_threshold | (g.kind == EMBEDDING) | (g.kind == LOGIT)))
    assert np.all(pr.node_mask[g.src[pr.edge_mask]]) and np.all(pr.node_mask[g.dst[pr.edge_mask]])
    kept_features = np.flatnonzero(pr.node_mask & (g.kind == FEATURE))
    assert all(np.any(pr.edge_mask & (g.src == i)) for i in kept_features)  # no dangling feature
    full, pruned = graph_scores(g), graph_scores(g, pr.node_mask, pr.edge_mask)
    for s in (*full, *pruned):
        assert 0.0 <= s <= 1.0
    assert full.replacement >= pruned.replacement and full.completeness >= pruned.completeness
    assert pr.edge_mask.sum() < g.n_edges


def test_find_threshold_covers_the_fraction():
    scores = np.array([5.0, 3.0, 1.0, 1.0])
    assert find_threshold(scores, 0.5) == 5.0
    assert find_threshold(scores, 0.8) == 3.0
    assert find_threshold(scores, 1.0) == 1.0


def test_limited_rows_follow_influence_and_stay_complete(tiny_model):
    m = tiny_model("llama")
    res = attribute(m, PROMPT, AttributionSettings(max_nodes=40, batch_size=8, update_interval=1))
    _check_completeness(res)
    assert res.stats["feature_rows"] == 40
    assert res.stats["backward_passes"] == int(np.ceil(len(res.targets) / 8)) + 5
    assert (res.graph.kind == FEATURE).sum() == 40


def test_target_and_foil(tiny_model):
    m = tiny_model("llama")
    res = attribute(m, PROMPT, AttributionSettings(target="john", foil="mary", max_nodes=30))
    assert [t.token for t in res.targets] == ["john"] and res.targets[0].foil == "mary"
    _check_completeness(res)
    with torch.no_grad():
        logits = m.hf(res.ids).logits[0, -1]
    g = res.graph
    tok = m.tokenizer
    expect = logits[tok.convert_tokens_to_ids("john")] - logits[tok.convert_tokens_to_ids("mary")]
    assert g.value[g.kind == LOGIT][0] == pytest.approx(float(expect), abs=1e-4)


def test_bad_targets_and_settings(tiny_model):
    m = tiny_model("llama")
    with pytest.raises(CircuitDeskError, match="not in the model's vocabulary"):
        attribute(m, PROMPT, AttributionSettings(target="zebra"))
    with pytest.raises(CircuitDeskError, match=r"2 tokens \('john', 'mary'\)"):
        attribute(m, PROMPT, AttributionSettings(target="john mary"))
    with pytest.raises(CircuitDeskError, match="max-nodes"):
        attribute(m, PROMPT, AttributionSettings(max_nodes=0))
    with pytest.raises(CircuitDeskError, match="foil needs a target"):
        attribute(m, PROMPT, AttributionSettings(foil="john"))
    with pytest.raises(CircuitDeskError, match="empty"):
        attribute(m, "   ", AttributionSettings())


def test_cancellation_stops_between_batches(tiny_model):
    m = tiny_model("llama")
    seen = []

    def on_progress(p):
        seen.append(p.message)
        if p.message.startswith("Attribution rows"):
            ctx.cancel()

    ctx = JobContext(on_progress, min_interval=0.0, min_step=0.0)
    with pytest.raises(Cancelled):
        attribute(m, PROMPT, AttributionSettings(max_nodes=200, batch_size=4), ctx=ctx)
    assert sum(s.startswith("Attribution rows") for s in seen) == 1


# -- transcoders ------------------------------------------------------------------------------------
def _random_plt(m, d_tc=48, seed=0, skip=True, jump=True):
    gen = torch.Generator().manual_seed(seed)
    d = m.facts.d_model
    layers = []
    for _ in range(m.facts.n_layers):
        t = {"W_enc": torch.randn(d_tc, d, generator=gen) * 0.3, "W_dec": torch.randn(d_tc, d, generator=gen) * 0.2,
             "b_enc": torch.randn(d_tc, generator=gen) * 0.1, "b_dec": torch.randn(d, generator=gen) * 0.1}
        if jump:
            t["activation_function.threshold"] = torch.rand(d_tc, generator=gen) * 0.2
        if skip:
            t["W_skip"] = torch.randn(d, d, generator=gen) * 0.05
        layers.append(t)
    return layers


def _write_plt(folder, layers, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(layers):
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / f"layer_{i}.safetensors"))
    if config:
        (folder / "config.yaml").write_text(config)
    return folder


def _write_clt(folder, m, d_tc=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    d, L = m.facts.d_model, m.facts.n_layers
    for i in range(L):
        save_file({f"W_enc_{i}": torch.randn(d_tc, d, generator=gen) * 0.3, f"b_enc_{i}": torch.randn(d_tc, generator=gen) * 0.1,
                   f"b_dec_{i}": torch.randn(d, generator=gen) * 0.1, f"threshold_{i}": torch.rand(d_tc, generator=gen) * 0.1},
                  str(folder / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": torch.randn(d_tc, L - i, d, generator=gen) * 0.2}, str(folder / f"W_dec_{i}.safetensors"))
    (folder / "config.yaml").write_text("model_kind: cross_layer_transcoder\nfeature_input_hook: hook_resid_mid\n"
                                        "feature_output_hook: hook_mlp_out\n")
    return folder


def test_completeness_identity_transcoders_every_family(family, tiny_model, tmp_path):
    m = tiny_model(family)
    plt = _write_plt(tmp_path / "plt", _random_plt(m))
    res = attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, transcoders=str(plt)))
    assert res.graph.meta["basis"] == "transcoders" and res.stats["active_features"] > 0
    _check_completeness(res)
    g = res.graph  # the start position: no features, zero errors (its writes are constants)
    assert not np.any((g.kind == FEATURE) & (g.pos == 0)) and torch.all(res.errors[:, 0] == 0)
    clt = _write_clt(tmp_path / "clt", m)
    res = attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, transcoders=str(clt)))
    assert res.graph.meta["basis_info"]["kind"] == "cross-layer"
    _check_completeness(res)


def _relu_gpt2(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny_models import make_tiny_model

    from core.models import load_model

    folder = make_tiny_model("gpt2", tmp_path / "gpt2relu")
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["activation_function"] = "relu"
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_model(folder, device="cpu")


def test_transcoder_that_is_the_mlp_has_no_error_and_every_layout_agrees(tmp_path):
    """A ReLU MLP is a ReLU transcoder of itself: W_enc = W_fc, W_dec = W_proj, biases the same."""
    m = _relu_gpt2(tmp_path)
    blocks = m.hf.get_submodule(m.adapter.layers)
    layers = []
    for blk in blocks:
        fc, proj = blk.mlp.c_fc, blk.mlp.c_proj  # Conv1D: weight [in, out]
        layers.append({"W_enc": fc.weight.detach().T.contiguous(), "b_enc": fc.bias.detach().clone(),
                       "W_dec": proj.weight.detach().clone(), "b_dec": proj.bias.detach().clone()})
    cfg = "feature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
    plt = _write_plt(tmp_path / "plt", layers, cfg)
    gs = tmp_path / "gemmascope"
    gs.mkdir()
    for i, t in enumerate(layers):
        np.savez(gs / f"layer_{i}.npz", W_enc=t["W_enc"].T.numpy(), W_dec=t["W_dec"].numpy(), b_enc=t["b_enc"].numpy(),
                 b_dec=t["b_dec"].numpy(), threshold=np.zeros(t["b_enc"].shape, np.float32))
    (gs / "config.yaml").write_text(cfg)
    clt = tmp_path / "clt"
    clt.mkdir()
    L = len(layers)
    for i, t in enumerate(layers):
        save_file({f"W_enc_{i}": t["W_enc"], f"b_enc_{i}": t["b_enc"], f"b_dec_{i}": t["b_dec"]}, str(clt / f"W_enc_{i}.safetensors"))
        dec = torch.zeros(t["W_dec"].shape[0], L - i, t["W_dec"].shape[1])
        dec[:, 0] = t["W_dec"]
        save_file({f"W_dec_{i}": dec}, str(clt / f"W_dec_{i}.safetensors"))
    (clt / "config.yaml").write_text(cfg)

    neurons = attribute(m, PROMPT, ALL)
    graphs = []
    for folder in (plt, gs, clt):
        tc = load_transcoders(folder, L, m.facts.d_model)
        x = torch.randn(3, m.facts.d_model)
        mlp = blocks[0].mlp
        recon = tc.activate(0, tc.encode_pre(0, x)) @ tc.layers[0].W_dec[:, 0] + tc.layers[0].b_dec
        assert torch.allclose(recon, mlp(x), atol=1e-5)  # the expected reconstruction
        res = attribute(m, PROMPT, AttributionSettings(max_nodes=10**6, batch_size=16, transcoders=str(folder)))
        _check_completeness(res)
        assert res.errors[:, 1:].abs().max() <= 1e-5  # near-zero error nodes (position 0 is the start token)
        graphs.append(res.graph)
    a, b = graphs[0], neurons.graph
    # features are neurons: same nodes, same activations, same logit edges
    assert np.array_equal(a.index[a.kind == FEATURE], b.index[b.kind == FEATURE])
    for other in graphs[1:]:
        assert np.array_equal(other.src, a.src) and np.allclose(other.weight, a.weight, atol=1e-5)
    # (error nodes differ by b_dec, which the transcoder basis reports as a constant)
    sel_a = (a.kind[a.dst] == LOGIT) & (a.kind[a.src] != ERROR)
    sel_b = (b.kind[b.dst] == LOGIT) & (b.kind[b.src] != ERROR)
    assert np.array_equal(a.src[sel_a], b.src[sel_b]) and np.array_equal(a.dst[sel_a], b.dst[sel_b])
    assert np.allclose(a.weight[sel_a], b.weight[sel_b], atol=1e-5)


def test_bad_transcoder_folders(tiny_model, tmp_path):
    m = tiny_model("llama")
    L, d = m.facts.n_layers, m.facts.d_model
    with pytest.raises(CircuitDeskError, match="does not exist"):
        load_transcoders(tmp_path / "nope", L, d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CircuitDeskError, match="No transcoder files"):
        load_transcoders(empty, L, d)
    layers = _random_plt(m)
    missing = _write_plt(tmp_path / "missing", layers[:1])
    with pytest.raises(CircuitDeskError, match=r"no file \(layer_i.safetensors\) for layer\(s\) 1"):
        load_transcoders(missing, L, d)
    wide = [{k: (v if v.ndim == 0 else torch.zeros(*[s * 2 if s == d else s for s in v.shape])) for k, v in t.items()}
            for t in layers]
    with pytest.raises(CircuitDeskError, match=f"d_model is {d}"):
        load_transcoders(_write_plt(tmp_path / "wide", wide), L, d)
    broken = _write_plt(tmp_path / "broken", layers)
    (broken / "layer_1.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CircuitDeskError, match="cannot be read"):
        load_transcoders(broken, L, d)


# -- interventions ---------------------------------------------------------------------------------
def test_zeroing_a_strong_node_moves_the_target_as_the_edge_predicts(tiny_model, neuron_graphs, monkeypatch):
    import importlib

    from core.interventions import Intervention, intervene

    m = tiny_model("llama")
    res = neuron_graphs("llama")
    g = res.graph
    logit = np.flatnonzero(g.kind == LOGIT)[0]
    into = (g.dst == logit) & (g.kind[g.src] == FEATURE)
    e = np.flatnonzero(into)[np.argmax(np.abs(g.weight[into]))]
    s = g.src[e]
    iv = Intervention("neuron", int(g.layer[s]), int(g.index[s]), (int(g.pos[s]),), "zero")
    out = intervene(m, res.ids, [iv], freeze="replacement", target_id=int(g.index[logit]))
    # in the linear replacement model the change is the graph's path sum (direct + via features)
    delta = np.zeros(g.n_nodes)
    delta[s] = -g.activation[s]
    for layer in range(int(g.layer[s]), m.facts.n_layers + 1):  # propagate layer by layer
        step = np.zeros(g.n_nodes)
        rel = np.where(g.kind == FEATURE, delta / np.where(g.activation == 0, 1, g.activation), 0)
        np.add.at(step, g.dst, g.weight * rel[g.src])
        upd = ((g.kind == FEATURE) & (g.layer > g.layer[s])) | (g.kind == LOGIT)
        delta = np.where(upd, step, delta)
        delta[s] = -g.activation[s]
    demeaned = (out.logits_after - out.logits_before).double()
    change = float(demeaned[g.index[logit]] - demeaned.mean())
    assert change == pytest.approx(delta[logit], abs=1e-4)
    assert np.sign(change) == -np.sign(g.weight[e]) or abs(change) < 1e-6  # moved the predicted way
    free = intervene(m, res.ids, [iv], freeze="none", target_id=int(g.index[logit]), generate=3)
    assert free.logit_after != free.logit_before and len(free.continuation_after) > 0
    # attention held by its queries and keys (as on long prompts) instead of its probabilities: the same, bit for bit
    held = {f: intervene(m, res.ids, [iv], freeze=f, target_id=int(g.index[logit])) for f in ("attention", "replacement")}
    monkeypatch.setattr(importlib.import_module("core.attribution.attribute"), "attention_by_qk", lambda facts, n: True)
    for f, before in held.items():
        after = intervene(m, res.ids, [iv], freeze=f, target_id=int(g.index[logit]))
        assert after.logits_after.numpy().tobytes() == before.logits_after.numpy().tobytes(), f
    assert held["attention"].logits_after.numpy().tobytes() != free.logits_after.numpy().tobytes()  # it held something


def test_intervention_kinds_and_bad_requests(tiny_model, neuron_graphs):
    from core.interventions import Intervention, intervene

    m = tiny_model("gpt2")
    res = neuron_graphs("gpt2")
    ids = res.ids
    head = intervene(m, ids, [Intervention("head", 1, 2, None, "zero")])
    assert head.logit_after != head.logit_before
    same = intervene(m, ids, [Intervention("head", 1, 2, None, "scale", 1.0)])
    assert same.logit_after == pytest.approx(same.logit_before, abs=1e-5)
    err = intervene(m, ids, [Intervention("error", 0, 0, (3,), "zero")], errors=res.errors)
    assert err.logit_after != err.logit_before
    with pytest.raises(CircuitDeskError, match="does not exist"):
        intervene(m, ids, [Intervention("neuron", 0, 10**6)])
    with pytest.raises(CircuitDeskError, match="Layer 9"):
        intervene(m, ids, [Intervention("neuron", 9, 0)])
    with pytest.raises(CircuitDeskError, match="zero or scale"):
        intervene(m, ids, [Intervention("head", 0, 0, None, "set", 1.0)])
    with pytest.raises(CircuitDeskError, match="within the prompt"):
        intervene(m, ids, [Intervention("neuron", 0, 0, (999,))])


def test_transcoder_feature_intervention(tiny_model, tmp_path):
    from core.interventions import Intervention, intervene

    m = tiny_model("llama")
    plt = _write_plt(tmp_path / "plt", _random_plt(m, jump=False, skip=False))
    res = attribute(m, PROMPT, AttributionSettings(max_nodes=50, transcoders=str(plt)))
    g = res.graph
    f = np.flatnonzero(g.kind == FEATURE)[0]
    iv = Intervention("feature", int(g.layer[f]), int(g.index[f]), (int(g.pos[f]),), "scale", 0.0)
    zero = intervene(m, res.ids, [iv], transcoders=res.transcoders)
    keep = intervene(m, res.ids, [Intervention("feature", iv.layer, iv.index, iv.positions, "scale", 1.0)],
                     transcoders=res.transcoders)
    assert keep.logit_after == pytest.approx(keep.logit_before, abs=1e-5)
    assert zero.logit_after != pytest.approx(zero.logit_before, abs=1e-7)


@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma2"])
def test_attention_held_by_its_queries_and_keys_gives_the_same_graph_bit_for_bit(tiny_model, fam, monkeypatch):
    """For long prompts the bias-only pass holds the clean attention by the queries and keys it was
    scored from (a far smaller cache than L·H·P² probabilities): the graph is the same, bit for bit."""
    import importlib

    engine = importlib.import_module("core.attribution.attribute")  # the module (the package exports the function)
    m = tiny_model(fam)
    graphs = {}
    for by_qk in (False, True):
        monkeypatch.setattr(engine, "attention_by_qk", lambda facts, n, by_qk=by_qk: by_qk)
        points = frozen_points(m, 16)
        assert any(p.endswith(".q_rot") for p in points) == by_qk
        assert any(p.endswith(".pattern") for p in points) != by_qk
        graphs[by_qk] = attribute(m, PROMPT, AttributionSettings(max_nodes=60))
    a, b = graphs[False].graph, graphs[True].graph
    for name in ("kind", "layer", "pos", "index", "activation", "value", "src", "dst", "weight", "logit_weight"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), name
    # the bias-only pass's constants enter the completeness identity: held attention keeps it exact
    errors = [graphs[k].stats["max_completeness_error"] for k in (False, True)]
    assert errors[0] == errors[1] < 1e-5


def test_attention_is_held_by_queries_and_keys_where_that_is_the_smaller_cache():
    from types import SimpleNamespace

    from core.memory import attention_by_qk

    smol = SimpleNamespace(n_heads=9, n_kv_heads=3, d_head=64)  # SmolLM2-135M: q and k are 768 numbers a token
    assert not attention_by_qk(smol, 64) and not attention_by_qk(smol, 85)  # 9 × 85 = 765 probabilities
    assert attention_by_qk(smol, 86) and attention_by_qk(smol, 1024)

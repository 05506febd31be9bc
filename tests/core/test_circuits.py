"""Component circuits (EAP / EAP-IG / exact patching, MIB faithfulness) against exact references."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from core.circuits import CircuitSettings, ComponentGraph, ComponentRunner, encode_pairs, find_circuit, load_pairs
from core.circuits.discover import choose_circuit, evaluate_circuits
from core.circuits.engine import logit_difference
from core.circuits.tasks import PairSet, PromptPair, TokenPair, induction_pairs
from core.errors import CircuitDeskError


CURVE_20 = 7  # index of the 20 % point of the curve


def id_pairs(model, n: int, seq: int = 7, seed: int = 0) -> PairSet:
    """Random token pairs that differ in one position, with random answer/counterfactual tokens
    (token ids, so every family's tiny tokenizer quirks stay out of the way)."""
    rng = random.Random(seed)
    vocab = min(model.facts.vocab_size, 56)
    out = []
    for i in range(n):
        clean = [1] + [rng.randrange(4, vocab) for _ in range(seq - 1)]
        corrupted = list(clean)
        corrupted[rng.randrange(1, seq)] = rng.randrange(4, vocab)
        a, c = rng.sample(range(4, vocab), 2)
        out.append(TokenPair(tuple(clean), tuple(corrupted), (a,), (c,), f"pair {i}", "", ""))
    return PairSet("test", out)


def rank_of(scores: np.ndarray, g: ComponentGraph, src: int, dst: int) -> int:
    flat = np.where(g.edge_mask, np.abs(scores), -1.0).ravel()
    order = np.argsort(-flat, kind="stable")
    return int(np.flatnonzero(order == src * g.n_destinations + dst)[0])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# -- the graph --------------------------------------------------------------------------------------
def test_edge_count_follows_the_mib_formula():
    g = ComponentGraph(12, 12)  # GPT-2 small
    assert g.n_sources == 1 + 12 * 13 and g.n_destinations == 12 * 37 + 1
    assert g.n_edges == 32491 == int(g.edge_mask.sum())
    for L, H in ((1, 1), (2, 4), (30, 9), (3, 7)):
        g = ComponentGraph(L, H)
        assert g.n_edges == int(g.edge_mask.sum())
        assert len(g.source_names) == 1 + L * (H + 1) and len(g.destination_names) == L * (3 * H + 1) + 1
        for s, d in [(0, 0), (g.n_sources - 1, g.n_destinations - 1)]:
            assert g.parse_edge(g.edge_name(s, d)) == (s, d)
    g = ComponentGraph(2, 2)
    # a head reads everything before its layer; the MLP of its layer also reads it; logits read all
    assert g.edge_mask[g.head_source(0, 1), g.mlp_destination(0)]
    assert not g.edge_mask[g.head_source(0, 1), g.head_destination(0, 0, "q")]
    assert g.edge_mask[g.mlp_source(0), g.head_destination(1, 1, "k")]
    assert not g.edge_mask[g.mlp_source(1), g.mlp_destination(1)]


def test_prune_removes_dangling_edges():
    g = ComponentGraph(2, 2)
    c = np.zeros_like(g.edge_mask)
    chain = [(0, g.head_destination(0, 0, "k")), (g.head_source(0, 0), g.mlp_destination(1)),
             (g.mlp_source(1), g.logits_destination)]
    dangling_out = (0, g.head_destination(1, 1, "v"))  # a1.h1 reads input but reaches nothing
    dangling_in = (g.head_source(0, 1), g.logits_destination)  # a0.h1 writes to logits but reads nothing
    for s, d in chain + [dangling_out, dangling_in]:
        c[s, d] = True
    kept = g.prune(c)
    assert {tuple(e) for e in np.argwhere(kept)} == set(chain)
    # top-n by |score| picks the largest magnitudes, negative ones included
    scores = np.zeros(g.edge_mask.shape, np.float32)
    scores[0, -1], scores[1, -1], scores[2, -1] = -5.0, 3.0, 1.0
    top = g.top_n(scores, 2)
    assert top[0, -1] and top[1, -1] and not top[2, -1] and top.sum() == 2
    assert g.top_n(scores, 10**9).sum() == g.n_edges


# -- decomposition: every family ----------------------------------------------------------------
def test_sources_add_up_and_faithfulness_endpoints(family, tiny_model):
    """All edges corrupted reproduces the corrupted run (the sources add up to the residual
    stream exactly); no edge corrupted reproduces the clean run: f(0%) = 0, f(100%) = 1."""
    model = tiny_model(family)
    pairs = id_pairs(model, 6)
    runner = ComponentRunner(model)
    g = runner.graph
    batch = pairs.batches(8)[0]
    corrupted = runner.sources(batch.corrupted)
    clean = runner.sources(batch.clean)
    # the sources add up to the stream at every destination (up to constants equal in both runs)
    const = clean.resid["resid_final"] - clean.outputs.sum(0)
    torch.testing.assert_close(corrupted.resid["resid_final"] - corrupted.outputs.sum(0), const, atol=2e-5, rtol=1e-5)
    everything = torch.from_numpy(g.edge_mask)
    nothing = torch.zeros(g.edge_mask.shape, dtype=torch.bool)
    torch.testing.assert_close(runner.patched(batch.clean, corrupted, everything), corrupted.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(runner.patched(batch.clean, corrupted, nothing), clean.logits, atol=2e-5, rtol=1e-5)
    # both ways of writing a patched input (sum over dropped or over kept sources) agree
    rng = np.random.default_rng(0)
    for frac in (0.1, 0.9):
        drop = torch.from_numpy(g.edge_mask & (rng.random(g.edge_mask.shape) < frac))
        torch.testing.assert_close(runner.patched(batch.clean, corrupted, drop, sum_over="dropped"),
                                   runner.patched(batch.clean, corrupted, drop, sum_over="kept"), atol=2e-5, rtol=1e-5)

    result = find_circuit(model, pairs, CircuitSettings(method="eap", batch_size=4))
    assert result.metric_empty == pytest.approx(result.metric_corrupted, abs=1e-4)
    assert result.curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert result.curve.edges[-1] == g.n_edges
    values, m_clean, m_corr = evaluate_circuits(runner, pairs, [np.zeros_like(g.edge_mask), g.edge_mask.copy()],
                                                CircuitSettings())
    f0 = (values[0] - values[0]) / (m_clean - values[0])
    assert f0 == 0.0 and values[0] == pytest.approx(m_corr, abs=1e-4)
    assert (values[1] - values[0]) / (m_clean - values[0]) == pytest.approx(1.0, abs=1e-4)
    # the curve's circuits grow and CPR/CMD are the trapezoid areas of f and |1 - f|
    assert list(result.curve.edges) == sorted(result.curve.edges)
    x, f = np.log(result.curve.sizes), np.array(result.curve.faithfulness)
    span = x[-1] - x[0]
    assert result.curve.cpr == pytest.approx(float(np.sum(np.diff(x) * (f[1:] + f[:-1]) / 2)) / span)
    assert result.curve.cmd == pytest.approx(float(np.sum(np.diff(x) * (abs(1 - f[1:]) + abs(1 - f[:-1])) / 2)) / span)


def test_eap_matches_exact_patching_for_small_perturbations(family, tiny_folder):
    """First-order limit: corrupt = clean input + ε·noise; EAP equals exact edge patching to O(ε)."""
    from core.models import load_model

    model = load_model(tiny_folder(family), device="cpu")
    model.hf.to(torch.float64)
    model.dtype = torch.float64
    runner = ComponentRunner(model)
    g = runner.graph
    batch = id_pairs(model, 4).batches(4)[0]
    clean_run = runner.sources(batch.clean)
    clean, logits = clean_run.outputs, clean_run.logits
    torch.manual_seed(0)
    noise = torch.randn_like(clean[0]) * clean[0].std()
    edges = [tuple(e) for e in np.argwhere(g.edge_mask)]
    base = logit_difference(logits, batch).sum()
    errors = []
    for eps in (1e-3, 1e-4):
        diff = runner.sources(batch.clean, input_value=clean[0] + eps * noise).outputs - clean
        eap, _ = runner.edge_gradient_scores(batch, diff, logit_difference)
        exact = (runner.single_edge_metrics(batch, diff, edges, logit_difference) - base).numpy()
        eap = eap.numpy()[g.edge_mask]
        assert np.abs(exact).max() > 0
        errors.append(np.linalg.norm(exact - eap) / np.linalg.norm(exact))
    # Transformers' RMSNorm computes in float32 even for float64 models, which floors the error
    # near 1e-3 for those families; GPT-2 runs fully in float64 and shows the O(ε) convergence.
    assert errors[0] < 1e-2, errors
    if family == "gpt2":
        assert errors[1] < errors[0] / 5, errors


def test_node_score_is_the_sum_of_outgoing_edges(tiny_model):
    model = tiny_model("llama")
    res = find_circuit(model, id_pairs(model, 4), CircuitSettings(method="eap", curve=False, top_n=5))
    g = res.graph
    ns = g.node_scores(res.scores)
    assert ns[g.mlp_source(0)] == pytest.approx(float(res.scores[g.mlp_source(0)].sum()), rel=1e-5)
    assert ns[-1] == pytest.approx(float(res.scores[:, -1].sum()), rel=1e-5)
    assert res.stats["circuit_edges"] == int(res.circuit.sum()) <= 5


def test_gradient_pass_records_the_same_sources_as_a_plain_run(tiny_model):
    model = tiny_model("gemma2")  # post-norms: head outputs need the run's own norm scales
    runner = ComponentRunner(model)
    batch = id_pairs(model, 3).batches(3)[0]
    plain = runner.sources(batch.corrupted)
    _, _, recorded = runner.destination_gradients(batch, logit_difference, ids=batch.corrupted, record_sources=True)
    torch.testing.assert_close(recorded.outputs, plain.outputs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(recorded.logits, plain.logits, rtol=1e-5, atol=1e-5)
    assert not recorded.outputs.requires_grad


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_eap_ig_summed_steps_equal_steps_scored_one_by_one(tiny_model, fam):
    from core.circuits.discover import score_edges

    model = tiny_model(fam)
    runner, pairs = ComponentRunner(model), id_pairs(model, 6)
    settings = CircuitSettings(method="eap-ig", steps=3, batch_size=4)
    summed, _ = score_edges(runner, pairs, settings)
    one_by_one, _ = score_edges(runner, pairs, settings, accumulate_bytes=0)
    assert np.abs(summed).max() > 0
    np.testing.assert_allclose(summed, one_by_one, rtol=1e-4, atol=1e-6 * np.abs(summed).max())


# -- a planted circuit -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def induction_model(tmp_path_factory):
    """A 2-layer, 2-head model trained (in seconds, fixed seed) to predict repeated random tokens."""
    import transformers as tf

    from core.models import load_model
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    V = len(tok)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)

    def batch(b, n, m, g=None):  # BOS, m filler tokens, n random tokens, the same n again
        r = torch.randint(4, V, (b, n), generator=g)
        f = torch.randint(4, V, (b, m), generator=g)
        return torch.cat([torch.ones(b, 1, dtype=torch.long), f, r, r], 1)

    evals = [batch(64, n, 0, gen) for n in (6, 9, 12)]
    for step in range(4000):
        n, m = int(torch.randint(3, 15, ())), int(torch.randint(0, 11, ()))
        x = batch(32, n, m)
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits[:, m + n + 1:-1].reshape(-1, V), x[:, m + n + 2:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                acc = np.mean([(model(x).logits[:, (x.shape[1] - 1) // 2 + 1:-1].argmax(-1)
                                == x[:, (x.shape[1] - 1) // 2 + 2:]).float().mean().item() for x in evals])
            if acc > 0.93:
                break
    assert acc > 0.9, f"the induction model did not train (accuracy {acc:.2f})"
    folder = tmp_path_factory.mktemp("induction")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded = load_model(folder, device="cpu")
    pairs = induction_pairs(loaded, 32, random.Random(0), length=10, repeat=6, vocab=range(4, V))
    return loaded, pairs


def _induction_heads(model, pairs):
    """The key-side previous-token head of layer 0 and the induction head of layer 1, from attention
    patterns alone: each layer-0 head's dominant look-back offset δ; the layer-1 head that attends
    from the last position to the key j whose token δ back equals the current token (K-composition
    with that head). δ = 1 is the textbook previous-token head; trained models may use another."""
    x = torch.tensor([p.clean for p in pairs.pairs])
    _, tr = model.instrument.forward(x, cache=["blocks.0.attn.pattern", "blocks.1.attn.pattern"])
    p0, p1 = tr["blocks.0.attn.pattern"], tr["blocks.1.attn.pattern"]
    S = x.shape[1]
    best = (-1.0, None, None)
    for h0 in range(p0.shape[1]):
        offsets = [torch.stack([p0[:, h0, q, q - d] for q in range(d + 1, S)]).mean().item() for d in range(1, 6)]
        delta = int(np.argmax(offsets)) + 1
        for h1 in range(p1.shape[1]):
            hits = []
            for b in range(x.shape[0]):
                toks = x[b].tolist()
                keys = [j for j in range(delta, S - 1) if toks[j - delta] == toks[-1] and j - delta < S - 1 - delta]
                hits.append(float(p1[b, h1, -1, keys].sum()) if keys else 0.0)
            score = offsets[delta - 1] * float(np.mean(hits))
            if score > best[0]:
                best = (score, h0, h1)
    return best


def test_planted_induction_circuit_is_found(induction_model):
    model, pairs = induction_model
    score, prev, ind = _induction_heads(model, pairs)
    assert score > 0.3, "no K-composing head pair in the attention patterns"
    res = find_circuit(model, pairs, CircuitSettings(method="eap-ig", batch_size=32))
    g = res.graph
    assert res.metric_clean > 2.0 and res.metric_corrupted < -2.0  # it does induction, both ways
    k_edge = rank_of(res.scores, g, g.head_source(0, prev), g.head_destination(1, ind, "k"))
    out_edge = rank_of(res.scores, g, g.head_source(1, ind), g.logits_destination)
    assert k_edge < 8 and out_edge < 8, (k_edge, out_edge, res.top_edges(10))
    # a handful of edges (the 20 % point: 9 of 46 after pruning) already carries the behaviour
    assert res.curve.faithfulness[CURVE_20] > 0.9, res.curve


def test_eap_ig_top_edges_agree_with_exact_patching(induction_model):
    model, pairs = induction_model
    settings = dict(batch_size=32, curve=False, top_n=20)
    ig = find_circuit(model, pairs, CircuitSettings(method="eap-ig", **settings))
    exact = find_circuit(model, pairs, CircuitSettings(method="exact", **settings))
    g = ig.graph
    a, b = ig.scores[g.edge_mask], exact.scores[g.edge_mask]
    top = lambda s: set(np.argsort(-np.abs(s), kind="stable")[:20])  # noqa: E731
    jaccard = len(top(a) & top(b)) / len(top(a) | top(b))
    rho = spearman(np.abs(a), np.abs(b))
    assert jaccard >= 0.6 or rho >= 0.8, (jaccard, rho)


# -- pairs and their errors ----------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_pair_file_errors_name_the_line(tiny_model, tmp_path):
    model = tiny_model("llama")  # word-level tokenizer: one word, one token
    good = {"clean": "when mary and john went", "corrupted": "when john and mary went",
            "answer": " mary", "counterfactual": " john"}
    ps = load_pairs(model, write_jsonl(tmp_path / "ok.jsonl", [good, "", dict(good, answer=["mary", "john"])]))
    assert len(ps) == 2 and ps.pairs[1].answer == (ps.pairs[0].answer[0], ps.pairs[0].counterfactual[0])
    cases = {
        "unequal.jsonl": ([good, dict(good, corrupted="when john and mary went to")], "line 2.*6 and 7 tokens"),
        "multi.jsonl": ([dict(good, answer="mary john")], "line 1.*2 tokens"),
        "unknown.jsonl": ([dict(good, counterfactual="zebra")], "line 1.*not in the model's vocabulary"),
        "empty.jsonl": (["", "  "], "has no pairs"),
        "broken.jsonl": ([good, good, '{"clean": "when",'], "line 3 is not valid JSON"),
        "missing.jsonl": ([{"clean": "a", "corrupted": "b"}], "line 1 has no 'answer', 'counterfactual'"),
        "types.jsonl": ([dict(good, clean=3)], "line 1: 'clean' must be a string"),
        "empty_prompt.jsonl": ([dict(good, clean=" ")], "line 1: the clean prompt is empty"),
    }
    for name, (rows, pattern) in cases.items():
        with pytest.raises(CircuitDeskError, match=pattern):
            load_pairs(model, write_jsonl(tmp_path / name, rows))
    with pytest.raises(CircuitDeskError, match="does not exist"):
        load_pairs(model, tmp_path / "nope.jsonl")


def test_generated_pairs_drop_what_does_not_fit(tiny_model):
    model = tiny_model("llama")
    pairs = [PromptPair("the cat", "the dog", (" red",), (" blue",), "a"),
             PromptPair("the cat", "the red dog", (" red",), (" blue",), "b"),
             PromptPair("the cat", "the dog", (" red blue",), (" blue",), "c")]
    ps = encode_pairs(model, pairs, "t", strict=False)
    assert [p.label for p in ps.pairs] == ["a"] and len(ps.dropped) == 2
    assert "b:" in ps.dropped[0] and "c:" in ps.dropped[1]


def test_bad_settings_and_inputs(tiny_model):
    model = tiny_model("llama")
    pairs = id_pairs(model, 2)
    for kw, msg in ((dict(method="acdc"), "Unknown method"), (dict(metric="kl"), "Unknown metric"),
                    (dict(steps=0), "at least 1 step"), (dict(top_n=3, threshold=0.1), "not both"),
                    (dict(curve=False), "give --top-n or --threshold")):
        with pytest.raises(CircuitDeskError, match=msg):
            find_circuit(model, pairs, CircuitSettings(**kw))
    with pytest.raises(CircuitDeskError, match="no prompt pairs"):
        find_circuit(model, PairSet("t", []))
    bad = PairSet("t", [TokenPair((1, 10**6), (1, 5), (4,), (5,), "pair x", "", "")])
    with pytest.raises(CircuitDeskError, match="pair x: a token id is outside"):
        find_circuit(model, bad)


def test_cancel_stops_scoring(tiny_model):
    from core.jobs import Cancelled, JobContext

    model = tiny_model("llama")
    ctx = JobContext()
    seen = []

    def on_progress(p):
        seen.append(p)
        if len(seen) == 2:
            ctx.cancel()

    ctx._on_progress = on_progress
    with pytest.raises(Cancelled):
        find_circuit(model, id_pairs(model, 8), CircuitSettings(method="eap-ig", batch_size=2), ctx=ctx)


# -- the default model ------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_tasks_and_method_ranking(default_model):
    from core.circuits import make_task

    model = default_model
    for task in ("ioi", "factual", "greater-than", "induction"):
        ps = make_task(model, task, n_pairs=8, seed=3)
        assert len(ps) == 8, (task, ps.dropped[:3])
        assert all(len(p.clean) == len(p.corrupted) and p.answer and p.counterfactual for p in ps.pairs)
        assert [p.clean for p in make_task(model, task, n_pairs=8, seed=3).pairs] == [p.clean for p in ps.pairs]
    ioi = make_task(model, "ioi", n_pairs=16)
    p = ioi.pairs[0]
    assert sum(a != b for a, b in zip(p.clean, p.corrupted)) == 1  # only the second subject mention differs
    cpr = {}
    for method in ("eap-ig", "eap", "random"):
        res = find_circuit(model, ioi, CircuitSettings(method=method, steps=3, batch_size=16))
        cpr[method] = res.curve.cpr
        assert res.metric_clean > 0  # the model prefers the indirect object
        assert res.metric_empty == pytest.approx(res.metric_corrupted, abs=1e-3)
    assert cpr["eap-ig"] >= cpr["eap"] >= cpr["random"], cpr

"""Feature atlases against brute force on tiny models: every window run alone through the plain
HF model (a torch hook of its own, no instrumentation), a full scan of the corpus, then the same
top-k / counts / extremes / histogram / quantiles computed with numpy, compared feature by feature.
Resume after cancel and after a crash gives the identical atlas; damaged, unfinished and foreign
atlases are refused with one sentence."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest
import torch

from core.atlas import build as atlas_build
from core.atlas.build import build_atlas
from core.atlas.store import HIST_EDGES, N_BINS, Atlas, find_atlas, parse_feature
from core.attribution.attribute import start_token
from core.errors import CircuitDeskError
from core.jobs import Cancelled, JobContext
from core.settings import AtlasSettings
from tiny_models import WORDS

K, T = 4, 8


def write_corpus(path, n_docs=9, seed=0) -> list[str]:
    """Random sentences of the tiny vocabulary, documents of varied length (not multiples of a window)."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n_docs)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs


def brute_force(model, docs: list[str], T: int, transcoders=None):
    """Per window (run alone, unpadded): [(doc, offset, activations [n, F] per layer)], counted positions only."""
    tok = model.tokenizer
    first = start_token(model)
    down = [blk.get_submodule(model.adapter.mlp).get_submodule(model.adapter.down_proj)
            for blk in model.hf.get_submodule(model.adapter.layers)]
    windows = []
    for d, text in enumerate(docs):
        ids = tok(text, add_special_tokens=False).input_ids
        for off in range(0, len(ids), T - 1):
            piece = [first] + ids[off:off + T - 1]
            if transcoders is None:
                seen = {}
                hooks = [m.register_forward_pre_hook(lambda mod, args, l=l: seen.__setitem__(l, args[0].detach()))
                         for l, m in enumerate(down)]
                try:
                    with torch.no_grad():
                        model.hf(input_ids=torch.tensor([piece]))
                finally:
                    for h in hooks:
                        h.remove()
                acts = [seen[l][0, 1:].double().numpy() for l in range(len(down))]
            else:
                points = [f"blocks.{l}.{transcoders.input_point}" for l in range(model.facts.n_layers)]
                with torch.no_grad():
                    _, trace = model.instrument.forward(torch.tensor([piece]), cache=points)
                acts = [transcoders.activate(l, transcoders.encode_pre(l, trace[p][0].float()))[1:].double().numpy()
                        for l, p in enumerate(points)]
            windows.append((d, off, acts))
    return windows


def check_against_brute_force(atlas: Atlas, windows, signed: bool) -> None:
    L = len(windows[0][2])
    for l in range(L):
        F = windows[0][2][l].shape[1]
        everything = np.concatenate([w[2][l] for w in windows])  # [tokens, F]
        assert atlas.meta["tokens_seen"] == everything.shape[0]
        for f in range(F):
            card = atlas.card(l, f)
            col = everything[:, f]
            assert card.count_positive == int((col > 0).sum()) and card.count_negative == int((col < 0).sum())
            assert card.max == pytest.approx(col.max(), rel=1e-5, abs=1e-6)
            assert card.min == pytest.approx(col.min(), rel=1e-5, abs=1e-6)
            for sign, hist in ((1, card.hist_positive), (-1, card.hist_negative)):
                vals = np.abs(col[col * sign > 0])
                # a value within float rounding (batched vs single runs) of an edge may be in either bin
                low, high = (np.searchsorted(HIST_EDGES, vals * (1 + r), side="right") for r in (-1e-5, 1e-5))
                sure = np.bincount(low[low == high], minlength=N_BINS)
                either = sure + np.bincount(low[low != high], minlength=N_BINS) + np.bincount(
                    high[low != high], minlength=N_BINS)
                assert hist.sum() == len(vals) and np.all(sure <= hist) and np.all(hist <= either)
            pos = col[col > 0]
            for q, (lo, hi) in card.quantiles(1).items():
                exact = np.quantile(pos, q, method="inverted_cdf")
                assert lo * (1 - 1e-5) <= exact <= hi * (1 + 1e-5)
            for sign, examples in ((1, card.top), (-1, card.bottom)):
                extreme = [(float((w[2][l][:, f] * sign).max()), i) for i, w in enumerate(windows)]
                ranked = sorted((x for x in extreme if x[0] > 0), key=lambda x: (-x[0], x[1]))[:atlas.top_k]
                if sign < 0 and not signed:
                    assert examples == ()
                    continue
                assert len(examples) == len(ranked)
                at = {(d, off): i for i, (d, off, _) in enumerate(windows)}
                for e, (value, _) in zip(examples, ranked):
                    # the k-th best value, and a window that has it (windows whose values tie to
                    # float rounding may come in either order: batched and single runs round apart)
                    assert e.value == pytest.approx(sign * value, rel=1e-5, abs=1e-6)
                    acts = windows[at[(e.document, e.offset)]][2]
                    a = acts[l][:, f]
                    assert (a * sign).max() == pytest.approx(value, rel=1e-5, abs=1e-6)
                    assert len(e.tokens) == len(a)
                    np.testing.assert_allclose(e.activations, a, rtol=2e-3, atol=2e-3 * abs(value))
                    assert e.activations[e.at] * sign == pytest.approx(value, rel=2e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_neuron_atlas_equals_a_full_scan(family, tiny_model, tmp_path):
    m = tiny_model(family)
    docs = write_corpus(tmp_path / "corpus.jsonl")
    result = build_atlas(m, tmp_path / "atlas", AtlasSettings(context=T, top_k=K, batch_size=3),
                         corpus=[str(tmp_path / "corpus.jsonl")])
    atlas = Atlas.open(result.path)
    signed = family == "llama"  # SwiGLU neurons keep their most negative windows too; GELU ones do not
    assert atlas.signed == signed and atlas.basis == "neurons" and atlas.model_sha256 == m.fingerprint.sha256
    windows = brute_force(m, docs, T)
    assert atlas.meta["corpus"]["windows"] == len(windows)
    check_against_brute_force(atlas, windows, signed)
    labelled = [atlas.label(l, f) for l in range(m.facts.n_layers) for f in range(m.facts.d_mlp)]
    assert sum(bool(x) for x in labelled) > m.facts.d_mlp  # most features fire somewhere, and get a label


def test_transcoder_atlas_equals_a_full_scan(tiny_model, tmp_path):
    from core.attribution.transcoders import load_transcoders
    from test_attribution import _random_plt, _write_plt

    m = tiny_model("llama")
    folder = _write_plt(tmp_path / "plt", _random_plt(m))
    docs = write_corpus(tmp_path / "corpus.jsonl")
    result = build_atlas(m, tmp_path / "atlas", AtlasSettings(context=T, top_k=K, batch_size=4,
                                                              transcoders=str(folder)),
                         corpus=[str(tmp_path / "corpus.jsonl")])
    atlas = Atlas.open(result.path)
    assert atlas.basis.startswith("transcoders:") and not atlas.signed and atlas.unit == "F"
    tc = load_transcoders(folder, m.facts.n_layers, m.facts.d_model)
    check_against_brute_force(atlas, brute_force(m, docs, T, transcoders=tc), signed=False)
    assert atlas.mismatch(m.fingerprint.sha256, "neurons") is not None


def _fingerprint(folder) -> dict:
    meta = json.loads((folder / "atlas.json").read_text())
    for k in ("created", "scan_seconds", "tokens_per_second"):
        meta.pop(k)
    return {"meta": meta, **{f: (folder / f).read_bytes() for f in ("features.safetensors", "labels.json", "vocab.json")}}


def test_resume_after_cancel_and_after_a_crash_gives_the_identical_atlas(tiny_model, tmp_path, monkeypatch):
    m = tiny_model("llama")
    write_corpus(tmp_path / "corpus.jsonl", n_docs=30)
    settings = AtlasSettings(context=T, top_k=K, batch_size=2)
    corpus = [str(tmp_path / "corpus.jsonl")]
    whole = build_atlas(m, tmp_path / "whole", settings, corpus=corpus)

    scans = []

    def cancel_on_fourth_batch(p):
        if p.message.startswith("Scanning"):
            scans.append(p)
            if len(scans) == 4:
                ctx.cancel()

    ctx = JobContext(cancel_on_fourth_batch, min_interval=0.0, min_step=0.0)
    with pytest.raises(Cancelled):
        build_atlas(m, tmp_path / "resumed", settings, corpus=corpus, ctx=ctx)
    assert not (tmp_path / "resumed" / "atlas.json").exists()
    with pytest.raises(CircuitDeskError, match="not finished"):
        Atlas.open(tmp_path / "resumed")
    resumed = build_atlas(m, tmp_path / "resumed", settings, corpus=corpus)
    assert resumed.resumed_from == 4 * settings.batch_size  # cancelled while the 4th batch began: it finished
    assert _fingerprint(resumed.path) == _fingerprint(whole.path)
    assert not (tmp_path / "resumed" / "build").exists()

    # a crash (an exception inside a batch) resumes from the last periodic checkpoint
    monkeypatch.setattr(atlas_build, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every batch
    monkeypatch.setattr(atlas_build, "CHECKPOINT_SHARE", math.inf)
    real, calls = atlas_build._LayerStats.update, []

    def crash_later(self, *args):
        calls.append(1)
        if len(calls) == 2 * m.facts.n_layers + 1:  # in the middle of the third batch
            raise RuntimeError("power cut")
        return real(self, *args)

    monkeypatch.setattr(atlas_build._LayerStats, "update", crash_later)
    with pytest.raises(RuntimeError):
        build_atlas(m, tmp_path / "crashed", settings, corpus=corpus)
    monkeypatch.setattr(atlas_build._LayerStats, "update", real)
    again = build_atlas(m, tmp_path / "crashed", settings, corpus=corpus)
    assert again.resumed_from == 2 * settings.batch_size
    assert _fingerprint(again.path) == _fingerprint(whole.path)


def test_damaged_unfinished_and_foreign_atlases_are_refused_in_one_sentence(tiny_model, tmp_path):
    m = tiny_model("llama")
    write_corpus(tmp_path / "corpus.jsonl")
    good = build_atlas(m, tmp_path / "a", AtlasSettings(context=T, top_k=K), corpus=[str(tmp_path / "corpus.jsonl")]).path

    def refused(folder, match):
        with pytest.raises(CircuitDeskError, match=match) as e:
            Atlas.open(folder)
        assert "\n" not in str(e.value) and str(e.value).endswith(".")

    for name, damage, match in [
        ("truncated", lambda f: f.write_bytes(f.read_bytes()[:-100]), "not the size"),
        ("flipped", lambda f: f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 0xFF])), "sha256"),
    ]:
        copy = tmp_path / "damaged" / name
        shutil.copytree(good, copy)
        damage(copy / "features.safetensors")
        refused(copy, match)
    found, passed = find_atlas(m.fingerprint.sha256, "neurons", [tmp_path / "damaged"])
    assert found == tmp_path / "damaged" / "flipped"  # found by its record; opening it checks the sha256
    assert any("truncated" in p and "damaged" in p for p in passed)
    copy = tmp_path / "badjson"
    shutil.copytree(good, copy)
    (copy / "atlas.json").write_text("{not json")
    refused(copy, "not valid JSON")
    copy = tmp_path / "newer"
    shutil.copytree(good, copy)
    meta = json.loads((copy / "atlas.json").read_text())
    (copy / "atlas.json").write_text(json.dumps({**meta, "version": 99}))
    refused(copy, "newer Circuit Desk")
    copy = tmp_path / "labels"
    shutil.copytree(good, copy)
    (copy / "labels.json").write_text(json.dumps({"top": [["x"]]}))
    refused(copy, "does not match its features")
    refused(tmp_path / "absent", "does not exist")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a feature atlas")

    # an atlas for another model (or basis) is never used
    other = tiny_model("gpt2")
    found, passed = find_atlas(other.fingerprint.sha256, "neurons", [good])
    assert found is None and any("another model" in p for p in passed)
    found, _ = find_atlas(m.fingerprint.sha256, "neurons", [good])
    assert found == good
    found, passed = find_atlas(m.fingerprint.sha256, "transcoders:abc", [good])
    assert found is None and "basis" in passed[0]
    assert Atlas.open(good).mismatch(other.fingerprint.sha256, "neurons").startswith("The atlas")


def test_build_refusals(tiny_model, tmp_path):
    m = tiny_model("llama")
    write_corpus(tmp_path / "corpus.jsonl")
    corpus = [str(tmp_path / "corpus.jsonl")]
    s = AtlasSettings(context=T, top_k=K)
    with pytest.raises(CircuitDeskError, match="about .* GB, more than --max-size-gb"):
        build_atlas(m, tmp_path / "big", AtlasSettings(context=T, top_k=K, max_size_gb=1e-9), corpus=corpus)
    build_atlas(m, tmp_path / "a", s, corpus=corpus)
    with pytest.raises(CircuitDeskError, match="already holds a finished atlas"):
        build_atlas(m, tmp_path / "a", s, corpus=corpus)
    build_atlas(m, tmp_path / "a", s, corpus=corpus, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("do not touch")
    with pytest.raises(CircuitDeskError, match="other files in it"):
        build_atlas(m, tmp_path / "mine", s, corpus=corpus)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CircuitDeskError, match="is a file"):
        build_atlas(m, tmp_path / "file", s, corpus=corpus)
    # an unfinished build of other settings is not overwritten silently
    ctx = JobContext(lambda p: ctx.cancel() if p.message.startswith("Scanning") else None, min_interval=0.0)
    with pytest.raises(Cancelled):
        build_atlas(m, tmp_path / "half", s, corpus=corpus, ctx=ctx)
    with pytest.raises(CircuitDeskError, match="unfinished build of another settings"):
        build_atlas(m, tmp_path / "half", AtlasSettings(context=T, top_k=K + 1), corpus=corpus)
    # a corpus file that changed since the build began
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"text": "red blue"}) + "\n")
    with pytest.raises(CircuitDeskError, match="changed since this build began"):
        build_atlas(m, tmp_path / "half", s, corpus=corpus)
    for bad in (AtlasSettings(context=1), AtlasSettings(top_k=0), AtlasSettings(tokens=0)):
        with pytest.raises(CircuitDeskError):
            build_atlas(m, tmp_path / "x", bad, corpus=corpus)


def test_corpus_files_of_every_kind_and_their_errors(tiny_model, tmp_path):
    from core.atlas.corpus import corpus_files, read_documents

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("the cat")
    (folder / "sub" / "b.jsonl").write_text('{"text": "red dog"}\n\n{"text": "blue"}\n')
    (folder / "c.csv").write_text('id,text\n1,"green, cat"\n2,one\n')
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    files = corpus_files([str(folder)])
    assert [f.name for f in files] == ["a.txt", "c.csv", "b.jsonl"]
    assert [d for f in files for d in read_documents(f)] == ["the cat", "green, cat", "one", "red dog", "blue"]
    (tmp_path / "e.csv").write_text("id,body\n1,x\n")
    for path, content, match in [
        ("bad.jsonl", "{oops\n", "Line 1 of .* is not JSON"),
        ("nofield.jsonl", '{"body": "x"}\n', "no \"text\" string field"),
        ("latin.txt", b"caf\xe9", "not UTF-8"),
        ("nul.txt", "a\x00b", "NUL bytes"),
    ]:
        p = tmp_path / path
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(CircuitDeskError, match=match):
            list(read_documents(p))
    with pytest.raises(CircuitDeskError, match="no column 'text'"):
        list(read_documents(tmp_path / "e.csv"))
    assert list(read_documents(tmp_path / "e.csv", column="body")) == ["x"]
    with pytest.raises(CircuitDeskError, match="does not exist"):
        corpus_files([str(tmp_path / "absent.txt")])
    (tmp_path / "blank").mkdir()
    with pytest.raises(CircuitDeskError, match="holds no text files"):
        corpus_files([str(tmp_path / "blank")])
    # a csv corpus builds, with its column
    m = tiny_model("llama")
    res = build_atlas(m, tmp_path / "csv_atlas", AtlasSettings(context=T, top_k=2), corpus=[str(tmp_path / "e.csv")],
                      column="body")
    assert res.meta["corpus"]["sources"][0]["documents"] == 1


def test_default_corpus_is_sampled_from_the_model_reproducibly_and_labelled(tiny_model, tmp_path, monkeypatch):
    from core.atlas import corpus as corpora

    m = tiny_model("llama")
    monkeypatch.setenv("CIRCUITDESK_CACHE_DIR", str(tmp_path / "cache"))
    res = build_atlas(m, tmp_path / "a", AtlasSettings(context=T, top_k=2, sample_tokens=640))
    corpus = res.meta["corpus"]
    assert corpus["kind"] == "model-sampled" and corpus["seed"] == 0
    assert "sampled from the model itself" in corpus["description"]
    src = corpus["sources"][0]
    texts = [json.loads(line)["text"] for line in open(src["path"], encoding="utf-8")]
    n_sampled = len(corpora.SAMPLE_PROMPTS) * corpora.SAMPLES_PER_PROMPT
    assert len(texts) > n_sampled  # the bundled demo and task prompts follow the samples
    assert "The capital of France is" in texts[n_sampled:]
    first = src["sha256"]
    (tmp_path / "cache").rename(tmp_path / "cache_old")  # sampled again from scratch: the same text
    again = build_atlas(m, tmp_path / "b", AtlasSettings(context=T, top_k=2, sample_tokens=640))
    assert again.meta["corpus"]["sources"][0]["sha256"] == first
    assert "sampled from the model itself" in Atlas.open(again.path).card(0, 0).corpus


def test_feature_names_parse():
    assert parse_feature("L12/N340") == (12, 340)
    assert parse_feature("12/340") == parse_feature("l12 f340") == parse_feature("12_340") == (12, 340)
    with pytest.raises(CircuitDeskError, match="layer/index"):
        parse_feature("twelve")


def test_card_text_and_search(tiny_model, tmp_path):
    m = tiny_model("llama")
    write_corpus(tmp_path / "corpus.jsonl")
    atlas = Atlas.open(build_atlas(m, tmp_path / "a", AtlasSettings(context=T, top_k=K),
                                   corpus=[str(tmp_path / "corpus.jsonl")]).path)
    card = atlas.card(1, 5)
    text = card.to_text()
    assert text.startswith("L1/N5") and "density" in text and "[[" in text
    assert json.loads(json.dumps(card.to_json()))["feature"] == "L1/N5"
    word = card.top[0].tokens[card.top[0].at].strip()
    assert (1, 5) in atlas.search(word, [(1, 5), (0, 0)])
    assert atlas.search("no such words here", [(1, 5)]) == []
    with pytest.raises(CircuitDeskError, match="has no feature"):
        atlas.card(7, 0)
    assert math.isfinite(card.max)


def test_labels_are_the_activation_weighted_tokens_of_the_examples(tiny_model, tmp_path):
    from core.atlas.store import LABEL_FLOOR, auto_label

    m = tiny_model("llama")
    write_corpus(tmp_path / "corpus.jsonl", n_docs=20)
    atlas = Atlas.open(build_atlas(m, tmp_path / "a", AtlasSettings(context=T, top_k=K),
                                   corpus=[str(tmp_path / "corpus.jsonl")]).path)
    checked = 0
    for layer in range(m.facts.n_layers):
        for f in range(m.facts.d_mlp):
            card = atlas.card(layer, f)
            for sign, examples, label in ((1, card.top, card.label), (-1, card.bottom, card.label_negative)):
                peak = max((float((e.activations * sign).max()) for e in examples), default=0.0)
                weights: dict[str, float] = {}
                for e in examples:  # each token's highest activation in each example, summed
                    best: dict[str, float] = {}
                    for token, a in zip(e.tokens, e.activations * sign):
                        if a > 0 and a >= LABEL_FLOOR * peak:
                            best[token] = max(best.get(token, 0.0), float(a))
                    for token, a in best.items():
                        weights[token] = weights.get(token, 0.0) + a
                # the fp16 examples and the float sums may order near-equal weights apart: compare the first token
                expected = auto_label(weights)
                assert label.split(" · ")[0] == expected.split(" · ")[0] or not expected
                checked += bool(expected)
    assert checked > m.facts.d_mlp
    assert auto_label({" Paris": 3.0, "France": 2.0, " the": 0.5, "\n": 1.0}) == "Paris · France · ⏎"
    assert auto_label({}) == ""


def test_cancel_while_sampling_the_default_corpus_leaves_no_corpus(tiny_model, tmp_path, monkeypatch):
    m = tiny_model("llama")
    monkeypatch.setenv("CIRCUITDESK_CACHE_DIR", str(tmp_path / "cache"))
    steps = []

    def on_progress(p):
        if p.message.startswith("Sampling"):
            steps.append(p.fraction)
            if len(steps) == 3:
                ctx.cancel()

    ctx = JobContext(on_progress, min_interval=0.0, min_step=0.0)
    with pytest.raises(Cancelled):
        build_atlas(m, tmp_path / "a", AtlasSettings(context=T, top_k=2, sample_tokens=6400), ctx=ctx)
    assert steps == sorted(steps) and len(steps) == 3  # reported at every generated token, stopped at once
    assert not list((tmp_path / "cache" / "atlas-corpora").glob("*.jsonl"))


def test_sampling_resumes_at_the_batch_it_stopped_in(tiny_model, tmp_path, monkeypatch):
    from core.atlas import corpus as corpora

    m = tiny_model("llama")
    monkeypatch.setenv("CIRCUITDESK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "SAMPLE_BATCH", 16)
    whole = corpora.default_corpus(m, 640, seed=3).read_bytes()
    shutil.rmtree(tmp_path / "cache")
    batches = []

    def on_progress(p):
        batches.append(p.fraction)
        if p.fraction > 0.6:  # in the third of four batches
            ctx.cancel()

    ctx = JobContext(on_progress, min_interval=0.0, min_step=0.0)
    with pytest.raises(Cancelled):
        corpora.default_corpus(m, 640, seed=3, ctx=ctx)
    parts = sorted((tmp_path / "cache" / "atlas-corpora").glob("*.part*"))
    assert [p.name.rsplit(".part", 1)[1] for p in parts] == ["0", "16"]  # two batches kept
    generated = []
    real = m.hf.generate
    monkeypatch.setattr(m.hf, "generate", lambda *a, **k: generated.append(1) or real(*a, **k))
    assert corpora.default_corpus(m, 640, seed=3).read_bytes() == whole  # the same text as in one go
    assert len(generated) == 2 and not list((tmp_path / "cache" / "atlas-corpora").glob("*.part*"))

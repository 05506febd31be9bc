"""Behaviour studies on tiny models with planted differences (issue 20).

* a neuron planted to carry the answer only when the prompt ends with "cat" (group A): the group
  contrast ranks it first with a small corrected p, and ablating it changes group A's answers, not B's;
* the unplanted model with random groups: nothing significant;
* a head scaled in model version B: the version comparison finds that head; a model compared with
  itself: nothing at all;
* the behaviour graph's counts and means equal a brute-force loop over the per-case graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.audit import load_suite
from core.behaviour.aggregate import aggregate
from core.behaviour.profile import node_key
from core.behaviour.study import load_comparison, run_study
from core.errors import CircuitDeskError
from core.graph import FEATURE
from core.session import load_session
from core.settings import CompareSettings

CONTEXTS = ["the red", "a blue", "the green", "one red", "the two", "a green"]
PLANT_LAYER, PLANT_NEURON, PLANT_HEAD = 1, 5, 2


def _suite(folder: Path, cases: list[str], model: str, defaults: str = "max_nodes = 40") -> Path:
    lines = ['name = "planted"', f'model = "{model}"', "[defaults]", defaults]
    lines += cases
    path = folder / "suite.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _attribution_cases(groups: list[str] | None = None) -> list[str]:
    out = []
    for i, ctx in enumerate(CONTEXTS):
        for word, group in (("cat", "cat"), ("dog", "dog")):
            label = group if groups is None else groups[2 * i + (word == "dog")]
            out += ["[[cases]]", f'name = "{word}{i}"', f'prompt = "{ctx} and the {word}"', f'group = "{label}"']
    return out


@pytest.fixture(scope="module")
def planted(tiny_folder, tmp_path_factory):
    """A tiny Llama with neuron L1/N5 planted: it fires on "cat" and writes towards "paris"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_folder("llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    layer = model.model.layers[PLANT_LAYER]
    seen = {}
    hook = layer.post_attention_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o.detach()))
    inputs = {}
    for word in ("cat", "dog", "red", "blue", "and", "the"):
        for ctx in CONTEXTS:
            ids = tok(f"<bos> {ctx} and the {word}", return_tensors="pt").input_ids
            with torch.no_grad():
                model(ids)
            inputs.setdefault(word, []).append(seen["x"][0, -1])
    hook.remove()
    cat = torch.stack(inputs["cat"]).mean(0)
    others = torch.stack([x for w, xs in inputs.items() if w != "cat" for x in xs]).mean(0)
    w = cat - others
    w = w / w.norm()
    scale = 3.0 / float(min(x @ w for x in inputs["cat"]))  # pre-activation about 3 or more on "cat"
    paris = tok.convert_tokens_to_ids("paris")
    with torch.no_grad():
        mlp = layer.mlp
        mlp.gate_proj.weight[PLANT_NEURON] = scale * w
        mlp.up_proj.weight[PLANT_NEURON] = scale * w
        unembed = model.lm_head.weight[paris] - model.lm_head.weight.mean(0)
        mlp.down_proj.weight[:, PLANT_NEURON] = 2.0 * unembed / unembed.norm()
    out = tmp_path_factory.mktemp("planted") / "llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_planted_neuron_ranks_first_and_its_ablation_changes_group_a(planted, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases(), str(planted)))
    comp = run_study(suite, tmp_path / "out", CompareSettings(groups="group", group_a="cat", group_b="dog",
                                                              permutations=1000, checks=1))
    assert comp["cases_ok"] == 12 and comp["groups"] == {"key": "group", "a": "cat", "b": "dog"}
    (section,) = comp["sections"]
    (contrast,) = section["contrasts"]
    assert contrast["exact"] and contrast["permutations"] == 924  # 12 choose 6 relabellings
    top = contrast["rows"][0]
    assert top["key"] == f"L{PLANT_LAYER}/N{PLANT_NEURON}"
    assert top["significant"] and top["p_adjusted"] < 0.01 and top["difference"] > 0
    assert top["present_a"] == 1.0
    (check,) = section["checks"]
    assert check["key"] == top["key"]
    cat, dog = check["groups"]["cat"], check["groups"]["dog"]
    assert cat["answer_changed"] > 0.5 and cat["mean_delta"] < dog["mean_delta"] <= 0.05
    # every case's own session is on disk and opens
    for case in comp["cases"]:
        assert load_session(tmp_path / "out" / case["runs"]["a"]["session"]).graph is not None
    assert load_comparison(tmp_path / "out")["suite"] == "planted"


def test_random_groups_on_the_unplanted_model_find_nothing(tiny_folder, tmp_path):
    rng = np.random.default_rng(3)
    labels = list(rng.permutation(["x"] * 6 + ["y"] * 6))
    suite = load_suite(_suite(tmp_path, _attribution_cases(labels), str(tiny_folder("llama"))))
    comp = run_study(suite, tmp_path / "out", CompareSettings(permutations=1000, checks=0))
    (contrast,) = comp["sections"][0]["contrasts"]
    assert contrast["keys_compared"] > 10
    assert contrast["significant"] == 0
    assert min(r["p_adjusted"] for r in contrast["rows"]) > 0.05


def test_behaviour_graph_counts_equal_a_loop_over_the_graphs(tiny_folder, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:16], str(tiny_folder("llama"))))
    comp = run_study(suite, tmp_path / "out", CompareSettings(checks=0, min_recurrence=0.5))
    sessions = [load_session(tmp_path / "out" / c["runs"]["a"]["session"]) for c in comp["cases"]]
    counts, sums, edge_counts = {}, {}, {}
    for s in sessions:
        g = s.graph
        keys_here = set()
        for i in range(g.n_nodes):  # node by node, no vectorisation
            k = node_key(int(g.layer[i]), int(g.kind[i]), int(g.index[i]), "N")
            sums[k] = sums.get(k, 0.0) + float(g.influence[i])
            if g.node_mask[i]:
                keys_here.add(k)
        for k in keys_here:
            counts[k] = counts.get(k, 0) + 1
        edges_here = set()
        for e in range(g.n_edges):
            if g.edge_mask[e]:
                s_, d_ = int(g.src[e]), int(g.dst[e])
                edges_here.add((node_key(int(g.layer[s_]), int(g.kind[s_]), int(g.index[s_]), "N"),
                                node_key(int(g.layer[d_]), int(g.kind[d_]), int(g.index[d_]), "N")))
        for e in edges_here:
            edge_counts[e] = edge_counts.get(e, 0) + 1
    n = len(sessions)
    from core.behaviour.profile import profile_of

    bg = aggregate([profile_of(s, c["name"]) for s, c in zip(sessions, comp["cases"])], 2, 0.5)
    assert set(bg.keys) == set(counts)
    for i, k in enumerate(bg.keys):
        assert bg.count[i] == counts[k]
        assert bg.mean[i] == pytest.approx(sums[k] / n, rel=1e-6, abs=1e-9)
    assert set(bg.edges) == {e for e, c in edge_counts.items() if c >= 0.5 * n}
    rows = {(r["src"], r["dst"]): r for r in bg.edge_rows()}
    assert all(rows[e]["count"] == edge_counts[e] for e in bg.edges)
    # and the comparison file's graph is the same one
    drawn = {r["key"]: r for r in comp["sections"][0]["behaviour"]["a"]["nodes"]}
    assert all(drawn[k]["count"] == counts[k] for k in drawn)
    assert any(int(kind) == FEATURE for s in sessions for kind in s.graph.kind[s.graph.node_mask])


def _circuit_cases() -> list[str]:
    words = ["cat", "dog", "red", "blue", "green", "one", "two", "three", "four", "five"]
    out = []
    for i in range(8):
        a, b = words[(i + 1) % 10], words[(i + 2) % 10]
        out += ["[[cases]]", f'name = "p{i}"', 'method = "circuit"', f'prompt = "the {words[i]} and the {a} is"',
                f'corrupted = "the {words[i]} and the {b} is"', f'answer = "{a}"', f'counterfactual = "{b}"',
                'scoring = "eap"', "top_n = 20"]
    return out


def test_version_comparison_finds_the_neuron_planted_in_version_b(tiny_folder, planted, tmp_path):
    cases = []
    for i, ctx in enumerate(CONTEXTS + ["two red", "the blue"]):
        cases += ["[[cases]]", f'name = "cat{i}"', f'prompt = "{ctx} and the cat"']
    suite = load_suite(_suite(tmp_path, cases, str(tiny_folder("llama"))))
    comp = run_study(suite, tmp_path / "out", CompareSettings(model_b=str(planted), permutations=1000, checks=1))
    assert comp["groups"] is None and comp["models"]["a"]["sha256"] != comp["models"]["b"]["sha256"]
    (section,) = comp["sections"]
    (contrast,) = section["contrasts"]
    assert contrast["what"] == "versions" and contrast["n_a"] == 8 and contrast["exact"]
    assert contrast["permutations"] == 256  # every sign flip of 8 paired differences
    top = contrast["rows"][0]
    assert top["key"] == f"L{PLANT_LAYER}/N{PLANT_NEURON}" and top["significant"] and top["difference"] < 0
    assert sorted((c["key"], c["model"]) for c in section["checks"]) == [(top["key"], "a"), (top["key"], "b")]
    effect = {c["model"]: c["groups"]["all cases"] for c in section["checks"]}
    assert effect["b"]["answer_changed"] > effect["a"]["answer_changed"]


def test_a_model_compared_with_itself_differs_in_nothing(tiny_folder, tmp_path):
    src = tiny_folder("llama")
    suite = load_suite(_suite(tmp_path, _circuit_cases(), str(src), defaults=""))
    same = run_study(suite, tmp_path / "same", CompareSettings(model_b=str(src), permutations=1000, checks=1))
    assert same["cases_ok"] == 8
    (section,) = same["sections"]
    (contrast,) = section["contrasts"]
    assert contrast["what"] == "versions" and contrast["keys_compared"] == 0 and contrast["significant"] == 0
    assert contrast["rows"] and all(r["p_adjusted"] == 1.0 and r["difference"] == 0.0 for r in contrast["rows"])
    assert section["edge_changes"] and all(e["difference"] == 0.0 and e["change"] == "changed"
                                           for e in section["edge_changes"])
    assert section["checks"] == []  # nothing differs, so nothing to check


def _greedy(model, ids: list[int], n: int, interventions=()) -> list[int]:
    """Brute force: ``n`` greedy steps, one whole forward pass each (the edits on the prompt's positions)."""
    from core.interventions import build_patches, greedy_ids

    return greedy_ids(model, torch.tensor([ids]), n, lambda live: build_patches(model, list(interventions), len(ids), live))


def test_an_answer_is_written_when_greedy_decoding_writes_it_whole(tiny_model):
    """``writes_answer`` (one teacher-forced pass) equals greedy decoding step by step, with and without
    an edit held at the prompt's positions: every prefix of the greedy text counts, an answer whose
    first token is right but not its second does not, nor one whose first token is wrong."""
    from core.interventions import Intervention, writes_answer

    m = tiny_model("llama")
    vocab = len(m.tokenizer)
    rng = np.random.default_rng(0)
    edited = 0
    for ctx in CONTEXTS:
        ids = m.tokenizer("<bos> " + ctx + " and the cat").input_ids
        P = len(ids)
        plain = _greedy(m, ids, 3)
        for ivs in ([], [Intervention("mlp", 0, 0, tuple(range(1, P)))],
                    [Intervention("head", 1, PLANT_HEAD, tuple(range(1, P)), "scale", -3.0)]):
            g = _greedy(m, ids, 3, ivs)
            edited += g != plain
            right = [tuple(g[:k]) for k in (1, 2, 3)]
            wrong = [(g[0], int(g[1] + 1 + rng.integers(vocab - 1)) % vocab),  # the second token differs
                     (g[0], g[1], int(g[2] + 1 + rng.integers(vocab - 1)) % vocab),
                     ((g[0] + 1) % vocab, g[1])]  # the first one differs
            for a in right:
                assert writes_answer(m, ids, [a], g[0], ivs), (ctx, ivs, a, g)
            for a in wrong:
                assert not writes_answer(m, ids, [a], g[0], ivs), (ctx, ivs, a, g)
            assert writes_answer(m, ids, wrong + [right[2]], g[0], ivs)
    assert edited >= 3  # the edits changed what was written, so both branches were compared


def test_correct_rule_groups_by_the_models_own_answer(tiny_folder, tmp_path):
    """Correct: the model writes one of the case's answers whole. A two-token answer whose first token
    is the model's but not its second is wrong (a first-token rule would call it correct). The checks'
    correctness flips equal greedy decoding with the checked node ablated on the prompt."""
    from core.behaviour.cases import loaded
    from core.behaviour.study import intervention_for

    src = tiny_folder("llama")
    model = loaded(str(src), "auto", "float32")
    cases, truth, greedy = [], {}, {}
    for i, ctx in enumerate(CONTEXTS):
        prompt = f"{ctx} and the cat"
        ids = model.tokenizer("<bos> " + prompt).input_ids
        g = _greedy(model, ids, 2)
        words = [model.tokenizer.decode([t]) for t in g]
        other = next(w for w in ("paris", "london", "red") if w != words[1])
        answer = {0: "paris" if words[0] != "paris" else "london",  # the first token is not the model's
                  1: " ".join(words),  # both tokens are the model's
                  2: f"{words[0]} {other}"}[i % 3]  # the first token is, the second is not
        truth[f"q{i}"] = "correct" if i % 3 == 1 else "wrong"
        greedy[f"q{i}"] = (ids, model.tokenizer(answer, add_special_tokens=False).input_ids)
        cases += ["[[cases]]", f'name = "q{i}"', f'prompt = "{prompt}"', f'answers = ["{answer}"]']
    suite = load_suite(_suite(tmp_path, cases, str(src)))
    comp = run_study(suite, tmp_path / "out", CompareSettings(permutations=200, checks=1))
    assert comp["groups"] == {"key": "correct", "a": "wrong", "b": "correct"}
    assert {c["name"]: c["labels"]["correct"] for c in comp["cases"]} == truth
    (check,) = comp["sections"][0]["checks"]
    flips = {"wrong": [0, 0], "correct": [0, 0]}  # group -> [correct to wrong, wrong to correct]
    for name, (ids, answer) in greedy.items():
        after = _greedy(model, ids, len(answer), [intervention_for(check["key"], len(ids))])
        right_before, right_after = truth[name] == "correct", after == answer
        flips[truth[name]][0] += right_before and not right_after
        flips[truth[name]][1] += right_after and not right_before
    for group, (to_wrong, to_right) in flips.items():
        got = check["groups"][group]
        n = got["cases"]
        assert (got["correct_to_wrong"], got["wrong_to_correct"]) == pytest.approx((to_wrong / n, to_right / n))


def test_bad_group_settings_are_one_sentence(tiny_folder, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:8], str(tiny_folder("llama"))))
    with pytest.raises(CircuitDeskError, match="No case has the label 'topic'"):
        run_study(suite, tmp_path / "o1", CompareSettings(groups="topic", checks=0))
    with pytest.raises(CircuitDeskError, match="No case has group = 'bird'"):
        run_study(suite, tmp_path / "o2", CompareSettings(group_a="cat", group_b="bird", checks=0))
    with pytest.raises(CircuitDeskError, match="needs answers"):
        run_study(suite, tmp_path / "o3", CompareSettings(groups="correct", checks=0))
    # said before any case ran: no session was written
    assert not any((tmp_path / o / "a").exists() for o in ("o1", "o2", "o3"))
    with pytest.raises(CircuitDeskError, match="--group-a and --group-b"):
        CompareSettings(group_a="cat").validate()
    with pytest.raises(CircuitDeskError, match="--address"):
        CompareSettings(executor="ray").validate()


def test_a_comparison_file_from_anyone_is_checked(tmp_path):
    (tmp_path / "comparison.json").write_text('{"format": "circuitdesk-comparison", "format_version": 1, '
                                              '"cases": [{"name": "x", "runs": {"a": {"session": "../../etc/x"}}}], '
                                              '"sections": []}')
    with pytest.raises(CircuitDeskError, match="not inside the comparison's folder"):
        load_comparison(tmp_path)
    (tmp_path / "comparison.json").write_text('{"format": "other"}')
    with pytest.raises(CircuitDeskError, match="not a Circuit Desk comparison"):
        load_comparison(tmp_path / "comparison.json")
    (tmp_path / "comparison.json").write_text("{not json")
    with pytest.raises(CircuitDeskError, match="not a comparison file"):
        load_comparison(tmp_path)
    with pytest.raises(CircuitDeskError, match="does not exist"):
        load_comparison(tmp_path / "missing.json")


def test_transcoder_features_are_keyed_and_checked(tiny_folder, tmp_path):
    """Features key as L{l}/F{i}; the top one is checked, and its correctness flips (each case's answer:
    the model's own two greedy tokens) equal greedy decoding with the feature steered (×-5) on the prompt."""
    from safetensors.torch import save_file

    from core.attribution.transcoders import load_transcoders
    from core.behaviour.cases import loaded
    from core.behaviour.study import intervention_for
    from core.interventions import build_patches, greedy_ids

    SCALE = -5.0  # steered hard enough that one case's answer turns (and another's does not)

    gen = torch.Generator().manual_seed(0)
    folder = tmp_path / "plt"
    folder.mkdir()
    for i in range(2):  # random per-layer ReLU transcoders for the tiny Llama (d_model 32)
        save_file({"W_enc": torch.randn(48, 32, generator=gen) * 0.3, "W_dec": torch.randn(48, 32, generator=gen) * 0.2,
                   "b_enc": torch.randn(48, generator=gen) * 0.1, "b_dec": torch.randn(32, generator=gen) * 0.1},
                  str(folder / f"layer_{i}.safetensors"))
    model = loaded(str(tiny_folder("llama")), "auto", "float32")
    cases, answers = [], {}
    for line in _attribution_cases()[:16]:
        cases.append(line)
        if line.startswith("prompt = "):
            ids = model.tokenizer("<bos> " + line.split('"')[1]).input_ids
            answers[cases[-2].split('"')[1]] = (ids, g := _greedy(model, ids, 2))
            cases.append(f'answers = ["{" ".join(model.tokenizer.decode([t]) for t in g)}"]')
    suite = load_suite(_suite(tmp_path, cases, str(tiny_folder("llama")),
                              defaults=f'max_nodes = 40\ntranscoders = "{folder}"'))
    comp = run_study(suite, tmp_path / "out", CompareSettings(permutations=200, checks=1, check_scale=SCALE))
    assert all(c["runs"]["a"]["correct"] for c in comp["cases"])  # each writes its own greedy answer
    (section,) = comp["sections"]
    assert section["basis"] == "transcoders"
    assert all("/N" not in n["key"] for n in section["behaviour"]["a"]["nodes"])
    assert any("/F" in n["key"] for n in section["behaviour"]["a"]["nodes"])
    (check,) = section["checks"]
    assert "/F" in check["key"] and set(check["groups"]) == {"cat", "dog"}
    assert all(g["cases"] == 2 for g in check["groups"].values())
    tc = load_transcoders(folder, model.facts.n_layers, model.facts.d_model, device=model.device)
    points = [f"blocks.{l}.{tc.input_point}" for l in range(model.facts.n_layers)]
    turned = {"cat": 0, "dog": 0}
    for name, (ids, answer) in answers.items():
        iv = intervention_for(check["key"], len(ids), SCALE)
        after = greedy_ids(model, torch.tensor([ids]), 2, lambda live: build_patches(model, [iv], len(ids), live, None, tc),
                           cache_points=points)
        turned[name[:3]] += after != answer
    assert 0 < sum(turned.values()) < len(answers)
    assert {g: v["correct_to_wrong"] for g, v in check["groups"].items()} == {g: n / 2 for g, n in turned.items()}
    assert all(v["wrong_to_correct"] == 0 for v in check["groups"].values())


def test_checks_can_steer_instead_of_ablating(planted, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:24], str(planted)))
    comp = run_study(suite, tmp_path / "out", CompareSettings(permutations=200, checks=1, check_scale=3.0))
    (check,) = comp["sections"][0]["checks"]
    assert check["key"] == f"L{PLANT_LAYER}/N{PLANT_NEURON}"
    assert check["intervention"] == "scaling by 3 at every position but the start token"
    cat, dog = check["groups"]["cat"], check["groups"]["dog"]
    # tripling the neuron that writes the cat cases' answer makes it likelier there (it is silent on "dog")
    assert cat["mean_delta"] > 0.01 and abs(dog["mean_delta"]) < cat["mean_delta"]
    with pytest.raises(CircuitDeskError, match="--check-scale"):
        CompareSettings(check_scale=1.0).validate()


def test_model_b_must_exist_and_share_the_architecture(tiny_folder, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:8], str(tiny_folder("llama"))))
    with pytest.raises(CircuitDeskError, match="Model B .* does not exist"):
        run_study(suite, tmp_path / "o1", CompareSettings(model_b=str(tmp_path / "nowhere"), checks=0))
    assert not (tmp_path / "o1" / "a").exists()
    with pytest.raises(CircuitDeskError, match="not the same architecture as model A"):
        run_study(suite, tmp_path / "o2", CompareSettings(model_b=str(tiny_folder("gpt2")), checks=0))
    assert len(list((tmp_path / "o2" / "b").glob("*.cdesk"))) == 1  # said at model B's first case


# -- hostile inputs: one sentence, nothing half-written that looks complete -------------------------
def test_a_stopped_run_leaves_no_earlier_comparison_beside_its_new_sessions(tiny_folder, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:8], str(tiny_folder("llama"))))
    out = tmp_path / "out"
    run_study(suite, out, CompareSettings(permutations=200, checks=0))
    assert (out / "comparison.json").is_file()
    (out / "comparison.pdf").write_bytes(b"%PDF old")
    bad_b = tmp_path / "bad_b"
    bad_b.mkdir()
    (bad_b / "config.json").write_text("{garbage")
    # model B cannot load: said once, at its first case, and the old comparison is gone (not left
    # beside sessions it does not describe)
    with pytest.raises(CircuitDeskError, match=r"Model B \(.*bad_b\) cannot be loaded: .*config.json is not valid JSON"):
        run_study(suite, out, CompareSettings(permutations=200, checks=0, model_b=str(bad_b)))
    assert not (out / "comparison.json").exists() and not (out / "comparison.pdf").exists()
    assert not list((out / "b").glob("*.cdesk"))


def test_output_folders_that_cannot_be_written_are_one_sentence_before_any_case(tiny_folder, tmp_path):
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:8], str(tiny_folder("llama"))))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CircuitDeskError, match="is a file; give --out a folder"):
        run_study(suite, tmp_path / "file", CompareSettings(checks=0))
    (tmp_path / "o1").mkdir()
    (tmp_path / "o1" / "a").write_text("x")
    with pytest.raises(CircuitDeskError, match="Cannot create the session folder .*a: a file"):
        run_study(suite, tmp_path / "o1", CompareSettings(checks=0))
    (tmp_path / "o2" / "comparison.json").mkdir(parents=True)
    with pytest.raises(CircuitDeskError, match="comparison.json: it is a folder"):
        run_study(suite, tmp_path / "o2", CompareSettings(checks=0))
    assert not (tmp_path / "o2" / "a").exists()  # said before any case ran


def test_bad_answers_fail_their_case_or_the_suite_not_the_study(tiny_folder, tmp_path):
    src = str(tiny_folder("llama"))
    cases = ["[[cases]]", 'name = "e"', 'prompt = "the red and the cat"', "answers = []"]
    with pytest.raises(CircuitDeskError, match="case 1: 'answers' must be a list of texts"):
        load_suite(_suite(tmp_path, cases, src))
    cases = []
    for i, ctx in enumerate(CONTEXTS):
        answer = " " if i == 0 else "\u4e2d\u6587" if i == 1 else "paris"  # empty once tokenized; not in the vocabulary
        cases += ["[[cases]]", f'name = "q{i}"', f'prompt = "{ctx} and the cat"', f'answers = ["{answer}"]']
    comp = run_study(load_suite(_suite(tmp_path, cases, src)), tmp_path / "out",
                     CompareSettings(permutations=200, checks=1))
    runs = {c["name"]: c["runs"]["a"] for c in comp["cases"]}
    assert "empty once tokenized" in runs["q0"]["error"]
    assert "not in the model's vocabulary" in runs["q1"]["error"]
    assert all(runs[f"q{i}"]["status"] == "ok" for i in range(2, 6)) and comp["cases_failed"] == 2
    assert (tmp_path / "out" / "comparison.json").is_file()  # the checks ran over the cases that ran


def test_groups_that_cannot_be_contrasted_say_why(tiny_folder, tmp_path):
    from core.behaviour.study import study_summary

    src = str(tiny_folder("llama"))
    suite = load_suite(_suite(tmp_path, _attribution_cases(["x"] * 12)[:8], src))
    with pytest.raises(CircuitDeskError, match="Every case has group = 'x'; a contrast needs two groups"):
        run_study(suite, tmp_path / "o1", CompareSettings(checks=0))
    suite = load_suite(_suite(tmp_path, _attribution_cases()[:8], src))  # one case in each group
    comp = run_study(suite, tmp_path / "o2", CompareSettings(permutations=200, checks=0))
    assert comp["sections"][0]["contrasts"] == []
    assert any("have 1 and 1 cases of this kind; a contrast needs at least 2 in each" in f
               for f in study_summary(comp)["findings"])

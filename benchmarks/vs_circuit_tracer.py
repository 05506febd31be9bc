"""Circuit Desk against circuit-tracer (the reference implementation): time, peak RSS, agreement.

Both tools trace the same random GPT-2-small-shaped model (12 layers, d_model 768, the GPT-2
vocabulary size 50257 over a word-level tokenizer built offline) with the same random per-layer
JumpReLU transcoders (d_transcoder 4096, reading the MLP input after ln_2 and writing the MLP
output, thresholds set so a few tens of features fire per token and layer), on the same prompt
(~30 tokens, the start token included) and the same settings: max feature nodes (1000 and 4000),
max_n_logits 10, desired_logit_prob 0.95, the same batch size. Circuit Desk keeps the start
token as a node (``start_token_node``), as circuit-tracer does.

Each run is its own process, alternating circuit-tracer, Circuit Desk, circuit-tracer, ...
(``--repeat N`` rounds), with the same thread count. Printed per size: seconds of the attribution
call (model and transcoders loaded beforehand), peak RSS of the child (``ru_maxrss``, loading
included) and the peak during the attribution call alone (VmHWM reset just before it), the
Circuit Desk / circuit-tracer ratios, and the agreement of the two graphs: the feature
activations of both tools, the share of feature nodes both chose, and the adjacency entries
between the nodes both have (features matched by (layer, position, index), error nodes by
(layer, position), token nodes by position, logit nodes by token id): max |difference|,
relative to the largest |entry|, and the relative Frobenius norm of the difference.
``--profile`` adds one cProfile run of each tool at the largest size and prints where the time
goes (backward passes, influence recomputation, row storage, contributions, assembly).

circuit-tracer is not a dependency of Circuit Desk; install it in a venv of its own:
    python3 -m venv /work/ct-venv && /work/ct-venv/bin/pip install torch==2.13.0 circuit-tracer
Run (from the repository root, with the project's venv):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_circuit_tracer.py --quick          # smoke run
    .venv/bin/python benchmarks/vs_circuit_tracer.py [--nodes 1000,4000] [--repeat N]
        [--batch-size B] [--ct-python PATH] [--threads T] [--workdir DIR] [--profile]
``--ct-python`` defaults to $CIRCUITDESK_CT_PYTHON, else /work/ct-venv/bin/python. The model and
transcoders are written to --workdir (default: a temporary folder) and reused when present.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROMPT = ("When the old clockmaker opened his shop by the river every morning , the children stopped "
          "to watch the gears turn behind the glass , and their parents bought bread next")
CALIBRATION = ("Long ago in the quiet town a stranger from the north asked him to repair a golden watch "
               "that had stopped at midnight , and the clockmaker turned it over in his hands and saw "
               "the name of his own grandfather engraved on the back of the old watch")
SPECIALS = ("<unk>", "<bos>", "<eos>")  # ids 0, 1, 2: the start token is <bos> (id 1) for both tools

FULL = dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, d_tc=4096, active=40, nodes="1000,4000")
QUICK = dict(n_layer=4, n_embd=128, n_head=4, vocab=4096, d_tc=1024, active=20, nodes="100,400")
MAX_LOGITS, DESIRED_PROB = 10, 0.95
IN_HOOK, OUT_HOOK = "mlp.hook_in", "hook_mlp_out"  # the MLP input after ln_2, the MLP output


# ---------------------------------------------------------------------------------------------
# The shared fixture: an HF model folder, a transcoder folder, the prompt's token ids.

def _vocabulary(size: int) -> dict[str, int]:
    words = list(SPECIALS)
    for w in (PROMPT + " " + CALIBRATION).split():
        if w not in words:
            words.append(w)
    words += [f"w{i}" for i in range(size - len(words))]  # filler words up to the model's vocabulary size
    return {w: i for i, w in enumerate(words)}


def build_fixture(work: Path, shape: dict, seed: int = 0) -> dict:
    """Write the model, tokenizer and transcoders into ``work`` (reused when already there)."""
    stamp = work / "fixture.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("shape") == shape and info.get("seed") == seed:
            return info
    import numpy as np
    import torch
    import yaml
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if work.exists():
        shutil.rmtree(work)
    (work / "model").mkdir(parents=True)
    (work / "transcoders").mkdir()
    tok = Tokenizer(models.WordLevel(_vocabulary(shape["vocab"]), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>",
                                        eos_token="<eos>")
    config = GPT2Config(vocab_size=shape["vocab"], n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                        n_head=shape["n_head"], n_positions=1024, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF starts norms at identity and biases at zero; make them matter
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")

    # Transcoders: random encoders/decoders; per-layer thresholds from the MLP inputs of a
    # calibration text, so that about shape["active"] features fire per token.
    L, d, d_tc = shape["n_layer"], shape["n_embd"], shape["d_tc"]
    mlp_in: dict[int, torch.Tensor] = {}
    hooks = [model.transformer.h[l].mlp.register_forward_pre_hook(
        lambda m, args, l=l: mlp_in.__setitem__(l, args[0][0].detach())) for l in range(L)]
    ids = torch.tensor([[1] + tokenizer(CALIBRATION, add_special_tokens=False).input_ids])
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(seed + 1)
    paths = []
    for l in range(L):
        W_enc = torch.randn(d_tc, d, generator=gen) / d ** 0.5
        b_enc = 0.1 * torch.randn(d_tc, generator=gen)
        W_dec = torch.randn(d_tc, d, generator=gen) / d_tc ** 0.5
        b_dec = 0.02 * torch.randn(d, generator=gen)
        pre = mlp_in[l][1:] @ W_enc.T + b_enc  # [T, d_tc], the start position left out
        level = torch.quantile(pre.flatten(), 1.0 - shape["active"] / d_tc)
        threshold = level * torch.exp(0.1 * torch.randn(d_tc, generator=gen))  # per feature, around the level
        path = work / "transcoders" / f"layer_{l}.safetensors"
        save_file({"W_enc": W_enc.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(), "b_dec": b_dec,
                   "activation_function.threshold": threshold.clamp(min=1e-3)}, str(path))
        paths.append(str(path))
    (work / "transcoders" / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "feature_input_hook": IN_HOOK, "feature_output_hook": OUT_HOOK,
        "scan": "benchmark-random-gpt2", "transcoders": paths,
    }))
    prompt_ids = [1] + tokenizer(PROMPT, add_special_tokens=False).input_ids
    assert 0 not in prompt_ids, "a prompt word fell outside the vocabulary"
    info = dict(shape=shape, seed=seed, prompt=PROMPT, ids=prompt_ids,
                params=sum(p.numel() for p in model.parameters()))
    stamp.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------------------------------
# Children: one attribution each, in its own process.

def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next reading is the peak from now on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _profiled(call, path: Path | None):
    if path is None:
        return call()
    import cProfile
    prof = cProfile.Profile()
    try:
        return prof.runcall(call)
    finally:
        prof.dump_stats(str(path))


def child_cd(work: Path, nodes: int, batch: int, profile: Path | None) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from core.attribution import AttributionSettings, attribute
    from core.attribution.attribute import ROW_BATCH_TOKENS, make_basis
    from core.attribution.bases import TranscoderBasis
    from core.models import load_model

    info = json.loads((work / "fixture.json").read_text())
    t0 = time.perf_counter()
    model = load_model(str(work / "model"), device="cpu")
    settings = AttributionSettings(max_nodes=nodes, batch_size=batch, max_logits=MAX_LOGITS,
                                   desired_prob=DESIRED_PROB, transcoders=str(work / "transcoders"),
                                   start_token_node=True)
    basis = make_basis(model, settings)
    load_s = time.perf_counter() - t0
    rss_before = _vm_hwm_mb()
    reset = _reset_peak()
    t0 = time.perf_counter()
    res = _profiled(lambda: attribute(model, info["prompt"], settings, basis=basis), profile)
    seconds = time.perf_counter() - t0
    phase_peak = _vm_hwm_mb() if reset else None
    peak = max(_rss_mb(), rss_before or 0.0)
    if int(res.ids[0, 0]) != info["ids"][0] or res.ids[0].tolist() != info["ids"]:
        raise SystemExit(f"Circuit Desk traced {res.ids[0].tolist()}, not the fixture's ids {info['ids']}")

    # Untimed: every active feature of the prompt, for the activation check.
    tb = TranscoderBasis(model, res.transcoders)
    L = model.facts.n_layers
    points = [tb.input_point(l) for l in range(L)] + [tb.write_point(l) for l in range(L)]
    with torch.no_grad():
        logits, clean = model.instrument.forward(res.ids, cache=points)
    enc = tb.encode(clean, 1)
    g = res.graph
    np.savez(work / f"cd_{nodes}.npz", kind=g.kind, layer=g.layer, pos=g.pos, index=g.index, src=g.src,
             dst=g.dst, weight=g.weight, act_layer=enc.layer.numpy(), act_pos=enc.pos.numpy(),
             act_index=enc.index.numpy(), act_value=enc.activation.numpy(),
             last_logits=logits[0, -1].float().numpy())
    st = res.stats
    return dict(tool="cd", nodes=nodes, seconds=seconds, load_seconds=load_s, peak_rss_mb=peak,
                phase_peak_rss_mb=phase_peak, batch=st["batch_size"], requested_batch=batch,
                row_batch_tokens=ROW_BATCH_TOKENS, backward_passes=st["backward_passes"],
                active_features=st["active_features"], feature_rows=st["feature_rows"],
                threads=torch.get_num_threads(), prompt_tokens=int(res.ids.shape[1]))


def child_ct(work: Path, nodes: int, batch: int, profile: Path | None) -> dict:
    import numpy as np
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    info = json.loads((work / "fixture.json").read_text())
    t0 = time.perf_counter()
    folder = work / "model"
    # The same tokenizer (tokenizer.json); add_bos_token marked so that TransformerLens keeps it
    # instead of reloading it by name. The ids are passed directly; it only decodes.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>", add_bos_token=True,
                                        name_or_path=str(folder))
    hf = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    c = hf.config
    # What HookedTransformer.from_pretrained("gpt2", fold_ln=False, center_writing_weights=False,
    # center_unembed=False) builds (circuit-tracer's settings), from the local folder.
    cfg = HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
        act_fn=c.activation_function, use_attn_scale=True, normalization_type="LN",
        original_architecture="GPT2LMHeadModel", model_name="random-gpt2-small", device="cpu",
        dtype=torch.float32, default_prepend_bos=False,
    )
    model = TransformerLensReplacementModel(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False)
    del hf
    cfg_yaml = __import__("yaml").safe_load((work / "transcoders" / "config.yaml").read_text())
    # As ReplacementModel.from_pretrained loads transcoders: encoders in memory, decoders read lazily.
    transcoders = load_transcoder_set(dict(enumerate(cfg_yaml["transcoders"])), scan=cfg_yaml["scan"],
                                      feature_input_hook=cfg_yaml["feature_input_hook"],
                                      feature_output_hook=cfg_yaml["feature_output_hook"],
                                      device=torch.device("cpu"), dtype=torch.float32,
                                      lazy_encoder=False, lazy_decoder=True)
    model._configure_replacement_model(transcoders)  # what ReplacementModel.from_config does after __init__
    ids = torch.tensor(info["ids"])
    load_s = time.perf_counter() - t0
    rss_before = _vm_hwm_mb()
    reset = _reset_peak()
    t0 = time.perf_counter()
    graph = _profiled(lambda: attribute(ids, model, max_n_logits=MAX_LOGITS, desired_logit_prob=DESIRED_PROB,
                                        batch_size=batch, max_feature_nodes=nodes), profile)
    seconds = time.perf_counter() - t0
    phase_peak = _vm_hwm_mb() if reset else None
    peak = max(_rss_mb(), rss_before or 0.0)
    with torch.no_grad():
        last_logits = model(ids[None])[0, -1].float()
    af = graph.active_features.cpu().numpy()
    np.savez(work / f"ct_{nodes}.npz", adjacency=graph.adjacency_matrix.float().numpy(),
             active=af, act_value=graph.activation_values.float().cpu().numpy(),
             selected=graph.selected_features.cpu().numpy(),
             logit_ids=np.array([t.vocab_idx for t in graph.logit_targets]),
             tokens=graph.input_tokens.cpu().numpy(), last_logits=last_logits.numpy())
    n_active = int(af.shape[0])
    rows = min(nodes, n_active) + len(graph.logit_targets)
    return dict(tool="ct", nodes=nodes, seconds=seconds, load_seconds=load_s, peak_rss_mb=peak,
                phase_peak_rss_mb=phase_peak, batch=batch, requested_batch=batch,
                backward_passes=-(-len(graph.logit_targets) // batch) + -(-min(nodes, n_active) // batch),
                rows=rows, active_features=n_active, feature_rows=int(graph.selected_features.numel()),
                threads=torch.get_num_threads(), prompt_tokens=int(ids.numel()))


# ---------------------------------------------------------------------------------------------
# The parent: runs, agreement, profile summaries.

def _keys_cd(d):
    from core.graph import EMBEDDING, ERROR, FEATURE, LOGIT

    keys = []
    for k, l, p, i in zip(d["kind"].tolist(), d["layer"].tolist(), d["pos"].tolist(), d["index"].tolist()):
        keys.append(("f", l, p, i) if k == FEATURE else ("e", l, p) if k == ERROR else ("t", p) if k == EMBEDDING
                    else ("l", i) if k == LOGIT else ("?", k, l, p, i))
    return keys


def _keys_ct(d, n_layers: int, n_pos: int):
    act = d["active"]
    keys = [("f",) + tuple(int(v) for v in act[j]) for j in d["selected"].tolist()]
    keys += [("e", l, p) for l in range(n_layers) for p in range(n_pos)]
    keys += [("t", p) for p in range(n_pos)]
    keys += [("l", int(t)) for t in d["logit_ids"].tolist()]
    return keys


def agreement(work: Path, nodes: int) -> dict:
    import numpy as np

    from core.graph import ERROR

    cd, ct = np.load(work / f"cd_{nodes}.npz"), np.load(work / f"ct_{nodes}.npz")
    n_pos = int(ct["tokens"].shape[0])
    n_layers = int(cd["layer"][cd["kind"] == ERROR].max()) + 1
    out = {}
    # feature activations: the same (layer, pos, index) set and values
    a_cd = {(l, p, i): v for l, p, i, v in zip(cd["act_layer"].tolist(), cd["act_pos"].tolist(),
                                               cd["act_index"].tolist(), cd["act_value"].tolist())}
    a_ct = {tuple(int(x) for x in k): float(v) for k, v in zip(ct["active"], ct["act_value"])}
    common = a_cd.keys() & a_ct.keys()
    out["active"] = (len(a_ct), len(a_cd), len(common))
    out["act_max_diff"] = max((abs(a_cd[k] - a_ct[k]) for k in common), default=0.0)
    out["logit_max_diff"] = float(np.abs(cd["last_logits"] - ct["last_logits"]).max())
    # nodes and edges
    k_cd, k_ct = _keys_cd(cd), _keys_ct(ct, n_layers, n_pos)
    i_cd, i_ct = {k: j for j, k in enumerate(k_cd)}, {k: j for j, k in enumerate(k_ct)}
    feats_cd = {k for k in k_cd if k[0] == "f"}
    feats_ct = {k for k in k_ct if k[0] == "f"}
    out["features"] = (len(feats_ct), len(feats_cd), len(feats_cd & feats_ct))
    logits_cd = {k for k in k_cd if k[0] == "l"}
    logits_ct = {k for k in k_ct if k[0] == "l"}
    out["logits"] = (len(logits_ct), len(logits_cd), len(logits_cd & logits_ct))
    both = [k for k in k_ct if k in i_cd]
    rows = [k for k in both if k[0] in ("f", "l")]  # the nodes whose rows both computed
    ct_cols = np.array([i_ct[k] for k in both])
    cd_col = np.full(len(k_cd), -1)
    cd_col[[i_cd[k] for k in both]] = np.arange(len(both))
    A_ct = ct["adjacency"][np.array([i_ct[k] for k in rows])][:, ct_cols].astype(np.float64)
    A_cd = np.zeros_like(A_ct)
    cd_row = np.full(len(k_cd), -1)
    cd_row[[i_cd[k] for k in rows]] = np.arange(len(rows))
    r, c = cd_row[cd["dst"]], cd_col[cd["src"]]
    keep = (r >= 0) & (c >= 0)
    A_cd[r[keep], c[keep]] = cd["weight"][keep]
    diff = np.abs(A_cd - A_ct)
    scale = float(np.abs(A_ct).max()) or 1.0
    out["common_nodes"], out["common_rows"] = len(both), len(rows)
    out["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    out["max_rel_diff"] = out["max_abs_diff"] / scale
    out["fro_rel_diff"] = float(np.linalg.norm(A_cd - A_ct) / (np.linalg.norm(A_ct) or 1.0))
    out["nonzero"] = (int((A_ct != 0).sum()), int((A_cd != 0).sum()))
    return out


def run_child(python: str, tool: str, work: Path, nodes: int, batch: int, threads: int,
              profile: Path | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, "--workdir", str(work), "--nodes", str(nodes),
           "--batch-size", str(batch)]
    if profile is not None:
        cmd += ["--profile-out", str(profile)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{tool} at {nodes} nodes failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def _bucket(stats, file_end: str, func: str) -> float:
    return sum(v[3] for (f, _, name), v in stats.items() if name == func and f.replace("\\", "/").endswith(file_end))


def profile_summary(path: Path, tool: str, top: int = 18) -> None:
    import io
    import pstats

    st = pstats.Stats(str(path))
    s = st.stats
    total = max(v[3] for v in s.values())
    print(f"\n  {tool}: cProfile, {total:.1f} s in the attribution call (profiling overhead included)")
    if tool == "Circuit Desk":
        backward = _bucket(s, "torch/autograd/__init__.py", "grad")
        influence = _bucket(s, "core/attribution/attribute.py", "feature_influence")
        add = _bucket(s, "core/attribution/attribute.py", "add")
        contrib = _bucket(s, "core/attribution/bases.py", "contributions")
        injection = _bucket(s, "core/attribution/bases.py", "injection")
        assemble = _bucket(s, "core/attribution/attribute.py", "_assemble")
        prune = _bucket(s, "core/graph.py", "prune")
        scores = _bucket(s, "core/graph.py", "graph_scores")
        parts = [("backward passes (torch.autograd.grad)", backward),
                 ("influence recomputation (_Rows.feature_influence)", influence),
                 # contributions is a generator consumed inside _Rows.add: its time is in add's cumulative
                 ("row storage (_Rows.add, without the contributions)", add - contrib),
                 ("contributions (TranscoderBasis.contributions)", contrib),
                 ("injection vectors (TranscoderBasis.injection)", injection),
                 ("graph assembly (_assemble)", assemble), ("pruning (prune)", prune),
                 ("graph scores (graph_scores)", scores)]
    else:
        backward = _bucket(s, "torch/_tensor.py", "backward")
        influence = _bucket(s, "circuit_tracer/graph.py", "compute_partial_influences")
        hooks = _bucket(s, "attribution/context_transformerlens.py", "_hook_fn")
        parts = [("backward passes (Tensor.backward, row hooks included)", backward),
                 ("  of which the row hooks (_hook_fn: gradient · decoder vectors)", hooks),
                 ("influence recomputation (compute_partial_influences)", influence),
                 ("forward pass with the batch (run_forward_pass)",
                  _bucket(s, "replacement_model_transformerlens.py", "run_forward_pass")),
                 ("setup (setup_attribution)", _bucket(s, "replacement_model_transformerlens.py", "setup_attribution")),
                 ("Graph object", _bucket(s, "circuit_tracer/graph.py", "__init__"))]
    counted = 0.0
    for name, t in parts:
        print(f"    {name:<62} {t:7.1f} s  {t / total:6.1%}")
        counted += 0 if name.startswith("  ") else t
    print(f"    {'rest (forward passes, setup, Python overhead)':<62} {total - counted:7.1f} s  "
          f"{(total - counted) / total:6.1%}")
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(top)
    body = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(body) if line.lstrip().startswith("ncalls")), 0)
    print("    top functions by own time:")
    for line in body[start:start + top + 1]:
        print("    " + line.replace(str(ROOT) + "/", "").replace(sys.prefix, "")[:150])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", help="max feature nodes, comma-separated (default 1000,4000; --quick 100,400)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of alternating runs (default 1)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="rows per backward pass for both tools (default: what Circuit Desk uses for the prompt "
                         "with its default setting 32, i.e. min(32, ROW_BATCH_TOKENS // prompt tokens))")
    ap.add_argument("--ct-python", default=os.environ.get("CIRCUITDESK_CT_PYTHON", "/work/ct-venv/bin/python"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--quick", action="store_true", help="a small model (4 layers, d_model 128) for a smoke run")
    ap.add_argument("--workdir", help="where the model and transcoders are written (kept; reused when present)")
    ap.add_argument("--profile", action="store_true", help="also one cProfile run of each tool at the largest size")
    ap.add_argument("--child", choices=("cd", "ct"), help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        work = Path(args.workdir)
        nodes = int(args.nodes)
        prof = Path(args.profile_out) if args.profile_out else None
        fn = child_cd if args.child == "cd" else child_ct
        print(json.dumps(fn(work, nodes, args.batch_size, prof)))
        return

    ct_python = Path(args.ct_python)
    if not ct_python.is_file():
        raise SystemExit(f"No circuit-tracer Python at {ct_python}; install it in a venv of its own with "
                         "`python3 -m venv /work/ct-venv && /work/ct-venv/bin/pip install torch==2.13.0 "
                         "circuit-tracer` (or pass --ct-python PATH).")
    check = subprocess.run([str(ct_python), "-c", "import circuit_tracer, importlib.metadata as m; "
                            "print(m.version('circuit-tracer'), m.version('transformer-lens'), m.version('torch'))"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"{ct_python} cannot import circuit_tracer; install it with "
                         f"`{ct_python} -m pip install circuit-tracer`.")
    shape = QUICK if args.quick else FULL
    sizes = [int(n) for n in (args.nodes or shape["nodes"]).split(",")]
    sys.path.insert(0, str(ROOT))
    from core.attribution.attribute import ROW_BATCH_TOKENS

    tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cd-vs-ct-")
        work = Path(tmp.name) / "fixture"
    t0 = time.perf_counter()
    info = build_fixture(work, {k: v for k, v in shape.items() if k != "nodes"})
    P = len(info["ids"])
    batch = args.batch_size or max(1, min(32, ROW_BATCH_TOKENS // P))
    ct_v, tl_v, torch_v = check.stdout.split()
    print(f"fixture: random GPT-2-shaped model, {shape['n_layer']} layers, d_model {shape['n_embd']}, vocabulary "
          f"{shape['vocab']} ({info['params'] / 1e6:.0f} M parameters); JumpReLU transcoders d {shape['d_tc']}; "
          f"prompt {P} tokens (start token included); built/loaded in {time.perf_counter() - t0:.1f} s")
    print(f"circuit-tracer {ct_v} (TransformerLens {tl_v}, torch {torch_v}); {args.threads} thread(s) per run; "
          f"batch {batch} rows per backward pass for both (Circuit Desk caps at ROW_BATCH_TOKENS "
          f"{ROW_BATCH_TOKENS} // {P} tokens = {ROW_BATCH_TOKENS // P}); max_n_logits {MAX_LOGITS}, "
          f"desired_logit_prob {DESIRED_PROB}")

    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.repeat):
        for n in sizes:
            for tool, py in (("ct", str(ct_python)), ("cd", sys.executable)):
                load_before = os.getloadavg()[0]
                res = run_child(py, tool, work, n, batch, args.threads)
                results.setdefault((tool, n), []).append(res)
                # the load average says whether other work shared the cores during the run
                print(f"  round {r + 1}, {n} nodes, {'circuit-tracer' if tool == 'ct' else 'Circuit Desk':>14}: "
                      f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mb'] / 1024:.2f} GB (load average "
                      f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} cores)", flush=True)

    for n in sizes:
        ct, cd = results[("ct", n)], results[("cd", n)]
        t_ct, t_cd = min(x["seconds"] for x in ct), min(x["seconds"] for x in cd)
        m_ct, m_cd = max(x["peak_rss_mb"] for x in ct), max(x["peak_rss_mb"] for x in cd)
        p_ct = max((x["phase_peak_rss_mb"] or 0) for x in ct)
        p_cd = max((x["phase_peak_rss_mb"] or 0) for x in cd)
        a = agreement(work, n)
        c0, d0 = ct[0], cd[0]
        print(f"\n{n} feature nodes ({c0['active_features']} active features; {d0['feature_rows']} feature rows, "
              f"{len(ct)} run(s) each, fastest shown):")
        print(f"  seconds           circuit-tracer {t_ct:8.1f}   Circuit Desk {t_cd:8.1f}   ratio CD/CT {t_cd / t_ct:.2f}")
        print(f"  peak RSS (GB)     circuit-tracer {m_ct / 1024:8.2f}   Circuit Desk {m_cd / 1024:8.2f}   "
              f"ratio CD/CT {m_cd / m_ct:.2f}   (whole child, loading included)")
        if p_ct and p_cd:
            print(f"  peak RSS (GB)     circuit-tracer {p_ct / 1024:8.2f}   Circuit Desk {p_cd / 1024:8.2f}   "
                  f"ratio CD/CT {p_cd / p_ct:.2f}   (during the attribution call, model resident)")
        print(f"  batch             circuit-tracer {c0['batch']:8d}   Circuit Desk {d0['batch']:8d}   "
              f"backward passes {c0['backward_passes']} / {d0['backward_passes']}; "
              f"load {c0['load_seconds']:.1f} s / {d0['load_seconds']:.1f} s")
        na_ct, na_cd, na_both = a["active"]
        print(f"  activations       active features CT {na_ct}, CD {na_cd}, both {na_both}; max |diff| on common "
              f"{a['act_max_diff']:.2e}; last-position logits max |diff| {a['logit_max_diff']:.2e}")
        f_ct, f_cd, f_both = a["features"]
        l_ct, l_cd, l_both = a["logits"]
        print(f"  nodes             feature nodes CT {f_ct}, CD {f_cd}, both {f_both} ({f_both / max(f_ct, 1):.1%}); "
              f"logit nodes {l_ct} / {l_cd}, both {l_both}")
        print(f"  edges (common)    {a['common_rows']} rows x {a['common_nodes']} columns; nonzero CT {a['nonzero'][0]}, "
              f"CD {a['nonzero'][1]}; max |diff| {a['max_abs_diff']:.2e} (relative to max |entry| "
              f"{a['max_rel_diff']:.2e}); relative Frobenius {a['fro_rel_diff']:.2e}")

    if args.profile:
        n = max(sizes)
        print(f"\nProfiles at {n} nodes (one extra run of each, under cProfile):")
        for tool, py, name in (("ct", str(ct_python), "circuit-tracer"), ("cd", sys.executable, "Circuit Desk")):
            path = work / f"profile_{tool}_{n}.pstats"
            run_child(py, tool, work, n, batch, args.threads, profile=path)
            profile_summary(path, name)
        print(f"\n  profiles kept in {work}" if args.workdir else "")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

"""Attribution graphs on the default model (neuron basis): what they show, what they cost.

Cases, each in its own process (so peak RSS is the case's own):

* ``france`` and ``ioi``: the demo prompts. Targets, the five most influential nodes, the
  replacement / completeness scores of the full and the pruned graph, and what the workbench
  draws by default (nodes and edges of the default view).
* ``chat``: a multi-turn conversation of about 200 tokens in the model's chat template (system
  prompt, two user turns, one assistant turn), traced at the assistant's next answer.
* ``16``, ``64``, ``256``: prompts of that many tokens (start token included). Wall time,
  backward passes, peak RSS, the candidates' share of the total effect and of the MLP output
  mass, and the overhead ratio = attribution time / the time of the same number of plain
  forward+backward passes of the model at the same batch size (8 of them timed in the same run,
  scaled to the number of passes).

Goals on 2 cores, max-nodes 1000: 5-token prompt <= 60 s, 64 tokens <= 2 GB peak RSS, ratio <= 1.5.
Prints figures; asserts nothing.
Run: .venv/bin/python benchmarks/attribution.py [--cases france,ioi,16,64,256 | --lengths] [--max-nodes N]
     [--batch-size B] [--max-candidates N] [--transcoders]
``--lengths``: the prompt-length curve 16/64/256/1024 tokens; ``--transcoders``: random JumpReLU
transcoders for the default model as the basis (the transcoder side of the curve). Each case also
prints the memory estimate the pre-flight made against what the run added to the loaded model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRANCE = "The capital of France is"
IOI = "When Mary and John went to the store, John gave a drink to"
STORY = (
    "Long ago, in the quiet little old town by the wide river, the old clockmaker opened his shop every morning at seven. "
    "Children stopped to watch the gears turn behind the glass, and their parents bought bread next door. "
    "One winter day a stranger from the north asked him to repair a golden watch that had stopped at midnight. "
    "The clockmaker turned it over in his hands and saw, engraved on the back, the name of his own grandfather. "
    "He said nothing, but that evening he closed the shop early and climbed the stairs to the attic, where an old "
    "wooden chest had waited for fifty years. Inside, wrapped in cloth, lay a second watch, identical to the first, "
    "and a letter in faded ink. The letter spoke of two brothers who had built the watches together, of a quarrel "
    "over a woman neither of them married, and of a promise that the watches would meet again when the family was "
    "whole. The next morning the stranger returned, and the clockmaker placed both watches on the counter between "
    "them. For a long moment neither man spoke; outside, the river ran high with melting snow, and the bells of the "
    "church rang the hour. The stranger told him that he had travelled for three weeks, by train and by cart and at "
    "last on foot, carrying nothing but the golden watch, a loaf of bread and a map his mother had drawn before she "
    "died. He had asked in every town along the river for a clockmaker with grey eyes and a crooked finger, and in "
    "every town they had sent him further south. Then the stranger smiled, took off his hat, and said that his name "
    "was also"
)
CHAT = [
    {"role": "system", "content": "You are a careful assistant for a city library. Answer briefly and truthfully."},
    {"role": "user", "content": "Hello! I am planning a trip to Europe next spring with my two children, and I would "
                                "like them to learn a little about each country before we go. We will visit Spain, "
                                "Italy and France, in that order, and we will spend about a week in each."},
    {"role": "assistant", "content": "What a lovely plan. Spain's capital is Madrid, famous for the Prado museum. "
                                     "Italy's capital is Rome, where children enjoy the Colosseum and the fountains. "
                                     "I can suggest books about each country from our collection if you like, "
                                     "with pictures for younger readers."},
    {"role": "user", "content": "Yes please, books would be wonderful. One more question before that: my daughter "
                                "asked me this morning at breakfast and I was not sure, so I promised her that I would "
                                "ask you. What is the capital of France?"},
]
CASES = ("france", "ioi", "chat", "16", "64", "256")
LENGTHS = ("16", "64", "256", "1024")


def prompt_of(model, case: str) -> str:
    if case == "france":
        return FRANCE
    if case == "ioi":
        return IOI
    if case == "chat":
        from core.chat import parse_messages

        return parse_messages(CHAT, "the benchmark's conversation")
    n = int(case) - 1  # the start token makes it n + 1
    ids = model.tokenizer(STORY, add_special_tokens=False).input_ids
    ids = (ids * (n // len(ids) + 1))[:n]  # the story told again for the longest prompts
    text = model.tokenizer.decode(ids)
    while len(model.tokenizer(text, add_special_tokens=False).input_ids) > n:  # re-tokenizing may merge
        ids = ids[:-1]
        text = model.tokenizer.decode(ids)
    return text


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def random_transcoders(model, folder: Path, width: int = 4096, active: int = 32, seed: int = 0) -> Path:
    """Random per-layer JumpReLU transcoders for ``model`` (MLP input → MLP output), thresholds set
    so that about ``active`` features fire per token and layer on the story; saved in
    circuit-tracer's per-layer layout. Built once per folder."""
    import torch
    from safetensors.torch import save_file

    if (folder / "config.yaml").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    L, d = model.facts.n_layers, model.facts.d_model
    ids = model.tokenizer(STORY, return_tensors="pt").input_ids
    with torch.no_grad():
        _, clean = model.instrument.forward(ids, cache=[f"blocks.{l}.mlp_in" for l in range(L)])
    for l in range(L):
        x = clean[f"blocks.{l}.mlp_in"][0].float()
        W_enc = torch.randn(width, d, generator=g) / d ** 0.5
        pre = x @ W_enc.T
        threshold = torch.quantile(pre.flatten()[::7], 1 - active / width).expand(width).clone()
        save_file({"W_enc": W_enc, "W_dec": torch.randn(width, d, generator=g) * 0.02, "b_enc": torch.zeros(width),
                   "b_dec": torch.zeros(d), "activation_function.threshold": threshold},
                  str(folder / f"layer_{l}.safetensors"))
    (folder / "config.yaml").write_text("feature_input_hook: mlp_in\nfeature_output_hook: mlp.out\n"
                                        "activation: jump_relu\n")
    return folder


def one(case: str, max_nodes: int, batch_size: int, max_candidates: int, transcoders: bool = False) -> dict:
    import numpy as np
    import torch

    from core.attribution import AttributionSettings, attribute
    from core.graph import EMBEDDING, ERROR, LOGIT
    from core.models import load_model
    from core.view import from_attribution

    model = load_model("default", device="cpu")
    prompt = prompt_of(model, case)
    folder = str(random_transcoders(model, Path("/tmp/circuitdesk-bench-transcoders"))) if transcoders else None
    loaded = rss_bytes()
    t0 = time.perf_counter()
    res = attribute(model, prompt, AttributionSettings(max_nodes=max_nodes, batch_size=batch_size,
                                                       max_candidates=max_candidates, transcoders=folder))
    seconds = time.perf_counter() - t0
    st, g = res.stats, res.graph
    out = {
        "case": case,
        "prompt_tokens": int(res.ids.shape[1]),
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "loaded_rss_gb": round(loaded / 1e9, 2),
        "estimated_gb": round(st["estimated_peak_bytes"] / 1e9, 2),
        "backward_passes": st["backward_passes"],
        "batch_size": st["batch_size"],
        **{k: st[k] for k in ("candidates", "candidate_pool") if k in st},
        **{k: round(st[k], 3) for k in ("candidate_effect_share", "candidate_mass_share", "replacement_score",
                                        "completeness_score", "pruned_replacement_score",
                                        "pruned_completeness_score") if k in st},
        "max_completeness_error": st["max_completeness_error"],
        "nodes": st["nodes"], "edges": st["edges"], "pruned_nodes": st["pruned_nodes"],
        "pruned_edges": st["pruned_edges"],
        "targets": [f"{t.token!r} {t.probability:.2f}" for t in res.targets[:3]],
        "threads": torch.get_num_threads(),
    }
    inner = (g.kind != EMBEDDING) & (g.kind != LOGIT)
    top = np.argsort(-np.where(inner | (g.kind == EMBEDDING), g.influence, -1))[:5]
    out["top5"] = [f"{g.label(int(i))} ({g.influence[i]:.3f})" for i in top]
    out["top5_at_start"] = int(((g.pos[top] == 0) & (g.kind[top] == ERROR)).sum())
    view = from_attribution(g)
    d = view.drawing()
    out["drawn_nodes"], out["drawn_edges"] = int(len(d.nodes)), int(len(d.src))
    if case.isdigit() and not transcoders:
        B, passes = st["batch_size"], st["backward_passes"]
        ids = res.ids.expand(B, -1)
        embed = model.hf.get_input_embeddings()

        def plain():  # one ordinary forward + backward pass at the same batch size
            x = embed(ids).detach().requires_grad_(True)
            logits = model.hf(inputs_embeds=x, use_cache=False).logits
            logits[:, -1].sum().backward()

        plain()  # warm-up
        sample = min(passes, 8)  # timed on a sample of passes, scaled to all of them
        t1 = time.perf_counter()
        for _ in range(sample):
            plain()
        plain_seconds = (time.perf_counter() - t1) * passes / sample
        out["plain_fwd_bwd_seconds"] = round(plain_seconds, 1)
        out["overhead_ratio"] = round(seconds / plain_seconds, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--max-nodes", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-candidates", type=int, default=65536)
    ap.add_argument("--transcoders", action="store_true",
                    help="random JumpReLU transcoders (4096 features, ~32 active per token and layer) as the basis")
    ap.add_argument("--lengths", action="store_true", help="the prompt-length curve: " + ",".join(LENGTHS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.max_nodes, args.batch_size, args.max_candidates, args.transcoders)))
        return
    for case in (LENGTHS if args.lengths else args.cases.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", case, "--max-nodes", str(args.max_nodes),
                              "--batch-size", str(args.batch_size), "--max-candidates", str(args.max_candidates),
                              *(["--transcoders"] if args.transcoders else [])],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{case}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:>7}: {r['prompt_tokens']} tokens, {r['seconds']} s, peak RSS {r['peak_rss_gb']} GB, "
              f"{r['backward_passes']} backward passes (batch {r['batch_size']}), {r['threads']} threads")
        print(f"         memory: {r['loaded_rss_gb']} GB with the model loaded; the run added "
              f"{r['peak_rss_gb'] - r['loaded_rss_gb']:.2f} GB, estimated before it started {r['estimated_gb']} GB")
        if "candidate_effect_share" in r:
            print(f"         candidates {r['candidates']} of {r['candidate_pool']} neurons: "
                  f"{r['candidate_effect_share']:.1%} of the total effect, {r['candidate_mass_share']:.1%} of the "
                  f"MLP output mass")
        print(f"         graph {r['nodes']} nodes / {r['edges']} edges, pruned {r['pruned_nodes']} / "
              f"{r['pruned_edges']}, drawn by default {r['drawn_nodes']} / {r['drawn_edges']}")
        print(f"         scores: replacement {r['replacement_score']} (pruned {r['pruned_replacement_score']}), "
              f"completeness {r['completeness_score']} (pruned {r['pruned_completeness_score']}), "
              f"max completeness error {r['max_completeness_error']:.1e}")
        print(f"         targets {', '.join(r['targets'])}; top 5: {'; '.join(r['top5'])} "
              f"(start-token errors among them: {r['top5_at_start']})")
        if "overhead_ratio" in r:
            print(f"         plain fwd+bwd {r['plain_fwd_bwd_seconds']} s, overhead ratio {r['overhead_ratio']}")


if __name__ == "__main__":
    main()

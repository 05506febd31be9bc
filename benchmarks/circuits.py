"""Component-circuit cost on the default model, IOI task (prints figures; asserts nothing).

Figures: seconds for EAP scores, EAP-IG scores (5 steps) and the faithfulness curve; exact
patching timed on a sample of edges and extrapolated to all (the EAP-IG vs exact speed-up);
the overhead ratio of EAP-IG = its time / the time of the same number of plain passes of the model
on the same batches (2 forward + `steps` forward+backward per batch; best of two alternating runs
each); CPR/CMD of each method.
Targets on 2 cores, 32 pairs: EAP-IG scores + curve <= 90 s, overhead ratio <= 1.5.
Run: .venv/bin/python benchmarks/circuits.py [--n-pairs N] [--exact-edges K]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--exact-edges", type=int, default=24, help="edges to time exact patching on")
    args = ap.parse_args()

    import numpy as np
    import torch

    from core.circuits import CircuitSettings, ComponentRunner, find_circuit, make_task
    from core.circuits.discover import score_edges
    from core.circuits.engine import logit_difference
    from core.models import load_model

    model = load_model("default", device="cpu")
    pairs = make_task(model, "ioi", n_pairs=args.n_pairs)
    out: dict = {"model": model.name, "task": "ioi", "n_pairs": len(pairs), "batch_size": args.batch_size,
                 "threads": torch.get_num_threads()}
    results = {}
    for method in ("eap", "eap-ig", "random"):
        r = find_circuit(model, pairs, CircuitSettings(method=method, steps=args.steps, batch_size=args.batch_size))
        results[method] = r
        out[method] = {"scoring_seconds": round(r.stats["scoring_seconds"], 2),
                       "curve_seconds": round(r.stats["curve_seconds"], 2),
                       "cpr": round(r.curve.cpr, 4), "cmd": round(r.curve.cmd, 4),
                       "faithfulness": [round(f, 3) for f in r.curve.faithfulness]}
    out["edges_total"] = results["eap"].graph.n_edges
    out["baseline_metric"] = round(results["eap"].metric_clean, 4)
    ig = out["eap-ig"]
    out["eap_ig_scores_plus_curve_seconds"] = round(ig["scoring_seconds"] + ig["curve_seconds"], 2)

    # overhead: EAP-IG scoring vs the same number of plain passes on the same batches
    # (2 forward + `steps` forward+backward per batch), each timed twice, alternating; best of two
    from core.circuits.discover import score_edges

    runner = ComponentRunner(model)
    batches = pairs.batches(args.batch_size)
    embed = model.hf.get_input_embeddings()
    ig_settings = CircuitSettings(method="eap-ig", steps=args.steps, batch_size=args.batch_size)

    def plain_passes() -> float:
        t0 = time.perf_counter()
        for b in batches:
            with torch.no_grad():
                runner.last_logits(b.clean)
                runner.last_logits(b.corrupted)
            for _ in range(args.steps):
                with torch.enable_grad():
                    x = embed(b.clean).detach().requires_grad_(True)
                    h = runner.base(inputs_embeds=x, use_cache=False).last_hidden_state
                    logit_difference(runner.logits(h[:, -1]), b).sum().backward()
        return time.perf_counter() - t0

    def ig_scoring() -> float:
        t0 = time.perf_counter()
        score_edges(runner, pairs, ig_settings)
        return time.perf_counter() - t0

    plain_times, ig_times = [], []
    for _ in range(2):
        plain_times.append(plain_passes())
        ig_times.append(ig_scoring())
    out["plain_passes_seconds"] = [round(t, 2) for t in plain_times]
    out["eap_ig_scoring_seconds"] = [round(t, 2) for t in ig_times]
    out["eap_ig_overhead_ratio"] = round(min(ig_times) / min(plain_times), 2)

    # exact patching on a sample of edges, extrapolated
    g = runner.graph
    rng = np.random.default_rng(0)
    all_edges = np.argwhere(g.edge_mask)
    sample = [tuple(e) for e in all_edges[rng.choice(len(all_edges), args.exact_edges, replace=False)]]
    t0 = time.perf_counter()
    for b in batches:
        clean = runner.sources(b.clean)
        diff = runner.sources(b.corrupted).outputs - clean.outputs
        for k in range(0, len(sample), 2):
            runner.single_edge_metrics(b, diff, sample[k:k + 2], logit_difference)
    exact_sample = time.perf_counter() - t0
    exact_all = exact_sample / len(sample) * g.n_edges
    out["exact_sample_edges"] = len(sample)
    out["exact_sample_seconds"] = round(exact_sample, 2)
    out["exact_all_edges_seconds_extrapolated"] = round(exact_all, 0)
    out["speedup_eap_ig_vs_exact"] = round(exact_all / min(ig_times), 0)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Attribution-graph cost on the default model (neuron basis).

For each prompt: wall time, backward passes, peak RSS (each case in its own process) and the
overhead ratio = attribution time / time of the same number of plain forward+backward passes of
the model at the same batch size, measured in the same run. Prints figures; asserts nothing.
Targets on 2 cores, 5-token prompt, max-nodes 1000: <= 60 s, peak RSS <= 4 GB, ratio <= 1.5.
Run: .venv/bin/python benchmarks/attribution.py [--max-nodes N] [--batch-size B]
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

SHORT = "The capital of France is"
LONG = (
    "Long ago, in the quiet little old town by the wide river, the old clockmaker opened his shop every morning at seven. "
    "Children stopped to watch the gears turn behind the glass, and their parents bought bread next door. "
    "One winter day a stranger from the north asked him to repair a golden watch that had stopped at"
)


def one(prompt: str, max_nodes: int, batch_size: int) -> dict:
    import torch

    from core.attribution import AttributionSettings, attribute
    from core.models import load_model

    model = load_model("default", device="cpu")
    t0 = time.perf_counter()
    res = attribute(model, prompt, AttributionSettings(max_nodes=max_nodes, batch_size=batch_size))
    seconds = time.perf_counter() - t0
    passes, B = res.stats["backward_passes"], res.stats["batch_size"]
    ids = res.ids.expand(B, -1)
    embed = model.hf.get_input_embeddings()

    def plain():  # one ordinary forward + backward pass at the same batch size
        x = embed(ids).detach().requires_grad_(True)
        logits = model.hf(inputs_embeds=x, use_cache=False).logits
        logits[:, -1].sum().backward()

    plain()  # warm-up
    t1 = time.perf_counter()
    for _ in range(passes):
        plain()
    plain_seconds = time.perf_counter() - t1
    return {
        "prompt_tokens": int(res.ids.shape[1]),
        "max_nodes": max_nodes,
        "batch_size": B,
        "seconds": round(seconds, 2),
        "backward_passes": passes,
        "plain_fwd_bwd_seconds": round(plain_seconds, 2),
        "overhead_ratio": round(seconds / plain_seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "active_features": res.stats["active_features"],
        "max_completeness_error": res.stats["max_completeness_error"],
        "row_mass_kept": round(res.stats["row_mass_kept"], 3),
        "replacement_score": round(res.stats["replacement_score"], 3),
        "completeness_score": round(res.stats["completeness_score"], 3),
        "top_target": res.targets[0].token,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-nodes", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.max_nodes, args.batch_size)))
        return
    for label, prompt in (("short", SHORT), ("64-token", LONG)):
        out = subprocess.run([sys.executable, __file__, "--one", prompt, "--max-nodes", str(args.max_nodes),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{label}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{label:>9}: {r['prompt_tokens']} tokens, {r['seconds']} s, {r['backward_passes']} backward passes "
              f"(batch {r['batch_size']}), plain fwd+bwd {r['plain_fwd_bwd_seconds']} s, overhead ratio "
              f"{r['overhead_ratio']}, peak RSS {r['peak_rss_gb']} GB")
        print(f"           {r['active_features']} candidate neurons, row mass kept >= {r['row_mass_kept']}, "
              f"completeness error {r['max_completeness_error']:.1e}, scores {r['replacement_score']} / "
              f"{r['completeness_score']}, top target {r['top_target']!r}, {r['threads']} threads")


if __name__ == "__main__":
    main()

"""Behaviour studies on the default model: what a suite costs, and whether a planted change is found.

* ``suite``: ``circuitdesk compare resources/suites/capitals_right_wrong.toml`` (32 prompts, the model's
  wrong answers against its right ones) in its own process: time per prompt, total time, peak RSS, and
  the top findings with their checks.
* ``head``: a copy of the default model with one attention head's output weights scaled (the head
  that matters most to the IOI circuit of the unmodified model), then ``compare`` of 8 IOI circuit
  cases on the model and on its copy: does the version comparison rank that head first?

Prints figures; asserts nothing.
Run: .venv/bin/python benchmarks/behaviour.py [--cases suite,head] [--scale 3.0] [--scoring eap|eap-ig] [--no-pdf]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = [sys.executable, "-m", "desktop.cli"] if not (ROOT / ".venv/bin/circuitdesk").exists() else \
    [str(ROOT / ".venv/bin/circuitdesk")]


def compare(args: list[str]) -> tuple[dict, float, float]:
    """Run ``circuitdesk compare … --json``; (summary, seconds, peak RSS GB of the child)."""
    t0 = time.perf_counter()
    out = subprocess.run(CLI + ["compare", *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise SystemExit(f"compare failed:\n{out.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    return json.loads(out.stdout), seconds, rss


def case_seconds(folder: Path, version: str = "a") -> list[float]:
    doc = json.loads((folder / "comparison.json").read_text())
    return [c["runs"][version]["seconds"] for c in doc["cases"] if version in c["runs"]]


def suite_case(work: Path, pdf: bool) -> None:
    out = work / "capitals"
    summary, seconds, rss = compare(["resources/suites/capitals_right_wrong.toml", "--out", str(out)]
                                    + ([] if pdf else ["--no-pdf"]))
    per = case_seconds(out)
    print(f"suite: {len(per)} prompts, {summary['cases_ok']} ok; {sum(per) / len(per):.1f} s per prompt "
          f"(min {min(per):.1f}, max {max(per):.1f}), total {seconds:.0f} s (study {summary['seconds']:.0f} s), "
          f"peak RSS {rss:.2f} GB")
    g = summary["groups"]
    print(f"       groups by {g['key']!r}: A = {g['a']}, B = {g['b']}")
    for line in summary["findings"]:
        print("       " + line)


def perturbed_copy(folder: Path, layer: int, head: int, scale: float) -> Path:
    import torch

    from core.models import load_model

    model = load_model("default", device="cpu")
    attn = model.hf.model.layers[layer].self_attn
    d = model.hf.config.hidden_size // model.hf.config.num_attention_heads
    with torch.no_grad():
        attn.o_proj.weight[:, head * d:(head + 1) * d] *= scale
    model.hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def head_case(work: Path, scale: float, scoring: str) -> None:
    suite = work / "ioi.toml"
    lines = ['name = "IOI, 8 cases"', 'model = "default"']
    for i in range(8):
        lines += ["[[cases]]", f'name = "ioi{i}"', 'method = "circuit"', 'task = "ioi"', "n_pairs = 8", f"seed = {i}",
                  f'scoring = "{scoring}"']
    suite.write_text("\n".join(lines) + "\n")
    # which head to perturb: the one that matters most to the unmodified model's IOI circuits
    base, seconds, _ = compare([str(suite), "--out", str(work / "base"), "--no-pdf", "--checks", "0"])
    doc = json.loads((work / "base" / "comparison.json").read_text())
    nodes = doc["sections"][0]["behaviour"]["a"]["nodes"]
    heads = sorted((n for n in nodes if n["key"].startswith("a")), key=lambda n: -n["mean"])
    key = heads[0]["key"]
    layer, head = (int(x) for x in key[1:].split(".h"))
    print(f"head:  the head that matters most to IOI on the default model: {key} (mean |score| "
          f"{heads[0]['mean']:.3f}); 8 cases took {seconds:.0f} s")
    copy = perturbed_copy(work / "perturbed", layer, head, scale)
    summary, seconds, rss = compare([str(suite), "--out", str(work / "versions"), "--model-b", str(copy), "--no-pdf",
                                     "--checks", "1"])
    (section,) = summary["sections"]
    (contrast,) = section["contrasts"]
    top = contrast["top"]
    rank = next((i + 1 for i, r in enumerate(top) if r["key"] == key), None)
    print(f"       model B = {key} output weights ×{scale:g}: {seconds:.0f} s, peak RSS {rss:.2f} GB; "
          f"{contrast['significant']} of {contrast['keys_compared']} nodes differ; {key} ranks "
          f"{rank if rank else '>10'}")
    for r in top[:5]:
        print(f"         {r['key']:>8}: mean A {r['mean_a']:.3f}, B {r['mean_b']:.3f}, corrected p "
              f"{r['p_adjusted']:.3g}{' *' if r['significant'] else ''}")
    for line in summary["findings"][1:]:
        print("       " + line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="suite,head")
    ap.add_argument("--scale", type=float, default=3.0, help="factor on the perturbed head's output weights")
    ap.add_argument("--scoring", default="eap", help="edge scores of the head case's circuits (eap, eap-ig)")
    ap.add_argument("--no-pdf", action="store_true", help="the suite case without its PDF report")
    ap.add_argument("--work", help="keep the outputs in this folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="circuitdesk-behaviour-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cases = args.cases.split(",")
        if "suite" in cases:
            suite_case(work, not args.no_pdf)
        if "head" in cases:
            head_case(work, args.scale, args.scoring)


if __name__ == "__main__":
    main()

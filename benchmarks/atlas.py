"""Feature atlas builds: tokens per second against plain forward passes, peak memory, size on disk.

Cases, each in its own process (so peak RSS is the case's own):

* ``neurons``: the default model (SmolLM2-135M, 30 layers × 1,536 neurons, signed: top and
  bottom windows), corpus = Python's own help topics (``pydoc_data.topics``, English prose that
  ships with every Python), ``--tokens`` tokens, windows of 64, top-k 20, batch 16.
* ``transcoders``: a small random Llama-shaped model (4 layers, d_model 256, d_mlp 1024) with
  random JumpReLU transcoders of 4,096 features per layer, the same corpus.

For each: the build's scan rate (tokens/s, from the atlas record), the whole build's time, the
time of plain forward passes over the very same windows and batches (the full model with its
LM head, and the body alone without it; timed in the same process after the build), the ratios
scan / plain, peak RSS, and the atlas size on disk (total and per million corpus tokens; most of
it is the fixed top-k part, features × k × window × 2 bytes per sign).

Goal on 2 cores (issue 18): scan time <= 1.3 × plain forward time on the default model.
Prints figures; asserts nothing.
Run: .venv/bin/python benchmarks/atlas.py [--cases neurons,transcoders] [--tokens 32768]
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

CASES = ("neurons", "transcoders")


def write_corpus(path: Path) -> Path:
    """Python's help topics as a .jsonl corpus, one topic per document, in name order."""
    from pydoc_data.topics import topics

    path.write_text("".join(json.dumps({"text": topics[k]}) + "\n" for k in sorted(topics)), encoding="utf-8")
    return path


def small_model_with_transcoders(folder: Path):
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_tokenizer

    gen = torch.Generator().manual_seed(0)
    tok = tiny_tokenizer()
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    tc = folder / "transcoders"
    tc.mkdir()
    d, n = 256, 4096
    for i in range(4):
        save_file({"W_enc": torch.randn(n, d, generator=gen) * 0.06, "W_dec": torch.randn(n, d, generator=gen) * 0.02,
                   "b_enc": torch.randn(n, generator=gen) * 0.1 - 0.4, "b_dec": torch.zeros(d),
                   "activation_function.threshold": torch.rand(n, generator=gen) * 0.3},
                  str(tc / f"layer_{i}.safetensors"))
    return folder / "model", tc


def run_case(case: str, tokens: int) -> dict:
    import numpy as np
    import torch

    from core.atlas.build import build_atlas, window_batch
    from core.atlas.corpus import corpus_files, source_record, tokenize_corpus
    from core.attribution.attribute import start_token
    from core.attribution.bases import body
    from core.models import load_model
    from core.settings import AtlasSettings

    work = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    corpus = write_corpus(work / "topics.jsonl")
    if case == "neurons":
        model = load_model("default", device="cpu")
        settings = AtlasSettings(tokens=tokens)
        if model.tokenizer("word", add_special_tokens=False).input_ids == [model.tokenizer.unk_token_id]:
            raise SystemExit("the default model's tokenizer is not what this benchmark expects")
    else:
        folder, tc = small_model_with_transcoders(work)
        model = load_model(str(folder), device="cpu")
        settings = AtlasSettings(tokens=tokens, transcoders=str(tc))
    start = time.perf_counter()
    result = build_atlas(model, work / "atlas", settings, corpus=[str(corpus)])
    build_seconds = time.perf_counter() - start
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    # plain forward passes over the same windows, in the same batches
    files = corpus_files([str(corpus)])
    records = [source_record(f) for f in files]
    (work / "plain").mkdir()
    first = start_token(model)
    windows, _ = tokenize_corpus(model, files, records, settings.context - (first is not None), settings.tokens,
                                 work / "plain")
    ids_all = np.fromfile(work / "plain" / "tokens.bin", dtype=np.int32)
    B = settings.batch_size
    batches = [window_batch(windows, ids_all, range(s, min(s + B, len(windows))), settings.context, first)[0]
               for s in range(0, len(windows), B)]
    timings = {}
    with torch.no_grad():
        for name, net in (("full", model.hf), ("body", body(model))):
            t = time.perf_counter()
            for ids in batches:
                net(input_ids=ids, use_cache=False)
            timings[name] = time.perf_counter() - t
    m = result.meta
    scan = m["scan_seconds"]
    return {
        "case": case, "model": m["model"]["name"], "basis": m["basis"]["key"][:24],
        "features": sum(m["features_per_layer"]), "tokens": m["tokens_seen"], "windows": m["corpus"]["windows"],
        "scan_seconds": round(scan, 1), "build_seconds": round(build_seconds, 1),
        "scan_tokens_per_second": round(m["tokens_seen"] / scan, 1),
        "plain_full_seconds": round(timings["full"], 1), "plain_body_seconds": round(timings["body"], 1),
        "ratio_vs_full_forward": round(scan / timings["full"], 3), "ratio_vs_body_forward": round(scan / timings["body"], 3),
        "peak_rss_gb": round(peak_build, 2), "size_mb": round(m["size_bytes"] / 1e6, 1),
        "size_mb_per_million_tokens": round(m["size_bytes"] / 1e6 / (m["tokens_seen"] / 1e6), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.tokens)))
        return
    for case in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--tokens", str(args.tokens)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{case}: FAILED\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n== {case}: {r['model']}, {r['basis']}, {r['features']:,} features")
        print(f"  corpus: {r['tokens']:,} tokens in {r['windows']:,} windows of 64")
        print(f"  scan {r['scan_seconds']} s = {r['scan_tokens_per_second']:,} tokens/s (whole build {r['build_seconds']} s)")
        print(f"  plain forward on the same batches: full model {r['plain_full_seconds']} s, body {r['plain_body_seconds']} s")
        print(f"  ratio scan / plain: {r['ratio_vs_full_forward']} (full), {r['ratio_vs_body_forward']} (body)   goal <= 1.3")
        print(f"  peak RSS {r['peak_rss_gb']} GB; atlas {r['size_mb']} MB on disk = {r['size_mb_per_million_tokens']} MB per "
              f"million tokens at this corpus size")


if __name__ == "__main__":
    main()

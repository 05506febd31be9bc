"""GPU figures at real model shapes: random weights from the real configs, bf16, on an NVIDIA GPU.

Prints figures; asserts nothing. No model hub: the configs' shape values are written below
(``SHAPES``) and the weights are random, built directly in bf16 on the device (no float32 copy,
no file). The tokenizer is an offline word-level one sized to the config's vocabulary.

Cases (each in its own subprocess: a crash or an out-of-memory in one does not lose the others):

  llama-64        Llama-3-8B shape, attribution graph, neuron basis, 64-token prompt, max_nodes 5000
  llama-1024      the same at 1,024 tokens
  gemma-longest   Gemma-2-2B shape, max_nodes 1000: prompts of 256, 512, ... tokens (one subprocess
                  each), doubled until the pre-flight refuses, memory runs out or the context (8,192)
                  ends; reports the longest that traced and the sentence that stopped it
  eap-ig-ioi      EAP-IG (5 steps) on the built-in IOI task (32 pairs, batch 16) at Llama-3-8B shape,
                  with its faithfulness curve
  device-tests    ``pytest -m device``, if pyproject.toml declares a ``device`` marker

Each case prints: wall time, torch.cuda.max_memory_allocated (and what the weights alone take),
peak RSS, backward passes, the completeness error against the identity's tolerance, nodes/edges.

Expected durations on one H200 (estimates, not yet measured; each includes ~20 s of start-up and
model building): llama-64 1-3 min; llama-1024 4-10 min (one row per backward pass at 1,024 tokens:
~5,000 passes); gemma-longest 5-15 min in all (the longest lengths take the longest); eap-ig-ioi
1-3 min. The device tool allows 10 minutes per call, so run one case per call:

    .venv/bin/python benchmarks/gpu.py --cases llama-64
    .venv/bin/python benchmarks/gpu.py --cases gemma-longest --gemma-from 2048   # resume a sweep

``--budget-s`` (default 570) stops a call before the tool's limit: a case still running then is
killed, its progress lines (with elapsed time) stay printed, and the figures gathered so far are
reported. ``--max-nodes`` lowers the node budget of the attribution cases when time is short.

Smoke test (CPU, seconds; a miniature of each shape): ``benchmarks/gpu.py --scale tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GB = 1024 ** 3

# The real configs' shape values (meta-llama/Meta-Llama-3-8B, google/gemma-2-2b config.json; the
# Gemma-2 values are also transformers' Gemma2Config defaults).
SHAPES = {
    "llama-3-8b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192, hidden_act="silu", tie_word_embeddings=False)),
    "gemma-2-2b": ("Gemma2Config", dict(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096,
        query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)),
}
# --scale tiny: the same families and structure (GQA, Gemma's sliding window, soft-capping,
# tied embeddings) at a size the CPU runs in seconds; the vocabulary is the words alone.
TINY = {
    "llama-3-8b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=0, max_position_embeddings=256),
    "gemma-2-2b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=0, sliding_window=24,
                       query_pre_attn_scalar=16, max_position_embeddings=128),
}


@dataclass(frozen=True)
class Case:
    kind: str  # "attribution" | "longest" | "circuit" | "pytest"
    shape: str = ""
    full: dict | None = None  # parameters at the real scale
    tiny: dict | None = None  # ... and at --scale tiny


CASES = {
    "llama-64": Case("attribution", "llama-3-8b", dict(tokens=64, max_nodes=5000), dict(tokens=16, max_nodes=40)),
    "llama-1024": Case("attribution", "llama-3-8b", dict(tokens=1024, max_nodes=5000), dict(tokens=48, max_nodes=40)),
    # tiny: a 7 MB budget, so the smoke run also meets the pre-flight's refusal (at 64 tokens)
    "gemma-longest": Case("longest", "gemma-2-2b", dict(start=256, max_nodes=1000, memory_gb=None),
                          dict(start=16, max_nodes=20, memory_gb=0.0068)),
    "eap-ig-ioi": Case("circuit", "llama-3-8b", dict(n_pairs=32, steps=5, batch_size=16),
                       dict(n_pairs=4, steps=2, batch_size=2)),
    "device-tests": Case("pytest"),
}


# -- the model -------------------------------------------------------------------------------------
def _words() -> list[str]:
    """Every word the built-in IOI task needs (templates, names, places, objects), then filler."""
    from core.paths import resources_dir

    d = json.loads((resources_dir() / "tasks" / "ioi.json").read_text(encoding="utf-8"))
    text = " ".join(d["templates"] + d["names"] + d["places"] + d["objects"])
    return list(dict.fromkeys(re.findall(r"\w+|[^\w\s]+", text.replace("{", " ").replace("}", " "))))


def word_tokenizer(vocab_size: int):
    """An offline word-level tokenizer with exactly ``vocab_size`` entries (0: only what is needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3}
    for w in _words():
        vocab.setdefault(w, len(vocab))
    for i in range(max(0, vocab_size - len(vocab))):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def build_model(shape: str, scale: str, device: str):
    """A ``LoadedModel`` of ``shape`` with random weights, built in bf16 directly on ``device``."""
    import torch
    import transformers

    from core.models import model_in_memory, resolve_device

    dev = resolve_device(device)
    config_class, values = SHAPES[shape]
    values = dict(values, **(TINY[shape] if scale == "tiny" else {}))
    tokenizer = word_tokenizer(values["vocab_size"])
    values["vocab_size"] = len(tokenizer)
    config = getattr(transformers, config_class)(**values, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    # parameters are created on the device in bf16 and initialized there: 16 GB for the 8B shape,
    # never a float32 copy in host memory
    with torch.device(dev):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model_in_memory(hf, tokenizer, name=f"random {shape}" + (" (tiny)" if scale == "tiny" else ""))


def prompt_of(model, tokens: int, seed: int = 0) -> str:
    """A prompt of words that traces as exactly ``tokens`` tokens (the start token included)."""
    words = [w for w in _words() if w.isalpha()]
    text = " ".join(random.Random(seed).choice(words) for _ in range(tokens - 1))
    assert len(model.tokenizer(text, add_special_tokens=False).input_ids) == tokens - 1
    return text


# -- measuring -------------------------------------------------------------------------------------
def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: kilobytes


class Meter:
    """Wall time, the device's peak allocation and peak RSS around one measured computation."""

    def __init__(self, model) -> None:
        import torch

        self.cuda = model.device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(model.device)
            self.weights = torch.cuda.memory_allocated(model.device)
            torch.cuda.reset_peak_memory_stats(model.device)
        self.device = model.device
        self.t0 = time.perf_counter()

    def figures(self) -> dict:
        import torch

        out = {"seconds": round(time.perf_counter() - self.t0, 2), "peak_rss_gb": round(_peak_rss_gb(), 2)}
        if self.cuda:
            torch.cuda.synchronize(self.device)
            out["weights_gb"] = round(self.weights / GB, 2)
            out["cuda_max_allocated_gb"] = round(torch.cuda.max_memory_allocated(self.device) / GB, 2)
            out["cuda_total_gb"] = round(torch.cuda.get_device_properties(self.device).total_memory / GB, 1)
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out


def _progress(name: str, say):
    """A JobContext printing progress with the elapsed time: every new phase, else every 15 s
    (thousands of row batches would flood the output)."""
    from core.jobs import JobContext

    t0 = time.perf_counter()
    last = {"phase": None, "at": -1e9}

    def show(p) -> None:
        now, phase = time.perf_counter(), re.sub(r"\d+", "#", p.message)
        if phase != last["phase"] or now - last["at"] >= 15.0 or p.fraction >= 1.0:
            last.update(phase=phase, at=now)
            say(f"[{name} +{now - t0:6.1f} s] {p.fraction:4.0%} {p.message}")

    return JobContext(show, min_step=0.0, min_interval=0.0)


def run_case(name: str, scale: str = "full", device: str = "auto", *, length: int | None = None,
             max_nodes: int | None = None, say=print) -> dict:
    """Run one case in this process and return its figures (``gemma-longest``: one ``length``)."""
    case = CASES[name]
    if case.kind == "pytest":
        return _device_tests(say)
    p = dict(case.tiny if scale == "tiny" else case.full)
    if max_nodes:
        p["max_nodes"] = max_nodes
    t0 = time.perf_counter()
    model = build_model(case.shape, scale, device)
    out = {"case": name, "shape": case.shape, "scale": scale, "device": str(model.device),
           "dtype": str(model.dtype).removeprefix("torch."), "n_params": model.facts.n_params,
           "build_seconds": round(time.perf_counter() - t0, 1)}
    say(f"[{name}] {model.name}: {model.facts.n_params / 1e9:.2f} B parameters on {model.device}, "
        f"built in {out['build_seconds']} s")
    if case.kind == "circuit":
        return {**out, **_circuit(model, p, _progress(name, say))}
    tokens = p["tokens"] if case.kind == "attribution" else (length or p["start"])
    return {**out, **_attribution(model, tokens, p, _progress(name, say))}


def _attribution(model, tokens: int, p: dict, ctx) -> dict:
    from core.attribution import AttributionSettings, attribute
    from core.errors import CircuitDeskError

    settings = AttributionSettings(max_nodes=p["max_nodes"], memory_gb=p.get("memory_gb"))
    out = {"tokens": tokens, "max_nodes": settings.max_nodes, "context": model.facts.context_length}
    if tokens > model.facts.context_length:  # as with_bos would refuse it
        return {**out, "ok": False, "stopped_by": "context",
                "error": f"{tokens} tokens exceed the {model.facts.context_length}-token context."}
    prompt = prompt_of(model, tokens)
    meter = Meter(model)
    try:
        res = attribute(model, prompt, settings, ctx)
    except CircuitDeskError as e:
        text = str(e)
        kind = ("pre-flight" if text.startswith("This run needs") else
                "out of memory" if text.startswith("Ran out of memory") else "error")
        return {**out, **meter.figures(), "ok": False, "stopped_by": kind, "error": text}
    st = res.stats
    return {**out, **meter.figures(), "ok": True, "traced_tokens": int(res.ids.shape[1]),
            "backward_passes": st["backward_passes"], "batch_size": st["batch_size"],
            "estimated_gb": round(st["estimated_peak_bytes"] / GB, 2),
            "max_completeness_error": st["max_completeness_error"], "identity_tolerance": st["identity_tolerance"],
            "nodes": st["nodes"], "edges": st["edges"], "pruned_nodes": st["pruned_nodes"],
            "pruned_edges": st["pruned_edges"], "feature_rows": st["feature_rows"],
            "replacement_score": round(st["replacement_score"], 4),
            "completeness_score": round(st["completeness_score"], 4)}


def _circuit(model, p: dict, ctx) -> dict:
    from core.circuits import CircuitSettings, find_circuit, make_task

    pairs = make_task(model, "ioi", n_pairs=p["n_pairs"])  # as `circuitdesk circuit --task ioi`
    meter = Meter(model)
    r = find_circuit(model, pairs, CircuitSettings(method="eap-ig", steps=p["steps"], batch_size=p["batch_size"]),
                     ctx)
    st = r.stats
    return {**meter.figures(), "ok": True, "n_pairs": len(pairs), "steps": p["steps"], "batch_size": p["batch_size"],
            "prompt_tokens": sorted({len(t.clean) for t in pairs.pairs}),
            "scoring_seconds": round(st["scoring_seconds"], 1), "curve_seconds": round(st["curve_seconds"], 1),
            "forward_passes": st.get("forward_passes"), "backward_passes": st.get("backward_passes"),
            "nodes": r.graph.n_sources + 1, "edges": st["edges_total"],
            "circuit_nodes": st["circuit_nodes"], "circuit_edges": st["circuit_edges"],
            "faithfulness": round(r.circuit_faithfulness, 3),
            "metric_clean": round(r.metric_clean, 4), "metric_corrupted": round(r.metric_corrupted, 4), "cpr": round(r.curve.cpr, 4), "cmd": round(r.curve.cmd, 4)}


def device_marker() -> bool:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r"""^\s*["']device\s*:""", text, re.M) is not None


def _device_tests(say) -> dict:
    if not device_marker():
        say("[device-tests] pyproject.toml declares no `device` marker: there are no device tests to run.")
        return {"case": "device-tests", "ok": True, "ran": False}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-m", "device", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    tail = (run.stdout + run.stderr).strip().splitlines()
    for line in tail[-15:]:
        say(f"[device-tests] {line}")
    return {"case": "device-tests", "ok": run.returncode == 0, "ran": True, "returncode": run.returncode,
            "seconds": round(time.perf_counter() - t0, 1), "summary": tail[-1] if tail else ""}


# -- the driver: one subprocess per case (per length for gemma-longest) ---------------------------------
def _child(name: str, args, deadline: float, length: int | None = None) -> dict:
    """Run one case in a subprocess, echoing its lines as they come; killed at ``deadline``."""
    with tempfile.TemporaryDirectory(prefix="circuitdesk-gpu-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", name, "--result", str(result), "--scale", args.scale,
               "--device", args.device, *(["--length", str(length)] if length else []),
               *(["--max-nodes", str(args.max_nodes)] if args.max_nodes else [])]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        timer = threading.Timer(max(1.0, deadline - time.monotonic()), proc.kill)
        timer.start()
        tail: list[str] = []
        t0 = time.perf_counter()
        echo = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON alone
        for line in proc.stdout:
            echo.write(line)
            echo.flush()
            tail = (tail + [line.rstrip()])[-30:]
        proc.wait()
        killed = not timer.is_alive() and proc.returncode != 0
        timer.cancel()
        if result.is_file():
            return json.loads(result.read_text())
        base = {"case": name, "ok": False, **({"tokens": length} if length else {}),
                "seconds": round(time.perf_counter() - t0, 1)}
        if killed:
            return {**base, "stopped_by": "time", "error": f"killed after {base['seconds']} s (--budget-s); "
                    f"run it alone: benchmarks/gpu.py --cases {name}" + (f" --gemma-from {length}" if length else "")}
        return {**base, "stopped_by": "crash", "error": f"exit status {proc.returncode}: " + " | ".join(tail[-5:])}


def _longest(args, deadline: float, report) -> dict:
    case = CASES["gemma-longest"]
    p = case.tiny if args.scale == "tiny" else case.full
    length, tried = args.gemma_from or p["start"], []
    while True:
        r = _child("gemma-longest", args, deadline, length)
        report(r)
        tried.append(r)
        if not r.get("ok"):
            break
        length *= 2
    good = [t for t in tried if t.get("ok")]
    first_failure = tried[-1]
    return {"case": "gemma-longest", "ok": bool(good), "longest_tokens": good[-1]["tokens"] if good else None,
            "stopped_at": first_failure.get("tokens"), "stopped_by": first_failure.get("stopped_by"),
            "stop_sentence": first_failure.get("error"), "lengths": tried}


def describe(r: dict) -> str:
    """One case's figures as a few lines of text."""
    name = r.get("case", "?")
    if name == "device-tests":
        return (f"{name}: no `device` marker in pyproject.toml, nothing to run" if not r.get("ran") else
                f"{name}: {r['summary']} (exit {r['returncode']}, {r['seconds']} s)")
    if name == "gemma-longest" and "lengths" in r:
        return (f"{name}: longest prompt traced {r['longest_tokens']} tokens; {r['stopped_at']} tokens stopped "
                f"by {r['stopped_by']}: {r['stop_sentence']}")
    head = f"{name}" + (f" @ {r['tokens']} tokens" if "tokens" in r else "")
    if not r.get("ok"):
        return f"{head}: FAILED ({r.get('stopped_by')}): {r.get('error')}"
    mem = (f"cuda max allocated {r['cuda_max_allocated_gb']} GB (weights {r['weights_gb']} GB, "
           f"of {r['cuda_total_gb']} GB)" if "cuda_max_allocated_gb" in r else "no cuda")
    lines = [f"{head}: {r['seconds']} s (model built in {r['build_seconds']} s), {mem}, peak RSS {r['peak_rss_gb']} GB"]
    if "max_completeness_error" in r:
        within = "within" if r["max_completeness_error"] <= r["identity_tolerance"] else "EXCEEDS"
        lines.append(f"    {r['backward_passes']} backward passes (batch {r['batch_size']}), estimated "
                     f"{r['estimated_gb']} GB before it started; max completeness error "
                     f"{r['max_completeness_error']:.2e} {within} the tolerance {r['identity_tolerance']:.2e}")
        lines.append(f"    graph {r['nodes']} nodes / {r['edges']} edges ({r['feature_rows']} feature rows), pruned "
                     f"{r['pruned_nodes']} / {r['pruned_edges']}; replacement {r['replacement_score']}, "
                     f"completeness {r['completeness_score']}")
    else:
        lengths = r["prompt_tokens"]
        span = f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else f"{lengths[0]}"
        lines.append(f"    {r['n_pairs']} pairs of {span} tokens, {r['steps']} steps, batch "
                     f"{r['batch_size']}: scoring {r['scoring_seconds']} s, curve {r['curve_seconds']} s; "
                     f"{r['forward_passes']} forward / {r['backward_passes']} backward passes")
        lines.append(f"    graph {r['nodes']} nodes / {r['edges']} edges; circuit {r['circuit_nodes']} nodes / "
                     f"{r['circuit_edges']} edges, faithfulness {r['faithfulness']}, CPR {r['cpr']}, CMD {r['cmd']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--scale", choices=("full", "tiny"), default="full",
                    help="full: the real shapes (a GPU); tiny: a miniature of each (the CPU, seconds)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object at the end")
    ap.add_argument("--budget-s", type=float, default=570.0, help="stop this call after so many seconds")
    ap.add_argument("--gemma-from", type=int, help="gemma-longest: start the doubling here (resume a sweep)")
    ap.add_argument("--max-nodes", type=int, help="attribution cases: override max_nodes")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # one case, in its own process; figures to --result
        from core.errors import CircuitDeskError

        try:
            r = run_case(args.child, args.scale, args.device, length=args.length, max_nodes=args.max_nodes,
                         say=lambda s: print(s, flush=True))
        except CircuitDeskError as e:
            r = {"case": args.child, "ok": False, "stopped_by": "error", "error": str(e)}
        Path(args.result).write_text(json.dumps(r))
        return

    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    deadline = time.monotonic() + args.budget_s
    results = []

    def report(r: dict) -> None:
        if not args.json:
            print(describe(r), flush=True)

    for name in names:
        if time.monotonic() >= deadline:
            results.append({"case": name, "ok": False, "stopped_by": "time",
                            "error": f"not started (--budget-s); run it alone: benchmarks/gpu.py --cases {name}"})
            report(results[-1])
            continue
        if name == "gemma-longest":
            r = _longest(args, deadline, lambda r: None if args.json else print("  " + describe(r), flush=True))
        else:
            r = _child(name, args, deadline)
        results.append(r)
        report(r)
    if args.json:
        print(json.dumps({"scale": args.scale, "cases": results}, indent=1))


if __name__ == "__main__":
    main()

"""Load and predict latency of the default model, and how fast the window shows.

Prints figures; asserts nothing. Targets on a 2-core CPU workstation: cached load <= 3 s,
window visible <= 2 s after launch (torch not imported by then), predict <= 1 s after load.
Run: `make benchmark` (or .venv/bin/python benchmarks/load_and_predict.py [--fresh-cache]).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW_PROBE = """
import time, sys
t0 = time.perf_counter()
from PySide6.QtWidgets import QApplication
from desktop.app import MainWindow
app = QApplication([])
w = MainWindow()
w.show()
app.processEvents()
print(f"{time.perf_counter() - t0:.3f} {'torch' in sys.modules}")
"""


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def in_subprocess(code: str, env: dict | None = None) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh-cache", action="store_true", help="also time the first (GGUF -> safetensors) load")
    args = parser.parse_args()

    load_code = (
        "import time; t=time.perf_counter(); from core.models import load_model; import torch; "
        "t1=time.perf_counter(); load_model('default', device='cpu'); "
        "print(f'{t1-t:.3f} {time.perf_counter()-t1:.3f}')"
    )
    if args.fresh_cache:
        with tempfile.TemporaryDirectory() as cache:
            imp, first = map(float, in_subprocess(load_code, {"CIRCUITDESK_CACHE_DIR": cache}).split())
            print(f"first load of the default GGUF (dequantize + write cache): {first:6.2f} s")
    runs = [tuple(map(float, in_subprocess(load_code).split())) for _ in range(3)]
    print(f"import torch + transformers + core:                  {statistics.median(r[0] for r in runs):6.2f} s (median of 3)")
    print(f"cached load in a fresh process (incl. first-use imports): {statistics.median(r[1] for r in runs):6.2f} s (median of 3)")

    from core.models import load_model
    from core.predict import predict_next

    model = load_model("default", device="cpu")
    again = statistics.median(timed(lambda: load_model("default", device="cpu"))[1] for _ in range(3))
    print(f"cached load, libraries already imported:             {again:6.2f} s (median of 3)")
    prompts = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]
    predict_next(model, prompts[0])  # warm-up
    for prompt in prompts:
        times = [timed(lambda: predict_next(model, prompt))[1] for _ in range(5)]
        print(f"predict ({len(model.tokenizer(prompt).input_ids):2d} tokens):                              "
              f"{statistics.median(times) * 1000:6.1f} ms (median of 5)")

    shown = [in_subprocess(WINDOW_PROBE, {"QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}).split()
             for _ in range(3)]
    print(f"window visible after launch:                         {statistics.median(float(s[0]) for s in shown):6.2f} s "
          f"(median of 3; torch imported before show: {shown[0][1]})")


if __name__ == "__main__":
    main()

"""Memory: what a run will need before it starts, what is free, and one sentence when it will not fit.

A trace that dies of out-of-memory half an hour in, or takes the workstation down with it, is the
worst outcome for an auditor. So attribution estimates its peak before the first forward pass
(``attribution_estimate``: the largest of its phases, from the model's shape, the prompt length
and the settings) and refuses a run that will not fit in the budget (``--memory-gb``, or what is
free on the device) with what would fit instead; an out-of-memory error that still happens is
caught (``memory_guard``) and reported the same way, with nothing written and the app alive.

The estimate counts what a run adds to a loaded model (the weights are already in memory, and
what is free excludes them). Its terms are the big tensors of each phase; ``benchmarks/
attribution.py`` prints it next to the measured peak.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from core.errors import CircuitDeskError

GB = 1024 ** 3
BUDGET_ENV = "CIRCUITDESK_MEMORY_GB"  # a default budget for every run (e.g. a shared workstation)


def format_bytes(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1024 ** 2:.1f} MB"


def free_bytes(device) -> int:
    """Memory a run may still take on ``device``: free GPU memory (plus what torch's allocator holds
    cached), or the system's available memory for the CPU."""
    import torch  # deferred: the estimate itself is torch-free (the GUI may call it before torch loads)

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - other systems
        return 1 << 62  # unknown: do not refuse


def budget_bytes(device, memory_gb: float | None) -> tuple[int, str]:
    """(bytes a run may use on ``device``, where that figure comes from, as "is free on cpu")."""
    if memory_gb:
        return int(memory_gb * GB), "is allowed by the --memory-gb budget"
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            raise CircuitDeskError(f"{BUDGET_ENV}={env!r} is not a number of gigabytes (e.g. 8 or 0.5).") from None
        if value > 0:
            return int(value * GB), f"is allowed by the {BUDGET_ENV} budget"
    return free_bytes(device), f"is free on {device}"


@dataclass
class Estimate:
    """Peak memory of a run, by phase: each phase's big tensors (bytes)."""

    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    # the allocator's slack, torch's workspaces and Python objects around the big tensors (measured
    # on the default model: benchmarks/attribution.py prints estimate and measurement side by side)
    OVERHEAD = 1.2

    @property
    def total(self) -> int:
        return int(self.OVERHEAD * max((sum(t.values()) for t in self.phases.values()), default=0))

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: sum(self.phases[p].values())) if self.phases else ""

    def to_json(self) -> dict:
        return {"total": self.total, "peak_phase": self.peak_phase, "phases": self.phases}


def attention_by_qk(facts, n_tokens: int) -> bool:
    """Whether a prompt's clean attention is smaller kept as the queries and keys it is scored from than
    as its probabilities (per layer (H + H_kv)·P·d_head numbers against H·P²)."""
    return (facts.n_heads + max(facts.n_kv_heads, 1)) * facts.d_head < max(facts.n_heads, 1) * n_tokens


def attribution_estimate(facts, n_tokens: int, *, max_nodes: int, batch: int, candidates: int,
                         transcoder_width: int = 0, dtype_bytes: int = 4, max_logits: int = 10) -> Estimate:
    """Peak memory of an attribution graph (``core.attribution.attribute``) on a model of shape
    ``facts`` and a prompt of ``n_tokens`` tokens (start token included), with ``batch`` rows per
    backward pass and at most ``candidates`` feature columns per row."""
    L, P, d, s = facts.n_layers, n_tokens, facts.d_model, dtype_bytes
    H, d_mlp, V = max(facts.n_heads, 1), facts.d_mlp, facts.vocab_size
    width = transcoder_width or d_mlp
    f32 = 4
    pattern = H * P * P * s  # one layer's attention probabilities
    qk = (H + max(facts.n_kv_heads, 1)) * P * facts.d_head * s
    held = qk if attention_by_qk(facts, P) else pattern  # the clean attention as the engine holds it
    # per token and layer, what a forward with its graph retained keeps for backward
    saved = (10 * d + 5 * d_mlp) * s
    cache = L * held + L * P * (2 * d_mlp + 4 * d) * s  # attention held, multipliers, activations, in/out points
    cache += L * 2 * transcoder_width * d * f32  # the transcoders' encoders and decoders, loaded by the run
    rows = max_logits + min(max_nodes, candidates)  # no more feature rows than candidates
    row_width = candidates + L * P + P
    # edges come from the features with rows, the error and the token nodes; a row reads the
    # earlier layers and positions only (causal): about half of them
    edges = rows * (min(max_nodes, candidates) + L * P + P) // 2
    phases = {
        "the prompt's run": {
            "cache": cache, "logits": P * V * f32, "attention scores": 3 * pattern,
        },
        "choosing candidates": {
            "cache": cache, "retained graph": L * (P * saved + pattern),
            "scores": 3 * L * P * width * f32,
        },
        "the gradient rows": {
            "cache": cache, "errors": L * P * d * f32,
            "retained graph": batch * L * (P * saved + pattern),
            "gradients": 2 * (L + 1) * batch * P * d * f32,
            "contributions": batch * L * P * d_mlp * f32 if not transcoder_width else 3 * batch * candidates * f32,
            "write vectors by position": 2 * candidates * d * f32,
            "rows": rows * row_width * f32,
        },
        "assembling the graph": {
            "cache": cache, "rows": rows * row_width * f32, "edges": edges * 48,
        },
    }
    return Estimate(phases)


def refuse_if_too_big(estimate: Estimate, budget: int, where: str, fixes: Callable[[], list[str]]) -> None:
    """One sentence when ``estimate`` exceeds ``budget``: what it needs, what there is (``where``,
    from ``budget_bytes``), and what would fit (``fixes()``, asked only then)."""
    if estimate.total <= budget:
        return
    fix = ", or ".join(fixes()) or "a shorter prompt or a machine with more memory"
    raise CircuitDeskError(
        f"This run needs about {format_bytes(estimate.total)} of memory ({estimate.peak_phase}) but only "
        f"{format_bytes(budget)} {where}; it would fit with {fix}."
    )


_OOM_TEXT = re.compile(r"out of memory|can't allocate memory|not enough memory|cannot allocate memory", re.I)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator running out (GPU or CPU), not another error."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch  # deferred: the estimate itself is torch-free

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return isinstance(exc, RuntimeError) and bool(_OOM_TEXT.search(str(exc)))


class Doing:
    """What a guarded run is doing now (named in the out-of-memory sentence)."""

    def __init__(self, what: str) -> None:
        self.what = what


@contextmanager
def memory_guard(device, advice: str, doing: str = "running"):
    """Turn an out-of-memory error inside the block into one sentence (what ran out, while doing
    what, and ``advice``); the GPU cache is emptied so the app can go on. Yields a ``Doing``
    whose ``what`` the block updates as it moves through its phases."""
    now = Doing(doing)
    try:
        yield now
    except BaseException as exc:  # noqa: B902 - filtered just below
        if not is_out_of_memory(exc):
            raise
        del exc  # its traceback holds the frames' tensors
        try:
            import gc  # deferred: only when memory ran out

            import torch  # deferred: the estimate itself is torch-free

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass
        raise CircuitDeskError(f"Ran out of memory on {device} while {now.what}; {advice}.") from None

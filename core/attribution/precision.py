"""What the model's precision does to the completeness identity.

Each row is checked as ``value(t) = Σ_s A[t, s] + constant(t)`` (``attribute``), and its error is
reported relative to the row's magnitude ``Σ_s |A[t, s]| + |constant(t)|``. In exact arithmetic the
three terms agree: they come from three computations of the same linear replacement model (the
clean forward pass, the bias-only pass and the gradient pass). At a finite precision each of them
rounds every intermediate result to the model's dtype, with relative error at most the unit
roundoff u = eps/2 (float32: 6.0e-8, float16: 4.9e-4, bfloat16: 3.9e-3). Summing
(Σ A, in float32 and float64) adds nothing comparable.

Tolerance: along the way from a source to a target, each pass rounds about ``ROUNDINGS_PER_STAGE``
times per stage (norm: square, mean, scale, gain; a projection; the nonlinearity or softmax; the
head mix; the residual add), over ``2·n_layers + 2`` stages (attention and MLP per layer, the
embedding, the final norm and unembedding). Rounding errors are independent and of either sign,
so over n roundings they grow like √n, not n: |error| ≤ λ·√n·u with probability at least
1 − 2·exp(−λ²/2) per row (Higham and Mary 2019, "A new approach to probabilistic rounding error
analysis"); λ = 5 makes that 7.5·10⁻⁶ per row. Hence, relative to the row magnitude,

    tolerance = λ · √(3 · ROUNDINGS_PER_STAGE · (2·n_layers + 2)) · eps / 2.

It grows with depth and is 2¹⁶ times larger in bfloat16 than in float32 (for a 30-layer model:
1.2e-5 in float32, 0.75 in bfloat16, 0.09 in float16), a bound rather than an estimate: the errors
measured are typically ten to a hundred times smaller. A graph made at reduced precision is the
graph of that precision's model; its identity is only checked less tightly.
"""

from __future__ import annotations

import math

import torch

ROUNDINGS_PER_STAGE = 8
PASSES = 3  # clean forward, bias-only forward, gradient pass
LAMBDA = 5.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2 of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def identity_tolerance(dtype: torch.dtype, n_layers: int) -> float:
    """The relative completeness error a graph at ``dtype`` may show (see the module docstring)."""
    roundings = PASSES * ROUNDINGS_PER_STAGE * (2 * n_layers + 2)
    return LAMBDA * math.sqrt(roundings) * unit_roundoff(dtype)


def precision_facts(dtype: torch.dtype, n_layers: int, max_error: float) -> dict:
    """What a graph records about its precision: the dtype, its epsilon, the tolerance of the
    identity at that precision, and whether the largest relative error is within it."""
    tol = identity_tolerance(dtype, n_layers)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "eps": torch.finfo(dtype).eps,
        "identity_tolerance": tol,
        "identity_holds": bool(max_error <= tol),
    }

"""Norm algebra: the maps that freezing or patching a norm's scale turns a norm into, and their
vector-Jacobian products (for gradients through a norm without running it).

``kind`` is an adapter's ``norm_kind``: "rms" (x·s·w), "rms_offset" (x·s·(1+w), Gemma) or "layer"
(LayerNorm: (x − mean)·s·w + b), where s is the scale 1/rms (or 1/std) held at an access point.
"""

from __future__ import annotations

import torch

from core.instrument.weights import module_tensor


def norm_gain(kind: str, mod, dtype: torch.dtype) -> torch.Tensor | None:
    """A norm's elementwise weight as applied to the normalized vector: w, or 1 + w for Gemma's
    ``rms_offset`` norms; None for a LayerNorm without weight."""
    w = module_tensor(mod, "weight")
    if w is None:
        return None
    w = w.to(dtype)
    return 1.0 + w if kind == "rms_offset" else w


def norm_linear(kind: str, mod, x: torch.Tensor, scale: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """A norm with its scale held at ``scale``: the linear map x -> (x - mean)·scale·w (+ b)."""
    wide = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(wide)
    if kind == "layer":
        xf = xf - xf.mean(-1, keepdim=True)
    y = xf * scale
    gain = norm_gain(kind, mod, wide)
    if gain is not None:
        y = y * gain
    b = module_tensor(mod, "bias") if kind == "layer" and bias else None
    if b is not None:
        y = y + b.to(wide)
    return y


def norm_eps(mod) -> float:
    """A norm module's epsilon (transformers names it ``variance_epsilon`` or ``eps``)."""
    eps = getattr(mod, "variance_epsilon", None)
    return float(eps if eps is not None else getattr(mod, "eps", 1e-6))


def norm_vjp(kind: str, mod, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """u · ∂norm(x)/∂x: the gradient at a norm's input from the gradient ``u`` at its output.

    ``x`` [..., d] broadcasts against ``u`` (e.g. x [b, s, 1, d], u [b, s, heads, d] gives every
    head's gradient at once). Computed in float32, or float64 for float64 inputs.
    """
    wide = torch.promote_types(torch.promote_types(x.dtype, u.dtype), torch.float32)
    x, u = x.to(wide), u.to(wide)
    gain = norm_gain(kind, mod, wide)
    v = u if gain is None else u * gain
    eps = norm_eps(mod)
    if kind == "layer":
        xc = x - x.mean(-1, keepdim=True)
        r = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
        n = xc * r
        return r * (v - v.mean(-1, keepdim=True) - n * (v * n).mean(-1, keepdim=True))
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return r * v - (r.pow(3) / x.shape[-1]) * x * (v * x).sum(-1, keepdim=True)


def projected_norm_vjp(kind: str, mod, x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
                       outputs: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Adds (W_i ∘ norm)ᵀ g_i to ``out[i]`` for n linear maps y_i = W_i·norm(x) + bias_i.

    x [t, d] is the norm's input, g [n, t, e] the gradients at the maps' outputs, ``outputs``
    [n, t, e] the maps' outputs y_i in the same pass, out [n, t, d]. ``weight`` [m, e, d] and
    ``bias`` [m, e] (or None) may be shared by groups of n/m consecutive maps (GQA keys/values).
    Equal to ``norm_vjp(kind, mod, x, g_i @ W_i)`` for each i: the norm's weight is folded into W
    and its rank-one correction is read off the outputs already computed, so the only [n, t, d]
    work is one batched GEMM and one fused update of ``out``.
    """
    dtype = out.dtype
    n, t, e = g.shape
    m, d = weight.shape[0], x.shape[-1]
    x, g, outputs, weight = x.to(dtype), g.to(dtype), outputs.to(dtype), weight.to(dtype)
    gain = norm_gain(kind, mod, dtype)
    gain = None if gain is None else gain.to(out.device)
    wf = weight if gain is None else weight * gain  # [m, e, d]: the norm's weight folded in
    eps = norm_eps(mod)
    wz = outputs if bias is None else outputs - bias.to(dtype).repeat_interleave(n // m, 0).unsqueeze(1)
    if kind == "layer":  # y = W(w⊙z + b_norm) + bias, z = (x − mean)·r
        xc = x - x.mean(-1, keepdim=True)
        r = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)  # [t, 1]
        z = xc * r
        b = module_tensor(mod, "bias")
        if b is not None:
            wz = wz - (weight @ b.to(device=out.device, dtype=dtype)).repeat_interleave(n // m, 0).unsqueeze(1)
        mean_v = torch.einsum("nte,ne->nt", g, wf.sum(-1).repeat_interleave(n // m, 0)) / d  # mean of v = W'ᵀ g
        out.add_((-r.squeeze(-1) * mean_v).unsqueeze(-1))
        coef = -(g * wz).sum(-1) * (r.squeeze(-1) / d)
    else:  # y = W(w⊙x·r) + bias, so W'x = (y − bias) / r
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        z = x
        coef = -(g * wz).sum(-1) * (r.squeeze(-1).pow(2) / d)
    # r · v: maps sharing a weight are consecutive, so each group is one [n/m · t, e] @ [e, d] product
    out.view(m, -1, d).baddbmm_((g * r).reshape(m, -1, e), wf)
    out.addcmul_(coef.unsqueeze(-1), z.unsqueeze(0))
    return out

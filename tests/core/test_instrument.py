"""Instrumentation against exact references: the plain HF forward, self-patching, brute-force
Jacobians of frozen norms, and a frozen pattern replayed as a constant."""

import pytest
import torch
from transformers import AutoModelForCausalLM

PROMPT = "when mary and john went to the store , john gave a drink to"


@pytest.fixture
def ids(tiny_model, family):
    return tiny_model(family).tokenizer(PROMPT, return_tensors="pt").input_ids


def test_inactive_instrumentation_equals_plain_hf_forward(family, tiny_folder, tiny_model, ids):
    m = tiny_model(family)
    plain = AutoModelForCausalLM.from_pretrained(tiny_folder(family)).eval()  # its own default attention
    with torch.no_grad():
        ref = plain(ids).logits
        assert (m.hf(ids).logits - ref).abs().max() <= 1e-5
        logits, trace = m.instrument.forward(ids, cache="*")  # active, reading every point
        assert (logits - ref).abs().max() <= 1e-5
    assert set(trace.cache) == set(m.instrument.points)
    assert torch.equal(trace["logits"], logits)


def test_attention_pattern_shape_and_rows(family, tiny_model, ids):
    m = tiny_model(family)
    with torch.no_grad():
        _, trace = m.instrument.forward(ids, cache="blocks.*.attn.pattern")
    seq = ids.shape[1]
    for l in range(m.facts.n_layers):
        pattern = trace[f"blocks.{l}.attn.pattern"]
        assert pattern.shape == (1, m.facts.n_heads, seq, seq)
        assert torch.allclose(pattern.sum(-1), torch.ones(1, m.facts.n_heads, seq), atol=1e-5)
        assert torch.all(pattern.triu(1) == 0)  # causal


def test_sliding_window_reaches_the_pattern(tiny_model):
    m = tiny_model("gemma2")  # sliding_window=4 on alternating layers
    ids = m.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        _, trace = m.instrument.forward(ids, cache="blocks.*.attn.pattern")
    local = [trace[f"blocks.{l}.attn.pattern"][0, :, -1, :-4].abs().max().item() for l in range(2)]
    assert min(local) == 0.0 and max(local) > 0.0  # one layer local, one global


def test_residual_stream_bookkeeping(family, tiny_model, ids):
    m = tiny_model(family)
    with torch.no_grad():
        _, t = m.instrument.forward(ids, cache="*")
    for l in range(m.facts.n_layers):
        b = f"blocks.{l}."
        total = t[b + "resid_pre"] + t[b + "attn_out"] + t[b + "mlp_out"]
        assert torch.allclose(total, t[b + "resid_post"], atol=1e-5)
        z = t[b + "attn.z"]
        assert z.shape == (1, ids.shape[1], m.facts.n_heads, m.facts.d_head)


def test_per_head_patch_with_own_value_is_identity_and_zero_changes_logits(family, tiny_model, ids):
    m = tiny_model(family)
    with torch.no_grad():
        clean, trace = m.instrument.forward(ids, cache="blocks.1.attn.z")
        z = trace["blocks.1.attn.z"]
        same, _ = m.instrument.forward(ids, patch={"blocks.1.attn.z": z.clone()})
        assert torch.equal(same, clean)

        def zero_head(x, h=2):
            x = x.clone()
            x[:, :, h] = 0
            return x

        zeroed, t2 = m.instrument.forward(ids, patch={"blocks.1.attn.z": zero_head}, cache="blocks.1.attn.z")
    assert (zeroed - clean).abs().max() > 1e-4
    assert torch.all(t2["blocks.1.attn.z"][:, :, 2] == 0)  # the cache sees the patched value
    assert torch.equal(t2["blocks.1.attn.z"][:, :, :2], z[:, :, :2])


def test_add_at_a_point_equals_patch_with_the_sum(tiny_model):
    m = tiny_model("llama")
    ids = m.tokenizer(PROMPT, return_tensors="pt").input_ids
    delta = torch.randn(1, ids.shape[1], 32)
    with torch.no_grad():
        _, t = m.instrument.forward(ids, cache="blocks.0.resid_post")
        a, _ = m.instrument.forward(ids, add={"blocks.0.resid_post": delta})
        b, _ = m.instrument.forward(ids, patch={"blocks.0.resid_post": t["blocks.0.resid_post"] + delta})
    assert torch.allclose(a, b, atol=1e-6)


def test_gradient_point_matches_finite_differences(tiny_model):
    m = tiny_model("llama")
    ids = m.tokenizer("the cat", return_tensors="pt").input_ids
    point, pos, target = "blocks.1.mlp.post", ids.shape[1] - 1, 7
    logits, trace = m.instrument.forward(ids, grad=point)
    logits[0, -1, target].backward()
    grad = trace.grad(point)[0, pos].double()
    eps = 1e-3
    fd = []
    with torch.no_grad():
        _, t = m.instrument.forward(ids, cache=point)
        base = t[point]
        for i in range(0, grad.numel(), 9):
            up, down = base.clone(), base.clone()
            up[0, pos, i] += eps
            down[0, pos, i] -= eps
            lu = m.instrument.forward(ids, patch={point: up})[0][0, -1, target]
            ld = m.instrument.forward(ids, patch={point: down})[0][0, -1, target]
            fd.append(((lu - ld) / (2 * eps)).item())
    assert torch.allclose(grad[::9], torch.tensor(fd, dtype=torch.double), atol=2e-3)


def test_frozen_attention_equals_replaying_the_pattern_as_a_constant(family, tiny_model, ids):
    m = tiny_model(family)
    with torch.no_grad():
        _, t = m.instrument.forward(ids, cache="blocks.*.attn.pattern")
    constants = {f"blocks.{l}.attn.pattern": t[f"blocks.{l}.attn.pattern"] for l in range(m.facts.n_layers)}

    def grad_at_embed(**opts):
        logits, trace = m.instrument.forward(ids, grad="blocks.0.resid_pre", **opts)
        logits[0, -1].logsumexp(-1).backward()
        return trace.grad("blocks.0.resid_pre"), logits.detach()

    frozen, lf = grad_at_embed(freeze_attention=True)
    replay, lr = grad_at_embed(patch=constants)
    free, lo = grad_at_embed()
    assert torch.allclose(lf, lo, atol=1e-6) and torch.allclose(lr, lo, atol=1e-6)  # values unchanged
    assert torch.allclose(frozen, replay, atol=1e-6)
    assert (frozen - free).abs().max() > 1e-5  # freezing does stop the gradient through q and k


def test_frozen_norm_gradient_is_the_fixed_scale(family, tiny_model, ids):
    """With norms frozen, d final_norm / d x is diag(s·w) (RMS) or the centred version (LayerNorm)."""
    m = tiny_model(family)
    a = m.adapter
    x = torch.randn(3, 32, dtype=torch.double)
    norm = m.hf.get_submodule(a.final_norm).double()
    try:
        with m.instrument.session(freeze_norms=True):
            jac = torch.autograd.functional.jacobian(lambda v: norm(v[None])[0], x[0])
        with torch.no_grad():
            eps = getattr(norm, "variance_epsilon", None) or norm.eps
            w = norm.weight.double()
            if a.norm_kind == "layer":
                s = torch.rsqrt(x[0].var(unbiased=False) + eps)
                center = torch.eye(32, dtype=torch.double) - 1.0 / 32
                ref = (s * w)[:, None] * center
            else:
                s = torch.rsqrt(x[0].pow(2).mean() + eps)
                ref = torch.diag(s * (1 + w if a.norm_kind == "rms_offset" else w))
        assert torch.allclose(jac, ref, atol=1e-10)
        free = torch.autograd.functional.jacobian(lambda v: norm(v[None])[0], x[0])
        assert (free - ref).abs().max() > 1e-4
    finally:
        norm.float()


def test_unknown_point_fails_loudly(tiny_model):
    m = tiny_model("llama")
    with pytest.raises(KeyError):
        with m.instrument.session(patch={"blocks.9.attn.z": torch.zeros(1)}):
            pass
    with pytest.raises(ValueError):
        m.instrument.forward(torch.tensor([[1, 5]]), patch={"blocks.0.resid_pre": torch.zeros(1, 3, 32)})


def test_norm_vjp_matches_autograd_through_the_norm(family, tiny_model):
    from core.instrument.norms import norm_vjp, projected_norm_vjp

    m = tiny_model(family)
    norm = m.hf.get_submodule(m.adapter.layers)[1].get_submodule(m.adapter.attn_in_norm)
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(2, 5, m.facts.d_model, generator=gen)).requires_grad_(True)
    u = torch.randn(2, 5, m.facts.d_model, generator=gen)
    (ref,) = torch.autograd.grad(norm(x), x, grad_outputs=u)
    got = norm_vjp(m.adapter.norm_kind, norm, x.detach(), u)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    # broadcast: one input, several output gradients at once
    many = norm_vjp(m.adapter.norm_kind, norm, x.detach(), torch.stack([u, 2 * u]))
    assert torch.allclose(many[1], 2 * got, rtol=1e-5, atol=1e-6)
    # through linear maps read after the norm: (W_i ∘ norm)ᵀ g_i, added into a buffer
    w = torch.randn(3, 4, m.facts.d_model, generator=gen)
    gi = torch.randn(3, 10, 4, generator=gen)
    start = torch.randn(3, 10, m.facts.d_model, generator=gen)
    xt = x.detach().reshape(10, -1)
    bias = torch.randn(3, 4, generator=gen)
    outputs = torch.einsum("td,ned->nte", norm(xt), w) + bias.unsqueeze(1)
    got = projected_norm_vjp(m.adapter.norm_kind, norm, xt, gi, w, outputs.detach(), bias, start.clone())
    ref = start + norm_vjp(m.adapter.norm_kind, norm, xt, torch.einsum("nte,ned->ntd", gi, w))
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    # a weight shared by consecutive maps (GQA): 6 maps, 3 weights
    g6 = torch.randn(6, 10, 4, generator=gen)
    w6, b6 = w.repeat_interleave(2, 0), bias.repeat_interleave(2, 0)
    out6 = torch.einsum("td,ned->nte", norm(xt), w6) + b6.unsqueeze(1)
    shared = projected_norm_vjp(m.adapter.norm_kind, norm, xt, g6, w, out6.detach(), bias, torch.zeros(6, 10, m.facts.d_model))
    full = projected_norm_vjp(m.adapter.norm_kind, norm, xt, g6, w6, out6.detach(), b6, torch.zeros(6, 10, m.facts.d_model))
    assert torch.allclose(shared, full, rtol=1e-5, atol=1e-6)
    assert torch.allclose(shared[3], norm_vjp(m.adapter.norm_kind, norm, xt, g6[3] @ w[1]), rtol=1e-4, atol=1e-5)


def test_per_head_qkv_points_are_inert_and_their_gradient_is_the_split_copy_gradient(family, tiny_model):
    from core.circuits.engine import ComponentRunner
    from core.instrument.norms import norm_vjp

    m = tiny_model(family)
    ids = torch.randint(5, m.facts.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    H = m.facts.n_heads
    with torch.no_grad():
        plain = m.hf(ids).logits
        logits, t = m.instrument.forward(ids, cache=["blocks.1.attn.k", "blocks.1.attn.v"])
    assert (logits - plain).abs().max() <= 1e-5
    k = t["blocks.1.attn.k"]
    assert k.shape == (1, ids.shape[1], H, m.facts.d_head)
    groups = H // m.hf.config.num_key_value_heads if hasattr(m.hf.config, "num_key_value_heads") else 1
    for h in range(H):  # GQA: each query head's key is its key/value head's
        assert torch.equal(k[:, :, h], k[:, :, h - h % groups])
    runner = ComponentRunner(m)
    norm = m.hf.get_submodule(m.adapter.layers)[1].get_submodule(m.adapter.attn_in_norm)
    for i, p in enumerate("qkv"):
        with m.instrument.session(grad=f"blocks.1.attn.{p}_in") as ts:
            m.hf(ids).logits[0, -1, 7].backward()
        split = ts.grad(f"blocks.1.attn.{p}_in")  # [b, s, H, d]
        with m.instrument.session(grad=f"blocks.1.attn.{p}", cache="blocks.1.resid_pre") as th:
            m.hf(ids).logits[0, -1, 7].backward()
        w = runner.path_weights(1, p)[0]  # [n, d_head, d]
        w = w.repeat_interleave(H // w.shape[0], 0)
        u = torch.einsum("bshe,hed->bshd", th.grad(f"blocks.1.attn.{p}"), w)
        got = norm_vjp(m.adapter.norm_kind, norm, th["blocks.1.resid_pre"].unsqueeze(-2), u)
        assert split.abs().max() > 0
        assert torch.allclose(got, split, rtol=1e-4, atol=1e-6), p

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

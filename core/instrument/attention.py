"""The registered attention function: eager attention whose scored queries and keys and whose
probabilities pass through access points, so they can be read, frozen (detached) or replaced. One function serves every family:
GQA (repeat_kv), Gemma 2 logit soft-capping, sliding windows (already in the mask), GPT-2 scaling.
"""

from __future__ import annotations

import torch

ATTN_IMPLEMENTATION = "circuitdesk"
_registered = False


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def instrumented_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """Same numerics as transformers' eager attention, with the queries and keys it scores (after
    rotary embeddings) and the pattern exposed at access points."""
    qk_hook = getattr(module, "_circuitdesk_qk_hook", None)
    if qk_hook is not None:
        query, key = qk_hook(query, key)
    groups = query.shape[1] // key.shape[1]  # 1 when q/k/v paths are split per query head
    key = _repeat_kv(key, groups)
    value = _repeat_kv(value, groups)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    hook = getattr(module, "_circuitdesk_pattern_hook", None)
    if hook is not None:
        pattern = hook(pattern)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def register() -> None:
    """Make ``attn_implementation="circuitdesk"`` known to transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface  # deferred: transformers (2.5 s) loads with a model only
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask  # deferred: as above

    AttentionInterface.register(ATTN_IMPLEMENTATION, instrumented_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)
    _registered = True

"""Per-family adapters: where each architecture keeps its modules, and how its norms work.

An adapter only names things; the instrumentation and every method work from these names, so
adding a family means adding one entry here (and one tiny-model config to the tests).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Adapter:
    family: str
    layers: str  # ModuleList of blocks, relative to the CausalLM module
    embed: str  # token embedding
    final_norm: str
    unembed: str
    attn: str  # attention module, relative to a block
    o_proj: str  # output projection, relative to the attention module (its input = per-head z)
    qkv: tuple[str, ...]  # ("q_proj","k_proj","v_proj") or the fused ("c_attn",)
    attn_in_norm: str  # relative to a block
    mlp_in_norm: str
    mlp: str
    down_proj: str  # relative to the MLP module (its input = neuron activations)
    up_proj: str
    gate_proj: str | None  # gated (SwiGLU/GeGLU) MLPs only
    act: str = "act_fn"  # the MLP's activation module, relative to the MLP module
    attn_out_norm: str | None = None  # Gemma 2/3 post-attention norm (applied before the residual add)
    mlp_out_norm: str | None = None  # Gemma 2/3 post-feedforward norm
    pos_embed: str | None = None  # GPT-2 learned positions
    norm_kind: str = "rms"  # "rms" (x·s·w), "rms_offset" (x·s·(1+w), Gemma), "layer" (LayerNorm)
    conv1d: bool = False  # GPT-2 stores Linear weights transposed (transformers' Conv1D)

    @property
    def gated_mlp(self) -> bool:
        return self.gate_proj is not None


_LLAMA_LIKE = dict(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    o_proj="o_proj",
    qkv=("q_proj", "k_proj", "v_proj"),
    attn_in_norm="input_layernorm",
    mlp_in_norm="post_attention_layernorm",
    mlp="mlp",
    down_proj="down_proj",
    up_proj="up_proj",
    gate_proj="gate_proj",
)

_GEMMA_LIKE = dict(
    _LLAMA_LIKE,
    attn_out_norm="post_attention_layernorm",
    mlp_in_norm="pre_feedforward_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
    norm_kind="rms_offset",
)

ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter(family="llama", **_LLAMA_LIKE),
    "mistral": Adapter(family="mistral", **_LLAMA_LIKE),
    "qwen2": Adapter(family="qwen2", **_LLAMA_LIKE),
    "qwen3": Adapter(family="qwen3", **_LLAMA_LIKE),
    "gemma2": Adapter(family="gemma2", **_GEMMA_LIKE),
    "gemma3": Adapter(family="gemma3", **_GEMMA_LIKE),
    "gpt2": Adapter(
        family="gpt2",
        layers="transformer.h",
        embed="transformer.wte",
        pos_embed="transformer.wpe",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        o_proj="c_proj",
        qkv=("c_attn",),
        attn_in_norm="ln_1",
        mlp_in_norm="ln_2",
        mlp="mlp",
        down_proj="c_proj",
        up_proj="c_fc",
        gate_proj=None,
        act="act",
        norm_kind="layer",
        conv1d=True,
    ),
}

# config.json "model_type" -> family
MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gpt2": "gpt2",
}

SUPPORTED_MODEL_TYPES = tuple(MODEL_TYPES)


def adapter_for(model_type: str) -> Adapter | None:
    family = MODEL_TYPES.get(model_type)
    return ADAPTERS[family] if family else None

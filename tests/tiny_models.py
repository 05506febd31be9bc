"""Tiny random models of every supported family, saved as real HF folders (config + safetensors +
tokenizer) so tests go through the same public loader as a user's model."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2")

WORDS = (
    "the of and to a in is was for on that with as by at from it his her he she they "
    "when mary john went store gave drink capital france paris london city war lasted year "
    "cat dog red blue green one two three four five six seven eight nine ten"
).split()


# Chat templates for tiny models (jinja, as in a tokenizer config), over words the tiny vocabulary has.
# The first starts with the start token, as real templates do; the second starts with plain text.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} "
                 "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
                       "{% if add_generation_prompt %}assistant :{% endif %}")
CHAT_WORDS = ["system", "user", "assistant", ":"]  # appended after the others: other models' ids stay as they are


def tiny_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3}
    for w in WORDS + [",", "."] + (CHAT_WORDS if chat_template else []):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    if chat_template:
        out.chat_template = chat_template
    return out


def tiny_config(family: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=4, tie_word_embeddings=False)
    if family == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":
        return tf.Qwen3Config(**common, head_dim=8, tie_word_embeddings=True)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                               attn_logit_softcapping=5.0, final_logit_softcapping=10.0)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                                   sliding_window_pattern=2)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                             initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    raise ValueError(family)


def make_tiny_model(family: str, folder: Path, seed: int = 0, chat_template: str | None = None) -> Path:
    """Build, randomly initialize and save a tiny model of ``family`` into ``folder`` (with
    ``chat_template`` in its tokenizer, if given)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(chat_template)
    config = tiny_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms start at identity; randomize them so their frozen scale matters
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):  # HF starts biases at zero; constants must be exercised
                p.add_(0.1 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama model as a .gguf file (its own tokenizer inside), converted in ~1 s."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = ["<bos>", "<eos>", "Ġ"] + WORDS
    d, ff, n_layers, heads, kv = 32, 64, 2, 4, 2
    hd = d // heads

    def rand(*shape):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(n_layers)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_merges([])
    w.add_token_types([gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * (len(tokens) - 2))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", rand(len(tokens), d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", rand(len(tokens), d))
    for i in range(n_layers):
        shapes = {"attn_q": (d, d), "attn_k": (kv * hd, d), "attn_v": (kv * hd, d), "attn_output": (d, d),
                  "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

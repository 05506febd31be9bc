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


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3}
    for w in WORDS + [",", "."]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


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


def make_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Build, randomly initialize and save a tiny model of ``family`` into ``folder``."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
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

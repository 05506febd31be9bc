import json
import shutil

import pytest
import torch

from core.errors import CircuitDeskError
from core.models import load_model
from core.predict import encode_prompt, predict_next
from tiny_models import tiny_config


def test_every_family_loads_with_adapter_and_facts(family, tiny_model):
    m = tiny_model(family)
    cfg = tiny_config(family, m.facts.vocab_size)
    assert m.adapter.family == family == m.facts.family
    assert m.facts.n_layers == 2 and m.facts.d_model == 32 and m.facts.n_heads == 4
    assert m.facts.n_kv_heads == (4 if family == "gpt2" else 2)
    assert m.facts.n_params == sum(p.numel() for p in m.hf.parameters())
    assert m.facts.tied_embeddings == bool(cfg.tie_word_embeddings)
    assert len(m.fingerprint.sha256) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(m.fingerprint.files)
    # Every module the adapter names exists (GPT-2: Conv1D, positions; Gemma: post-norms).
    a = m.adapter
    block = m.hf.get_submodule(a.layers)[0]
    for rel in filter(None, (a.attn_in_norm, a.mlp_in_norm, a.attn_out_norm, a.mlp_out_norm)):
        block.get_submodule(rel)
    attn = block.get_submodule(a.attn)
    for rel in (a.o_proj, *a.qkv):
        attn.get_submodule(rel)
    mlp = block.get_submodule(a.mlp)
    for rel in filter(None, (a.down_proj, a.up_proj, a.gate_proj)):
        mlp.get_submodule(rel)


def test_fingerprint_follows_file_content(tiny_folder, tmp_path):
    src = tiny_folder("llama")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    a = load_model(copy, device="cpu").fingerprint
    assert a.sha256 == load_model(src, device="cpu").fingerprint.sha256
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    b = load_model(copy, device="cpu").fingerprint
    assert b.sha256 != a.sha256 and b.files["model.safetensors"] == a.files["model.safetensors"]


def test_sharded_folder_loads(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_folder("llama"))
    out = tmp_path / "sharded"
    hf.save_pretrained(out, max_shard_size="20KB")
    shutil.copy(tiny_folder("llama") / "tokenizer.json", out)
    shutil.copy(tiny_folder("llama") / "tokenizer_config.json", out)
    assert len(list(out.glob("*.safetensors"))) > 1
    m = load_model(out, device="cpu")
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(m.hf(ids).logits, hf(ids).logits, atol=1e-5)


def _one_sentence(err: CircuitDeskError) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text and text.endswith(".")
    return text


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d, src: d / "nope", "not found"),
        (lambda d, src: d, "no config.json"),
        (lambda d, src: _with_config(d, src, {"model_type": "bert"}), "Unsupported model_type 'bert'"),
        (lambda d, src: _with_config(d, src, {"model_type": "gemma3"}), "multimodal Gemma 3"),
        (lambda d, src: _truncated(d, src), "truncated"),
        (lambda d, src: _garbage(d, src), "not a valid safetensors"),
        (lambda d, src: _pickle_only(d, src), "never unpickles"),
        (lambda d, src: _pickle_file(d), "never unpickles"),
        (lambda d, src: _missing_shard(d, src), "missing weight shard"),
        (lambda d, src: _bad_json(d, src), "not valid JSON"),
        (lambda d, src: _edit_tensors(d, src, wrong_shape=True),
         ("m/model.safetensors holds model.layers.0.mlp.up_proj.weight with shape [63, 32], but ",
          "m/config.json needs [64, 32]; copy the weights and the config.json that belong together.")),
        (lambda d, src: _edit_tensors(d, src, wrong_shape=False),
         "lack model.layers.1.mlp.up_proj.weight, which"),
    ],
    ids=["missing", "no-config", "bert", "gemma3-mm", "truncated", "garbage", "pickle-folder",
         "pickle-file", "missing-shard", "bad-json", "wrong-shape", "missing-tensor"],
)
def test_bad_model_inputs_give_one_clear_sentence(tmp_path, tiny_folder, make, expect):
    path = make(tmp_path, tiny_folder("llama"))
    with pytest.raises(CircuitDeskError) as info:
        load_model(path, device="cpu")
    text = _one_sentence(info.value)
    assert all(part in text for part in (expect if isinstance(expect, tuple) else (expect,))), text


def _copy(d, src):
    out = d / "m"
    shutil.copytree(src, out)
    return out


def _with_config(d, src, changes):
    out = _copy(d, src)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _truncated(d, src):
    out = _copy(d, src)
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return out


def _garbage(d, src):
    out = _copy(d, src)
    (out / "model.safetensors").write_bytes(b"\xff" * 64)
    return out


def _pickle_only(d, src):
    out = _copy(d, src)
    (out / "model.safetensors").unlink()
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    return out


def _pickle_file(d):
    p = d / "model.pt"
    p.write_bytes(b"\x80\x04")
    return p


def _missing_shard(d, src):
    out = _copy(d, src)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    return out


def _edit_tensors(d, src, wrong_shape: bool):
    """A weight file that does not fit its config.json: one tensor a row short, or one missing
    (transformers would fill either with random numbers)."""
    from safetensors.torch import load_file, save_file

    out = _copy(d, src)
    w = out / "model.safetensors"
    tensors = load_file(str(w))
    if wrong_shape:
        tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:-1].clone()
    else:
        del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(w), metadata={"format": "pt"})
    return out


def _bad_json(d, src):
    out = _copy(d, src)
    (out / "config.json").write_text("{not json")
    return out


@pytest.mark.parametrize("device", ["tpu", "gpu0", "cuda:7" if not torch.cuda.is_available() else "cuda:99"])
def test_unknown_or_missing_device_is_refused(tiny_folder, device):
    with pytest.raises(CircuitDeskError) as info:
        load_model(tiny_folder("llama"), device=device)
    assert device in _one_sentence(info.value)


def test_unknown_dtype_is_refused(tiny_folder):
    with pytest.raises(CircuitDeskError) as info:
        load_model(tiny_folder("llama"), device="cpu", dtype="float8")
    assert "float8" in _one_sentence(info.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads(tiny_folder, dtype):
    m = load_model(tiny_folder("llama"), device="cpu", dtype=dtype)
    assert next(m.hf.parameters()).dtype == getattr(torch, dtype)
    assert len(predict_next(m, "the cat", top_k=3).top) == 3


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt_is_refused(tiny_model, prompt):
    with pytest.raises(CircuitDeskError) as info:
        encode_prompt(tiny_model("llama"), prompt)
    assert "empty" in _one_sentence(info.value)


def test_prompt_longer_than_context_is_refused(tiny_model):
    m = tiny_model("llama")  # context 64
    with pytest.raises(CircuitDeskError) as info:
        encode_prompt(m, "the cat " * 40)
    assert "64" in _one_sentence(info.value)


def test_predict_matches_softmax_of_plain_forward(family, tiny_model):
    m = tiny_model(family)
    pred = predict_next(m, "when mary and john went to the store", top_k=5)
    ids = encode_prompt(m, "when mary and john went to the store")
    with torch.no_grad():
        probs = m.hf(ids).logits[0, -1].softmax(-1)
    ref = probs.topk(5)
    assert [t.token_id for t in pred.top] == ref.indices.tolist()
    assert [t.probability for t in pred.top] == pytest.approx(ref.values.tolist(), abs=1e-6)
    assert len(pred.prompt_tokens) == ids.shape[1]


def test_model_in_memory_matches_the_loaded_folder(tiny_folder, tiny_model):
    """A model built in memory (benchmarks at real shapes) is what load_model gives its saved folder."""
    from transformers import AutoModelForCausalLM

    from core.models import model_in_memory

    ref = tiny_model("gemma2")
    hf = AutoModelForCausalLM.from_pretrained(tiny_folder("gemma2"), dtype=torch.float32)
    m = model_in_memory(hf, ref.tokenizer, name="random gemma2")
    assert m.facts == ref.facts and m.adapter == ref.adapter
    assert m.device == ref.device and m.dtype == torch.float32 and m.fingerprint.files == {}
    assert not any(p.requires_grad for p in m.hf.parameters()) and not m.hf.training
    pa, pb = predict_next(m, "when mary and john went to the store", 5), predict_next(ref, "when mary and john went to the store", 5)
    assert [t.token_id for t in pa.top] == [t.token_id for t in pb.top]
    assert [t.probability for t in pa.top] == pytest.approx([t.probability for t in pb.top], abs=1e-6)


def test_model_in_memory_refuses_an_unsupported_architecture():
    from transformers import AutoModelForCausalLM, BertConfig

    from core.models import model_in_memory

    hf = AutoModelForCausalLM.from_config(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16, is_decoder=True))
    with pytest.raises(CircuitDeskError) as info:
        model_in_memory(hf, None)
    assert "bert" in _one_sentence(info.value)

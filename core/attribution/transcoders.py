"""Transcoders from a local folder, in the layouts circuit-tracer and GemmaScope publish.

* per-layer (PLT): ``layer_{i}.safetensors`` with ``W_enc`` [d_tc, d_in], ``W_dec`` [d_tc, d_out],
  ``b_enc`` [d_tc], ``b_dec`` [d_out], optional ``activation_function.threshold`` (JumpReLU,
  otherwise ReLU), ``W_skip`` [d_out, d_in] (skip = x @ W_skipᵀ) and ``k`` (TopK);
* cross-layer (CLT): ``W_enc_{i}.safetensors`` (``W_enc_{i}`` [d_tc, d], ``b_enc_{i}``, ``b_dec_{i}``,
  optional ``threshold_{i}``, ``W_skip_{i}`` [d, d] with skip = x @ W_skip) and
  ``W_dec_{i}.safetensors`` (``W_dec_{i}`` [d_tc, n_layers − i, d]): features of layer i write
  into every MLP output from layer i on;
* GemmaScope ``.npz`` per layer (``W_enc`` [d_in, d_tc], ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``),
  found as ``layer_{i}.npz`` or ``layer_{i}/**/params.npz``.

An optional ``config.yaml`` names the hooks (``feature_input_hook``, ``feature_output_hook``),
the activation (``activation: relu | jump_relu | topk`` with ``k``) and ``model_kind``. Files are
read with safetensors and ``numpy.load(allow_pickle=False)``; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from core.errors import CircuitDeskError
from core.models.fingerprint import sha256_file

# circuit-tracer / TransformerLens hook names -> our access points (per block)
INPUT_HOOKS = {
    "hook_resid_mid": "resid_mid",
    "resid_mid": "resid_mid",
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",
    "hook_mlp_in": "mlp_in",
    "mlp_in": "mlp_in",
}
OUTPUT_HOOKS = {
    "hook_mlp_out": "mlp_out",
    "mlp_out": "mlp_out",
    "mlp.hook_out": "mlp.out",
    "mlp.out": "mlp.out",
}


@dataclass
class TranscoderLayer:
    W_enc: torch.Tensor  # [d_tc, d_model]
    b_enc: torch.Tensor  # [d_tc]
    W_dec: torch.Tensor  # [d_tc, n_out, d_model]: n_out = 1 (PLT) or n_layers - layer (CLT)
    b_dec: torch.Tensor  # [d_model]
    threshold: torch.Tensor | None = None  # JumpReLU
    W_skip: torch.Tensor | None = None  # [d_model, d_model], skip(x) = x @ W_skip

    @property
    def d_transcoder(self) -> int:
        return self.W_enc.shape[0]


@dataclass
class TranscoderSet:
    layers: list[TranscoderLayer]
    kind: str  # "per-layer" | "cross-layer"
    activation: str  # "relu" | "jump_relu" | "topk"
    input_point: str  # "resid_mid" | "mlp_in"
    output_point: str  # "mlp_out" | "mlp.out"
    source: str
    k: int | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations [..., d_tc]."""
        if self.activation == "jump_relu":
            thr = self.layers[layer].threshold
            return pre * (pre > thr)
        if self.activation == "topk":
            act = torch.relu(pre)
            k = min(self.k or 1, act.shape[-1])
            vals, idx = act.topk(k, dim=-1)
            return torch.zeros_like(act).scatter(-1, idx, vals)
        return torch.relu(pre)

    @property
    def device(self) -> torch.device:
        """Where the transcoders' weights are (the CPU, when kept off a GPU-resident model)."""
        return self.layers[0].W_enc.device if self.layers else torch.device("cpu")

    def encode_pre(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., d_tc], on the transcoders' device."""
        t = self.layers[layer]
        return x.float().to(t.W_enc.device) @ t.W_enc.T + t.b_enc

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The linear skip path, on ``x``'s device (differentiable through the move)."""
        t = self.layers[layer]
        return None if t.W_skip is None else (x.float().to(t.W_skip.device) @ t.W_skip).to(x.device)

    def to(self, device) -> "TranscoderSet":
        for t in self.layers:
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"):
                v = getattr(t, name)
                if v is not None:
                    setattr(t, name, v.to(device))
        return self

    @property
    def sha256(self) -> str:
        """One digest over the files' sha256s (remembered per file): the set's identity, which a
        feature atlas of these transcoders is keyed by."""
        h = hashlib.sha256()
        for f in sorted(str(f) for f in self.files):
            h.update(sha256_file(Path(f)).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "kind": self.kind,
            "activation": self.activation,
            "k": self.k,
            "layers": self.n_layers,
            "d_transcoder": self.layers[0].d_transcoder if self.layers else 0,
            "input": self.input_point,
            "output": self.output_point,
            "skip": any(t.W_skip is not None for t in self.layers),
        }


def _read_config(folder: Path) -> dict:
    for name in ("config.yaml", "config.yml"):
        path = folder / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except UnicodeDecodeError:
                raise CircuitDeskError(f"The transcoder config {path} is not UTF-8 text.") from None
            except yaml.YAMLError as e:
                raise CircuitDeskError(_yaml_error(path, e)) from None
            if not isinstance(data, dict):
                raise CircuitDeskError(f"The transcoder config {path} is not a mapping of settings.")
            return data
    return {}


def _yaml_error(path: Path, e) -> str:
    """One sentence for a YAML error (PyYAML's own message spans several lines with a caret)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    problem = (getattr(e, "problem", None) or str(e)).strip().splitlines()[0]
    tag = re.search(r"tag:yaml.org,2002:(python/\S+?)'", problem)
    if tag:  # safe_load refuses these; say so plainly
        return (f"The transcoder config {path}{where} holds the Python tag !!{tag.group(1)}, which Circuit Desk "
                "never runs; write plain settings (text, numbers) instead.")
    return f"The transcoder config {path} is not valid YAML{where}: {problem.rstrip('.')}."


def _safetensors(path: Path, mapped: bool = False) -> dict[str, torch.Tensor]:
    try:
        if mapped:
            return _mapped_safetensors(path)
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CircuitDeskError(f"The transcoder file {path.name} cannot be read as safetensors ({e}).") from None


# safetensors dtypes numpy can map (bfloat16 as its bits, viewed as torch.bfloat16)
_MAPPABLE = {"F32": (np.float32, None), "F16": (np.float16, None), "F64": (np.float64, None),
             "BF16": (np.uint16, torch.bfloat16)}


def _mapped_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors mapped from disk, copy-on-write (the file is never written):
    float32 tensors take no memory until read, and pages can be dropped again, so transcoders larger
    than memory still load; other dtypes are converted to float32 in memory."""
    out = {}
    with safe_open(str(path), "pt") as f:  # validates the header and the offsets
        keys = list(f.keys())
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k in keys:
            info = header[k]
            start, end = info["data_offsets"]
            shape = tuple(info["shape"])
            if info["dtype"] not in _MAPPABLE or not shape or end == start:
                out[k] = f.get_tensor(k).float()  # scalars (k), empty and integer tensors: small
                continue
            np_dtype, view = _MAPPABLE[info["dtype"]]
            t = torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="c", offset=8 + n + start, shape=shape))
            out[k] = (t.view(view) if view is not None else t).float()
    return out


def _npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CircuitDeskError(f"The transcoder file {path.name} cannot be read as .npz ({e}).") from None


def _need(d: dict, key: str, path: Path) -> torch.Tensor:
    if key not in d:
        raise CircuitDeskError(f"The transcoder file {path.name} has no {key!r} tensor.")
    return d[key]


def _numbered(folder: Path, pattern: str) -> dict[int, Path]:
    rx = re.compile(pattern)
    out = {}
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def _gemmascope_files(folder: Path) -> dict[int, Path]:
    files = _numbered(folder, r"layer_(\d+)\.npz")
    for sub, idx in _numbered_dirs(folder).items():
        found = sorted(sub.rglob("params.npz"))
        if found:
            files.setdefault(idx, found[0])
    return files


def _numbered_dirs(folder: Path) -> dict[int, Path]:
    rx = re.compile(r"layer_(\d+)")
    return {int(m.group(1)): p for p in folder.iterdir() if p.is_dir() and (m := rx.fullmatch(p.name))}


def _check_layers(found: dict[int, Path], n_layers: int, folder: Path, what: str) -> None:
    missing = [i for i in range(n_layers) if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" …" if len(missing) > 8 else "")
        raise CircuitDeskError(
            f"The transcoder folder {folder} has no {what} for layer(s) {shown}; the model has {n_layers} layers."
        )


def load_transcoders(folder: str | Path, n_layers: int, d_model: int, device="cpu",
                     mapped: bool | None = None) -> TranscoderSet:
    """Load a transcoder folder for a model with ``n_layers`` layers of width ``d_model``.

    ``mapped`` (default: when ``device`` is the CPU): safetensors files are memory-mapped rather
    than read into memory (``_mapped_safetensors``); transcoders kept on the CPU beside a model on
    the GPU (``--transcoders-device cpu``) then cost no memory until used."""
    folder = Path(folder).expanduser()
    if mapped is None:
        mapped = torch.device(device).type == "cpu"
    if not folder.exists():
        raise CircuitDeskError(f"The transcoder folder {folder} does not exist.")
    if not folder.is_dir():
        raise CircuitDeskError(f"{folder} is not a folder; --transcoders takes a folder of transcoder files.")
    cfg = _read_config(folder)
    in_hook = str(cfg.get("feature_input_hook", "mlp.hook_in"))
    out_hook = str(cfg.get("feature_output_hook", "hook_mlp_out"))
    if in_hook not in INPUT_HOOKS:
        raise CircuitDeskError(f"The transcoders read from {in_hook!r}, which Circuit Desk does not know.")
    if out_hook not in OUTPUT_HOOKS:
        raise CircuitDeskError(f"The transcoders write to {out_hook!r}, which Circuit Desk does not know.")
    activation = str(cfg.get("activation", "")).lower().replace("-", "_") or None
    k = cfg.get("k")

    clt_enc = _numbered(folder, r"W_enc_(\d+)\.safetensors")
    plt = _numbered(folder, r"layer_(\d+)\.safetensors")
    npz = _gemmascope_files(folder)
    layers: list[TranscoderLayer] = []
    files: list[Path] = []
    if clt_enc or cfg.get("model_kind") == "cross_layer_transcoder":
        kind = "cross-layer"
        clt_dec = _numbered(folder, r"W_dec_(\d+)\.safetensors")
        _check_layers(clt_enc, n_layers, folder, "encoder file (W_enc_i.safetensors)")
        _check_layers(clt_dec, n_layers, folder, "decoder file (W_dec_i.safetensors)")
        has_thr = False
        for i in range(n_layers):
            enc, dec = _safetensors(clt_enc[i], mapped), _safetensors(clt_dec[i], mapped)
            files += [clt_enc[i], clt_dec[i]]
            W_dec = _need(dec, f"W_dec_{i}", clt_dec[i])
            if W_dec.ndim != 3 or W_dec.shape[1] != n_layers - i:
                raise CircuitDeskError(
                    f"{clt_dec[i].name}: W_dec_{i} has shape {tuple(W_dec.shape)}; expected "
                    f"[d_transcoder, {n_layers - i}, d_model] for a {n_layers}-layer model."
                )
            thr = enc.get(f"threshold_{i}")
            has_thr |= thr is not None
            layers.append(TranscoderLayer(
                W_enc=_need(enc, f"W_enc_{i}", clt_enc[i]),
                b_enc=_need(enc, f"b_enc_{i}", clt_enc[i]),
                W_dec=W_dec,
                b_dec=_need(enc, f"b_dec_{i}", clt_enc[i]),
                threshold=thr,
                W_skip=enc.get(f"W_skip_{i}"),
            ))
        activation = activation or ("jump_relu" if has_thr else "relu")
    elif plt:
        kind = "per-layer"
        _check_layers(plt, n_layers, folder, "file (layer_i.safetensors)")
        for i in range(n_layers):
            d = _safetensors(plt[i], mapped)
            files.append(plt[i])
            thr = d.get("activation_function.threshold", d.get("threshold"))
            if "k" in d and k is None:
                k = int(d["k"].item())
                activation = activation or "topk"
            W_skip = d.get("W_skip")
            layers.append(TranscoderLayer(
                W_enc=_need(d, "W_enc", plt[i]),
                b_enc=_need(d, "b_enc", plt[i]),
                W_dec=_need(d, "W_dec", plt[i])[:, None, :],
                b_dec=_need(d, "b_dec", plt[i]),
                threshold=thr,
                W_skip=None if W_skip is None else W_skip.T.contiguous(),
            ))
        activation = activation or ("jump_relu" if layers[0].threshold is not None else "relu")
    elif npz:
        kind = "per-layer"
        _check_layers(npz, n_layers, folder, "GemmaScope params (.npz)")
        for i in range(n_layers):
            d = _npz(npz[i])
            files.append(npz[i])
            layers.append(TranscoderLayer(
                W_enc=_need(d, "W_enc", npz[i]).T.contiguous(),
                b_enc=_need(d, "b_enc", npz[i]),
                W_dec=_need(d, "W_dec", npz[i])[:, None, :],
                b_dec=_need(d, "b_dec", npz[i]),
                threshold=_need(d, "threshold", npz[i]),
            ))
        activation = activation or "jump_relu"
    else:
        raise CircuitDeskError(
            f"No transcoder files in {folder}: expected layer_<i>.safetensors, W_enc_<i>.safetensors + "
            "W_dec_<i>.safetensors, or GemmaScope layer_<i>.npz / params.npz."
        )
    if activation not in ("relu", "jump_relu", "topk"):
        raise CircuitDeskError(f"Unknown transcoder activation {activation!r}; use relu, jump_relu or topk.")
    if activation == "topk" and not k:
        raise CircuitDeskError("TopK transcoders need k (in config.yaml or a 'k' tensor).")
    if activation == "jump_relu" and any(t.threshold is None for t in layers):
        raise CircuitDeskError("JumpReLU transcoders need a threshold for every layer.")
    for i, t in enumerate(layers):
        d_tc = t.W_enc.shape[0]
        if t.W_enc.ndim != 2 or t.W_enc.shape[1] != d_model or t.W_dec.shape[-1] != d_model or t.b_dec.shape[-1] != d_model:
            raise CircuitDeskError(
                f"The layer-{i} transcoder is for width {t.W_enc.shape[-1]}, but the model's d_model is {d_model}."
            )
        if t.W_dec.shape[0] != d_tc or t.b_enc.shape != (d_tc,):
            raise CircuitDeskError(f"The layer-{i} transcoder's encoder and decoder disagree on the number of features.")
        if t.threshold is not None and t.threshold.numel() not in (1, d_tc):
            raise CircuitDeskError(f"The layer-{i} transcoder's threshold has the wrong size.")
        if t.threshold is not None:
            t.threshold = t.threshold.reshape(-1)
        if t.W_skip is not None and t.W_skip.shape != (d_model, d_model):
            raise CircuitDeskError(f"The layer-{i} transcoder's skip matrix is not {d_model}×{d_model}.")
    return TranscoderSet(
        layers=layers, kind=kind, activation=activation, k=int(k) if k else None,
        input_point=INPUT_HOOKS[in_hook], output_point=OUTPUT_HOOKS[out_hook], source=str(folder), files=files,
    ).to(device)

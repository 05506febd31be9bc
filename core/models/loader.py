"""load_model(spec): the one way any model enters Circuit Desk (default, HF folder, .gguf file)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from core.errors import CircuitDeskError
from core.instrument import Instrumentation
from core.jobs import JobContext
from core.models.adapters import SUPPORTED_MODEL_TYPES, Adapter, adapter_for
from core.models import offload
from core.models.catalog import DEFAULT_NAME, DEFAULT_SPEC, default_gguf_path
from core.models.fingerprint import Fingerprint, fingerprint_files, fingerprint_folder, sha256_file
from core.models.validate import (
    PICKLE_SUFFIXES,
    asks_for_code,
    check_gguf,
    check_safetensors,
    read_config,
    tensor_file,
    weight_files,
)
from core.paths import cache_dir
from core.settings import PlacementSettings

log = logging.getLogger(__name__)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Bumped when the GGUF -> safetensors conversion changes, so stale caches are rebuilt.
_CONVERSION_VERSION = 1


@dataclass(frozen=True)
class ModelFacts:
    family: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_params: int
    context_length: int
    tied_embeddings: bool

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LoadedModel:
    """A model ready for every method: HF module, tokenizer, adapter, device/dtype, provenance."""

    hf: Any  # transformers PreTrainedModel (CausalLM)
    tokenizer: Any
    adapter: Adapter
    facts: ModelFacts
    device: torch.device
    dtype: torch.dtype
    name: str
    spec: str  # what the user asked for: "default", a folder, a .gguf path
    source: Path  # the file/folder the weights come from (the .gguf for converted models)
    fingerprint: Fingerprint
    instrument: Instrumentation = field(repr=False)  # installed on ``hf`` at load, inert until a session starts
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    # where accelerate put each part (module -> "cuda:0" | "cpu" | "disk"); None: all on ``device``
    device_map: dict[str, str] | None = None

    @property
    def transcoders_device(self) -> torch.device:
        """Where transcoders of this model are loaded: beside the model, or the CPU when asked."""
        return torch.device("cpu") if self.placement.transcoders_device == "cpu" else self.device

    def summary(self) -> dict:
        """Provenance for reports and ``--json`` outputs."""
        out = {
            "name": self.name,
            "spec": self.spec,
            "source": str(self.source),
            "sha256": self.fingerprint.sha256,
            "files": self.fingerprint.to_json()["files"],
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.facts.to_json(),
        }
        if self.device_map is not None:
            out["device_map"] = dict(self.device_map)
        return out


# ---------------------------------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CircuitDeskError(f"Device '{device}' was requested but no CUDA GPU is available; use --device cpu or auto.")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CircuitDeskError(f"Device '{device}' does not exist; this machine has {torch.cuda.device_count()} GPU(s).")
        return dev
    raise CircuitDeskError(f"Unknown device '{device}'; use auto, cpu or cuda.")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise CircuitDeskError(f"Unsupported dtype {dtype}; use float32, bfloat16 or float16.")
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise CircuitDeskError(f"Unknown dtype '{dtype}'; use float32, bfloat16 or float16.")
    return DTYPES[key]


# ---------------------------------------------------------------------------------------------
def load_model(
    spec: str | os.PathLike = DEFAULT_SPEC,
    device: str = "auto",
    dtype: str | torch.dtype = "float32",
    ctx: JobContext | None = None,
    placement: PlacementSettings | None = None,
    device_map: dict[str, str | int] | None = None,
) -> LoadedModel:
    """Load a model for tracing: ``default``, a Hugging Face model folder, or a ``.gguf`` file.

    ``placement``: offload with accelerate's device map (``core.models.offload``) and where
    transcoders go. ``device_map``: an explicit accelerate device map (module -> GPU index, "cpu"
    or "disk") instead of the planned one.

    Raises ``CircuitDeskError`` with one sentence for any problem the user can fix.
    """
    ctx = ctx or JobContext()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    placement = placement or PlacementSettings()
    placement.validate()
    spec_str = str(spec).strip()
    if not spec_str:
        raise CircuitDeskError("No model given; use 'default', a model folder or a .gguf file.")

    if spec_str == DEFAULT_SPEC:
        gguf = default_gguf_path()
        folder, fp = _gguf_cache(gguf, ctx.sub(0.0, 0.7))
        name, source = DEFAULT_NAME, gguf
    else:
        path = Path(spec_str).expanduser()
        if not path.exists():
            raise CircuitDeskError(f"Model path not found: {path}.")
        if path.is_dir() and not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                path = ggufs[0]
            else:
                raise CircuitDeskError(
                    f"{path} has no config.json; choose a Hugging Face model folder or a .gguf file."
                )
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                folder, fp = _gguf_cache(path, ctx.sub(0.0, 0.7))
                name, source = path.stem, path
            elif path.suffix.lower() in PICKLE_SUFFIXES:
                raise CircuitDeskError(
                    f"{path.name} is a pickle-based checkpoint, which Circuit Desk never unpickles; "
                    "convert it to safetensors on a trusted machine."
                )
            elif path.name == "config.json" or path.suffix.lower() == ".safetensors":
                return load_model(path.parent, device, torch_dtype, ctx, placement, device_map)
            else:
                raise CircuitDeskError(
                    f"{path.name} is not a model; choose a Hugging Face model folder or a .gguf file."
                )
        else:
            folder, fp = path, None
            name, source = path.name, path

    ctx.check_cancelled()
    ctx.progress(0.7, "Reading weights")
    loaded = _load_folder(folder, torch_device, torch_dtype, fp, name=name, spec=spec_str, source=source,
                          converted=fp is not None, placement=placement, device_map=device_map)
    ctx.progress(1.0, "Model ready")
    return loaded


def _load_folder(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    fingerprint: Fingerprint | None,
    *,
    name: str,
    spec: str,
    source: Path,
    converted: bool = False,
    placement: PlacementSettings | None = None,
    device_map: dict | None = None,
) -> LoadedModel:
    config = read_config(folder)
    model_type = config.get("model_type")
    adapter = adapter_for(str(model_type))
    if adapter is None:
        hint = " (multimodal Gemma 3; use a text-only checkpoint)" if model_type == "gemma3" else ""
        if config.get("auto_map"):
            hint = " (its auto_map names custom code, which Circuit Desk never runs)"
        raise CircuitDeskError(
            f"Unsupported model_type '{model_type}'{hint} in {folder / 'config.json'}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    for wf in weight_files(folder):
        check_safetensors(wf)
    if fingerprint is None:
        fingerprint = fingerprint_folder(folder)

    from transformers import (  # deferred: transformers (2.5 s) loads with a model only
        AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast)

    _configure_transformers()
    # Our own GGUF conversions hold the exact tokenizer.json written from the GGUF: load it as is
    # (1.4 s faster than AutoTokenizer's class resolution). User folders get AutoTokenizer, the
    # reference behaviour for their model_type.
    tokenizer_class = PreTrainedTokenizerFast if converted else AutoTokenizer
    try:
        tokenizer = tokenizer_class.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        coded = [n for n in ("tokenizer_config.json", "config.json") if asks_for_code(folder / n)]
        if coded:
            raise CircuitDeskError(
                f"The tokenizer in {folder} needs custom code ({coded[0]} has an auto_map), which Circuit Desk "
                "never runs; use a checkpoint whose tokenizer is a standard tokenizer.json."
            ) from exc
        raise CircuitDeskError(f"Cannot load the tokenizer in {folder} ({_short(exc)}); copy the tokenizer files with the model.") from exc
    try:
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        # config.json may name a Hub kernel as its attention ("kernels-community/…": code that the
        # `kernels` package fetches and runs); load with plain attention, the instrumentation
        # installs its own right after.
        hf_config._attn_implementation = "eager"
        placing = _placing(device, dtype, fingerprint, placement or PlacementSettings(), device_map)
        # Mismatched shapes are reported by us (transformers' own report goes to its silenced log).
        hf, info = AutoModelForCausalLM.from_pretrained(
            folder,
            config=hf_config,
            dtype=dtype,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            **placing,
        )
    except CircuitDeskError:
        raise
    except Exception as exc:
        raise CircuitDeskError(f"Cannot load the model in {folder} ({_short(exc)}).") from exc
    _check_weights_fit(folder, info)
    hf.eval()
    hf.requires_grad_(False)  # methods take gradients w.r.t. activations, never weights
    placed = None
    if placing:
        placed = offload.placed_device_map(hf, device)
        device = offload.main_device(hf, adapter.embed, placed)
        log.info("device map of %s: %s", folder, offload.describe(placed))
    else:
        hf.to(device)

    facts = _facts(hf, adapter, str(model_type))
    return LoadedModel(
        hf=hf,
        tokenizer=tokenizer,
        adapter=adapter,
        facts=facts,
        device=device,
        dtype=dtype,
        name=name,
        spec=spec,
        source=source,
        fingerprint=fingerprint,
        instrument=Instrumentation(hf, adapter, facts.n_heads, device),
        placement=placement or PlacementSettings(),
        device_map=placed,
    )


def model_in_memory(hf, tokenizer, name: str = "in-memory model") -> LoadedModel:
    """A ``LoadedModel`` around a transformers causal LM already in memory on one device (a model
    built from a config with random weights: benchmarks of a real model's shape, tests).

    No file holds it, so its fingerprint is empty and it cannot be verified later; everything
    else (adapter, facts, instrumentation) is what ``load_model`` gives a folder of that model."""
    model_type = str(getattr(hf.config, "model_type", ""))
    adapter = adapter_for(model_type)
    if adapter is None:
        raise CircuitDeskError(f"Unsupported model_type '{model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
    dtype = resolve_dtype(hf.dtype)
    devices = {p.device for p in hf.parameters()}
    if len(devices) != 1:
        raise CircuitDeskError(f"The model {name} is spread over {len(devices)} devices; "
                               "an in-memory model must sit on one.")
    hf.eval()
    hf.requires_grad_(False)  # as load_model: gradients w.r.t. activations only
    device = devices.pop()
    facts = _facts(hf, adapter, model_type)
    return LoadedModel(hf=hf, tokenizer=tokenizer, adapter=adapter, facts=facts, device=device, dtype=dtype,
                       name=name, spec=name, source=Path(name), fingerprint=Fingerprint(),
                       instrument=Instrumentation(hf, adapter, facts.n_heads, device))


def _placing(device: torch.device, dtype: torch.dtype, fingerprint: Fingerprint, placement: PlacementSettings,
             device_map: dict | None) -> dict:
    """``from_pretrained``'s placement arguments: none for one device, else accelerate's device map
    (planned from the memory budgets, or the one given) and the offload folder."""
    if device_map is None and not placement.offloaded:
        return {}
    folder = offload.offload_folder(fingerprint.sha256, dtype)
    if device_map is not None:
        return {"device_map": dict(device_map), "offload_folder": str(folder)}
    return {"device_map": "auto", "max_memory": offload.max_memory(device, placement), "offload_folder": str(folder)}


def _check_weights_fit(folder: Path, info: dict) -> None:
    """Refuse weights that do not fit the config: transformers would fill a wrong-shaped or missing
    tensor with random numbers, and every result would be silently meaningless."""
    config = folder / "config.json"
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, found, expected = mismatched[0]
        where = tensor_file(folder, key) or folder
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CircuitDeskError(
            f"The weight file {where} holds {key} with shape {list(found)}{more}, but {config} needs "
            f"{list(expected)}; copy the weights and the config.json that belong together."
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CircuitDeskError(
            f"The weights in {folder} lack {missing[0]}{more}, which {config} needs; copy the complete model."
        )


def _facts(hf, adapter: Adapter, model_type: str) -> ModelFacts:
    c = hf.config
    n_heads = c.num_attention_heads
    d_model = c.hidden_size
    params = {id(p): p.numel() for p in hf.parameters()}
    return ModelFacts(
        family=adapter.family,
        model_type=model_type,
        n_layers=c.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
        d_model=d_model,
        d_head=getattr(c, "head_dim", None) or d_model // n_heads,
        d_mlp=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d_model,
        vocab_size=c.vocab_size,
        n_params=sum(params.values()),
        context_length=getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", 0),
        tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
    )


# ---------------------------------------------------------------------------------------------
def _gguf_cache(gguf: Path, ctx) -> tuple[Path, Fingerprint]:
    """Dequantize a .gguf once into a safetensors folder under the user cache dir; reuse it after.

    The fingerprint is the GGUF's own sha256: that is the file an auditor can check.
    """
    gguf = gguf.resolve()
    ctx.progress(0.0, "Hashing GGUF file")
    fp = fingerprint_files([gguf])
    digest = fp.files[gguf.name]
    folder = cache_dir() / "gguf" / f"{digest[:24]}-v{_CONVERSION_VERSION}"
    if (folder / "source.json").exists():
        return folder, fp

    # A cache hit needs no parse: the digest proves the file is the one converted before.
    ctx.progress(0.05, "Checking the GGUF file")
    check_gguf(gguf)
    ctx.progress(0.1, "Converting GGUF to safetensors (first load only)")
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: as in _load_folder

    _configure_transformers()
    folder.parent.mkdir(parents=True, exist_ok=True)
    # transformers treats the folder around ``gguf_file`` as a model repository: a config.json or
    # tokenizer_config.json there could name custom code (auto_map) or override the GGUF's own
    # settings. Convert from a fresh private folder that holds nothing but the GGUF, so the file's
    # own metadata and tokenizer are all that is read.
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=folder.parent) as private:
        alone = Path(private) / "model.gguf"
        _link_or_copy(gguf, alone)
        try:
            tokenizer = AutoTokenizer.from_pretrained(private, gguf_file=alone.name, local_files_only=True,
                                                      trust_remote_code=False)
            ctx.check_cancelled()
            hf = AutoModelForCausalLM.from_pretrained(private, gguf_file=alone.name, dtype=torch.float32,
                                                      local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise CircuitDeskError(f"Cannot convert the GGUF file {gguf} ({_short(exc)}).") from exc
    ctx.check_cancelled()
    ctx.progress(0.8, "Writing the converted model to the cache")
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        config = hf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # weights are dequantized float32 now
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(hf, str(tmp / "model.safetensors"))  # handles tied embeddings
        (tmp / "source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": digest, "conversion": _CONVERSION_VERSION}, indent=1)
        )
        try:
            os.replace(tmp, folder)
        except OSError:  # another process converted it meanwhile
            if not (folder / "source.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, fp


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` shows ``src``'s bytes: a symbolic link, or a copy where links are not allowed (Windows)."""
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _configure_transformers() -> None:
    """Quiet logs, no progress bars, and no question on stdin ever.

    Every call passes ``trust_remote_code=False``; should some nested call inside transformers
    leave it unset, a timeout of 0 makes transformers refuse custom code instead of asking
    "Do you wish to run the custom code? [y/N]", which piped input could answer.
    """
    from transformers import dynamic_module_utils  # deferred: as in _load_folder
    from transformers.utils import logging as hf_logging  # deferred: as in _load_folder

    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]

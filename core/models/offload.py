"""Models larger than GPU memory: accelerate's device map, as transformers applies it.

``--offload`` (or a memory budget) loads a model with ``device_map="auto"``: accelerate fills the
GPU(s) with whole decoder layers, puts the layers that do not fit in CPU memory and the rest on disk,
and loads each offloaded layer onto the execution device for its own forward pass. Nothing here
runs a layer: this module only plans the budgets, names the offload folder and reads back where
the layers went. Where weights are read outside a forward pass, ``core.instrument.weights``
materializes them.

On a machine without CUDA, the CPU is the execution device: layers that fit in the CPU budget are
plain CPU modules, the rest are memory-mapped from disk (transformers maps a safetensors checkpoint
in place; weights it must convert go to the offload folder under the cache folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import CircuitDeskError
from core.instrument.weights import execution_device
from core.paths import cache_dir
from core.settings import PlacementSettings, memory_bytes

OFFLOAD_TARGETS = ("cpu", "disk")  # accelerate's names for devices that only store weights


def offload_folder(sha256: str, dtype: torch.dtype) -> Path:
    """Where disk-offloaded weights of one model at one dtype may be written (reused by later loads)."""
    folder = cache_dir() / "offload" / f"{sha256[:24]}-{str(dtype).removeprefix('torch.')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def max_memory(device: torch.device, placement: PlacementSettings) -> dict:
    """accelerate's ``max_memory``: bytes per GPU index and for ``"cpu"``.

    GPUs: the one ``device`` names (``cuda:1``), every visible GPU for ``cuda``/``auto``, none for
    ``cpu``. Budgets not given are accelerate's own estimate of what is free."""
    from accelerate.utils import get_max_memory  # deferred: accelerate loads with a device-mapped model only

    free = get_max_memory()
    out: dict = {}
    if device.type == "cuda":
        gpus = [device.index] if device.index is not None else list(range(torch.cuda.device_count()))
        for i in gpus:
            out[i] = memory_bytes(placement.max_gpu_memory, "--max-gpu-memory") if placement.max_gpu_memory \
                else free.get(i, 0)
    elif placement.max_gpu_memory is not None:
        raise CircuitDeskError("--max-gpu-memory needs a GPU; this model runs on the CPU (--device cpu or no CUDA).")
    out["cpu"] = memory_bytes(placement.max_cpu_memory, "--max-cpu-memory") if placement.max_cpu_memory \
        else free.get("cpu", 0)
    return out


def placed_device_map(hf, device: torch.device) -> dict[str, str]:
    """Where each part of a loaded model went: module name -> ``cuda:N``, ``cpu`` or ``disk``
    (``{"": device}`` for a model that fitted on one device)."""
    raw = getattr(hf, "hf_device_map", None) or {"": str(device)}
    return {name: _device_name(dev) for name, dev in raw.items()}


def _device_name(dev) -> str:
    if isinstance(dev, int):
        return f"cuda:{dev}"
    return str(dev)


def main_device(hf, embed: str, device_map: dict[str, str]) -> torch.device:
    """The device inputs go to: where the embedding computes (a GPU, or the CPU when every layer is
    on the CPU or disk)."""
    if set(device_map.values()) <= set(OFFLOAD_TARGETS):
        return torch.device("cpu")
    return execution_device(hf.get_submodule(embed))


def is_offloaded(device_map: dict[str, str] | None) -> bool:
    """More than one device, or weights on disk: accelerate's hooks move weights and activations."""
    return bool(device_map) and (len(set(device_map.values())) > 1 or "disk" in device_map.values())


def describe(device_map: dict[str, str]) -> dict[str, int]:
    """How many device-map entries each device holds (``{"cpu": 3, "disk": 2}``), for messages."""
    out: dict[str, int] = {}
    for dev in device_map.values():
        out[dev] = out.get(dev, 0) + 1
    return out

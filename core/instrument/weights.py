"""A module's weights as tensors, wherever accelerate has put them.

A model loaded with a device map (``core.models.offload``) keeps the layers that did not fit on the
GPU in CPU memory or on disk: accelerate leaves their parameters on the ``meta`` device and loads
them just for the module's own forward pass (its ``AlignDevicesHook``). Code that reads a weight
outside that pass (a basis' decoder directions, the unembedding, a norm's gain inside a forward
hook, which runs after the weights went back) reads it through ``module_tensor``: the real values,
on the module's execution device. A module that is not offloaded gives its own parameter, as is.
"""

from __future__ import annotations

import torch


def module_tensor(module: torch.nn.Module, name: str = "weight") -> torch.Tensor | None:
    """``module.<name>`` (a parameter or buffer, detached), materialized when offloaded; None when
    the module has no such tensor."""
    t = getattr(module, name, None)
    if t is None:
        return None
    if t.device.type != "meta":
        return t.detach()
    from accelerate.utils import align_module_device  # deferred: only offloaded models need accelerate here

    # accelerate's own context: the hook loads the module's tensors onto its execution device (from
    # the CPU copy or the memory-mapped file) and puts them back on ``meta`` on exit; the tensor
    # read inside stays valid after.
    with align_module_device(module):
        t = getattr(module, name)
    if t.device.type == "meta":
        raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no offload hook holds its values")
    return t.detach()


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: its offload hook's execution device, else its parameters'."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")

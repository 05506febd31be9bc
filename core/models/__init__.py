"""Model loading: ``load_model(spec)`` -> ``LoadedModel`` for every supported family.

The loader (and torch) is imported on first use, so listing models or opening the GUI stays fast.
"""

from core.models.adapters import ADAPTERS, SUPPORTED_MODEL_TYPES, Adapter, adapter_for
from core.models.catalog import DEFAULT_SPEC, default_gguf_path, list_models
from core.models.fingerprint import Fingerprint

_LAZY = {"DTYPES", "LoadedModel", "ModelFacts", "load_model", "model_in_memory", "resolve_device", "resolve_dtype"}


def __getattr__(name: str):
    if name in _LAZY:
        from core.models import loader  # deferred: imports torch; core.models is on the GUI's start path

        return getattr(loader, name)
    raise AttributeError(f"module 'core.models' has no attribute {name!r}")


__all__ = [
    "ADAPTERS",
    "DEFAULT_SPEC",
    "SUPPORTED_MODEL_TYPES",
    "Adapter",
    "Fingerprint",
    "adapter_for",
    "default_gguf_path",
    "list_models",
    *sorted(_LAZY),
]

"""Hook installation and the session state behind ``Instrumentation`` (see the package docstring)."""

from __future__ import annotations

import fnmatch
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Union

import torch

from core.instrument.attention import ATTN_IMPLEMENTATION, register

if TYPE_CHECKING:
    from core.models.loader import LoadedModel

PatchValue = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class Trace:
    """What one instrumented session recorded."""

    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    leaves: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cache[name]

    def __contains__(self, name: str) -> bool:
        return name in self.cache

    def grad(self, name: str) -> torch.Tensor | None:
        """Gradient at a ``grad`` point after ``backward()`` / ``autograd.grad`` on the leaf."""
        return self.leaves[name].grad

    def leaf(self, name: str) -> torch.Tensor:
        """The zero-valued tensor added at a ``grad`` point (differentiate w.r.t. it)."""
        return self.leaves[name]


@dataclass
class _Session:
    cache: set[str]
    patch: dict[str, PatchValue]
    add: dict[str, torch.Tensor]
    grad: set[str]
    freeze_attention: bool
    freeze_norms: bool
    keep_graph: bool
    trace: Trace


class Instrumentation:
    """Named access points on a loaded model; installed once at load, inert between sessions."""

    def __init__(self, model: "LoadedModel") -> None:
        self.model = model
        self._state: _Session | None = None
        self._lock = threading.Lock()
        self.points: list[str] = []
        register()
        hf = model.hf
        hf.set_attn_implementation(ATTN_IMPLEMENTATION)
        self._install(hf, model.adapter, model.facts.n_heads)

    # -- installation -----------------------------------------------------------------------------
    def _install(self, hf, a, n_heads: int) -> None:
        self._output_point(hf.get_submodule(a.embed), "embed")
        if a.pos_embed:
            self._output_point(hf.get_submodule(a.pos_embed), "pos_embed")
        for l, block in enumerate(hf.get_submodule(a.layers)):
            p = f"blocks.{l}."
            attn = block.get_submodule(a.attn)
            mlp = block.get_submodule(a.mlp)
            for norm_name in filter(None, (a.attn_in_norm, a.mlp_in_norm, a.attn_out_norm, a.mlp_out_norm)):
                self._freezable_norm(block.get_submodule(norm_name), a.norm_kind)
            self._input_point(block, p + "resid_pre")
            self._input_point(attn, p + "attn_in")
            attn._circuitdesk_pattern_hook = partial(self._pattern, p + "attn.pattern")
            self._input_point(attn.get_submodule(a.o_proj), p + "attn.z", heads=n_heads)
            self._output_point(block.get_submodule(a.attn_out_norm) if a.attn_out_norm else attn, p + "attn_out")
            self._input_point(mlp, p + "mlp_in")
            self._input_point(mlp.get_submodule(a.down_proj), p + "mlp.post")
            self._output_point(block.get_submodule(a.mlp_out_norm) if a.mlp_out_norm else mlp, p + "mlp_out")
            self._output_point(block, p + "resid_post")
            # The pattern point is fired from inside the attention function; list it in order.
            self.points.insert(self.points.index(p + "attn.z"), p + "attn.pattern")
        final_norm = hf.get_submodule(a.final_norm)
        self._freezable_norm(final_norm, a.norm_kind)
        self._output_point(final_norm, "final_norm")
        self._output_point(hf, "logits")

    def _input_point(self, module, name: str, heads: int | None = None) -> None:
        self.points.append(name)

        def hook(mod, args, kwargs):
            if self._state is None:
                return None
            if args:
                x = args[0]
            else:
                x = kwargs["hidden_states"]
            if heads is not None:  # [b, s, h*d] <-> [b, s, h, d]
                y = self._fire(name, x.unflatten(-1, (heads, -1))).flatten(-2)
            else:
                y = self._fire(name, x)
            if args:
                return (y, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": y}

        module.register_forward_pre_hook(hook, with_kwargs=True)

    def _output_point(self, module, name: str) -> None:
        self.points.append(name)

        def hook(mod, args, output):
            if self._state is None:
                return None
            if isinstance(output, torch.Tensor):
                return self._fire(name, output)
            if isinstance(output, tuple):
                return (self._fire(name, output[0]), *output[1:])
            output.logits = self._fire(name, output.logits)  # ModelOutput of the CausalLM
            return output

        module.register_forward_hook(hook)

    def _freezable_norm(self, module, kind: str) -> None:
        """Freeze the normalization scale: same value, gradient through x·s·w with s held fixed."""
        eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)

        def hook(mod, args, output):
            st = self._state
            if st is None or not st.freeze_norms:
                return None
            x = args[0]
            delta = (x - x.detach()).float()  # zero-valued, carries the gradient
            xf = x.detach().float()
            if kind == "layer":
                scale = torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + eps)
                delta = delta - delta.mean(-1, keepdim=True)
                weight = mod.weight.float() if mod.weight is not None else 1.0
            else:
                scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
                weight = 1.0 + mod.weight.float() if kind == "rms_offset" else mod.weight.float()
            return output.detach() + (delta * scale * weight).to(output.dtype)

        module.register_forward_hook(hook)

    # -- firing -----------------------------------------------------------------------------------
    def _pattern(self, name: str, pattern: torch.Tensor) -> torch.Tensor:
        st = self._state
        if st is None:
            return pattern
        if st.freeze_attention:
            pattern = pattern.detach()
        return self._fire(name, pattern)

    def _fire(self, name: str, x: torch.Tensor) -> torch.Tensor:
        st = self._state
        if name in st.patch:
            value = st.patch[name]
            new = value(x) if callable(value) else value
            if new.shape != x.shape:
                raise ValueError(f"patch for {name} has shape {tuple(new.shape)}, expected {tuple(x.shape)}")
            x = new.to(device=x.device, dtype=x.dtype)
        if name in st.add:
            x = x + st.add[name].to(device=x.device, dtype=x.dtype)
        if name in st.grad:
            leaf = torch.zeros_like(x, requires_grad=True)
            st.trace.leaves[name] = leaf
            x = x + leaf
        if name in st.cache:
            st.trace.cache[name] = x if st.keep_graph else x.detach()
        return x

    # -- public API -------------------------------------------------------------------------------
    def match(self, patterns: str | Iterable[str]) -> list[str]:
        """Access point names matching names or glob patterns (``blocks.*.attn.z``)."""
        if isinstance(patterns, str):
            patterns = [patterns]
        out: list[str] = []
        for pat in patterns:
            hits = [p for p in self.points if fnmatch.fnmatchcase(p, pat)]
            if not hits:
                raise KeyError(f"no access point matches {pat!r}")
            out.extend(h for h in hits if h not in out)
        return out

    @contextmanager
    def session(
        self,
        *,
        cache: str | Iterable[str] = (),
        patch: Mapping[str, PatchValue] | None = None,
        add: Mapping[str, torch.Tensor] | None = None,
        grad: str | Iterable[str] = (),
        freeze_attention: bool = False,
        freeze_norms: bool = False,
        keep_graph: bool = False,
    ) -> Iterator[Trace]:
        """Activate the hooks for the forward passes run inside the ``with`` block.

        One session at a time per model (a second one waits): jobs on one model are serialized.
        """
        patch = dict(patch or {})
        add = dict(add or {})
        self.match(list(patch) + list(add))  # unknown names fail loudly
        trace = Trace()
        state = _Session(
            cache=set(self.match(cache)) if cache else set(),
            patch=patch,
            add=add,
            grad=set(self.match(grad)) if grad else set(),
            freeze_attention=freeze_attention,
            freeze_norms=freeze_norms,
            keep_graph=keep_graph,
            trace=trace,
        )
        with self._lock:
            self._state = state
            try:
                yield trace
            finally:
                self._state = None

    def forward(self, input_ids: torch.Tensor, **session_options) -> tuple[torch.Tensor, Trace]:
        """One instrumented forward pass: returns (logits, trace)."""
        with self.session(**session_options) as trace:
            logits = self.model.hf(input_ids=input_ids.to(self.model.device), use_cache=False).logits
        return logits, trace

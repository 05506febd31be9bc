"""Hook installation and the session state behind ``Instrumentation`` (see the package docstring)."""

from __future__ import annotations

import fnmatch
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Union

import torch

from core.instrument.attention import ATTN_IMPLEMENTATION, register
from core.instrument.norms import norm_eps, norm_linear
from core.instrument.weights import module_tensor

PatchValue = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


class ModuleLayout(Protocol):
    """Where a model keeps the modules the hooks attach to: submodule paths, relative to the
    CausalLM, a block, the attention or the MLP module. ``core.models.adapters.Adapter`` is one."""

    @property
    def embed(self) -> str: ...
    @property
    def pos_embed(self) -> str | None: ...
    @property
    def layers(self) -> str: ...
    @property
    def attn(self) -> str: ...
    @property
    def qkv(self) -> tuple[str, ...]: ...
    @property
    def o_proj(self) -> str: ...
    @property
    def attn_in_norm(self) -> str: ...
    @property
    def attn_out_norm(self) -> str | None: ...
    @property
    def mlp_in_norm(self) -> str: ...
    @property
    def mlp(self) -> str: ...
    @property
    def act(self) -> str: ...
    @property
    def down_proj(self) -> str: ...
    @property
    def mlp_out_norm(self) -> str | None: ...
    @property
    def final_norm(self) -> str: ...
    @property
    def norm_kind(self) -> str: ...
    @property
    def gated_mlp(self) -> bool: ...
    @property
    def conv1d(self) -> bool: ...


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
    freeze_mlp: bool
    keep_graph: bool
    stop_grad: set[str]
    trace: Trace
    split_resid: dict[int, torch.Tensor] = field(default_factory=dict)


class Instrumentation:
    """Named access points on a loaded model; installed once at load, inert between sessions.

    ``hf``: the transformers CausalLM (its attention is switched to the instrumented one);
    ``layout``: where its modules are; ``n_heads``: query heads per layer; ``device``: where
    ``forward`` sends its inputs.
    """

    def __init__(self, hf, layout: ModuleLayout, n_heads: int, device: torch.device) -> None:
        self.hf = hf
        self.device = device
        self._state: _Session | None = None
        self._lock = threading.Lock()
        self.points: list[str] = []
        register()
        hf.set_attn_implementation(ATTN_IMPLEMENTATION)
        self._install(hf, layout, n_heads)

    # -- installation -----------------------------------------------------------------------------
    def _install(self, hf, a: ModuleLayout, n_heads: int) -> None:
        self._output_point(hf.get_submodule(a.embed), "embed")
        if a.pos_embed:
            self._output_point(hf.get_submodule(a.pos_embed), "pos_embed")
        for l, block in enumerate(hf.get_submodule(a.layers)):
            p = f"blocks.{l}."
            attn = block.get_submodule(a.attn)
            mlp = block.get_submodule(a.mlp)
            self._input_point(block, p + "resid_pre")
            self._split_qkv(l, block, attn, a, n_heads)
            self._freezable_norm(block.get_submodule(a.attn_in_norm), a.norm_kind, p + "attn_norm.scale")
            self._input_point(attn, p + "attn_in")
            self.points += [p + "attn.q_rot", p + "attn.k_rot", p + "attn.pattern"]  # fired inside the attention function
            attn._circuitdesk_qk_hook = partial(self._qk, p + "attn.q_rot", p + "attn.k_rot")
            attn._circuitdesk_pattern_hook = partial(self._pattern, p + "attn.pattern")
            self._input_point(attn.get_submodule(a.o_proj), p + "attn.z", heads=n_heads)
            if a.attn_out_norm:
                self._freezable_norm(block.get_submodule(a.attn_out_norm), a.norm_kind, p + "attn_post_norm.scale")
            self._output_point(block.get_submodule(a.attn_out_norm) if a.attn_out_norm else attn, p + "attn_out")
            mlp_norm = block.get_submodule(a.mlp_in_norm)
            self._input_point(mlp_norm, p + "resid_mid")
            self._freezable_norm(mlp_norm, a.norm_kind, p + "mlp_norm.scale")
            self._input_point(mlp, p + "mlp_in")
            self._multiplier_point(mlp.get_submodule(a.act), a.gated_mlp, p + "mlp.mult")
            self._input_point(mlp.get_submodule(a.down_proj), p + "mlp.post")
            self._output_point(mlp, p + "mlp.out")
            if a.mlp_out_norm:
                self._freezable_norm(block.get_submodule(a.mlp_out_norm), a.norm_kind, p + "mlp_post_norm.scale")
            self._output_point(block.get_submodule(a.mlp_out_norm) if a.mlp_out_norm else mlp, p + "mlp_out")
            self._output_point(block, p + "resid_post")
        final_norm = hf.get_submodule(a.final_norm)
        self._input_point(final_norm, "resid_final")
        self._freezable_norm(final_norm, a.norm_kind, "final_norm.scale")
        self._output_point(final_norm, "final_norm")
        self._output_point(hf, "logits")

    def _split_qkv(self, l: int, block, attn, a: ModuleLayout, n_heads: int) -> None:
        """Per-query-head q/k/v points of layer ``l``.

        ``blocks.{l}.attn.{q,k,v}_in`` [b, s, n_heads, d]: the residual stream (before the
        attention norm) as one path of one query head reads it. When any of them is used, that
        layer computes every head's q, k and v from its own copy (normalized separately), so a
        path can be patched alone: component circuits patch edges into heads by path this way.

        ``blocks.{l}.attn.{q,k,v}`` [b, s, n_heads, d_head]: each query head's query, key and
        value projections (before rotary embeddings or q/k norms). A gradient there is the
        gradient of that one path (its residual-stream gradient is one projection and one norm
        VJP away, see ``projected_norm_vjp``), at the cost of a plain pass.

        GQA: when any of these points is used, keys and values are materialized per query head
        (a copy of their key/value head's), so the attention function sees as many key/value heads
        as query heads and each query head's k/v path is its own.
        """
        split_names = tuple(f"blocks.{l}.attn.{p}_in" for p in "qkv")
        head_names = tuple(f"blocks.{l}.attn.{p}" for p in "qkv")
        self.points.extend(split_names + head_names)
        norm = block.get_submodule(a.attn_in_norm)

        def split() -> bool:
            return self._state is not None and any(self._touched(n) for n in split_names)

        def active() -> bool:
            return self._state is not None and any(self._touched(n) for n in split_names + head_names)

        def record(mod, args, kwargs):
            if split():
                self._state.split_resid[l] = args[0] if args else kwargs["hidden_states"]
            return None

        block.register_forward_pre_hook(record, with_kwargs=True)

        def per_query_head(t: torch.Tensor) -> torch.Tensor:
            """[..., n, d_head] for n query or key/value heads -> [..., n_heads, d_head]."""
            n = t.shape[-2]
            if n == n_heads:
                return t
            return t.repeat_interleave(n_heads // n, dim=-2)

        def path_output(i: int, output: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            """Path i's projections [b, s, n_heads * d_head]; weight [n, d_head, d], output [b, s, n·d_head]."""
            if split():
                x = self._state.split_resid[l]
                xs = self._fire(split_names[i], x.unsqueeze(-2).expand(*x.shape[:-1], n_heads, x.shape[-1]))
                normed = norm.forward(xs)  # the module's own forward, not its hooks
                w = per_query_head(weight.transpose(0, 1)).transpose(0, 1)
                out = torch.einsum("bshd,hed->bshe", normed.to(w.dtype), w)
                if bias is not None:
                    out = out + per_query_head(bias)
            else:
                out = per_query_head(output.unflatten(-1, (weight.shape[0], -1)))
            return self._fire(head_names[i], out).flatten(-2)

        if a.conv1d:  # GPT-2: one fused Conv1D, weight [d, 3·d_attn], columns q | k | v
            fused = attn.get_submodule(a.qkv[0])

            def fused_hook(mod, args, output):
                if not active():
                    return None
                w = module_tensor(mod).T.unflatten(0, (3, n_heads, -1))  # [3, H, d_head, d]
                b = module_tensor(mod, "bias")
                b = b.unflatten(0, (3, n_heads, -1)) if b is not None else [None] * 3
                parts = output.chunk(3, -1)
                return torch.cat([path_output(i, parts[i], w[i], b[i]) for i in range(3)], -1)

            fused.register_forward_hook(fused_hook)
            return
        q_rows = attn.get_submodule(a.qkv[0]).weight.shape[0]
        d_head = q_rows // n_heads
        for i, proj in enumerate(a.qkv):

            def hook(mod, args, output, i=i):
                if not active():
                    return None
                w = module_tensor(mod).unflatten(0, (-1, d_head))
                b = module_tensor(mod, "bias")
                b = b.unflatten(0, (-1, d_head)) if b is not None else None
                return path_output(i, output, w, b)

            attn.get_submodule(proj).register_forward_hook(hook)

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

    def _freezable_norm(self, module, kind: str, name: str) -> None:
        """Expose a norm's scale (1/rms or 1/std, shape [b, s, 1]) as an access point.

        Frozen (``freeze_norms``): same value, gradient through x·s·w with s held fixed. Patched
        (e.g. with the scale cached from another run): the norm becomes that fixed linear map.
        """
        self.points.append(name)
        eps = norm_eps(module)

        def hook(mod, args, output):
            st = self._state
            if st is None or not (st.freeze_norms or self._touched(name)):
                return None
            x = args[0]
            xf = x.detach().float()
            if kind == "layer":
                xf = xf - xf.mean(-1, keepdim=True)
            scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            fired = self._fire(name, scale)
            if fired is not scale:  # patched, shifted or a gradient point: the norm is this linear map
                return norm_linear(kind, mod, x, fired).to(output.dtype)
            if not st.freeze_norms:
                return None
            delta = x - x.detach()  # zero-valued, carries the gradient
            return output.detach() + norm_linear(kind, mod, delta, scale, bias=False).to(output.dtype)

        module.register_forward_hook(hook)

    def _multiplier_point(self, act_module, gated: bool, name: str) -> None:
        """Expose the MLP's frozen-able multiplier: silu(gate) (gated MLPs) or act(p)/p (GELU/ReLU).

        With the multiplier frozen (``freeze_mlp``) or patched, each neuron is linear in the MLP
        input: post = mult·up(x) (gated) or post = mult·p(x). Values are unchanged when frozen.
        """
        self.points.append(name)

        def hook(mod, args, output):
            st = self._state
            if st is None or not (st.freeze_mlp or self._touched(name)):
                return None
            if gated:
                mult = output.detach() if st.freeze_mlp else output
                return self._fire(name, mult)
            p = args[0]
            mult = output / torch.where(p == 0, torch.ones_like(p), p)  # act(0) = 0 for GELU/ReLU
            if st.freeze_mlp:
                mult = mult.detach()
            fired = self._fire(name, mult)
            if fired is not mult:
                return fired * p
            if st.freeze_mlp:
                return output.detach() + mult * (p - p.detach())
            return None

        act_module.register_forward_hook(hook)

    def _touched(self, name: str) -> bool:
        st = self._state
        return name in st.cache or name in st.patch or name in st.add or name in st.grad or name in st.stop_grad

    # -- firing -----------------------------------------------------------------------------------
    def _qk(self, q_name: str, k_name: str, query: torch.Tensor, key: torch.Tensor):
        st = self._state
        if st is None or not (self._touched(q_name) or self._touched(k_name)):
            return query, key
        return self._fire(q_name, query), self._fire(k_name, key)

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
        if name in st.stop_grad:  # downstream sees a constant; the cache above keeps the graph
            x = x.detach()
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
        freeze_mlp: bool = False,
        keep_graph: bool = False,
        stop_grad: str | Iterable[str] = (),
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
            freeze_mlp=freeze_mlp,
            keep_graph=keep_graph,
            stop_grad=set(self.match(stop_grad)) if stop_grad else set(),
            trace=trace,
        )
        with self._lock:
            self._state = state
            try:
                yield trace
            finally:
                self._state = None

    @contextmanager
    def session_patch(self, patch: Mapping[str, PatchValue]) -> Iterator[None]:
        """Add patches to the active session (for patches that read the session's own trace)."""
        st = self._state
        if st is None:
            raise RuntimeError("session_patch needs an active session")
        self.match(list(patch))
        saved = {k: st.patch[k] for k in patch if k in st.patch}
        st.patch.update(patch)
        try:
            yield
        finally:
            for k in patch:
                st.patch.pop(k, None)
            st.patch.update(saved)

    def forward(self, input_ids: torch.Tensor, **session_options) -> tuple[torch.Tensor, Trace]:
        """One instrumented forward pass: returns (logits, trace)."""
        with self.session(**session_options) as trace:
            logits = self.hf(input_ids=input_ids.to(self.device), use_cache=False).logits
        return logits, trace

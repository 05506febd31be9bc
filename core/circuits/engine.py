"""The model seen as a component graph: what each source writes, what each destination reads.

The residual stream entering any destination is the sum of the outputs of the sources upstream
of it (plus constants that do not differ between runs, e.g. GPT-2's attention output bias):

* ``input`` = the residual stream entering block 0 (token + position embeddings, Gemma's scaling);
* ``a{l}.h{h}`` = that head's z · W_O[h] (Gemma: times the post-attention norm's scale and weight
  of the same run, so heads add up to exactly what attention adds to the stream);
* ``m{l}`` = what the MLP adds (after Gemma's post-feedforward norm).

Edges are patched by changing one destination's input: ``x + Σ (corrupted − current) source
outputs`` over the dropped incoming edges. Attention destinations use the instrumentation's split
q/k/v inputs, so a path of one head can be patched or differentiated alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.circuits.graph import PATHS, ComponentGraph
from core.circuits.tasks import PairBatch
from core.instrument.norms import norm_linear, projected_norm_vjp
from core.instrument.weights import module_tensor

MetricFn = Callable[[torch.Tensor, PairBatch], torch.Tensor]  # (logits [b, vocab], batch) -> [b]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when the model runs in float64 (exactness tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def logit_difference(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Mean logit of the answer token(s) minus mean logit of the counterfactual token(s)."""
    logits = _wide(logits)
    a = (logits.gather(1, batch.answer) * batch.answer_mask).sum(1) / batch.answer_mask.sum(1)
    c = (logits.gather(1, batch.counterfactual) * batch.counterfactual_mask).sum(1) / batch.counterfactual_mask.sum(1)
    return a - c


def probability_difference(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Probability of the answer token(s) minus probability of the counterfactual token(s)."""
    p = torch.softmax(_wide(logits), -1)
    return (p.gather(1, batch.answer) * batch.answer_mask).sum(1) - (
        p.gather(1, batch.counterfactual) * batch.counterfactual_mask).sum(1)


METRICS: dict[str, MetricFn] = {"logit-diff": logit_difference, "prob-diff": probability_difference}


@dataclass
class SourceRun:
    """One run seen from the component graph."""

    outputs: torch.Tensor  # [n_sources, b, s, d]: what each source wrote
    logits: torch.Tensor  # [b, vocab] at the last position
    resid: dict[str, torch.Tensor]  # residual stream at every destination point [b, s, d]


class ComponentRunner:
    """Runs a loaded model as the component graph (sources recorded, destinations patchable)."""

    def __init__(self, model) -> None:
        self.model = model
        self.inst = model.instrument
        f, a = model.facts, model.adapter
        self.graph = ComponentGraph(f.n_layers, f.n_heads)
        self.base = model.hf.get_submodule(a.layers.split(".")[0])
        blocks = model.hf.get_submodule(a.layers)
        self._o_proj = [b.get_submodule(a.attn).get_submodule(a.o_proj) for b in blocks]
        self._qkv = [[b.get_submodule(a.attn).get_submodule(p) for p in a.qkv] for b in blocks]
        self._attn_norm = [b.get_submodule(a.attn_in_norm) for b in blocks]
        self._post_norm = [b.get_submodule(a.attn_out_norm) if a.attn_out_norm else None for b in blocks]
        self._unembed = model.hf.get_submodule(a.unembed)
        self._softcap = getattr(model.hf.config, "final_logit_softcapping", None)
        self.has_post_norm = a.attn_out_norm is not None
        if self.has_post_norm and any(o.bias is not None for o in self._o_proj):
            raise NotImplementedError("attention output bias before a post-attention norm")

    # -- pieces -----------------------------------------------------------------------------------
    def logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Logits [b, vocab] from the final-norm output at the last position (with soft-capping)."""
        out = _wide(self._unembed(hidden_last))
        if self._softcap:
            out = torch.tanh(out / self._softcap) * self._softcap
        return out

    def head_outputs(self, layer: int, z: torch.Tensor, post_scale: torch.Tensor | None) -> torch.Tensor:
        """What each head adds to the residual stream: [b, s, H, d] (float32 or wider)."""
        w = module_tensor(self._o_proj[layer]).to(z.device)
        H = self.graph.n_heads
        if self.model.adapter.conv1d:  # Conv1D weight [H·d_head, d]
            out = torch.einsum("bshe,hed->bshd", z, w.unflatten(0, (H, -1)))
        else:  # Linear weight [d, H·d_head]
            out = torch.einsum("bshe,dhe->bshd", z, w.unflatten(1, (H, -1)))
        post = self._post_norm[layer]
        if post is not None:
            out = norm_linear(self.model.adapter.norm_kind, post, out, post_scale.unsqueeze(-2), bias=False)
        return _wide(out)

    def path_weights(self, layer: int, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A path's projection weights [n, d_head, d] and biases [n, d_head] (or None), with
        n = query heads for q, key/value heads for k and v (each serves n_heads / n query heads)."""
        mods = self._qkv[layer]
        i = PATHS.index(path)
        if self.model.adapter.conv1d:  # fused Conv1D, weight [d, 3·H·d_head]
            H = self.graph.n_heads
            b = module_tensor(mods[0], "bias")
            return (module_tensor(mods[0]).T.unflatten(0, (3, H, -1))[i],
                    None if b is None else b.unflatten(0, (3, H, -1))[i])
        d_head = mods[0].weight.shape[0] // self.graph.n_heads
        b = module_tensor(mods[i], "bias")
        return (module_tensor(mods[i]).unflatten(0, (-1, d_head)),
                None if b is None else b.unflatten(0, (-1, d_head)))

    def _layer_points(self, l: int) -> list[str]:
        pts = [f"blocks.{l}.attn.z", f"blocks.{l}.mlp_out"]
        if self.has_post_norm:
            pts.append(f"blocks.{l}.attn_post_norm.scale")
        return pts

    def _input_patch(self, value: torch.Tensor | None) -> dict:
        return {} if value is None else {"blocks.0.resid_pre": value}

    def last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits at the last position of a plain (or session-instrumented) run."""
        hidden = self.base(input_ids=ids.to(self.model.device), use_cache=False).last_hidden_state
        return self.logits(hidden[:, -1])

    # -- runs -------------------------------------------------------------------------------------
    def resid_points(self) -> list[str]:
        """Where destinations read the stream: per layer resid_pre (attention), resid_mid (MLP); resid_final."""
        L = self.graph.n_layers
        return [f"blocks.{l}.{p}" for l in range(L) for p in ("resid_pre", "resid_mid")] + ["resid_final"]

    def source_points(self) -> list[str]:
        """The points a run caches to be seen from the component graph."""
        L = self.graph.n_layers
        return self.resid_points() + [p for l in range(L) for p in self._layer_points(l)]

    def _source_run(self, tr, logits: torch.Tensor) -> SourceRun:
        g = self.graph
        H = g.n_heads
        x0 = tr["blocks.0.resid_pre"]
        b, s, d = x0.shape
        outs = torch.empty(g.n_sources, b, s, d, device=x0.device, dtype=_wide(x0[:1, :1, :1]).dtype)
        outs[0] = x0
        for l in range(g.n_layers):
            h0 = g.head_source(l, 0)
            scale = tr[f"blocks.{l}.attn_post_norm.scale"] if self.has_post_norm else None
            outs[h0:h0 + H] = self.head_outputs(l, tr[f"blocks.{l}.attn.z"], scale).permute(2, 0, 1, 3)
            outs[g.mlp_source(l)] = tr[f"blocks.{l}.mlp_out"]
        return SourceRun(outs, logits.detach(), {p: tr[p] for p in self.resid_points()})

    def sources(self, ids: torch.Tensor, input_value: torch.Tensor | None = None) -> SourceRun:
        """Every source's output [n_sources, b, s, d] (float32 or wider), the residual stream at
        every destination point, and the last-position logits."""
        with torch.no_grad(), self.inst.session(cache=self.source_points(), patch=self._input_patch(input_value)) as tr:
            logits = self.last_logits(ids)
        return self._source_run(tr, logits)

    def patched(self, ids: torch.Tensor, corrupted: SourceRun, drop: torch.Tensor, sum_over: str = "fewer") -> torch.Tensor:
        """Last-position logits with the edges in ``drop`` (bool [n_sources, n_destinations])
        carrying the corrupted run's source outputs; every other edge carries this run's own.

        A destination's input is ``x + Σ_dropped (corrupted − current)``, or equivalently
        ``x_corrupted + Σ_kept (current − corrupted)``: whichever sum has fewer sources is used
        (``sum_over="dropped"`` / ``"kept"`` forces one, for tests).
        """
        g = self.graph
        L, H = g.n_layers, g.n_heads
        corr = corrupted.outputs
        edge = torch.from_numpy(g.edge_mask).to(corr.device)
        drop = drop.to(corr.device) & edge
        cur = torch.zeros_like(corr)
        store: dict = {}
        patch: dict = {}

        def record_input(x):
            cur[0] = x
            return x

        def keep(key):
            def f(x):
                store[key] = x
                return x
            return f

        def record_attn(l):
            def f(x):
                h0 = g.head_source(l, 0)
                z, scale = store.pop(("z", l)), store.pop(("scale", l), None)
                cur[h0:h0 + H] = self.head_outputs(l, z, scale).permute(2, 0, 1, 3)
                return x
            return f

        def record_mlp(l):
            def f(x):
                cur[g.mlp_source(l)] = x
                return x
            return f

        def mix(n: int, dst, x_corr: torch.Tensor, heads: bool):
            """The patch for one destination group (columns ``dst``) reading the first n sources."""
            d_drop = drop[:n, dst].to(corr.dtype)
            d_keep = (edge[:n, dst] & ~drop[:n, dst]).to(corr.dtype)
            if d_drop.dim() == 1:
                d_drop, d_keep = d_drop[:, None], d_keep[:, None]
            rows_drop = d_drop.any(1).nonzero().squeeze(1)
            rows_keep = d_keep.any(1).nonzero().squeeze(1)
            if len(rows_drop) == 0:
                return None
            use_keep = sum_over == "kept" or (sum_over == "fewer" and len(rows_keep) < len(rows_drop))
            rows, w = (rows_keep, d_keep[rows_keep]) if use_keep else (rows_drop, d_drop[rows_drop])

            def f(x):
                k = len(rows)
                delta = (cur[rows] - corr[rows]) if use_keep else (corr[rows] - cur[rows])  # [k, b, s, d]
                if k:
                    mixed = (w.T @ delta.reshape(k, -1)).unflatten(1, delta.shape[1:])  # [cols, b, s, d]
                else:
                    mixed = torch.zeros(w.shape[1], *x.shape[:2], x.shape[-1], device=x.device, dtype=corr.dtype)
                mixed = mixed.permute(1, 2, 0, 3) if heads else mixed[0]
                base = (x_corr.unsqueeze(-2) if heads else x_corr) if use_keep else x
                return (base + mixed).to(x.dtype)
            return f

        patch["blocks.0.resid_pre"] = record_input
        resid = corrupted.resid
        for l in range(L):
            patch[f"blocks.{l}.attn.z"] = keep(("z", l))
            if self.has_post_norm:
                patch[f"blocks.{l}.attn_post_norm.scale"] = keep(("scale", l))
            patch[f"blocks.{l}.attn_out"] = record_attn(l)
            patch[f"blocks.{l}.mlp_out"] = record_mlp(l)
            for p in PATHS:
                fn = mix(g.attn_upstream(l), g.path_destinations(l, p), resid[f"blocks.{l}.resid_pre"], heads=True)
                if fn is not None:
                    patch[f"blocks.{l}.attn.{p}_in"] = fn
            fn = mix(g.mlp_upstream(l), g.mlp_destination(l), resid[f"blocks.{l}.resid_mid"], heads=False)
            if fn is not None:
                patch[f"blocks.{l}.resid_mid"] = fn
        fn = mix(g.n_sources, g.logits_destination, resid["resid_final"], heads=False)
        if fn is not None:
            patch["resid_final"] = fn
        with torch.no_grad(), self.inst.session(patch=patch):
            return self.last_logits(ids)

    def destination_gradients(self, batch: PairBatch, metric: MetricFn, input_value: torch.Tensor | None = None,
                              out: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                              record_sources: bool = False):
        """∂metric/∂(destination input) for every destination, [n_destinations, b, s, d], from one
        forward + backward pass on ``ids`` (default: the clean prompts), or with the input replaced
        by ``input_value``; added into ``out`` when given (EAP-IG sums its steps there).
        Returns (gradients, per-pair metric), plus the pass's ``SourceRun`` when ``record_sources``.

        The pass is a plain one: gradients are taken at each query head's q/k/v projections and
        carried back to that path's residual-stream input by the projection and the norm's VJP
        (the same numbers as differentiating a per-path copy of the stream, without the copies).
        """
        g = self.graph
        L, H = g.n_layers, g.n_heads
        heads = [f"blocks.{l}.attn.{p}" for l in range(L) for p in PATHS]
        mids = [f"blocks.{l}.resid_mid" for l in range(L)]
        names = heads + mids + ["resid_final"]
        cached = [f"blocks.{l}.resid_pre" for l in range(L)] + heads + (self.source_points() if record_sources else [])
        with torch.enable_grad(), self.inst.session(grad=names, cache=cached, patch=self._input_patch(input_value)) as tr:
            logits = self.last_logits(batch.clean if ids is None else ids)
            m = metric(logits, batch)
            grads = dict(zip(names, torch.autograd.grad(m.sum(), [tr.leaf(n) for n in names], allow_unused=True)))
        x0 = tr["blocks.0.resid_pre"]
        b, s, d = x0.shape
        dtype = _wide(x0[:1, :1, :1]).dtype
        if out is None:
            out = torch.zeros(g.n_destinations, b, s, d, device=x0.device, dtype=dtype)

        here = out.device  # layers of a multi-GPU device map meet here

        def add(rows, gr):
            if gr is not None:
                out[rows] += gr.to(device=here, dtype=dtype)

        for l in range(L):
            x = tr[f"blocks.{l}.resid_pre"].reshape(b * s, d).to(here)
            for p in PATHS:
                name = f"blocks.{l}.attn.{p}"
                if grads[name] is None:
                    continue
                first = g.head_destination(l, 0, p)
                weight, bias = self.path_weights(l, p)
                projected_norm_vjp(self.model.adapter.norm_kind, self._attn_norm[l], x,
                                   grads[name].permute(2, 0, 1, 3).reshape(H, b * s, -1).to(here), weight.to(here),
                                   tr[name].permute(2, 0, 1, 3).reshape(H, b * s, -1).to(here),
                                   None if bias is None else bias.to(here), out[first:first + H].view(H, b * s, d))
            add(g.mlp_destination(l), grads[mids[l]])
        add(g.logits_destination, grads["resid_final"])
        if record_sources:
            return out, m.detach(), self._source_run(tr, logits)
        return out, m.detach()

    def edge_scores(self, diff: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Σ over pairs and positions of diff[source] · grads[destination] on every edge
        [n_sources, n_destinations]; one GEMM per layer. ``diff`` [n_sources, b, s, d]."""
        g = self.graph
        H = g.n_heads
        flat = diff.reshape(g.n_sources, -1)
        cols = grads.to(diff.dtype).reshape(g.n_destinations, -1)
        scores = torch.zeros(g.n_sources, g.n_destinations, device=diff.device, dtype=diff.dtype)
        for l in range(g.n_layers):
            first, n, n_mlp = g.head_destination(l, 0, "q"), g.attn_upstream(l), g.mlp_upstream(l)
            block = flat[:n_mlp] @ cols[first:first + 3 * H + 1].T  # [n_mlp, 3H+1] (q, k, v heads, mlp)
            scores[:n, first:first + 3 * H] = block[:n, :-1]
            scores[:n_mlp, first + 3 * H] = block[:, -1]
        scores[:, -1] = flat @ cols[-1]
        return scores

    def edge_gradient_scores(self, batch: PairBatch, diff: torch.Tensor, metric: MetricFn,
                             input_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """EAP scores of one pass: Σ over pairs and positions of diff[source] · ∂metric/∂(destination
        input) for every edge (``diff``: corrupted − clean source outputs [n_sources, b, s, d]), and
        the per-pair metric of that run."""
        grads, m = self.destination_gradients(batch, metric, input_value)
        return self.edge_scores(diff, grads), m

    def single_edge_metrics(self, batch: PairBatch, diff: torch.Tensor, edges: list[tuple[int, int]],
                            metric: MetricFn) -> torch.Tensor:
        """Exact patching: for each edge (source, destination), the metric summed over pairs when
        only that edge carries the corrupted source output. Edges run side by side as batch copies.

        Patching one edge changes nothing upstream of its destination, so the destination's input
        simply gains ``corrupted − clean`` of the source (``diff`` [n_sources, b, s, d])."""
        g = self.graph
        k, b = len(edges), len(batch)
        by_point: dict[str, list[tuple[int, int, int | None]]] = {}
        for j, (src, dst) in enumerate(edges):
            if not g.edge_mask[src, dst]:
                raise ValueError(f"no edge from source {src} to destination {dst}")
            node_l, rest = divmod(dst, 3 * g.n_heads + 1) if dst != g.logits_destination else (None, None)
            if node_l is None:
                by_point.setdefault("resid_final", []).append((j, src, None))
            elif rest == 3 * g.n_heads:
                by_point.setdefault(f"blocks.{node_l}.resid_mid", []).append((j, src, None))
            else:
                path, head = divmod(rest, g.n_heads)
                by_point.setdefault(f"blocks.{node_l}.attn.{PATHS[path]}_in", []).append((j, src, head))

        def add(items):
            def f(x):
                x = x.clone()
                for j, src, head in items:
                    rows = slice(j * b, (j + 1) * b)
                    if head is None:
                        x[rows] += diff[src].to(x.dtype)
                    else:
                        x[rows, :, head] += diff[src].to(x.dtype)
                return x
            return f

        big = PairBatch(batch.clean.repeat(k, 1), batch.corrupted.repeat(k, 1), batch.answer.repeat(k, 1),
                        batch.answer_mask.repeat(k, 1), batch.counterfactual.repeat(k, 1),
                        batch.counterfactual_mask.repeat(k, 1), [])
        with torch.no_grad(), self.inst.session(patch={p: add(items) for p, items in by_point.items()}):
            m = metric(self.last_logits(big.clean), big)
        return m.view(k, b).sum(1)

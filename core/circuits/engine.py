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

from typing import Callable

import torch

from core.circuits.graph import PATHS, ComponentGraph
from core.circuits.tasks import PairBatch
from core.instrument.hooks import norm_linear

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
        o = self._o_proj[layer]
        H = self.graph.n_heads
        if self.model.adapter.conv1d:  # Conv1D weight [H·d_head, d]
            out = torch.einsum("bshe,hed->bshd", z, o.weight.unflatten(0, (H, -1)))
        else:  # Linear weight [d, H·d_head]
            out = torch.einsum("bshe,dhe->bshd", z, o.weight.unflatten(1, (H, -1)))
        post = self._post_norm[layer]
        if post is not None:
            out = norm_linear(self.model.adapter.norm_kind, post, out, post_scale.unsqueeze(-2), bias=False)
        return _wide(out)

    def _layer_points(self, l: int) -> list[str]:
        pts = [f"blocks.{l}.attn.z", f"blocks.{l}.mlp_out"]
        if self.has_post_norm:
            pts.append(f"blocks.{l}.attn_post_norm.scale")
        return pts

    def _input_patch(self, value: torch.Tensor | None) -> dict:
        return {} if value is None else {"blocks.0.resid_pre": value}

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids=ids.to(self.model.device), use_cache=False).last_hidden_state
        return self.logits(hidden[:, -1])

    # -- runs -------------------------------------------------------------------------------------
    def sources(self, ids: torch.Tensor, input_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every source's output [b, s, n_sources, d] (float32) and the last-position logits."""
        g = self.graph
        L, H = g.n_layers, g.n_heads
        pts = ["blocks.0.resid_pre"] + [p for l in range(L) for p in self._layer_points(l)]
        with torch.no_grad(), self.inst.session(cache=pts, patch=self._input_patch(input_value)) as tr:
            logits = self._run(ids)
        x0 = tr["blocks.0.resid_pre"]
        b, s, d = x0.shape
        outs = torch.empty(b, s, g.n_sources, d, device=x0.device, dtype=_wide(x0[:1, :1, :1]).dtype)
        outs[:, :, 0] = x0
        for l in range(L):
            h0 = g.head_source(l, 0)
            scale = tr[f"blocks.{l}.attn_post_norm.scale"] if self.has_post_norm else None
            outs[:, :, h0:h0 + H] = self.head_outputs(l, tr[f"blocks.{l}.attn.z"], scale)
            outs[:, :, g.mlp_source(l)] = tr[f"blocks.{l}.mlp_out"]
        return outs, logits

    def patched(self, ids: torch.Tensor, corrupted: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Last-position logits with the edges in ``drop`` (bool [n_sources, n_destinations])
        carrying the corrupted run's source outputs; every other edge carries this run's own."""
        g = self.graph
        L, H = g.n_layers, g.n_heads
        drop = drop.to(corrupted.device, corrupted.dtype)
        cur = torch.zeros_like(corrupted)
        store: dict = {}
        patch: dict = {}

        def record_input(x):
            cur[:, :, 0] = x
            return x

        def keep(key):
            def f(x):
                store[key] = x
                return x
            return f

        def record_attn(l):
            def f(x):
                h0 = g.head_source(l, 0)
                cur[:, :, h0:h0 + H] = self.head_outputs(l, store.pop(("z", l)), store.pop(("scale", l), None))
                store.pop(("diff", l), None)
                return x
            return f

        def record_mlp(l):
            def f(x):
                cur[:, :, g.mlp_source(l)] = x
                return x
            return f

        def layer_diff(l: int, n: int) -> torch.Tensor:
            if ("diff", l) not in store:
                store[("diff", l)] = corrupted[:, :, :n] - cur[:, :, :n]
            return store[("diff", l)]

        def shift_path(l, w):  # w [n, H]
            n = w.shape[0]
            return lambda x: x + torch.einsum("bsnd,nh->bshd", layer_diff(l, n), w).to(x.dtype)

        def shift(n, w):  # w [n]
            return lambda x: x + torch.einsum("bsnd,n->bsd", corrupted[:, :, :n] - cur[:, :, :n], w).to(x.dtype)

        patch["blocks.0.resid_pre"] = record_input
        for l in range(L):
            patch[f"blocks.{l}.attn.z"] = keep(("z", l))
            if self.has_post_norm:
                patch[f"blocks.{l}.attn_post_norm.scale"] = keep(("scale", l))
            patch[f"blocks.{l}.attn_out"] = record_attn(l)
            patch[f"blocks.{l}.mlp_out"] = record_mlp(l)
            n = g.attn_upstream(l)
            for p in PATHS:
                w = drop[:n, g.path_destinations(l, p)]
                if bool(w.any()):
                    patch[f"blocks.{l}.attn.{p}_in"] = shift_path(l, w)
            n = g.mlp_upstream(l)
            w = drop[:n, g.mlp_destination(l)]
            if bool(w.any()):
                patch[f"blocks.{l}.resid_mid"] = shift(n, w)
        w = drop[:, -1]
        if bool(w.any()):
            patch["resid_final"] = shift(g.n_sources, w)
        with torch.no_grad(), self.inst.session(patch=patch):
            return self._run(ids)

    def destination_points(self) -> list[str]:
        L = self.graph.n_layers
        return ([f"blocks.{l}.attn.{p}_in" for l in range(L) for p in PATHS]
                + [f"blocks.{l}.resid_mid" for l in range(L)] + ["resid_final"])

    def edge_gradient_scores(self, batch: PairBatch, diff: torch.Tensor, metric: MetricFn,
                             input_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ over pairs of diff[source] · ∂metric/∂(destination input) for every edge, from one
        forward + backward pass (run on the clean prompts, or with the input replaced by
        ``input_value``); also returns the per-pair metric of that run."""
        g = self.graph
        L = g.n_layers
        names = self.destination_points()
        with torch.enable_grad(), self.inst.session(grad=names, patch=self._input_patch(input_value)) as tr:
            logits = self._run(batch.clean)
            m = metric(logits, batch)
            grads = torch.autograd.grad(m.sum(), [tr.leaf(n) for n in names], allow_unused=True)
        grad = {n: (gr.to(diff.dtype) if gr is not None else None) for n, gr in zip(names, grads)}
        scores = torch.zeros(g.n_sources, g.n_destinations, device=diff.device, dtype=diff.dtype)
        for l in range(L):
            n = g.attn_upstream(l)
            for p in PATHS:
                gr = grad[f"blocks.{l}.attn.{p}_in"]
                if gr is not None:
                    scores[:n, g.path_destinations(l, p)] = torch.einsum("bsnd,bshd->nh", diff[:, :, :n], gr)
            n = g.mlp_upstream(l)
            gr = grad[f"blocks.{l}.resid_mid"]
            if gr is not None:
                scores[:n, g.mlp_destination(l)] = torch.einsum("bsnd,bsd->n", diff[:, :, :n], gr)
        gr = grad["resid_final"]
        if gr is not None:
            scores[:, -1] = torch.einsum("bsnd,bsd->n", diff, gr)
        return scores, m.detach()

    def single_edge_metrics(self, batch: PairBatch, diff: torch.Tensor, edges: list[tuple[int, int]],
                            metric: MetricFn) -> torch.Tensor:
        """Exact patching: for each edge (source, destination), the metric summed over pairs when
        only that edge carries the corrupted source output. Edges run side by side as batch copies.

        Patching one edge changes nothing upstream of its destination, so the destination's input
        simply gains ``corrupted − clean`` of the source (``diff``)."""
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
                        x[rows] += diff[:, :, src].to(x.dtype)
                    else:
                        x[rows, :, head] += diff[:, :, src].to(x.dtype)
                return x
            return f

        big = PairBatch(batch.clean.repeat(k, 1), batch.corrupted.repeat(k, 1), batch.answer.repeat(k, 1),
                        batch.answer_mask.repeat(k, 1), batch.counterfactual.repeat(k, 1),
                        batch.counterfactual_mask.repeat(k, 1), [])
        with torch.no_grad(), self.inst.session(patch={p: add(items) for p, items in by_point.items()}):
            m = metric(self._run(big.clean), big)
        return m.view(k, b).sum(1)

"""Feature bases: how the MLPs of the local replacement model are written as nodes.

A basis names, per layer, the point its features read from (rows are injected there) and the
point they write to (their decoder directions live there), and knows how to

* ``select`` the candidate features of a prompt (every active one, or the neurons that matter);
* ``encode`` the clean run into active features (layer, position, index, activation, value)
  and error vectors (what the features do not reconstruct at the write point);
* give the injection vector of a feature row (its linear input direction);
* turn gradients at the write points into per-feature contributions (activation × decoder · grad);
* replace the write points in the gradient pass (cut the MLP, keep linear skip paths) and in the
  bias-only pass (sources removed, constants kept).

Two bases:

``neurons``  MLP neurons with the nonlinearity frozen at the prompt (SwiGLU/GeGLU: silu(gate)
             held; GELU/ReLU: act(p)/p held), so a neuron is mult·(w_in·x + b_in) and writes
             a·W_down[:, i]. Candidates: the neurons with the largest total effect on the
             explained logits; an error node holds the down-projection bias and the writes of
             its cell's other neurons, so the basis stays exact.
``transcoders``  per-layer or cross-layer transcoders from a local folder; value = the
             pre-activation (as in the reference), error = MLP output − reconstruction. Every
             active feature is a candidate unless more than ``max_candidates`` are (long
             prompts): then those with the largest total effect, the rest in the error nodes.

Features at a position whose token is a special token (BOS at position 0) are not nodes; the
attribution zeroes that position's error nodes too (its MLP outputs are constants, as in
circuit-tracer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from core.attribution.transcoders import TranscoderSet
from core.instrument import Trace
from core.instrument.weights import module_tensor
from core.settings import AttributionSettings


@dataclass
class Encoded:
    layer: torch.Tensor  # [n] int64, sorted by (layer, pos, index)
    pos: torch.Tensor
    index: torch.Tensor
    activation: torch.Tensor  # [n] float32
    value: torch.Tensor  # [n] the node's linear value (completeness): activation or pre-activation
    errors: torch.Tensor  # [L, P, d_model] float32, at the write points
    layer_start: list[int]  # features of layer l are [layer_start[l], layer_start[l+1])
    columns: dict = field(default_factory=dict)  # the basis' per-layer working data (position blocks)

    @property
    def n(self) -> int:
        return int(self.layer.numel())


def _linear_weight(module, conv1d: bool) -> torch.Tensor:
    """[out, in] weight of a Linear or a GPT-2 Conv1D (loaded from CPU or disk if offloaded)."""
    w = module_tensor(module)
    return w.T if conv1d else w


class LayerWeights:
    """One MLP projection's [out, in] weight per layer, read when indexed: a layer that a device map
    offloaded to CPU or disk is loaded for that use only, never held for the whole graph."""

    def __init__(self, modules: list, conv1d: bool) -> None:
        self.modules, self.conv1d = modules, conv1d

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return _linear_weight(self.modules[layer], self.conv1d)

    def shape(self, layer: int) -> torch.Size:
        """[out, in] without loading anything (an offloaded parameter keeps its shape on ``meta``)."""
        shape = self.modules[layer].weight.shape
        return shape[::-1] if self.conv1d else shape


def _linear_bias(module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach()


def body(model):
    """The model's transformer body (the CausalLM without its head)."""
    return model.hf.get_submodule(model.adapter.layers.split(".")[0])


def _per_feature(enc: Encoded, matrix_of_layer) -> torch.Tensor:
    """Each active feature's entry of its layer's [P, n_features] matrix (built only where needed)."""
    out = torch.empty(enc.n)
    for l in range(len(enc.layer_start) - 1):
        s, e = enc.layer_start[l], enc.layer_start[l + 1]
        if e > s:
            m = matrix_of_layer(l)
            out[s:e] = m[enc.pos[s:e].to(m.device), enc.index[s:e].to(m.device)].cpu()
    return out


def total_effect_grads(model, ids: torch.Tensor, directions: torch.Tensor, weights: torch.Tensor,
                       writes: list[str]) -> list[torch.Tensor]:
    """∂v/∂(write point) [P, d] per layer, for v = Σ_t w_t·value_t (the targets weighted as in the
    influence), in the linear replacement model with the MLPs *not* cut (attention, norm scales
    and MLP multipliers frozen): one backward pass."""
    inst = model.instrument
    with torch.enable_grad(), inst.session(cache=["final_norm"], grad=writes, freeze_attention=True,
                                           freeze_norms=True, freeze_mlp=True, keep_graph=True) as live:
        body(model)(input_ids=ids, use_cache=False)
        out = live.cache["final_norm"]
        inject = torch.zeros_like(out)
        inject[0, -1] = (weights.float().to(out.device) @ directions.float().to(out.device)).to(out.dtype)
        grads = torch.autograd.grad(out, [live.leaf(w) for w in writes], inject, allow_unused=True)
        d = out.shape[-1]
        return [torch.zeros(out.shape[1], d, device=out.device) if g is None else g[0].detach().float()
                for g in grads]


def top_candidates(effect: torch.Tensor, size: torch.Tensor, first_pos: int, max_candidates: int,
                   share: float) -> tuple[torch.Tensor, dict]:
    """The mask [L, P, n] of the features with the largest total ``effect`` (ties: larger ``size``
    first), until they carry ``share`` of the total, at most ``max_candidates``; inactive
    features (size 0) and the start position never. Also the candidates' statistics."""
    effect[:, :first_pos] = 0.0
    size[:, :first_pos] = 0.0
    flat, by_size = effect.flatten(), size.flatten()
    active = by_size > 0
    pool = int(active.sum())
    k_max = min(max_candidates, pool)
    total = float(flat[active].sum(dtype=torch.float64))
    # the top k_max by effect without sorting every feature (tens of millions on long prompts)
    n_effect = int((active & (flat > 0)).sum())
    _, idx = torch.topk(torch.where(active, flat, torch.full_like(flat, -1.0)), min(k_max, n_effect))
    if k_max > n_effect:  # features without effect: the larger writes first
        no_effect = torch.where(active & (flat <= 0), by_size, torch.full_like(by_size, -1.0))
        idx = torch.cat([idx, torch.topk(no_effect, k_max - n_effect).indices])
    ranked = flat[idx].double()
    if share >= 1.0 or total <= 0:
        k = k_max  # every active feature, up to the cap
    else:
        reach = int(torch.searchsorted(ranked.cumsum(0) / total, torch.tensor(share, dtype=torch.float64))) + 1
        k = min(reach, k_max)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[idx[:k]] = True
    mask = mask.view_as(effect)
    stats = dict(
        candidate_pool=pool,
        candidates=k,
        candidate_effect_share=float(ranked[:k].sum() / total) if total > 0 else 1.0,
        candidate_mass_share=float(size[mask].sum() / size.sum()) if float(size.sum()) > 0 else 1.0,
    )
    return mask, stats


class PositionBlocks:
    """One layer's features grouped by position: their write vectors [d] in padded blocks
    [positions, d, m], so a batch's contributions from the gradients g [B, P, d] at their write
    point are a few batched products, g[:, p] · block[p], instead of a gather of [B, n, d]
    gradient rows (or a product per position) every batch.

    Positions hold very different numbers of features (a high-norm token fires many more), so the
    features are laid out in tiers: each tier takes up to m more features of every position, m
    as large as keeps that tier's padding within twice its features; the crowded positions' rest
    goes to the next tier. The blocks never take more than about twice the features' vectors."""

    def __init__(self, tiers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], order: torch.Tensor) -> None:
        self.tiers, self.order = tiers, order  # tiers: (positions, block [p, d, m], take); order: back to input order

    @classmethod
    def build(cls, pos: torch.Tensor, vectors: torch.Tensor, device) -> "PositionBlocks":
        """``pos`` [n] sorted, ``vectors`` [n, d]: each feature's position and write vector."""
        pos = pos.cpu()
        uniq, counts = torch.unique_consecutive(pos, return_counts=True)
        group = torch.repeat_interleave(torch.arange(uniq.numel()), counts)
        slot = torch.arange(pos.numel()) - (torch.cumsum(counts, 0) - counts)[group]
        v = vectors.float().to(device)
        tiers, members, left, offset = [], [], counts.clone(), 0
        while int(left.max()) > 0:
            live = left[left > 0]
            m = cls._tier_width(live)
            inside = (slot >= offset) & (slot < offset + m)
            idx = torch.nonzero(inside).flatten()
            where = torch.nonzero(left > 0).flatten()  # this tier's positions (as groups)
            row = torch.searchsorted(where, group[idx])
            block = torch.zeros(where.numel(), m, v.shape[1], device=device)
            block[row.to(device), (slot[idx] - offset).to(device)] = v[idx.to(device)]
            tiers.append((uniq[where].to(device), block.transpose(1, 2).contiguous(),
                          (row * m + slot[idx] - offset).to(device)))
            members.append(idx)
            left = (left - m).clamp(min=0)
            offset += m
        order = torch.argsort(torch.cat(members)).to(device)
        return cls(tiers, order)

    @staticmethod
    def _tier_width(counts: torch.Tensor) -> int:
        """The largest m with (positions × m) ≤ 2 × (features the tier covers) + 64."""
        c = torch.sort(counts).values
        below = torch.cat([torch.zeros(1, dtype=c.dtype), torch.cumsum(c, 0)[:-1]])  # sum of the smaller counts
        covered = below + c * (c.numel() - torch.arange(c.numel()))  # Σ min(count, c_k) for m = c_k
        ok = c * c.numel() <= 2 * covered + 64
        return int(c[ok].max()) if bool(ok.any()) else 1

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        """[B, n]: each feature's write vector · the gradient at its position."""
        B, parts = g.shape[0], []
        for positions, block, take in self.tiers:
            x = g.index_select(1, positions.to(g.device)).float().transpose(0, 1)  # [positions, B, d]
            out = torch.bmm(x, block.to(g.device))  # [positions, B, m]
            parts.append(out.transpose(0, 1).reshape(B, -1).index_select(1, take.to(g.device)))
        return torch.cat(parts, 1).index_select(1, self.order.to(g.device))


class NeuronBasis:
    name = "neurons"

    def __init__(self, model) -> None:
        self.model = model
        a = model.adapter
        self.L = model.facts.n_layers
        blocks = model.hf.get_submodule(a.layers)
        mlps = [blk.get_submodule(a.mlp) for blk in blocks]
        self.W_in = LayerWeights([m.get_submodule(a.up_proj) for m in mlps], a.conv1d)  # [d_mlp, d]
        self.W_down = LayerWeights([m.get_submodule(a.down_proj) for m in mlps], a.conv1d)  # [d, d_mlp]
        self.device = model.device  # where per-layer results meet (layers may sit on several devices)

    def input_point(self, l: int) -> str:
        return f"blocks.{l}.mlp_in"

    def width(self) -> int:
        """Features per layer and position."""
        return self.model.facts.d_mlp

    def write_point(self, l: int) -> str:
        return f"blocks.{l}.mlp.out"

    def clean_points(self) -> list[str]:
        L = range(self.L)
        return [f"blocks.{l}.mlp.post" for l in L] + [f"blocks.{l}.mlp.mult" for l in L] + [
            self.write_point(l) for l in L
        ]

    def bias_points(self) -> list[str]:
        return [f"blocks.{l}.mlp.post" for l in range(self.L)]

    def select(self, clean: Trace, ids: torch.Tensor, directions: torch.Tensor, weights: torch.Tensor,
               first_pos: int, settings: AttributionSettings) -> tuple[torch.Tensor, dict]:
        """Candidate neurons [L, P, d_mlp] and how much of the MLPs they carry.

        A neuron's score is its total effect on the explained output in the linear replacement
        model (``total_effect_grads``): |a_i · (W_down[:, i] · ∂v/∂out_{l,p})|. Unlike the size
        of its write (|a_i|·‖W_down[:, i]‖, whose mass is spread over most neurons of every cell),
        this ranks the neurons the answer depends on, directly or through later layers.
        Candidates: the highest scores until they carry ``candidate_share`` of the total, at most
        ``max_candidates`` (share 1: every active neuron); zero activations never."""
        grads = total_effect_grads(self.model, ids, directions, weights, [self.write_point(l) for l in range(self.L)])
        effect, size = [], []
        for l in range(self.L):
            a = clean[f"blocks.{l}.mlp.post"][0].float()  # [P, d_mlp], from the prompt's run
            W = self.W_down[l].float().to(a.device)
            effect.append(((grads[l].to(a.device) @ W) * a).abs().to(self.device))
            size.append((a.abs() * W.norm(dim=0)).to(self.device))
        return top_candidates(torch.stack(effect), torch.stack(size), first_pos,
                              settings.max_candidates, settings.candidate_share)

    def encode(self, clean: Trace, first_pos: int, candidates: torch.Tensor | None = None) -> Encoded:
        """Active candidates as features; every other neuron's write (and the down-projection
        bias) is its cell's error vector."""
        layers, poss, idxs, acts, errors, starts = [], [], [], [], [], [0]
        self.mult = []
        for l in range(self.L):
            a = clean[f"blocks.{l}.mlp.post"][0].float()  # [P, d_mlp]
            self.mult.append(clean[f"blocks.{l}.mlp.mult"][0].float())
            active = a != 0
            if candidates is not None:
                active &= candidates[l].to(active.device)
            active[:first_pos] = False
            p, i = active.nonzero(as_tuple=True)
            layers.append(torch.full_like(p, l))
            poss.append(p)
            idxs.append(i)
            acts.append(a[p, i])
            kept = torch.where(active, a, torch.zeros_like(a))
            recon = kept @ self.W_down[l].float().to(a.device).T
            errors.append((clean[self.write_point(l)][0].float() - recon).to(self.device))
            starts.append(starts[-1] + p.numel())
        act = torch.cat(acts).cpu()
        return Encoded(torch.cat(layers).cpu(), torch.cat(poss).cpu(), torch.cat(idxs).cpu(), act, act.clone(),
                       torch.stack(errors), starts)

    def injection(self, enc: Encoded, idx: torch.Tensor) -> torch.Tensor:
        """mult · w_in for each neuron row (the gradient of its activation w.r.t. the MLP input)."""
        out, W_in = [], {}
        for j in idx.tolist():
            l, p, i = int(enc.layer[j]), int(enc.pos[j]), int(enc.index[j])
            if l not in W_in:  # each layer's weight read once per batch (offloaded layers: one load)
                W_in[l] = self.W_in[l]
            out.append((self.mult[l][p, i] * W_in[l][i].float().to(self.mult[l].device)).to(self.device))
        return torch.stack(out)

    def contributions(self, enc: Encoded, grads: list[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        """Per layer: (first column, [B, n_l] contributions a · (W_down[:, i] · g)).

        Where a layer's candidates are a small part of its P·d_mlp neurons, only their columns
        are multiplied, position by position (the candidates are sorted by position)."""
        for l in range(self.L):
            s, e = enc.layer_start[l], enc.layer_start[l + 1]
            if e == s:
                continue
            if grads[l] is None:  # no row of the batch reads this layer's writes
                continue
            g = grads[l].float()  # [B, P, d]
            P, d_mlp = g.shape[1], self.W_down.shape(l)[1]
            if 4 * (e - s) >= P * d_mlp:
                per_neuron = (g @ self.W_down[l].float().to(g.device)).flatten(1)  # [B, P·d_mlp]
                flat = enc.pos[s:e] * d_mlp + enc.index[s:e]
                if flat.numel() < per_neuron.shape[1]:
                    per_neuron = per_neuron.index_select(1, flat.to(per_neuron.device))
            else:
                per_neuron = self._columns(enc, l).apply(g)
            yield s, per_neuron * enc.activation[s:e].to(per_neuron.device)

    def _columns(self, enc: Encoded, l: int) -> PositionBlocks:
        """Layer ``l``'s candidates' W_down columns by position (built once per prompt)."""
        if l not in enc.columns:
            s, e = enc.layer_start[l], enc.layer_start[l + 1]
            W = self.W_down[l]
            enc.columns[l] = PositionBlocks.build(enc.pos[s:e], W[:, enc.index[s:e].to(W.device)].T, self.device)
        return enc.columns[l]

    def values(self, enc: Encoded, trace: Trace) -> torch.Tensor:
        return _per_feature(enc, lambda l: trace[f"blocks.{l}.mlp.post"][0].float())

    def grad_patches(self, live: Trace) -> dict:
        return {self.write_point(l): (lambda x: x.detach()) for l in range(self.L)}

    def bias_patches(self, live: Trace) -> dict:
        return {self.write_point(l): (lambda x: torch.zeros_like(x)) for l in range(self.L)}

    def describe(self) -> dict:
        return {"basis": "neurons", "d_mlp": self.model.facts.d_mlp}


class TranscoderBasis:
    name = "transcoders"

    def __init__(self, model, transcoders: TranscoderSet) -> None:
        self.model = model
        self.tc = transcoders
        self.L = model.facts.n_layers

    def input_point(self, l: int) -> str:
        return f"blocks.{l}.{self.tc.input_point}"

    def width(self) -> int:
        """Features per layer and position."""
        return self.tc.layers[0].d_transcoder

    def write_point(self, l: int) -> str:
        return f"blocks.{l}.{self.tc.output_point}"

    def clean_points(self) -> list[str]:
        return [self.input_point(l) for l in range(self.L)] + [self.write_point(l) for l in range(self.L)]

    def bias_points(self) -> list[str]:
        return [self.input_point(l) for l in range(self.L)]

    def select(self, clean: Trace, ids, directions, weights, first_pos: int,
               settings: AttributionSettings) -> tuple[torch.Tensor | None, dict]:
        """Every active transcoder feature is a candidate (transcoders are sparse already, and the
        reference keeps them all), unless more than ``max_candidates`` are active (long prompts):
        then the ``max_candidates`` with the largest total effect on the explained logits
        (|a_i · Σ_k W_dec[i, k] · ∂v/∂out_{l+k,p}|, as for neurons), and every other feature's
        write is in its (layer, position) error node, so rows stay exact and their width bounded."""
        tc = self.tc
        acts = []
        for l in range(self.L):  # from the prompt's run
            act = tc.activate(l, tc.encode_pre(l, clean[self.input_point(l)][0].float().to(tc.device)))
            act[:first_pos] = 0
            acts.append(act)
        pool = sum(int((a != 0).sum()) for a in acts)
        if pool <= settings.max_candidates:
            return None, {}  # the reference's graph: every active feature
        grads = total_effect_grads(self.model, ids, directions, weights, [self.write_point(l) for l in range(self.L)])
        effect = []
        for l in range(self.L):
            W_dec = tc.layers[l].W_dec  # [d_tc, n_out, d]
            reach = sum(grads[l + k].to(W_dec.device) @ W_dec[:, k].T for k in range(W_dec.shape[1]))  # [P, d_tc]
            effect.append((reach * acts[l]).abs())
        size = torch.stack(acts).abs()
        return top_candidates(torch.stack(effect), size, first_pos, settings.max_candidates, 1.0)

    def encode(self, clean: Trace, first_pos: int, candidates: torch.Tensor | None = None) -> Encoded:
        """Active (candidate) features; the error at each write point is the MLP output minus what
        they, the decoder bias and the skip path reconstruct (non-candidates' writes included)."""
        tc = self.tc
        P = clean[self.input_point(0)].shape[1]
        d = self.model.facts.d_model
        recon = torch.zeros(self.L, P, d, device=tc.device)  # computed where the transcoders are
        layers, poss, idxs, acts, pres, starts = [], [], [], [], [], [0]
        for l in range(self.L):
            x = clean[self.input_point(l)][0].float().to(tc.device)
            pre = tc.encode_pre(l, x)
            act = tc.activate(l, pre)
            act[:first_pos] = 0
            if candidates is not None:
                act = torch.where(candidates[l].to(act.device), act, torch.zeros_like(act))
            p, i = act.nonzero(as_tuple=True)
            layers.append(torch.full_like(p, l))
            poss.append(p)
            idxs.append(i)
            acts.append(act[p, i])
            pres.append(pre[p, i])
            starts.append(starts[-1] + p.numel())
            W_dec = tc.layers[l].W_dec  # [d_tc, n_out, d]
            for k in range(W_dec.shape[1]):
                recon[l + k].index_add_(0, p, act[p, i, None] * W_dec[i, k])
            skip = tc.skip(l, x)
            recon[l] += tc.layers[l].b_dec + (0 if skip is None else skip)
        writes = torch.stack([clean[self.write_point(l)][0].float().to(self.model.device) for l in range(self.L)])
        return Encoded(torch.cat(layers).cpu(), torch.cat(poss).cpu(), torch.cat(idxs).cpu(), torch.cat(acts).cpu(),
                       torch.cat(pres).cpu(), (writes - recon.to(writes.device)), starts)

    def injection(self, enc: Encoded, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.tc.layers[int(enc.layer[j])].W_enc[int(enc.index[j])] for j in idx.tolist()])

    def contributions(self, enc: Encoded, grads: list[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        for l in range(self.L):
            s, e = enc.layer_start[l], enc.layer_start[l + 1]
            if e == s:
                continue
            total = None
            for k in range(self.tc.layers[l].W_dec.shape[1]):  # CLT: every output layer from l on
                g = grads[l + k]
                if g is None:  # no row of the batch reads that layer's writes
                    continue
                part = self._blocks(enc, l, k, g.device).apply(g)
                total = part if total is None else total + part
            if total is not None:
                yield s, total * enc.activation[s:e].to(total.device)

    def _blocks(self, enc: Encoded, l: int, k: int, device) -> PositionBlocks:
        """Layer ``l``'s features' decoder vectors into output layer ``l + k``, by position (built
        once per prompt)."""
        key = (l, k)
        if key not in enc.columns:
            s, e = enc.layer_start[l], enc.layer_start[l + 1]
            W_dec = self.tc.layers[l].W_dec
            enc.columns[key] = PositionBlocks.build(enc.pos[s:e], W_dec[enc.index[s:e].to(W_dec.device), k], device)
        return enc.columns[key]

    def values(self, enc: Encoded, trace: Trace) -> torch.Tensor:
        return _per_feature(enc, lambda l: self.tc.encode_pre(l, trace[self.input_point(l)][0].float()))

    def _skip_of(self, live: Trace, l: int):
        return self.tc.skip(l, live.cache[self.input_point(l)]) if self.tc.layers[l].W_skip is not None else None

    def grad_patches(self, live: Trace) -> dict:
        """MLP output held at its value; the (linear) skip path keeps its gradient."""

        def patch(x, l):
            skip = self._skip_of(live, l)
            if skip is None:
                return x.detach()
            skip = skip.to(x.dtype)
            return x.detach() + (skip - skip.detach())

        return {self.write_point(l): (lambda x, l=l: patch(x, l)) for l in range(self.L)}

    def bias_patches(self, live: Trace) -> dict:
        """Sources removed: only the decoder bias and the skip path of the bias-only input remain."""

        def patch(x, l):
            out = self.tc.layers[l].b_dec.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
            skip = self._skip_of(live, l)
            return out if skip is None else out + skip.to(x.dtype)

        return {self.write_point(l): (lambda x, l=l: patch(x, l)) for l in range(self.L)}

    def describe(self) -> dict:
        return {"basis": "transcoders", **self.tc.describe()}

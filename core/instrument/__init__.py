"""Instrumentation: one mechanism through which every method sees inside a model.

Access points (``Instrumentation.points``), per block ``l``::

    embed, pos_embed (GPT-2)           token (and position) embeddings            [b, s, d]
    blocks.{l}.resid_pre               residual stream entering the block          [b, s, d]
    blocks.{l}.attn_norm.scale         the attention norm's scale (1/rms or 1/std)  [b, s, 1]
    blocks.{l}.attn_in                 normalized input to attention (q/k/v paths) [b, s, d]
    blocks.{l}.attn.{q,k,v}_in         residual stream as one path of one query head reads it
                                       (before the norm; using one splits the layer) [b, s, h, d]
    blocks.{l}.attn.{q,k,v}            each query head's query/key/value projection (before rotary;
                                       GQA k/v copied per query head)               [b, s, h, d_head]
    blocks.{l}.attn.{q,k}_rot          the queries and keys the attention scores (after rotary
                                       embeddings and q/k norms; keys per key/value head) [b, h, s, d_head]
    blocks.{l}.attn.pattern            attention probabilities                      [b, h, q, k]
    blocks.{l}.attn.z                  per-head output before the output projection [b, s, h, d_head]
    blocks.{l}.attn_post_norm.scale    Gemma's post-attention norm scale            [b, s, 1]
    blocks.{l}.attn_out                attention's contribution to the residual    [b, s, d]
    blocks.{l}.resid_mid               residual stream entering the MLP norm       [b, s, d]
    blocks.{l}.mlp_norm.scale          the MLP norm's scale                         [b, s, 1]
    blocks.{l}.mlp_in                  normalized input to the MLP                 [b, s, d]
    blocks.{l}.mlp.mult                neuron multiplier: act(gate) or act(p)/p     [b, s, d_mlp]
    blocks.{l}.mlp.post                neuron activations (input of down_proj)     [b, s, d_mlp]
    blocks.{l}.mlp.out                 the MLP module's output (before Gemma's post-norm)
    blocks.{l}.mlp_post_norm.scale     Gemma's post-feedforward norm scale          [b, s, 1]
    blocks.{l}.mlp_out                 MLP's contribution to the residual          [b, s, d]
    blocks.{l}.resid_post              residual stream leaving the block           [b, s, d]
    resid_final                        residual stream entering the final norm     [b, s, d]
    final_norm.scale                   the final norm's scale                       [b, s, 1]
    final_norm                         output of the final norm                    [b, s, d]
    logits                             the model's output logits                   [b, s, vocab]

(attn_out / mlp_out include Gemma's post-norms: they are exactly what is added to the residual.)

Inside ``with inst.session(...) as trace:`` any point can be read (``cache``), replaced
(``patch``: a tensor or a function of the tensor), shifted (``add``) or made a gradient point
(``grad``: ``trace.grad(name)`` after backward), and attention probabilities, norm scales and
MLP multipliers can be frozen (values unchanged, gradients stop through them) or patched with
values cached from another run (the model then computes the local replacement model). Outside a session the hooks are
inert and the model computes exactly what the plain Hugging Face forward computes.
"""

from core.instrument.hooks import Instrumentation, Trace

__all__ = ["Instrumentation", "Trace"]

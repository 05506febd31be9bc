"""Instrumentation: one mechanism through which every method sees inside a model.

Access points (``Instrumentation.points``), per block ``l``::

    embed, pos_embed (GPT-2)           token (and position) embeddings            [b, s, d]
    blocks.{l}.resid_pre               residual stream entering the block          [b, s, d]
    blocks.{l}.attn_in                 normalized input to attention (q/k/v paths) [b, s, d]
    blocks.{l}.attn.pattern            attention probabilities                      [b, h, q, k]
    blocks.{l}.attn.z                  per-head output before the output projection [b, s, h, d_head]
    blocks.{l}.attn_out                attention's contribution to the residual    [b, s, d]
    blocks.{l}.mlp_in                  normalized input to the MLP                 [b, s, d]
    blocks.{l}.mlp.post                neuron activations (input of down_proj)     [b, s, d_mlp]
    blocks.{l}.mlp_out                 MLP's contribution to the residual          [b, s, d]
    blocks.{l}.resid_post              residual stream leaving the block           [b, s, d]
    final_norm                         output of the final norm                    [b, s, d]
    logits                             the model's output logits                   [b, s, vocab]

(attn_out / mlp_out include Gemma's post-norms: they are exactly what is added to the residual.)

Inside ``with inst.session(...) as trace:`` any point can be read (``cache``), replaced
(``patch``: a tensor or a function of the tensor), shifted (``add``) or made a gradient point
(``grad``: ``trace.grad(name)`` after backward), and attention probabilities / norm scales can
be frozen (values unchanged, gradients stop through them). Outside a session the hooks are
inert and the model computes exactly what the plain Hugging Face forward computes.
"""

from core.instrument.hooks import Instrumentation, Trace

__all__ = ["Instrumentation", "Trace"]

"""Mixing K joint actions per state with the state's hypernetwork weights, in cache-sized chunks.

The CQL regularisers mix K = 100 (MACQL) or N·A (CFCQL) joint actions per transition. Written
with autograd ops, every step of ``elu(qs @ w1 + b1) @ w_final + v`` materialises a
``[M, K, E]`` tensor (about 100 MB at batch 128 on 2s3z) and its backward reads and writes
several more: the update is bound by memory traffic, not arithmetic. Here the forward keeps
only the ``[M, K, 1]`` output, and the backward recomputes the hidden layer chunk by chunk, so
each ``[chunk, K, E]`` block is made and used while it is in cache. Same math, same values to
float rounding (relative to 1 rather than to ``elu(x)`` where ``|elu(x)| << 1``: the ``+ 1``
below); gradients flow to ``qs`` and to every hypernetwork output.

Two choices make each block cheap on a CPU (``python benchmarks/sample_mixing_costs.py`` times
them; one MACQL update on 2s3z got 1.20x faster on one thread: ``python benchmarks/update_ab.py
--variant sample_mixing``; docs/scaling.md):

* **ELU through ``exp2``.** The block holds ``M·K·E`` pre-activations (18 M on a 2s3z
  batch), and on the AVX-512 machine measured torch's vector ``exp`` (hence ``F.elu``) costs about
  three times its ``exp2``. The block keeps ``h1 = elu(x) + 1 = exp(min(x, 0)) + max(x, 0)``, with
  ``exp(y) = exp2(y·log2 e)`` and ``log2 e`` folded into ``w1`` and ``b1``; the ``+ 1`` is
  taken back through the output bias (``v − Σ_e w_final``), and ELU's derivative is
  ``min(h1, 1)``.
* **Each product in the layout its kernel is fast in.** The output and ``w_final``'s gradient
  are vector products over K or E; as ``[K, E] @ [E, 1]`` and ``[E, K] @ [K, 1]`` they ran 3-10x
  slower than the same products as ``[1, E] @ [E, K]`` and ``[1, K] @ [K, E]``, so they are
  written that way (a ``[M, K, 1]`` or ``[M, E, 1]`` tensor is laid out as ``[M, 1, K]`` or
  ``[M, 1, E]``: the views are free); ``qs``' gradient is made as ``[M, N, K]`` and returned as
  its transposed view.
"""

from __future__ import annotations

import math

import torch

# Elements of one [chunk, K, E] block on a CPU (2 MB of float32: within a core's L2 + L3 share).
CPU_BLOCK_ELEMENTS = 1 << 19
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


def _chunk(qs: torch.Tensor, embed_dim: int) -> int:
    m, k = qs.shape[0], qs.shape[1]
    if qs.device.type != "cpu":  # a GPU wants one large kernel, not a Python loop of small ones
        return max(m, 1)
    return max(1, CPU_BLOCK_ELEMENTS // max(k * embed_dim, 1))


def _elu_plus_one(q: torch.Tensor, w1_log2e: torch.Tensor, b1_log2e: torch.Tensor,
                  scratch: torch.Tensor) -> torch.Tensor:
    """``elu(q @ w1 + b1) + 1`` of one block, ``[c, K, E]``, from ``w1·log2 e`` and ``b1·log2 e``."""
    pre = torch.baddbmm(b1_log2e, q, w1_log2e)  # (q @ w1 + b1) · log2 e
    neg = torch.clamp(pre, max=0.0, out=scratch[: pre.shape[0]]).exp2_()  # exp(min(x, 0))
    return torch.add(neg, pre.clamp_(min=0.0), alpha=LN2, out=pre)  # + max(x, 0)


class _MixSamples(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qs, w1, b1, w_final, v):
        m, k, _ = qs.shape
        e_dim = w1.shape[-1]
        chunk = _chunk(qs, e_dim)
        w1_log2e, b1_log2e = w1 * LOG2E, b1 * LOG2E
        w_final_row = w_final.transpose(1, 2)  # [M, 1, E]
        bias = v - w_final.sum(1, keepdim=True)  # the "+ 1" of h1, taken back   [M, 1, 1]
        out = qs.new_empty(m, k, 1)  # returned as is: a view would refuse callers' in-place ops
        out_row = out.view(m, 1, k)  # written in the [1, E] @ [E, K] layout
        scratch = qs.new_empty(min(chunk, m), k, e_dim)
        for s in range(0, m, chunk):
            e = s + chunk
            h1 = _elu_plus_one(qs[s:e], w1_log2e[s:e], b1_log2e[s:e], scratch)
            torch.baddbmm(bias[s:e], w_final_row[s:e], h1.transpose(1, 2), out=out_row[s:e])
        ctx.save_for_backward(qs, w1, w1_log2e, b1_log2e, w_final)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        qs, w1, w1_log2e, b1_log2e, w_final = ctx.saved_tensors
        m, k, n = qs.shape
        e_dim = w1.shape[-1]
        g_row = grad_out.reshape(m, 1, k).contiguous()  # [M, 1, K]
        g_col = g_row.view(m, k, 1)
        w_final_row = w_final.transpose(1, 2)  # [M, 1, E]
        g_qs_t, g_w1 = qs.new_empty(m, n, k), torch.empty_like(w1)
        g_b1, g_wf = qs.new_empty(m, 1, e_dim), qs.new_empty(m, 1, e_dim)
        g_v = g_row.sum(-1, keepdim=True)  # [M, 1, 1]
        neg_g_v = g_v.neg()
        scratch = qs.new_empty(min(ctx.chunk, m), k, e_dim)
        for s in range(0, m, ctx.chunk):
            e = s + ctx.chunk
            q = qs[s:e]
            h1 = _elu_plus_one(q, w1_log2e[s:e], b1_log2e[s:e], scratch)  # [c, K, E], recomputed
            torch.baddbmm(neg_g_v[s:e], g_row[s:e], h1, out=g_wf[s:e])  # g^T (h1 − 1)
            g_pre = h1.clamp_(max=1.0).mul_(g_col[s:e]).mul_(w_final_row[s:e])  # elu' · g · w_final
            torch.sum(g_pre, 1, keepdim=True, out=g_b1[s:e])
            torch.bmm(q.transpose(1, 2), g_pre, out=g_w1[s:e])
            torch.bmm(w1[s:e], g_pre.transpose(1, 2), out=g_qs_t[s:e])
        return g_qs_t.transpose(1, 2), g_w1, g_b1, g_wf.view(m, e_dim, 1), g_v


def mix_samples(qs: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w_final: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
    """``elu(qs @ w1 + b1) @ w_final + v`` per state: ``qs [M, K, N]``, ``w1 [M, N, E]``,
    ``b1 [M, 1, E]``, ``w_final [M, E, 1]``, ``v [M, 1, 1]`` -> ``[M, K, 1]``."""
    return _MixSamples.apply(qs.contiguous(), w1.contiguous(), b1.contiguous(), w_final.contiguous(),
                             v.contiguous())

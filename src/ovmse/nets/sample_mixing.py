"""Mixing K joint actions per state with the state's hypernetwork weights, in cache-sized chunks.

The CQL regularisers mix K = 100 (MACQL) or N·A (CFCQL) joint actions per transition. Written
with autograd ops, every step of ``elu(qs @ w1 + b1) @ w_final + v`` materialises a
``[M, K, E]`` tensor (about 100 MB at batch 128 on 2s3z) and its backward reads and writes
several more: the update is bound by memory traffic, not arithmetic. Here the forward keeps
only the ``[M, K, 1]`` output, and the backward recomputes the hidden layer chunk by chunk, so
each ``[chunk, K, E]`` block is made and used while it is in cache. Same math, same values (to
float rounding); gradients flow to ``qs`` and to every hypernetwork output.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Elements of one [chunk, K, E] block on a CPU (2 MB of float32: within a core's L2 + L3 share).
CPU_BLOCK_ELEMENTS = 1 << 19


def _chunk(qs: torch.Tensor, embed_dim: int) -> int:
    m, k = qs.shape[0], qs.shape[1]
    if qs.device.type != "cpu":  # a GPU wants one large kernel, not a Python loop of small ones
        return max(m, 1)
    return max(1, CPU_BLOCK_ELEMENTS // max(k * embed_dim, 1))


class _MixSamples(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qs, w1, b1, w_final, v):
        m, k, _ = qs.shape
        chunk = _chunk(qs, w1.shape[-1])
        out = qs.new_empty(m, k, 1)
        for s in range(0, m, chunk):
            e = s + chunk
            hidden = F.elu(torch.baddbmm(b1[s:e], qs[s:e], w1[s:e]), inplace=True)
            torch.baddbmm(v[s:e], hidden, w_final[s:e], out=out[s:e])
        ctx.save_for_backward(qs, w1, b1, w_final)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        qs, w1, b1, w_final = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        g_qs, g_w1 = torch.empty_like(qs), torch.empty_like(w1)
        g_b1, g_wf = torch.empty_like(b1), torch.empty_like(w_final)
        g_v = grad_out.sum(1, keepdim=True)
        for s in range(0, qs.shape[0], ctx.chunk):
            e = s + ctx.chunk
            q, w, g = qs[s:e], w1[s:e], grad_out[s:e]
            hidden = F.elu(torch.baddbmm(b1[s:e], q, w), inplace=True)  # [c, K, E], recomputed
            torch.bmm(hidden.transpose(1, 2), g, out=g_wf[s:e])
            g_hidden = g * w_final[s:e].transpose(1, 2)  # [c, K, 1] x [c, 1, E]
            g_pre = torch.ops.aten.elu_backward(g_hidden, 1.0, 1, 1.0, True, hidden)  # from ELU's output
            torch.sum(g_pre, 1, keepdim=True, out=g_b1[s:e])
            torch.bmm(q.transpose(1, 2), g_pre, out=g_w1[s:e])
            torch.bmm(g_pre, w.transpose(1, 2), out=g_qs[s:e])
        return g_qs, g_w1, g_b1, g_wf, g_v


def mix_samples(qs: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w_final: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
    """``elu(qs @ w1 + b1) @ w_final + v`` per state: ``qs [M, K, N]``, ``w1 [M, N, E]``,
    ``b1 [M, 1, E]``, ``w_final [M, E, 1]``, ``v [M, 1, 1]`` -> ``[M, K, 1]``."""
    return _MixSamples.apply(qs.contiguous(), w1.contiguous(), b1.contiguous(), w_final.contiguous(),
                             v.contiguous())

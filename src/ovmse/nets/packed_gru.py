"""A GRU over packed sequences whose backward makes the weight gradients in one matmul each.

Why not ``GRUCell`` in a loop: autograd then runs, per time step, two small matmuls forward and
four backward (the gradients of the input, the hidden state and both weights), all on
``[B·N, H]`` blocks too small to use a core well, and every step covers the padding after the
episodes that have already ended. Here:

* the sequences are **packed** (PyTorch's ``PackedSequence`` convention: time-major, the
  sequences sorted longest first, ``batch_sizes[t]`` of them still running at step t), so a
  step only touches the sequences that are still running;
* the input side ``x W_ihᵀ + b_ih`` of every step is one matmul before the loop (autograd
  differentiates it as one matmul too);
* the loop keeps one matmul per step forward (``h W_hhᵀ``) and one backward (``dgh W_hh``);
  ``dW_hh`` is one matmul over all steps after the backward loop.

The arithmetic is ``torch.nn.GRUCell``'s (gate order r, z, n):

    r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),  n = tanh(gi_n + r ⊙ gh_n),  h' = n + z ⊙ (h − n)

with ``gi = x W_ihᵀ + b_ih`` and ``gh = h W_hhᵀ + b_hh``; results equal the cell's to float
rounding (tests/losses/test_packed_gru.py, values and gradients).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from ovmse.nets.packed_gru import packed_gru
    >>> cell = nn.GRUCell(3, 4)
    >>> x = torch.randn(2 + 1, 3)          # two sequences at step 0, one left at step 1
    >>> out = packed_gru(x, cell, torch.zeros(2, 4), [2, 1])
    >>> out.shape                           # [R, H], rows in the order of x
    torch.Size([3, 4])
    >>> h0 = cell(x[:2], torch.zeros(2, 4))
    >>> torch.allclose(out[:2], h0, atol=1e-6), torch.allclose(out[2:], cell(x[2:], h0[:1]), atol=1e-6)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["packed_gru"]


def packed_gru(x: torch.Tensor, cell: nn.GRUCell, h0: torch.Tensor, batch_sizes: Sequence[int]) -> torch.Tensor:
    """Run ``cell`` over packed sequences.

    Args:
        x: ``[R, D]`` inputs, time-major packed: rows ``sum(batch_sizes[:t]) ..`` hold step t of
            the first ``batch_sizes[t]`` sequences.
        cell: the ``GRUCell`` whose weights are used (gradients flow into them).
        h0: ``[batch_sizes[0], H]`` initial hidden state.
        batch_sizes: non-increasing Python ints, ``R = sum(batch_sizes)``.

    Returns:
        ``[R, H]``: the hidden state after every step, packed like ``x``.
    """
    sizes = tuple(int(n) for n in batch_sizes)
    if any(b > a for a, b in zip(sizes, sizes[1:])) or sum(sizes) != x.shape[0] or h0.shape[0] != sizes[0]:
        raise ValueError(f"packed_gru: batch_sizes {sizes[:4]}... must be non-increasing and sum to x's {x.shape[0]} "
                         f"rows, with h0 holding {sizes[0] if sizes else 0} rows (got {h0.shape[0]})")
    gi = torch.addmm(cell.bias_ih, x, cell.weight_ih.t())  # [R, 3H], one matmul for every step
    return _PackedGRU.apply(gi, cell.weight_hh, cell.bias_hh, h0, sizes)


class _PackedGRU(torch.autograd.Function):
    """The recurrent part: ``gi [R, 3H]`` precomputed, ``h W_hhᵀ + b_hh`` per step. The steps' gate
    intermediates stay in per-step lists; the outputs, and backward the gate gradients, are
    written block by block into packed ``[R, ·]`` buffers (no concatenation after the loop)."""

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, h0, sizes):
        H = w_hh.shape[1]
        keep = any(ctx.needs_input_grad[:4])  # nothing to keep for target networks and acting
        out = gi.new_empty(gi.shape[0], H)  # each step writes its rows here: no concatenation after
        rzs, news, gh_ns = [], [], []
        h = h0
        start = 0
        for n in sizes:
            g = gi[start : start + n]
            gh = torch.addmm(b_hh, h[:n], w_hh.t())  # [n, 3H]
            rz = torch.sigmoid(g[:, : 2 * H] + gh[:, : 2 * H])
            # tanh(a) = 2σ(2a) − 1 (to 2e-7): on AVX2 CPUs ATen's vectorised tanh costs more than
            # twice its sigmoid (benchmarks/results/gru_step_costs.md).
            a = torch.addcmul(g[:, 2 * H :], rz[:, :H], gh[:, 2 * H :])
            new = torch.sigmoid(a.mul_(2)).mul_(2).sub_(1)
            h = torch.addcmul(new, rz[:, H:], h[:n] - new, out=out[start : start + n])
            if keep:
                rzs.append(rz)
                news.append(new)
                gh_ns.append(gh[:, 2 * H :])
            start += n
        if keep:
            ctx.save_for_backward(w_hh, h0, out)
            ctx.steps = (sizes, rzs, news, gh_ns)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        w_hh, h0, out = ctx.saved_tensors
        sizes, rzs, news, gh_ns = ctx.steps
        H = w_hh.shape[1]
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)
        # d_gh = dL/d(h W_hhᵀ + b_hh) of every step, written in place; its r and z columns are
        # also dL/dgi's, whose n columns (dL/d a_n, before the r gate) go to d_an.
        d_gh = d_out.new_empty(d_out.shape[0], 3 * H)
        d_an = d_out.new_empty(d_out.shape[0], H)
        tanh_bw = torch.ops.aten.tanh_backward.grad_input
        carry = None  # dL/dh of the step after, for its running sequences
        for t in range(len(sizes) - 1, -1, -1):
            n, s = sizes[t], starts[t]
            e = s + n
            dh = d_out[s:e]
            if carry is not None:
                if carry.shape[0] == n:
                    dh = dh + carry
                else:
                    dh = dh.clone()
                    dh[: carry.shape[0]] += carry
            h_prev = h0[:n] if t == 0 else out[starts[t - 1] : starts[t - 1] + n]
            rz, new, gh_n = rzs[t], news[t], gh_ns[t]
            z = rz[:, H:]
            dh_z = dh * z
            d_a_n = tanh_bw(dh - dh_z, new, grad_input=d_an[s:e])
            # Whole rows of the buffers are contiguous; strided column writes cost twice a copy.
            d_rz = torch.ops.aten.sigmoid_backward(torch.cat([d_a_n * gh_n, dh * (h_prev - new)], 1), rz)
            torch.cat([d_rz, d_a_n * rz[:, :H]], 1, out=d_gh[s:e])
            carry = torch.addmm(dh_z, d_gh[s:e], w_hh)  # dL/dh_prev, [n, H]
        d_w_hh = d_b_hh = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # The hidden state each step read: h0 for step 0, else the previous step's output.
            h_prev_all = torch.cat([h0[: sizes[0]]] + [out[starts[t - 1] : starts[t - 1] + sizes[t]]
                                                      for t in range(1, len(sizes))], 0)
            d_w_hh = d_gh.t().mm(h_prev_all)
            d_b_hh = d_gh.sum(0)
        d_gh[:, 2 * H :] = d_an  # now dL/dgi
        d_h0 = carry if ctx.needs_input_grad[3] else None
        return d_gh, d_w_hh, d_b_hh, d_h0, None

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
    """The recurrent part: ``gi [R, 3H]`` precomputed, ``h W_hhᵀ + b_hh`` per step. The steps'
    intermediates stay in per-step lists (no copies into packed buffers)."""

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, h0, sizes):
        H = w_hh.shape[1]
        keep = any(ctx.needs_input_grad[:4])  # nothing to keep for target networks and acting
        hs, rzs, news, gh_ns = [], [], [], []
        h = h0
        start = 0
        for n in sizes:
            g = gi[start : start + n]
            gh = torch.addmm(b_hh, h[:n], w_hh.t())  # [n, 3H]
            rz = torch.sigmoid(g[:, : 2 * H] + gh[:, : 2 * H])
            new = torch.tanh(torch.addcmul(g[:, 2 * H :], rz[:, :H], gh[:, 2 * H :]))
            h = torch.addcmul(new, rz[:, H:], h[:n] - new)
            hs.append(h)
            if keep:
                rzs.append(rz)
                news.append(new)
                gh_ns.append(gh[:, 2 * H :])
            start += n
        if keep:
            ctx.save_for_backward(w_hh, h0)
            ctx.steps = (hs, rzs, news, gh_ns)
        return torch.cat(hs, 0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        w_hh, h0 = ctx.saved_tensors
        hs, rzs, news, gh_ns = ctx.steps
        H = w_hh.shape[1]
        sizes = [h.shape[0] for h in hs]
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)
        d_gis, d_ghs = [], []
        carry = None  # dL/dh of the step after, for its running sequences
        for t in range(len(sizes) - 1, -1, -1):
            n = sizes[t]
            dh = d_out[starts[t] : starts[t] + n]
            if carry is not None:
                dh = dh + (carry if carry.shape[0] == n else torch.nn.functional.pad(carry, (0, 0, 0, n - carry.shape[0])))
            h_prev = h0[:n] if t == 0 else hs[t - 1][:n]
            rz, new, gh_n = rzs[t], news[t], gh_ns[t]
            z = rz[:, H:]
            d_a_n = torch.ops.aten.tanh_backward(dh - dh * z, new)
            d_rz = torch.ops.aten.sigmoid_backward(torch.cat([d_a_n * gh_n, dh * (h_prev - new)], 1), rz)
            d_gis.append(torch.cat([d_rz, d_a_n], 1))
            d_gh = torch.cat([d_rz, d_a_n * rz[:, :H]], 1)
            d_ghs.append(d_gh)
            carry = torch.addmm(dh * z, d_gh, w_hh)  # dL/dh_prev, [n, H]
        d_gi = torch.cat(d_gis[::-1], 0)
        d_w_hh = d_b_hh = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_gh = torch.cat(d_ghs[::-1], 0)
            # The hidden state each step read: h0 for step 0, else the previous step's output.
            h_prev_all = torch.cat([h0[: sizes[0]]] + [hs[t - 1][: sizes[t]] for t in range(1, len(sizes))], 0)
            d_w_hh = d_gh.t().mm(h_prev_all)
            d_b_hh = d_gh.sum(0)
        d_h0 = carry if ctx.needs_input_grad[3] else None
        return d_gi, d_w_hh, d_b_hh, d_h0, None

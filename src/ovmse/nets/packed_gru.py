"""A GRU over packed sequences whose backward makes the weight gradients in one matmul each.

Why not ``GRUCell`` in a loop: autograd then runs, per time step, two small matmuls forward and
four backward (the gradients of the input, the hidden state and both weights), all on
``[B·N, H]`` blocks too small to use a core well, and every step covers the padding after the
episodes that have already ended. Here:

* the sequences are **packed** (PyTorch's ``PackedSequence`` convention: time-major, the
  sequences sorted longest first, ``batch_sizes[t]`` of them still running at step t), so a
  step only touches the sequences that are still running;
* the input side ``x W_ihᵀ + b_ih`` of every step is one matmul per gate group before the
  loop, and its gradients one matmul each after the backward loop;
* the loop keeps the recurrent matmul per step forward (``h W_hhᵀ``, the r and z part added in
  place onto the input side, so the gates need no separate addition) and one backward
  (``dgh W_hh``, added in place into the previous step's gradient); ``dW_hh`` is one matmul
  over all steps after the backward loop;
* a step's gate arithmetic is five elementwise calls forward and ten backward: at these sizes
  (``[B·N, H]``, a few hundred rows) a call costs about as much as its arithmetic, so fewer
  calls is what makes a step cheaper (benchmarks/results/train_throughput.md).

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
    if (not sizes or any(b > a for a, b in zip(sizes, sizes[1:])) or sum(sizes) != x.shape[0]
            or h0.shape[0] != sizes[0]):
        raise ValueError(f"packed_gru: batch_sizes {sizes[:4]}... must be non-empty, non-increasing and sum to "
                         f"x's {x.shape[0]} rows, with h0 holding {sizes[0] if sizes else 0} rows "
                         f"(got {h0.shape[0]})")
    return _PackedGRU.apply(x, cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh, h0, sizes)


class _PackedGRU(torch.autograd.Function):
    """The whole packed GRU, input matmuls included. Forward buffers ``[R, ·]``, each step
    filling its rows (backward reads them back):

    * ``rz [R, 2H]``: first ``x W_irzᵀ + b_irz + b_hrz``; each step adds ``h W_hrzᵀ`` in place
      and takes the sigmoid in place: ``[r | z]``.
    * ``gh_n [R, H]``: ``h W_hnᵀ + b_hn`` of each step.
    * ``new [R, H]``: first ``2·(x W_inᵀ + b_in)``; each step turns its rows into the candidate
      in place: ``2a = 2 gi_n + 2 r gh_n``, ``n = 2σ(2a) − 1 = tanh(a)`` (on AVX2/AVX-512 CPUs
      ATen's vectorised tanh costs several sigmoids: benchmarks/results/gru_step_costs.md).
    * ``out [R, H]``: the hidden states, ``h' = lerp(n, h, z) = n + z (h − n)``.

    Backward, per step: ``dh`` (the output's gradient plus what the next step sent back) gives
    ``d_gh [R, 3H]`` (dL/d(h W_hhᵀ + b_hh), order r, z, n; its r, z columns are also dL/d gi's)
    and ``d_gi_n [R, H]``, and sends ``dh z + d_gh W_hh`` into the previous step's rows of ``dh``
    in place. The weight and input gradients are then one matmul each per gate group over all
    rows; the r and z biases of both sides share one column sum."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, w_hh, b_hh, h0, sizes):
        H = w_hh.shape[1]
        R = x.shape[0]
        # The r, z pre-activations take both sides' biases here, so a step only adds h W_hrzᵀ;
        # the n gate's input side is doubled for tanh(a) = 2σ(2a) − 1.
        rz = torch.addmm(b_ih[: 2 * H] + b_hh[: 2 * H], x, w_ih[: 2 * H].t())  # [R, 2H]
        new = torch.addmm(b_ih[2 * H :] * 2, x, w_ih[2 * H :].t() * 2)  # [R, H]: 2·gi_n
        gh_n = x.new_empty(R, H)
        w_hrz_t, w_hn_t, b_hn = w_hh[: 2 * H].t(), w_hh[2 * H :].t(), b_hh[2 * H :]
        neg_one = x.new_full((), -1.0)
        out = x.new_empty(R, H)
        h, start = h0, 0
        for n in sizes:
            e = start + n
            hn = h[:n]
            r_z = rz[start:e].addmm_(hn, w_hrz_t).sigmoid_()
            g = torch.addmm(b_hn, hn, w_hn_t, out=gh_n[start:e])
            s = new[start:e]
            torch.addcmul(s, r_z[:, :H], g, value=2, out=s).sigmoid_()  # σ(2a)
            torch.add(neg_one, s, alpha=2, out=s)  # n = 2σ(2a) − 1
            h = torch.lerp(s, hn, r_z[:, H:], out=out[start:e])
            start = e
        if any(ctx.needs_input_grad[:6]):
            ctx.save_for_backward(x, w_ih, w_hh, h0, out, rz, gh_n, new)
            ctx.sizes = sizes
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        x, w_ih, w_hh, h0, out, rz, gh_n, new = ctx.saved_tensors
        sizes = ctx.sizes
        H = w_hh.shape[1]
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)
        # The hidden state each step read: h0 for step 0, else the previous step's output.
        h_prev = torch.cat([h0[: sizes[0]]] + [out[starts[t - 1] : starts[t - 1] + sizes[t]]
                                               for t in range(1, len(sizes))])
        dh_all = d_out.clone()  # each step adds what it sends back into the previous step's rows
        d_gh = d_out.new_empty(d_out.shape[0], 3 * H)  # dL/d(h W_hhᵀ + b_hh), order r, z, n
        d_gi_n = d_out.new_empty(d_out.shape[0], H)  # dL/d gi_n (r and z: d_gh's columns)
        rz_grad = d_out.new_empty(sizes[0], 2 * H)  # per step: dL/dr, dL/dz before their sigmoid
        d_h0 = None
        for t in range(len(sizes) - 1, -1, -1):
            n, s = sizes[t], starts[t]
            e = s + n
            dh, r, z, gh_nt, n_t = dh_all[s:e], rz[s:e, :H], rz[s:e, H:], gh_n[s:e], new[s:e]
            g = d_gh[s:e]
            dh_z = dh * z
            d_a = torch.ops.aten.tanh_backward.grad_input(dh - dh_z, n_t, grad_input=d_gi_n[s:e])
            rz_g = rz_grad[:n]
            torch.mul(d_a, gh_nt, out=rz_g[:, :H])
            torch.mul(dh, h_prev[s:e] - n_t, out=rz_g[:, H:])
            # In place in the small scratch, then one copy: written straight into d_gh's strided
            # columns, sigmoid_backward took several times as long per step (profiled in an update).
            torch.ops.aten.sigmoid_backward.grad_input(rz_g, rz[s:e], grad_input=rz_g)
            g[:, : 2 * H].copy_(rz_g)
            torch.mul(d_a, r, out=g[:, 2 * H :])
            if t > 0:
                dh_all[starts[t - 1] : starts[t - 1] + n].add_(dh_z).addmm_(g, w_hh)
            else:
                d_h0 = torch.addmm(dh_z, g, w_hh)
        d_gi_rz = d_gh[:, : 2 * H]  # the r, z pre-activations take both sides' gradient
        d_x = d_gi_n.mm(w_ih[2 * H :]).addmm_(d_gi_rz, w_ih[: 2 * H]) if ctx.needs_input_grad[0] else None
        d_w_ih = torch.cat([d_gi_rz.t().mm(x), d_gi_n.t().mm(x)]) if ctx.needs_input_grad[1] else None
        d_b_hh = d_gh.sum(0)
        d_b_ih = torch.cat([d_b_hh[: 2 * H], d_gi_n.sum(0)])
        d_w_hh = d_gh.t().mm(h_prev) if ctx.needs_input_grad[3] else None
        return d_x, d_w_ih, d_b_ih, d_w_hh, d_b_hh, d_h0 if ctx.needs_input_grad[5] else None, None

"""OVM: Offline Value function Memory loss (OVMSE paper §4.1, Eq. 4-5), one loss per file.

Shapes (the T *transitions* of an episode batch; see :mod:`ovmse.losses.qmix_td`)::

    q_taken    float [B, T, 1]   online Q_tot(τ_t, a_t) of the taken joint action (gradient flows)
    y_td       float [B, T, 1]   the TD target of the same transitions (detached; the TD(λ)
                                 target of :class:`~ovmse.losses.QMixTDLoss`)
    y_memory   float [B, T, 1]   optional: the target compared with the memory; the paper's
                                 Eq. 4 uses the one-step r + γ·max_a' Q̄_tot(τ', a')
                                 (``QMixTDLoss.compute``'s ``y_one_step``); default y_td
    q_offline  float [B, T, 1]   Q_tot-offline(τ_t, a_t): the frozen offline *target* networks
                                 (agent + mixer) on the same batch (no gradient)
    mask             [B, T, 1]   > 0 for valid transitions

Per valid transition::

    Q_OVM = max(Q_tot-offline(τ, a), y_memory)
    ℓ     = (1 − λ)·(Q_tot − y_TD)² + λ·(Q_tot − Q_OVM)²

and the loss is ``loss_scale`` times the mean of ℓ over valid transitions (``loss_scale`` 0.5
as the TD loss, PyMARL2's convention), λ = λ_memory of the current env step (Eq. 6). Where
the offline memory is below the target both terms pull towards it; where it is above, the
second term keeps Q_tot from unlearning the value the offline phase had found.

Output keys of :func:`ovm_loss` (a :class:`tensordict.TensorDict`, batch size ``[]``)::

    "loss"             scalar, differentiable: td_part + memory_part
    "td_part"          detached, loss_scale · (1 − λ) · mean (Q_tot − y_TD)²
    "memory_part"      detached, loss_scale · λ · mean (Q_tot − Q_OVM)²
    "active_fraction"  detached, share of valid transitions with Q_tot-offline > y_memory
                       (where the memory, not the TD target, sets Q_OVM)
    "offline_q_mean"   detached, mean Q_tot-offline over valid transitions
    "ovm_target_mean"  detached, mean Q_OVM over valid transitions (with λ = 1, the only target)
    "lambda_memory"    λ as used

Examples:
    >>> import torch
    >>> q = torch.zeros(1, 2, 1, requires_grad=True)         # Q_tot of two transitions
    >>> y = torch.tensor([[[1.0], [3.0]]])                    # their TD targets
    >>> memory = torch.tensor([[[2.0], [-5.0]]])              # Q_tot-offline: above y at t = 0 only
    >>> out = ovm_loss(q, y, memory, torch.ones(1, 2, 1), lambda_memory=1.0)
    >>> float(out["active_fraction"]), float(out["ovm_target_mean"])   # targets max(2, 1), max(-5, 3)
    (0.5, 2.5)
    >>> out["loss"].backward()
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["ovm_loss"]


def ovm_loss(
    q_taken: torch.Tensor,
    y_td: torch.Tensor,
    q_offline: torch.Tensor,
    mask: torch.Tensor,
    lambda_memory: float,
    loss_scale: float = 0.5,
    y_memory: torch.Tensor | None = None,
) -> TensorDict:
    """The OVM loss of the module docstring."""
    if not 0.0 <= float(lambda_memory) <= 1.0:
        raise ValueError(f"lambda_memory must be in [0, 1], got {lambda_memory!r}")
    y_memory = y_td if y_memory is None else y_memory
    if not (q_taken.shape == y_td.shape == q_offline.shape == mask.shape == y_memory.shape):
        raise ValueError(
            f"q_taken, y_td, q_offline, mask and y_memory must all be [B, T, 1]; got {tuple(q_taken.shape)}, "
            f"{tuple(y_td.shape)}, {tuple(q_offline.shape)}, {tuple(mask.shape)}, {tuple(y_memory.shape)}"
        )
    lam = float(lambda_memory)
    valid = mask > 0
    zero = torch.zeros_like(q_taken)
    y = y_td.detach()
    memory = q_offline.detach()
    q_ovm = torch.maximum(memory, y_memory.detach())
    n = valid.sum().clamp(min=1).to(q_taken.dtype)
    # Mask before squaring: padding rows may hold anything, and a NaN there must not reach the
    # gradient (where() after pow() would pass 0 · NaN back).
    td_sq = torch.where(valid, q_taken - y, zero).pow(2).sum() / n
    ovm_sq = torch.where(valid, q_taken - q_ovm, zero).pow(2).sum() / n
    td_part = loss_scale * (1.0 - lam) * td_sq
    memory_part = loss_scale * lam * ovm_sq
    out = {"loss": td_part + memory_part}
    with torch.no_grad():
        out |= {
            "td_part": td_part.detach(),
            "memory_part": memory_part.detach(),
            "active_fraction": (valid & (memory > y_memory)).sum().to(q_taken.dtype) / n,
            "offline_q_mean": torch.where(valid, memory, zero).sum() / n,
            "ovm_target_mean": torch.where(valid, q_ovm, zero).sum() / n,
            "lambda_memory": torch.tensor(lam, dtype=q_taken.dtype, device=q_taken.device),
        }
    return TensorDict(out, batch_size=[])

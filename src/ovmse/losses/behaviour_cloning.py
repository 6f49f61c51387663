"""Behaviour cloning of the dataset policy β (for CFCQL's per-agent KL weights).

Shapes (the T *transitions* of an episode batch, rows ``0..T-1``)::

    logits   float [B, T, N, A]   a policy network's per-agent action logits
    avail    bool  [B, T, N, A]   available actions
    actions  int64 [B, T, N]      dataset actions
    mask     [B, T, 1]            > 0 for valid transitions

The policy is a softmax restricted to the available actions (unavailable logits → −inf
before ``log_softmax``; the CFCQL repo's ``mask_before_softmax``)::

    log β_i(a | τ_i) = log_softmax_{a' available}(logits)[a]
    loss             = mean over valid (b, t, i) of −log β_i(a^D_i)
    accuracy         = mean over the same entries of [argmax_{available} logits == a^D_i]

An entry (b, t, i) counts iff ``mask[b, t] > 0``, agent i has at least one available action
and its dataset action is available (an unavailable dataset action would give an infinite
loss; SMAC data never has one). Rows with an all-False ``avail`` (padding) are computed on
unmasked logits so nothing is NaN, and are excluded.

Examples:
    >>> import torch
    >>> logits = torch.tensor([[[[2.0, 0.0, 5.0]]]], requires_grad=True)   # [B=1, T=1, N=1, A=3]
    >>> avail = torch.tensor([[[[True, True, False]]]])                   # action 2 is unavailable
    >>> loss, accuracy = behaviour_cloning_loss(logits, avail, torch.tensor([[[0]]]), torch.ones(1, 1, 1))
    >>> float(accuracy), behaviour_probs(logits.detach(), avail)[0, 0, 0, 2].item()
    (1.0, 0.0)
    >>> loss.backward()
"""

from __future__ import annotations

import torch

__all__ = ["behaviour_cloning_loss", "behaviour_probs"]


def _masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Unavailable → −inf; rows with no available action are left unmasked (finite)."""
    avail = avail.bool()
    keep = avail | ~avail.any(-1, keepdim=True)
    return logits.masked_fill(~keep, float("-inf"))


def behaviour_cloning_loss(
    logits: torch.Tensor, avail: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, accuracy)``, both scalars; the loss is differentiable, the accuracy detached."""
    A = logits.shape[-1]
    avail = avail.bool()
    log_p = torch.log_softmax(_masked_logits(logits, avail), dim=-1)  # [B, T, N, A]
    acts = actions.clamp(0, A - 1).unsqueeze(-1)
    taken_ok = avail.gather(-1, acts).squeeze(-1)  # [B, T, N]
    entry = (mask > 0) & taken_ok  # [B, T, N] (mask broadcasts over agents)
    n = entry.sum().clamp(min=1).to(logits.dtype)
    nll = -log_p.gather(-1, acts).squeeze(-1)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    loss = torch.where(entry, nll, zero).sum() / n
    with torch.no_grad():
        hit = log_p.argmax(-1) == actions
        accuracy = (hit & entry).sum().to(logits.dtype) / n
    return loss, accuracy


def behaviour_probs(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Masked softmax ``[B, T, N, A]``: 0 on unavailable actions; all-False rows give all zeros."""
    avail = avail.bool()
    probs = torch.softmax(_masked_logits(logits, avail), dim=-1)
    return torch.where(avail, probs, torch.zeros_like(probs))

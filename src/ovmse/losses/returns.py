"""Monte-Carlo discounted return-to-go of the transitions of an episode batch.

Shapes (the T *transitions* of a PyMARL episode batch, i.e. rows ``0..T-1``; see
:func:`ovmse.losses.qmix_values.transition_mask` for ``mask`` and the cleaned ``terminated``)::

    reward      float [B, T, 1]   r_t
    terminated        [B, T, 1]   game over at t's transition (NOT the time limit)
    mask        float [B, T, 1]   1 for valid transitions (a prefix of each row), 0 after
    ->          float [B, T, 1]   G_t

Recursion, backwards from ``G_T = 0``::

    G_t = mask_t · ( r_t + γ · (1 − terminated_t) · G_{t+1} )

so ``G_t = 0`` wherever ``mask_t = 0`` and the (invalid) row after an episode's last valid
transition contributes 0: nothing flows across the end of an episode. A truncated
(time-limit) episode simply stops: its last valid transition gets ``G = r`` with no
bootstrap, i.e. the Monte-Carlo return of the observed rewards only.

Used for diagnostics (Q_tot against the Monte-Carlo return) and by Cal-QL, which clamps the
CQL push-down values from below by ``G_t``.

Examples:
    >>> import torch
    >>> reward = torch.tensor([[[1.0], [0.0], [2.0], [7.0]]])   # the last row is padding
    >>> terminated = torch.tensor([[[0.0], [0.0], [1.0], [0.0]]])
    >>> mask = torch.tensor([[[1.0], [1.0], [1.0], [0.0]]])
    >>> return_to_go(reward, terminated, mask, gamma=0.5).squeeze(-1)
    tensor([[1.5000, 1.0000, 2.0000, 0.0000]])
"""

from __future__ import annotations

import torch

__all__ = ["calibrate", "return_to_go"]


def return_to_go(
    reward: torch.Tensor, terminated: torch.Tensor, mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Discounted return-to-go ``G_t`` ``[B, T, 1]`` (see the module docstring).

    Args:
        reward: float ``[B, T, 1]``; values where ``mask`` is 0 are ignored (may be garbage,
            but must be finite or they are still zeroed via ``torch.where``).
        terminated: ``[B, T, 1]`` (bool or float).
        mask: ``[B, T, 1]``; ``> 0`` marks a valid transition.
        gamma: discount factor.

    Returns:
        float ``[B, T, 1]`` in ``reward``'s dtype (no gradient is needed, but none is blocked).
    """
    if reward.shape != terminated.shape or reward.shape != mask.shape or reward.dim() != 3:
        raise ValueError(
            f"expected reward, terminated, mask all [B, T, 1]; got {tuple(reward.shape)}, "
            f"{tuple(terminated.shape)}, {tuple(mask.shape)}"
        )
    valid = mask > 0
    r = torch.where(valid, reward, torch.zeros_like(reward))
    cont = torch.where(valid, 1.0 - terminated.to(reward.dtype), torch.zeros_like(reward))
    if r.shape[1] == 0:
        return r
    g = torch.zeros_like(r[:, 0])  # G_T = 0
    out = []
    for t in range(r.shape[1] - 1, -1, -1):
        g = r[:, t] + gamma * cont[:, t] * g
        out.append(g)
    return torch.stack(out[::-1], dim=1)


def calibrate(values: torch.Tensor, lower_bound: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cal-QL's bound on CQL push-down values: ``max(values, G_t)``.

    Args:
        values: ``[B, T, ...]`` (any trailing dims: sampled joint actions, agents x actions).
        lower_bound: ``[B, T, 1]`` (the return-to-go), broadcast over the trailing dims, or None.

    Returns:
        ``(bounded values, raised)``: ``raised`` is bool ``values.shape``, True where the bound
        replaced the value (no gradient flows there); ``(values, None)`` without a bound.
    """
    if lower_bound is None:
        return values, None
    B, T = values.shape[:2]
    if lower_bound.shape != (B, T, 1):
        raise ValueError(f"lower_bound must be [B, T, 1] = {(B, T, 1)}, got {tuple(lower_bound.shape)}")
    bound = lower_bound.detach().to(values.dtype).reshape(B, T, *([1] * (values.dim() - 2)))
    return torch.maximum(values, bound), values.detach() < bound


"""Action-mask helpers shared by the env, the exploration modules and the learners.

Conventions (SMAC): ``mask`` is bool ``[..., A]``; action 0 is the no-op, the only
action available to a dead agent.
"""

from __future__ import annotations

import torch


def _check_rows(mask: torch.Tensor) -> None:
    # Live env data always has >= 1 available action per agent (dead agents: no-op only), so an
    # empty row there means a wrong mask; argmax would silently return action 0.
    if not bool(mask.any(-1).all()):
        raise ValueError(
            "action mask has a row with no available action; pass strict=False for padded "
            "replay timesteps (they then yield action 0 / value 0)"
        )


def masked_greedy(q: torch.Tensor, mask: torch.Tensor, strict: bool = True) -> torch.Tensor:
    """Argmax of ``q`` over available actions.

    Args:
        q: float ``[..., A]``.
        mask: bool ``[..., A]``; True = available.
        strict: raise ``ValueError`` if a row of ``mask`` is all False (one host sync). With
            ``strict=False`` such rows (e.g. zero-padded timesteps after an episode ended in a
            replay batch) return action 0.

    Returns:
        int64 ``[...]``.
    """
    if strict:
        _check_rows(mask)
    # -inf (not a large negative constant) so even huge Q on masked entries can never win.
    return q.masked_fill(~mask, float("-inf")).argmax(-1)


def masked_max(q: torch.Tensor, mask: torch.Tensor, strict: bool = True) -> torch.Tensor:
    """Max of ``q`` over available actions: float ``[..., A]`` -> ``[...]``.

    With ``strict=False`` an all-False row yields 0.0 rather than -inf, so that multiplying
    padded timesteps by a zero mask stays finite (-inf * 0 would be NaN).
    """
    if strict:
        _check_rows(mask)
    out = q.masked_fill(~mask, float("-inf")).amax(-1)
    if not strict:
        out = torch.where(mask.any(-1), out, torch.zeros_like(out))
    return out


def random_valid_actions(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform sample among the True entries of ``mask`` ``[..., A]`` -> int64 ``[...]``.

    ``noise + 1`` lies in [1, 2) on available entries and is 0 elsewhere, so the argmax
    is a uniformly random available entry.
    """
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    return (noise + 1.0).mul_(mask).argmax(-1)


def alive_agents(mask: torch.Tensor) -> torch.Tensor:
    """bool ``[..., N]`` from an action mask ``[..., N, A]``: any non-no-op action available."""
    return mask[..., 1:].any(-1)

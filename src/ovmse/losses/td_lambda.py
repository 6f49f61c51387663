"""TD(λ) targets, a port of PyMARL2 ``build_td_lambda_targets`` (src/utils/rl_utils.py).

Index conventions (time-major within an episode, ``t = 0 .. T-1`` are the transitions):

* ``rewards[:, t]``, ``terminated[:, t]``, ``mask[:, t]``: reward, game-over flag and
  validity of the transition taken at step t (PyMARL2's ``batch["reward"][:, :-1]`` etc.).
* ``target_qs[:, t]``: value of the state observed at step t, i.e. ``Q̄_tot(τ_t, a*)`` with
  a* the (double-Q) argmax at t evaluated by the target network. It has T+1 entries because
  the last transition (t = T-1) bootstraps from the state at T.

Recursion (G^λ_T is the bootstrap; ``ret`` is the forward-view λ-return, built backwards)::

    ret[:, T] = target_qs[:, T] * (1 - sum_t terminated[:, t])
    ret[:, t] = λγ · ret[:, t+1]
                + mask[:, t] · (rewards[:, t] + (1-λ)γ · target_qs[:, t+1] · (1 - terminated[:, t]))

Why it is correct with padding: after an episode terminates at step k, ``mask`` is 0 for
t > k, so those ``ret`` entries are 0 (ret[:, T] is 0 too because the terminated sum is 1),
and the λγ · ret[:, k+1] term that leaks into step k is therefore 0. The loss must still be
multiplied by ``mask`` because padded steps carry target 0, not a meaningful target.

Terminated vs truncated: only ``terminated`` (game over: win, loss, or all units dead) stops
bootstrapping. An episode cut by the time limit is *truncated*, not terminal. The caller
passes it as ``terminated = 0`` at the limit step, ``mask = 1`` there, and provides the value
of the state reached after it in ``target_qs`` (at index t+1, which is T when the limit
step is the last column). Mixing truncation into ``terminated`` would teach the network that
the time-limit state is worth 0. Note PyMARL2's SMAC runner stores
``terminated = done and not episode_limit`` for exactly this reason.

Caveat inherited from PyMARL2: ``ret[:, T]`` uses the sum of ``terminated`` over the row as
"episode ended"; rows are assumed to contain at most one terminal step.

Examples:
    >>> import torch
    >>> rewards = torch.tensor([[1.0, 0.0, 2.0]])             # one episode, 3 transitions
    >>> terminated = torch.tensor([[0.0, 0.0, 1.0]])          # the game ends at t = 2
    >>> mask = torch.ones(1, 3)
    >>> target_qs = torch.tensor([[5.0, 4.0, 3.0, 9.0]])      # Q̄ of the states at t = 0..3
    >>> td_lambda_targets(rewards, terminated, mask, target_qs, gamma=1.0, td_lambda=0.0)  # one step
    tensor([[5., 3., 2.]])
    >>> td_lambda_targets(rewards, terminated, mask, target_qs, gamma=1.0, td_lambda=1.0)  # Monte Carlo
    tensor([[3., 2., 2.]])
"""

from __future__ import annotations

import torch


def td_lambda_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    mask: torch.Tensor,
    target_qs: torch.Tensor,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """TD(λ) targets for every transition.

    Args:
        rewards: ``[B, T]`` team reward of transition t.
        terminated: ``[B, T]`` 1.0 where the game ended at t (not for time-limit truncation).
        mask: ``[B, T]`` 1.0 for real transitions, 0.0 for padding after the episode ended.
        target_qs: ``[B, T+1]`` target value of the state at t (index T: bootstrap state).
        gamma: discount γ in [0, 1].
        td_lambda: λ in [0, 1]; 0 gives one-step TD targets, 1 Monte-Carlo returns
            (bootstrapped with ``target_qs[:, T]`` if the row did not terminate).

    Returns:
        ``[B, T]`` targets. No detach is done here: pass target-network values computed
        under ``no_grad`` (or detach the result) so the target does not carry gradient.

    A trailing singleton dim (PyMARL2's ``[B, T, 1]``) is accepted on all inputs and kept.
    """
    B, T = rewards.shape[:2]
    if target_qs.shape[1] != T + 1:
        raise ValueError(f"target_qs must have T+1={T + 1} time steps, got shape {tuple(target_qs.shape)}")
    for name, x in (("terminated", terminated), ("mask", mask)):
        if x.shape != rewards.shape:
            raise ValueError(f"{name} shape {tuple(x.shape)} must equal rewards shape {tuple(rewards.shape)}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= td_lambda <= 1.0):
        raise ValueError(f"gamma and td_lambda must be in [0, 1], got {gamma}, {td_lambda}")

    dtype = target_qs.dtype
    terminated = terminated.to(dtype)
    mask = mask.to(dtype)
    rewards = rewards.to(dtype)
    # Precompute the per-step part (vectorised over T); only the λγ·ret chain is sequential.
    one_step = mask * (rewards + (1.0 - td_lambda) * gamma * target_qs[:, 1:] * (1.0 - terminated))
    ret = target_qs[:, T] * (1.0 - terminated.sum(dim=1))
    out = []
    for t in range(T - 1, -1, -1):
        ret = td_lambda * gamma * ret + one_step[:, t]
        out.append(ret)
    return torch.stack(out[::-1], dim=1)

"""The episode layout: the one definition of how an episode is stored, everywhere.

Collected episodes (:class:`~ovmse.collection.EpisodeAssembler`), the replay buffer, datasets
on disk (:mod:`ovmse.datasets.format`), dataset statistics and the losses
(:class:`~ovmse.losses.qmix_values.QMixKeys`) all use PyMARL's ``EpisodeBatch`` rows, batch dims
``[E, T_max + 1]`` with ``T_max`` the map's episode limit:

| key | dtype | shape |
|---|---|---|
| ``("agents", "observation")`` | float32 | ``[E, T+1, N, obs_dim]`` |
| ``("agents", "action_mask")`` | bool | ``[E, T+1, N, A]`` |
| ``("agents", "action")`` | int64 | ``[E, T+1, N]`` |
| ``"state"`` | float32 | ``[E, T+1, state_dim]`` |
| ``"reward"`` | float32 | ``[E, T+1, 1]`` |
| ``"terminated"``, ``"truncated"`` | bool | ``[E, T+1, 1]`` |
| ``("info", "battle_won")`` | bool | ``[E, T+1, 1]`` |
| ``"filled"`` | bool | ``[E, T+1, 1]`` |

* row ``t < len``: observation, state and action mask seen at step ``t``, and the action,
  reward, ``terminated``, ``truncated`` and ``battle_won`` of the transition taken there;
* row ``t = len``: the final observation, state and mask; action 0, reward 0, flags False;
* rows ``t > len``: zero padding;
* ``filled`` is ``t <= len`` (:func:`filled_rows`), so row ``t`` is a transition exactly when
  row ``t + 1`` is filled (:func:`transition_rows`). The losses add one rule on top: nothing
  after a termination counts (``ovmse.losses.qmix_values.transition_mask``).

A battle stopped by the episode limit has ``truncated=True, terminated=False`` at its last
transition: it is bootstrapped, not ended.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from ovmse.envs import MapSpec

NestedKey = str | tuple[str, ...]

OBSERVATION = ("agents", "observation")
ACTION_MASK = ("agents", "action_mask")
ACTION = ("agents", "action")
STATE = "state"
REWARD = "reward"
TERMINATED = "terminated"
TRUNCATED = "truncated"
BATTLE_WON = ("info", "battle_won")
FILLED = "filled"


def field_specs(spec: MapSpec) -> dict[NestedKey, tuple[torch.dtype, tuple[int, ...]]]:
    """Every stored field of an episode of map ``spec``: key -> (dtype, shape after ``[E, T+1]``)."""
    n, a = spec.n_agents, spec.n_actions
    return {
        OBSERVATION: (torch.float32, (n, spec.obs_dim)),
        ACTION_MASK: (torch.bool, (n, a)),
        ACTION: (torch.int64, (n,)),
        STATE: (torch.float32, (spec.state_dim,)),
        REWARD: (torch.float32, (1,)),
        TERMINATED: (torch.bool, (1,)),
        TRUNCATED: (torch.bool, (1,)),
        BATTLE_WON: (torch.bool, (1,)),
        FILLED: (torch.bool, (1,)),
    }


def filled_rows(lengths: torch.Tensor, rows: int) -> torch.Tensor:
    """``filled`` of episodes of ``lengths [E]`` transitions in ``rows`` rows: bool ``[E, rows, 1]``."""
    t = torch.arange(rows, device=lengths.device)
    return (t[None, :] <= lengths[:, None]).unsqueeze(-1)


def transition_rows(filled: torch.Tensor) -> torch.Tensor:
    """Which rows of ``filled [E, T+1, 1]`` hold a transition: bool ``[E, T+1]`` (row ``t`` iff
    row ``t + 1`` is filled; the last row never)."""
    filled = filled.reshape(filled.shape[:2]).bool()
    transition = torch.zeros_like(filled)
    transition[:, :-1] = filled[:, :-1] & filled[:, 1:]
    return transition


def filled_lengths(filled: torch.Tensor) -> torch.Tensor:
    """Per episode of ``filled`` (bool ``[E, T_max+1, ...]``): the rows up to its last filled one,
    int64 ``[E]`` (0 if none; not the count of filled rows, so a gap can never shorten it)."""
    filled = filled.reshape(filled.shape[0], filled.shape[1], -1).any(-1)  # [E, T_max+1]
    return (filled * torch.arange(1, filled.shape[1] + 1, device=filled.device)).amax(1)


def rows_filled(episodes: TensorDictBase, key: NestedKey = FILLED) -> torch.Tensor:
    """:func:`filled_lengths` of ``episodes [E, T_max+1]``' ``filled`` flags, int64 ``[E]`` (what
    :func:`trim_to_filled` keeps of a batch of that episode alone, before its 2-row floor)."""
    return filled_lengths(episodes.get(key))


def rows_kept(longest: int, max_rows: int) -> int:
    """The rows :func:`trim_to_filled` keeps of a batch whose longest episode fills ``longest``
    rows: at least two (one transition column), at most ``max_rows``."""
    return min(max(longest, 2), max_rows)


def trim_to_filled(episodes: TensorDictBase, key: NestedKey = FILLED) -> TensorDictBase:
    """``episodes [B, T_max+1]`` cut to ``[B, L+1]``, L+1 the number of rows the longest episode
    fills (PyMARL2's ``batch[:, :max_t_filled]`` in ``run.py``); a view, nothing is copied.

    Rows past every episode's final observation are padding, so every loss and statistic of
    this project is the same on the cut batch: the agent RNN is causal, masks and means count
    filled rows only, and a time-limit (truncated) episode that now ends in the last column is
    bootstrapped there by the TD(λ) recursion itself (``ovmse.losses.qmix_td``, "Truncation").
    The padding is most of the work of an update (episodes of 40-80 steps in rows of 121 on
    2s3z), hence the cut. At least two rows are kept (one transition column).

    Reading the length is one host sync per batch on a GPU, as in PyMARL2.
    """
    filled = episodes.get(key)
    rows_used = filled.reshape(filled.shape[0], filled.shape[1], -1).any(-1).any(0)  # [T_max+1]
    index = torch.arange(rows_used.shape[0], device=rows_used.device)
    last = int(torch.where(rows_used, index, 0).max())
    rows = rows_kept(last + 1, episodes.shape[1])
    return episodes if rows == episodes.shape[1] else episodes[:, :rows]

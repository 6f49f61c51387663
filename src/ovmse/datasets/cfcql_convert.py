"""One chunk of a CFCQL file (PyMARL ``EpisodeBatch`` arrays ``[e, T+1, ...]``) -> our fields.

PyMARL's layout is ours (:mod:`ovmse.datasets.format`): row ``t < len`` is a transition, row
``len`` the final observation, so the conversion is a field-by-field copy plus:

* ``actions[..., 0]`` is kept on transition rows only: PyMARL's episode runner also selects
  an action at the final state (row ``len``), which we store as 0.
* ``truncated`` is derived: True at the last transition when the episode did not end the
  battle. SMAC with ``continuing_episode=False`` (CFCQL's setting) reports a timeout as
  ``terminated`` with no ``episode_limit`` info, so PyMARL stores ``terminated=1`` for it;
  an episode whose final state still has a living combat unit on both sides is therefore
  relabelled terminated -> truncated (the count goes into the metadata).
* ``("info", "battle_won")`` is derived: True at the last transition when the battle ended
  (``terminated``) with every enemy combat unit dead and an allied combat unit alive in the
  final state (SMAC's win rule, :func:`~ovmse.datasets.smac_state.battle_outcome`).

Rewards, observations and states are copied unscaled. Anything PyMARL cannot have written
(a flag other than 0/1, a non-integral action, a reward or ``terminated`` on the
final-observation row) is refused, naming the file, key, episode and step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from ovmse.envs import MapSpec

from .smac_state import StateLayout, battle_outcome
from .validation import DatasetError

_BINARY_KEYS = ("avail_actions", "terminated", "filled")
# How the fields PyMARL does not store are derived (recorded in the dataset's metadata).
DERIVED = {
    "truncated": "True at the last transition (t = len - 1) iff the episode did not end the battle: "
                 "terminated is False there, or terminated is True (SMAC's timeout with "
                 "continuing_episode=False) but the final state (t = len) still has a living combat unit "
                 "on both sides, in which case terminated is relabelled False",
    "battle_won": "True at the last transition iff terminated there and, in the final state (t = len), every "
                  "enemy combat unit's health is 0 and some allied combat unit's health is > 0 (SMAC's win "
                  "rule; medivacs are not combat units)",
}


def _fail(path: Path, what: str) -> DatasetError:
    return DatasetError(f"dataset {path}: {what}")


def _check_binary(path: Path, key: str, a: np.ndarray, offset: int) -> None:
    bad = (a != 0) & (a != 1)
    if bad.any():
        e, t = np.argwhere(bad)[0][:2]
        raise _fail(path, f"key {key}: expected 0 or 1, found {a[bad][0]} at episode {offset + e}, step {t}")


def convert_chunk(path: Path, raw: dict[str, np.ndarray], spec: MapSpec, layout: StateLayout,
                  offset: int) -> tuple[TensorDict, int]:
    """One chunk of the file (``raw``: the file's keys for episodes ``offset .. offset + e``)
    -> our fields ``[e, T+1]``; also returns how many timeouts stored as ``terminated`` were
    relabelled truncated."""
    for key in _BINARY_KEYS:
        _check_binary(path, key, raw[key], offset)
    E, T1 = raw["filled"].shape[:2]
    filled = torch.from_numpy(raw["filled"][..., 0] != 0)  # [e, T1]
    lengths = filled.sum(-1) - 1
    t = torch.arange(T1)
    trans = t[None, :] < lengths[:, None]  # transition rows
    last = t[None, :] == (lengths - 1)[:, None]  # the last transition (none when len < 1)

    actions = raw["actions"][..., 0]
    if actions.dtype.kind == "f":  # PyMARL stores int64; accept integral floats, nothing else
        on_trans = actions[trans.numpy()]
        bad = ~np.isfinite(on_trans) | (on_trans != np.round(on_trans))
        if bad.any():
            raise _fail(path, f"key actions: expected integer action indices, found {on_trans[bad][0]}")
        actions = np.where(trans.numpy()[..., None], actions, 0)
    action = torch.from_numpy(np.ascontiguousarray(actions)).to(torch.int64)
    action = action * trans[..., None]  # PyMARL's action at the final state (row len) -> 0

    reward = torch.from_numpy(np.ascontiguousarray(raw["reward"])).to(torch.float32)
    terminated = torch.from_numpy(raw["terminated"] != 0)  # [e, T1, 1]
    # The final-observation row carries no transition in PyMARL: nothing may be stored there.
    row_len = (t[None, :] == lengths[:, None]) & (lengths >= 0)[:, None]
    for key, v in (("reward", reward[..., 0] != 0), ("terminated", terminated[..., 0])):
        hit = v & row_len
        if bool(hit.any()):
            e, step = hit.nonzero()[0].tolist()
            raise _fail(path, f"key {key}: expected 0 at the final-observation row (step len = {step}) of "
                              f"episode {offset + e}, found {float(raw[key][e, step, 0])}")

    state = torch.from_numpy(np.ascontiguousarray(raw["state"])).to(torch.float32)
    final_state = state[torch.arange(E), lengths.clamp(0, T1 - 1)]  # [e, state_dim]
    over, won = battle_outcome(final_state, layout)
    term_last = terminated[..., 0] & last
    relabel = term_last & ~over[:, None]  # a timeout SMAC reported as terminated
    terminated = terminated & ~relabel[..., None]
    term_last = term_last & ~relabel
    truncated = last & ~term_last
    battle_won = term_last & won[:, None]

    td = TensorDict(
        {
            ("agents", "observation"): torch.from_numpy(np.ascontiguousarray(raw["obs"])).to(torch.float32),
            ("agents", "action_mask"): torch.from_numpy(raw["avail_actions"] != 0),
            ("agents", "action"): action,
            "state": state,
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated[..., None],
            ("info", "battle_won"): battle_won[..., None],
            "filled": filled[..., None],
        },
        batch_size=(E, T1),
    )
    return td, int(relabel.sum())

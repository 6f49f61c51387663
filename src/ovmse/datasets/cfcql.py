"""Import CFCQL's offline SMAC datasets (``{map}_{quality}.h5``) into our dataset format.

CFCQL (Shao et al., 2023) stores each dataset as one HDF5 file holding a PyMARL
``EpisodeBatch``: keys ``state, obs, actions, avail_actions, probs, reward, terminated,
filled``, batch dims ``[E, episode_limit + 1]``. Row ``t < len`` is a transition, row ``len``
the final observation (``filled`` is 1 for rows ``0..len``), rows after it are zeros. That is
our layout too (:mod:`ovmse.datasets.format`), so the import is a field-by-field copy plus:

* ``actions[..., 0]`` is kept on transition rows only: PyMARL's episode runner also selects
  an action at the final state (row ``len``), which we store as 0.
* ``truncated`` is derived: True at the last transition when the episode did not end the
  battle. SMAC with ``continuing_episode=False`` (CFCQL's setting) reports a timeout as
  ``terminated`` with no ``episode_limit`` info, so PyMARL stores ``terminated=1`` for it;
  an episode whose final state still has a living combat unit on both sides is therefore
  relabelled terminated -> truncated (the count goes into the metadata).
* ``("info", "battle_won")`` is derived: True at the last transition when the battle ended
  (``terminated``) with every enemy combat unit dead and an allied combat unit alive in the
  final state (SMAC's win rule; SMAC zeroes every state feature of a dead unit, so a unit is
  alive iff its health feature is > 0; medivacs do not count as combat units).
* ``probs`` (the behaviour policy's action probabilities) is dropped.

Rewards, observations and states are copied unscaled. The file is read ``chunk`` episodes
at a time, and every converted chunk is validated before it is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from ovmse.envs import MAPS, MapSpec, get_map
from ovmse.envs.units import UNIT_TYPES

from .format import QUALITIES, check_quality, dataset_dir
from .validation import DatasetError, check_contents, check_fields
from .writer import EpisodeDatasetWriter

SOURCE_FORMAT = "cfcql-hdf5"
# Keys read from the file (everything else present in it is dropped and listed).
USED_KEYS = ("state", "obs", "actions", "avail_actions", "reward", "terminated", "filled")
_BINARY_KEYS = ("avail_actions", "terminated", "filled")
_DERIVED = {
    "truncated": "True at the last transition (t = len - 1) iff the episode did not end the battle: "
                 "terminated is False there, or terminated is True (SMAC's timeout with "
                 "continuing_episode=False) but the final state (t = len) still has a living combat unit "
                 "on both sides, in which case terminated is relabelled False",
    "battle_won": "True at the last transition iff terminated there and, in the final state (t = len), every "
                  "enemy combat unit's health is 0 and some allied combat unit's health is > 0 (SMAC's win "
                  "rule; medivacs are not combat units)",
}


# --------------------------------------------------------------------------- state layout
@dataclass(frozen=True)
class StateLayout:
    """Where things are in SMAC's global state vector of a map (``state_last_action`` on,
    ``state_timestep_number`` off, as in SMAC's defaults, CFCQL and our simulator).

    ``[ally 0 | ... | ally N-1 | enemy 0 | ... | enemy M-1 | last actions N * A]``; an ally
    block is ``[health, cooldown, x, y, (shield), (type one-hot)]``, an enemy block
    ``[health, x, y, (shield), (type one-hot)]`` (health at offset 0 of both); a dead unit's
    block is all zeros.
    """

    n_agents: int
    n_enemies: int
    n_actions: int
    ally_dim: int
    enemy_dim: int
    ally_start: int
    enemy_start: int
    last_action_start: int
    state_dim: int
    ally_combat: tuple[bool, ...]  # not a medivac
    enemy_combat: tuple[bool, ...]

    @property
    def ally_health(self) -> list[int]:
        """Index of each ally's health (``health / max health``) in the state."""
        return [self.ally_start + i * self.ally_dim for i in range(self.n_agents)]

    @property
    def enemy_health(self) -> list[int]:
        """Index of each enemy's health in the state."""
        return [self.enemy_start + j * self.enemy_dim for j in range(self.n_enemies)]

    @property
    def last_action(self) -> slice:
        """The agents' last actions, one-hot ``[N, A]`` flattened."""
        return slice(self.last_action_start, self.last_action_start + self.n_agents * self.n_actions)


def state_layout(spec: MapSpec) -> StateLayout:
    """The :class:`StateLayout` of map ``spec`` (sizes from :mod:`ovmse.envs.maps`, order from
    :func:`ovmse.envs.features.global_state`)."""
    N, M, A = spec.n_agents, spec.n_enemies, spec.n_actions
    enemy_start = N * spec.state_ally_dim
    last_action_start = enemy_start + M * spec.state_enemy_dim
    layout = StateLayout(
        n_agents=N, n_enemies=M, n_actions=A,
        ally_dim=spec.state_ally_dim, enemy_dim=spec.state_enemy_dim,
        ally_start=0, enemy_start=enemy_start, last_action_start=last_action_start,
        state_dim=last_action_start + N * A,
        ally_combat=tuple(not UNIT_TYPES[u].is_medivac for u in spec.allies),
        enemy_combat=tuple(not UNIT_TYPES[u].is_medivac for u in spec.enemies),
    )
    if layout.state_dim != spec.state_dim:  # the two descriptions of the state disagree
        raise AssertionError(f"{spec.name}: state layout sums to {layout.state_dim}, map says {spec.state_dim}")
    return layout


def battle_outcome(state: torch.Tensor, layout: StateLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """``(over, won)`` bool ``[...]`` of global states ``[..., state_dim]``, by SMAC's rules:
    the battle is over when one side has no living combat unit, and won when that side is
    the enemy's and an allied combat unit is alive (both wiped out: over, not won)."""
    ally_combat = torch.tensor(layout.ally_combat, device=state.device)
    enemy_combat = torch.tensor(layout.enemy_combat, device=state.device)
    allies = ((state[..., layout.ally_health] > 0) & ally_combat).any(-1)
    enemies = ((state[..., layout.enemy_health] > 0) & enemy_combat).any(-1)
    return ~(allies & enemies), allies & ~enemies


# --------------------------------------------------------------------------- file names
def parse_cfcql_name(path: str | Path, map_name: str | None = None,
                     quality: str | None = None) -> tuple[str, str]:
    """``(map, quality)`` of a CFCQL file ``{map}_{quality}.h5``; ``map_name`` / ``quality``,
    when given, take precedence over what the name says. Map names may contain underscores
    (``5m_vs_6m_medium_replay.h5``): the quality is matched as a suffix, longest first."""
    path = Path(path)
    if quality is not None:
        check_quality(quality)
    if map_name is not None and quality is not None:
        return map_name, quality
    stem = re.sub(r"\.(h5|hdf5)$", "", path.name, flags=re.IGNORECASE)
    found_quality = next((q for q in sorted(QUALITIES, key=len, reverse=True)
                          if stem.endswith("_" + q) and len(stem) > len(q) + 1), None)
    if quality is None:
        if found_quality is None:
            raise DatasetError(
                f"dataset {path}: cannot tell the quality from the file name: expected "
                f"{{map}}_{{quality}}.h5 with quality one of {', '.join(QUALITIES)}; pass quality=..."
            )
        quality = found_quality
    if map_name is None:
        if not stem.endswith("_" + quality) or len(stem) <= len(quality) + 1:
            raise DatasetError(
                f"dataset {path}: cannot tell the map from the file name: expected {{map}}_{quality}.h5; "
                "pass map_name=..."
            )
        map_name = stem[: -len(quality) - 1]
    return map_name, quality


# --------------------------------------------------------------------------- conversion
def _fail(path: Path, what: str) -> DatasetError:
    return DatasetError(f"dataset {path}: {what}")


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _expected_shapes(spec: MapSpec) -> dict[str, tuple[int, ...]]:
    """Shape after the episode axis of every key read, for map ``spec``."""
    T1, N = spec.episode_limit + 1, spec.n_agents
    return {
        "state": (T1, spec.state_dim),
        "obs": (T1, N, spec.obs_dim),
        "actions": (T1, N, 1),
        "avail_actions": (T1, N, spec.n_actions),
        "reward": (T1, 1),
        "terminated": (T1, 1),
        "filled": (T1, 1),
    }


def _check_file(path: Path, f: Any, h5py: Any, spec: MapSpec) -> tuple[int, list[str]]:
    """Every key present, numeric, with the map's shape and one episode count. Returns the
    episode count and the keys that will be dropped."""
    expected = _expected_shapes(spec)
    n_episodes = None
    for key, shape in expected.items():
        if key not in f:
            raise _fail(path, f"key {key} is missing (a CFCQL file has {', '.join(USED_KEYS)}, probs; "
                              f"found {', '.join(sorted(f.keys())) or 'no keys'})")
        ds = f[key]
        if not isinstance(ds, h5py.Dataset):
            raise _fail(path, f"key {key}: expected an array, found a group")
        if ds.dtype.kind not in "biuf":
            raise _fail(path, f"key {key}: expected a numeric array, found dtype {ds.dtype}")
        found = tuple(ds.shape)
        if len(found) != len(shape) + 1 or found[1:] != shape:
            raise _fail(path, f"key {key}: expected shape {_fmt(('E', *shape))} for map {spec.name}, "
                              f"found {_fmt(found)}")
        if n_episodes is None:
            n_episodes = found[0]
            if n_episodes < 1:
                raise _fail(path, f"key {key}: expected at least one episode, found shape {_fmt(found)}")
        elif found[0] != n_episodes:
            raise _fail(path, f"key {key}: expected shape {_fmt((n_episodes, *shape))} ({n_episodes} episodes, "
                              f"as key state), found {_fmt(found)}")
    dropped = sorted(k for k in f.keys() if k not in expected)
    return int(n_episodes), dropped


def _check_binary(path: Path, key: str, a: np.ndarray, offset: int) -> None:
    bad = (a != 0) & (a != 1)
    if bad.any():
        e, t = np.argwhere(bad)[0][:2]
        raise _fail(path, f"key {key}: expected 0 or 1, found {a[bad][0]} at episode {offset + e}, step {t}")


def _convert(path: Path, raw: dict[str, np.ndarray], spec: MapSpec, layout: StateLayout,
             offset: int) -> tuple[TensorDict, int]:
    """One chunk of the file -> our fields ``[e, T+1]``; also returns how many timeouts
    stored as ``terminated`` were relabelled truncated."""
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


def import_cfcql(
    h5_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    map_name: str | None = None,
    quality: str | None = None,
    data_root: str | Path = "data",
    overwrite: bool = False,
    chunk: int = 500,
) -> Path:
    """Convert the CFCQL dataset ``h5_path`` into a dataset directory; returns its path.

    Args:
        h5_path: a CFCQL file ``{map}_{quality}.h5``.
        out_dir: where to write; default ``<data_root>/<map>/<quality>``.
        map_name, quality: override what the file name says.
        overwrite: replace an existing dataset at the destination (otherwise an error).
        chunk: episodes read, converted and validated at a time.

    Raises:
        DatasetError: unknown map, unparseable name, not an HDF5 file, a missing key, a shape
            that does not match the map, or contents that fail validation (naming the file,
            key/field and expected vs found).
        FileNotFoundError: no such file.
        FileExistsError: the destination exists and ``overwrite`` is False.
        ImportError: h5py is not installed.
    """
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "Importing CFCQL datasets needs h5py: pip install h5py (or pip install -e \".[hdf5]\")"
        ) from err
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    path = Path(h5_path)
    if not path.is_file():
        raise FileNotFoundError(f"CFCQL dataset file {path} does not exist" if not path.exists()
                                else f"CFCQL dataset {path} is not a file")
    map_name, quality = parse_cfcql_name(path, map_name, quality)
    if map_name not in MAPS:
        raise _fail(path, f"map {map_name!r} is not a known map (known: {', '.join(MAPS)})")
    spec = get_map(map_name)
    layout = state_layout(spec)
    if not h5py.is_hdf5(path):
        raise _fail(path, "not an HDF5 file")
    dest = Path(out_dir) if out_dir is not None else dataset_dir(data_root, map_name, quality)

    with h5py.File(path, "r") as f:
        n_episodes, dropped = _check_file(path, f, h5py, spec)
        relabelled = 0
        with EpisodeDatasetWriter(dest, spec, n_episodes, quality=quality, overwrite=overwrite) as writer:
            for start in range(0, n_episodes, chunk):
                stop = min(start + chunk, n_episodes)
                raw = {key: f[key][start:stop] for key in USED_KEYS}
                td, n = _convert(path, raw, spec, layout, start)
                del raw
                check_fields(path, td, spec)
                check_contents(path, td, spec, offset=start)
                writer.append(td)
                relabelled += n
            source = {
                "format": SOURCE_FORMAT,
                "file": str(h5_path),
                "dropped_keys": dropped,
                "derived": dict(_DERIVED),
                "timeouts_relabelled_truncated": relabelled,
            }
            return writer.close(source=source, behaviour={"policy": "unknown (imported)"})

"""Checks a dataset before it is used: metadata, files, field dims/dtypes, contents.

Every failure raises :class:`DatasetError` naming the dataset, the field and the
expected vs found value. Nothing is truncated, reshaped or cast to make data fit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase

from ovmse.envs import MapSpec, get_map

from ovmse.collection import layout
from ovmse.collection.layout import field_specs

from .format import FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, field_file, key_name

REQUIRED_METADATA = ("format", "format_version", "map", "quality", "n_agents", "obs_dim", "state_dim",
                     "n_actions", "episode_limit", "episodes", "transitions")
_ITEMSIZE = {torch.float32: 4, torch.int64: 8, torch.bool: 1}


class DatasetError(ValueError):
    """A dataset that does not match what it claims or what the environment needs."""



# A reward beyond this magnitude is refused: its square (in the TD loss) overflows float32
# long before training could notice, and no SMAC reward comes near it.
MAX_ABS_REWARD = 1e6

def _fail(path: Path, what: str) -> DatasetError:
    return DatasetError(f"dataset {path}: {what}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Parse and check ``dataset.json`` (presence, JSON, required keys, format version)."""
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "no such dataset directory")
    file = path / METADATA_FILE
    if not file.is_file():
        raise _fail(path, f"metadata file {METADATA_FILE} is missing (not a dataset directory, or an "
                          "unfinished write)")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, f"metadata file {METADATA_FILE} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"metadata file {METADATA_FILE}: expected a JSON object, found {type(meta).__name__}")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise _fail(path, f"metadata file {METADATA_FILE} lacks {', '.join(missing)}")
    if meta["format"] != FORMAT_NAME or meta["format_version"] != FORMAT_VERSION:
        raise _fail(path, f"metadata format: expected {FORMAT_NAME!r} version {FORMAT_VERSION}, found "
                          f"{meta['format']!r} version {meta['format_version']!r}")
    return meta


def check_metadata_against_map(path: Path, meta: dict[str, Any], map_name: str | None) -> MapSpec:
    """The map the dataset was made on, checked against ``map_name`` (when given) and against
    the dims the simulator/SMAC gives that map."""
    if map_name is not None and meta["map"] != map_name:
        raise _fail(path, f"map: expected {map_name!r}, found {meta['map']!r}")
    try:
        spec = get_map(meta["map"])
    except (KeyError, ValueError):
        raise _fail(path, f"map: {meta['map']!r} is not a known map") from None
    for name in ("n_agents", "obs_dim", "state_dim", "n_actions", "episode_limit"):
        if meta[name] != getattr(spec, name):
            raise _fail(path, f"metadata {name}: expected {getattr(spec, name)} for map {spec.name}, "
                              f"found {meta[name]}")
    return spec


def check_files(path: Path, meta: dict[str, Any], spec: MapSpec) -> None:
    """Every field's memmap file exists and has exactly the bytes its shape needs (a shorter
    file is a truncated copy; a longer one is not this dataset)."""
    E, T1 = int(meta["episodes"]), spec.episode_limit + 1
    files = {}
    for key, (dtype, shape) in field_specs(spec).items():
        file = field_file(path, key)
        if not file.is_file():
            raise _fail(path, f"field {key_name(key)}: file {file.relative_to(path)} is missing")
        files[key] = (file, T1 * math.prod(shape) * _ITEMSIZE[dtype])
    # Every file holding the same whole number of episodes, other than E: the metadata count is wrong.
    held = {divmod(f.stat().st_size, per_episode) for f, per_episode in files.values()}
    if len(held) == 1 and (found_e := held.pop())[1] == 0 and found_e[0] != E:
        raise _fail(path, f"metadata episodes: file says {E}, the stored episodes have {found_e[0]} (every "
                          f"field file holds {found_e[0]} episodes)")
    for key, (dtype, shape) in field_specs(spec).items():
        file = files[key][0]
        expected = E * T1 * math.prod(shape) * _ITEMSIZE[dtype]
        found = file.stat().st_size
        if found != expected:
            raise _fail(path, f"field {key_name(key)}: file {file.relative_to(path)} is {found} bytes, expected "
                              f"{expected} for [{E}, {T1}, {', '.join(map(str, shape))}] {dtype} (damaged or "
                              "truncated copy)")


def check_fields(path: Path, episodes: TensorDictBase, spec: MapSpec, n_episodes: int | None = None) -> None:
    """Each field present with the dtype and shape ``[E, T_max + 1, ...]`` of map ``spec``."""
    T1 = spec.episode_limit + 1
    E = episodes.shape[0] if n_episodes is None else n_episodes
    keys = set(episodes.keys(include_nested=True, leaves_only=True))
    for key, (dtype, shape) in field_specs(spec).items():
        if key not in keys:
            raise _fail(path, f"field {key_name(key)} is missing")
        value = episodes.get(key)
        if value.dtype != dtype:
            raise _fail(path, f"field {key_name(key)}: expected dtype {dtype}, found {value.dtype}")
        want = (E, T1, *shape)
        if tuple(value.shape) != want:
            raise _fail(path, f"field {key_name(key)}: expected shape {list(want)}, found {list(value.shape)}")


def check_contents(path: Path, episodes: TensorDictBase, spec: MapSpec, chunk: int = 500,
                   offset: int = 0) -> dict[str, int]:
    """Masks and values, ``chunk`` episodes at a time: ``filled`` a prefix of at least one
    transition, padding zero, taken actions in range and available, exactly one episode end
    (terminated or truncated) at the last transition, finite rewards/observations/states.
    ``offset`` is added to the episode indices in messages (``episodes`` is a slice of a larger
    set starting at episode ``offset``). Returns the counted ``episodes`` and ``transitions``."""
    transitions = 0
    A = spec.n_actions
    for start in range(0, episodes.shape[0], chunk):
        td = episodes[start : start + chunk]
        filled = td.get(layout.FILLED).squeeze(-1)  # [e, T+1]
        lengths = filled.sum(-1) - 1  # transitions per episode
        t = torch.arange(filled.shape[1])
        prefix = layout.filled_rows(lengths, filled.shape[1]).squeeze(-1)  # what filled must be

        def where(mask: torch.Tensor) -> str:
            e, step = mask.nonzero()[0].tolist()[:2]
            return f"episode {offset + start + e}, step {step}"

        if bool((filled != prefix).any()) or bool((lengths < 1).any()):
            bad = (filled != prefix) | (lengths < 1)[:, None]
            raise _fail(path, f"field filled: expected True for steps 0..len (len >= 1) then False, found a "
                              f"gap or an empty episode at {where(bad)}")
        trans = t[None, :] < lengths[:, None]
        pad = ~prefix
        for key in ("reward", "terminated", "truncated", ("info", "battle_won")):
            # Transition values stop at the last transition: the final-observation row has none.
            v = td.get(key).squeeze(-1)
            bad = ~trans & (v != 0)
            if bool(bad.any()):
                raise _fail(path, f"field {key_name(key)}: expected 0 from the final-observation row on (padding "
                                  f"included), found {v[bad][0].item()} at {where(bad)}")
        mask = td.get(("agents", "action_mask"))
        if bool(mask[pad].any()):
            raise _fail(path, f"field agents.action_mask: expected no available action in padding, found one at "
                              f"{where(pad & mask.any(-1).any(-1))}")
        for key in ("reward", "state", ("agents", "observation")):
            flat = td.get(key).reshape(*filled.shape, -1)
            bad = ~torch.isfinite(flat)
            if bool(bad.any()):
                e, step, j = bad.nonzero()[0].tolist()
                raise _fail(path, f"field {key_name(key)}: expected finite values, found {flat[e, step, j].item()} "
                                  f"at episode {offset + start + e}, step {step}")
        reward = td.get("reward").squeeze(-1)
        huge = reward.abs() > MAX_ABS_REWARD
        if bool(huge.any()):
            raise _fail(path, f"field reward: expected values within ±{MAX_ABS_REWARD:g} (SMAC's are scaled so that a "
                              f"return is at most 20), found {reward[huge][0].item():g} at {where(huge)}: squared TD "
                              "errors of such values overflow float32; rescale the rewards")
        action = td.get(("agents", "action"))  # [e, T+1, N]
        out_of_range = ((action < 0) | (action >= A)).any(-1) & trans
        if bool(out_of_range.any()):
            raise _fail(path, f"field agents.action: expected values in [0, {A}), found "
                              f"{action[out_of_range][0].tolist()} at {where(out_of_range)}")
        taken = mask.gather(-1, action.clamp(0, A - 1).unsqueeze(-1)).squeeze(-1)  # [e, T+1, N]
        unavailable = (~taken).any(-1) & trans
        if bool(unavailable.any()):
            e, step = unavailable.nonzero()[0].tolist()
            agent = int((~taken[e, step]).nonzero()[0])
            raise _fail(path, f"field agents.action: episode {offset + start + e}, step {step}, agent {agent} took action "
                              f"{int(action[e, step, agent])}, which agents.action_mask marks unavailable")
        ends = (td.get("terminated").squeeze(-1) | td.get("truncated").squeeze(-1)) & trans
        last = trans & (t[None, :] == (lengths - 1)[:, None])
        if bool((ends != last).any()):
            bad = ends != last
            raise _fail(path, f"fields terminated/truncated: expected exactly one episode end, at the last "
                              f"transition, found a mismatch at {where(bad)}")
        both = td.get("terminated").squeeze(-1) & td.get("truncated").squeeze(-1)
        if bool(both.any()):
            raise _fail(path, f"fields terminated/truncated: both set at {where(both)}")
        transitions += int(lengths.sum())
    return {"episodes": int(episodes.shape[0]), "transitions": transitions}


def check_counts(path: Path, meta: dict[str, Any], counted: dict[str, int]) -> None:
    for name in ("episodes", "transitions"):
        if int(meta[name]) != counted[name]:
            raise _fail(path, f"metadata {name}: file says {meta[name]}, the stored episodes have {counted[name]}")

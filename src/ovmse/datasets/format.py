"""On-disk layout of an offline dataset: one directory per dataset.

```
<data_root>/<map>/<quality>/
    dataset.json     metadata (map, dims, counts, return stats, generator, code version)
    episodes/        TensorDict memory-mapped storage, batch dims [E, T_max + 1]
```

``episodes/`` holds the PyMARL ``EpisodeBatch`` layout produced by
:class:`~ovmse.collection.EpisodeAssembler` (``T_max`` = the map's episode limit):

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

Row ``t < len`` is a transition, row ``len`` the final observation (``filled`` is
``t <= len``), rows after it are zero padding. :func:`trim_to_filled` cuts a batch to its
longest filled episode before it reaches a loss.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tensordict import TensorDictBase

from ovmse.envs import MapSpec

FORMAT_NAME = "ovmse-episodes"
FORMAT_VERSION = 1
METADATA_FILE = "dataset.json"
EPISODES_DIR = "episodes"

# Dataset qualities, named as in CFCQL's files (``{map}_{quality}.h5``).
QUALITIES = ("medium", "medium_replay", "expert", "mixed")

NestedKey = str | tuple[str, ...]


def field_specs(spec: MapSpec) -> dict[NestedKey, tuple[torch.dtype, tuple[int, ...]]]:
    """Every stored field of a dataset for map ``spec``: key -> (dtype, shape after ``[E, T+1]``)."""
    n, a = spec.n_agents, spec.n_actions
    return {
        ("agents", "observation"): (torch.float32, (n, spec.obs_dim)),
        ("agents", "action_mask"): (torch.bool, (n, a)),
        ("agents", "action"): (torch.int64, (n,)),
        "state": (torch.float32, (spec.state_dim,)),
        "reward": (torch.float32, (1,)),
        "terminated": (torch.bool, (1,)),
        "truncated": (torch.bool, (1,)),
        ("info", "battle_won"): (torch.bool, (1,)),
        "filled": (torch.bool, (1,)),
    }


def key_name(key: NestedKey) -> str:
    """``("agents", "observation")`` -> ``"agents.observation"`` (for messages and files)."""
    return key if isinstance(key, str) else ".".join(key)


def check_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise ValueError(f"Unknown dataset quality {quality!r}; expected one of {', '.join(QUALITIES)}.")
    return quality


def dataset_dir(data_root: str | Path, map_name: str, quality: str) -> Path:
    """``<data_root>/<map>/<quality>``, the default place of a dataset."""
    return Path(data_root) / map_name / check_quality(quality)


def resolve_dataset(name: str, data_root: str | Path, map_name: str) -> Path:
    """A ``dataset=`` value as a directory: a path (``/``, ``.`` or an existing directory) as it
    is, a quality name as ``<data_root>/<map>/<quality>``. A quality without a dataset there is
    a ``FileNotFoundError`` listing the datasets that do exist for the map and how to make one."""
    name = str(name)
    path = Path(name)
    if path.is_dir() or "/" in name or name.startswith("."):
        return path
    path = dataset_dir(data_root, map_name, name)
    if not path.is_dir():
        root = Path(data_root) / map_name
        present = sorted(p.name for p in root.iterdir() if (p / METADATA_FILE).is_file()) if root.is_dir() else []
        raise FileNotFoundError(
            f"dataset={name!r}: no dataset at {path}; datasets for {map_name} under {data_root}: "
            f"{', '.join(present) if present else 'none'}. Make it with python train.py phase=collect "
            f"env={map_name}, import one with python -m ovmse.datasets import-cfcql, or pass a directory")
    return path


def trim_to_filled(episodes: TensorDictBase, key: NestedKey = "filled") -> TensorDictBase:
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
    rows = min(max(last + 1, 2), episodes.shape[1])
    return episodes if rows == episodes.shape[1] else episodes[:, :rows]

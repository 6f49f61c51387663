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
``t <= len``), rows after it are zero padding.
"""

from __future__ import annotations

from pathlib import Path

import torch

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

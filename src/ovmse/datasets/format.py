"""On-disk layout of an offline dataset: one directory per dataset.

```
<data_root>/<map>/<quality>/
    dataset.json     metadata (map, dims, counts, return stats, generator, code version)
    episodes/        TensorDict memory-mapped storage, batch dims [E, T_max + 1]
```

``episodes/`` holds episodes in the layout of :mod:`ovmse.collection.layout` (keys, dtypes,
shapes and the ``filled`` rule are defined there, once), with ``T_max`` the map's episode limit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ovmse.collection.layout import NestedKey, field_specs

FORMAT_NAME = "ovmse-episodes"
FORMAT_VERSION = 1
METADATA_FILE = "dataset.json"
EPISODES_DIR = "episodes"

# Dataset qualities, named as in CFCQL's files (``{map}_{quality}.h5``).
QUALITIES = ("medium", "medium_replay", "expert", "mixed")


def key_name(key: NestedKey) -> str:
    """``("agents", "observation")`` -> ``"agents.observation"`` (for messages and files)."""
    return key if isinstance(key, str) else ".".join(key)


def field_file(path: str | Path, key: NestedKey) -> Path:
    """The memory-mapped file of field ``key`` in the dataset directory ``path``."""
    parts = (key,) if isinstance(key, str) else key
    return Path(path) / EPISODES_DIR / Path(*parts[:-1]) / f"{parts[-1]}.memmap"


def content_digest(path: str | Path, spec) -> str:
    """SHA-256 of a dataset's episodes: every field's name and file bytes, in the layout's order
    (``dataset.json`` left out). Two datasets with one digest hold the same episodes, whenever and
    wherever they were made; it reads every byte of the episodes. ``spec``: the map's
    :class:`~ovmse.envs.MapSpec`."""
    digest = hashlib.sha256()
    for key in field_specs(spec):
        digest.update(key_name(key).encode() + b"\0")
        with field_file(path, key).open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


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

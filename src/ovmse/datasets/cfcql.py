"""Import CFCQL's offline SMAC datasets (``{map}_{quality}.h5``) into our dataset format.

CFCQL (Shao et al., 2023) stores each dataset as one HDF5 file holding a PyMARL
``EpisodeBatch``: keys ``state, obs, actions, avail_actions, probs, reward, terminated,
filled``, batch dims ``[E, episode_limit + 1]``. Row ``t < len`` is a transition, row ``len``
the final observation (``filled`` is 1 for rows ``0..len``), rows after it are zeros. That is
our layout too (:mod:`ovmse.datasets.format`); how the fields are copied and which are derived
(``truncated``, ``("info", "battle_won")``) is :mod:`ovmse.datasets.cfcql_convert`.
``probs`` (the behaviour policy's action probabilities) is dropped.

This module finds the map and quality in the file name, checks every key's shape against the
map before reading any data, and reads the file ``chunk`` episodes at a time; every converted
chunk is validated before it is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ovmse.envs import MAPS, MapSpec, get_map

from .cfcql_convert import DERIVED, convert_chunk
from .format import QUALITIES, check_quality, dataset_dir
from .smac_state import state_layout
from .validation import DatasetError, check_contents, check_fields
from .writer import EpisodeDatasetWriter

SOURCE_FORMAT = "cfcql-hdf5"
# Keys read from the file (everything else present in it is dropped and listed).
USED_KEYS = ("state", "obs", "actions", "avail_actions", "reward", "terminated", "filled")


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


# --------------------------------------------------------------------------- file checks
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
                td, n = convert_chunk(path, raw, spec, layout, start)
                del raw
                check_fields(path, td, spec)
                check_contents(path, td, spec, offset=start)
                writer.append(td)
                relabelled += n
            source = {
                "format": SOURCE_FORMAT,
                "file": str(h5_path),
                "dropped_keys": dropped,
                "derived": dict(DERIVED),
                "timeouts_relabelled_truncated": relabelled,
            }
            return writer.close(source=source, behaviour={"policy": "unknown (imported)"})

"""Open a dataset directory as an :class:`OfflineDataset` that samples episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase

from ovmse.collection.layout import rows_filled
from ovmse.collection.replay import sample_indices
from ovmse.envs import MapSpec

from .format import EPISODES_DIR
from .stats import dataset_stats
from .validation import (
    DatasetError,
    check_contents,
    check_counts,
    check_fields,
    check_files,
    check_metadata_against_map,
    read_metadata,
)

# Datasets up to this size are read into memory by default ("auto"); larger ones stay on
# disk and each batch reads only the episodes it draws.
IN_MEMORY_LIMIT_BYTES = 4 * 2**30


def metadata_identity(path: str | Path, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """:meth:`OfflineDataset.identity` from ``dataset.json`` alone (read when ``metadata`` is
    None), without opening the episodes: what tells this set apart from another of its name."""
    meta = read_metadata(path) if metadata is None else metadata
    return {"name": str(meta.get("name", path)), "path": str(Path(path).resolve()), "episodes": meta.get("episodes"),
            "transitions": meta.get("transitions"), "created": meta.get("created"),
            "return_mean": meta.get("return_mean"), "win_rate": meta.get("win_rate"),
            "git_commit": (meta.get("code_version") or {}).get("git_commit"),
            "content_sha256": meta.get("content_sha256")}


class OfflineDataset:
    """A fixed set of episodes ``[E, T_max + 1]`` with uniform episode sampling.

    Has the sampling interface of :class:`~ovmse.collection.EpisodeReplayBuffer`
    (``len``, ``can_sample``, ``sample``, ``sample_indices``, ``max_rows_filled``, ``get``,
    ``max_rows``, ``set_generator``), so the DataModule mixes the two.

    Attributes:
        path: the dataset directory.
        metadata: the parsed ``dataset.json``.
        spec: the map's :class:`~ovmse.envs.MapSpec`.
        episodes: the stored episodes (memory-mapped, or in memory).
    """

    def __init__(self, path: Path, metadata: dict[str, Any], spec: MapSpec, episodes: TensorDictBase,
                 device: str | torch.device = "cpu") -> None:
        self.path = path
        self.metadata = metadata
        self.spec = spec
        self.episodes = episodes
        self.device = torch.device(device)
        self.generator: torch.Generator | None = None
        self._rows_filled: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.path))

    @property
    def n_transitions(self) -> int:
        return int(self.metadata["transitions"])

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the dataset it was trained on (``hparams.dataset``):
        the online phase finds the dataset to mix in, and the per-task settings, from it."""
        return {**metadata_identity(self.path, self.metadata), "episodes": len(self)}

    def __len__(self) -> int:
        return int(self.episodes.shape[0])

    def can_sample(self, batch_size: int) -> bool:
        return len(self) >= 1

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Sampling RNG (a CPU ``torch.Generator``), for reproducible batches."""
        self.generator = generator

    @property
    def max_rows(self) -> int:
        """T_max + 1, the rows of a stored episode."""
        return int(self.episodes.shape[1])

    def sample_indices(self, batch_size: int, replace: bool = True) -> torch.Tensor:
        """Indices of ``batch_size`` episodes drawn uniformly ``[batch_size]``; with
        ``replace=False`` no episode twice (CFCQL's offline loop and PyMARL2)."""
        if replace:
            return torch.randint(len(self), (batch_size,), generator=self.generator)
        return sample_indices(len(self), batch_size, self.generator)

    def max_rows_filled(self, indices: torch.Tensor) -> int:
        """Rows up to the last filled one of the longest episode at ``indices`` (0 if none)."""
        if self._rows_filled is None:  # once: a memory-mapped dataset reads its "filled" flags here
            self._rows_filled = rows_filled(self.episodes)
        return int(self._rows_filled[indices].max()) if indices.numel() else 0

    def get(self, indices: torch.Tensor, rows: int | None = None) -> TensorDictBase:
        """The episodes at ``indices`` ``[len(indices), T_max + 1]``, or their first ``rows`` rows
        (only those are read)."""
        episodes = self.episodes[indices] if rows is None else self.episodes[indices, :rows]
        return episodes.to(self.device)

    def sample(self, batch_size: int, replace: bool = True) -> TensorDictBase:
        """``batch_size`` episodes drawn uniformly: ``[batch_size, T_max + 1]``; with
        ``replace=False`` no episode twice in the batch (CFCQL's offline loop and PyMARL2)."""
        return self.get(self.sample_indices(batch_size, replace))

    def stats(self) -> tuple[dict[str, float], torch.Tensor]:
        """Table 8 summary (episodes, transitions, return min/mean/max, win rate) and per-episode
        returns ``[E]``, computed from the stored episodes."""
        return dataset_stats(self.episodes)

    def __repr__(self) -> str:
        return f"OfflineDataset({self.name!r}, episodes={len(self)}, transitions={self.n_transitions}, path={self.path})"


def load_dataset(
    path: str | Path,
    *,
    map_name: str | None = None,
    validate: Literal["full", "structure"] = "full",
    in_memory: bool | Literal["auto"] = "auto",
    device: str | torch.device = "cpu",
) -> OfflineDataset:
    """Open and check the dataset at ``path``.

    Args:
        map_name: the map the dataset must belong to (the env it will be used with).
        validate: ``"full"`` also reads every episode to check masks, padding, episode ends
            and finite values (chunked; the default); ``"structure"`` checks metadata, files,
            dims and dtypes only.
        in_memory: read all episodes into RAM (``True``), keep them memory-mapped (``False``),
            or decide by size (``"auto"``: up to 4 GiB in memory).
        device: where sampled batches go.

    Raises:
        DatasetError: naming the dataset, the field and expected vs found.
    """
    path = Path(path)
    meta = read_metadata(path)
    spec = check_metadata_against_map(path, meta, map_name)
    check_files(path, meta, spec)
    try:
        # allow_pickle=False: the storage holds tensors only; a pickled entry (code) is refused.
        episodes = TensorDict.load_memmap(path / EPISODES_DIR, allow_pickle=False)
    except Exception as err:  # tensordict raises many types for damaged storage
        raise DatasetError(f"dataset {path}: cannot read the episode storage {EPISODES_DIR}/ ({err})") from err
    check_fields(path, episodes, spec, int(meta["episodes"]))
    if validate == "full":
        check_counts(path, meta, check_contents(path, episodes, spec))
    elif validate != "structure":
        raise ValueError(f"validate must be 'full' or 'structure', got {validate!r}")
    if in_memory == "auto":
        in_memory = episodes.bytes() <= IN_MEMORY_LIMIT_BYTES
    if in_memory:
        episodes = episodes.clone()  # plain tensors, no longer backed by the files
    return OfflineDataset(path, meta, spec, episodes, device=device)

"""Episode replay buffer (PyMARL ``ReplayBuffer`` equivalent) on TorchRL storage.

One storage element = one padded episode ``[T_max + 1, ...]`` as produced by
:class:`~ovmse.collection.EpisodeAssembler`; ``sample(k)`` returns ``[k, T_max + 1]``.

When full, TorchRL's default ``RoundRobinWriter`` writes at ``cursor % capacity`` and
advances the cursor (TorchRL 0.14 ``RoundRobinWriter.extend``), i.e. the oldest episodes
are overwritten first (FIFO ring buffer) -- the storage itself never grows past
``max_size``. Sampling is uniform, within a batch without replacement (PyMARL2's
``ReplayBuffer.sample``: ``np.random.choice(..., replace=False)``) or with it (TorchRL's
``RandomSampler``); the C++ prioritized sampler is not available in this build, so there is
no prioritized option.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, RandomSampler, ReplayBuffer

from .layout import rows_filled


class EpisodeReplayBuffer:
    """Uniform replay over complete episodes with FIFO overwrite.

    Args:
        capacity: number of episodes kept (PyMARL2 default 5000).
        device: where the storage lives (``LazyTensorStorage`` only).
        memmap: use ``LazyMemmapStorage`` (episodes on disk, under ``scratch_dir``).
        scratch_dir: directory for the memmap files (``None`` = a temporary one).
        generator: ``torch.Generator`` for reproducible sampling (installed as the
            buffer's RNG with ``ReplayBuffer.set_rng`` when given).
    """

    def __init__(
        self,
        capacity: int = 5000,
        *,
        device: str | torch.device = "cpu",
        memmap: bool = False,
        scratch_dir: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        if memmap:
            storage = LazyMemmapStorage(self.capacity, scratch_dir=scratch_dir, device="cpu")
        else:
            storage = LazyTensorStorage(self.capacity, device=device)
        self._rb = ReplayBuffer(storage=storage, sampler=RandomSampler(), batch_size=None)
        self._generator = None
        if generator is not None:
            self.set_generator(generator)
        self.episodes_added = 0
        # Per storage slot: rows up to the episode's last filled one, so a batch can be gathered
        # cut to its longest episode instead of cut after a gather of every row.
        self._rows_filled = torch.zeros(self.capacity, dtype=torch.long)
        self._max_rows = 0

    @property
    def buffer(self) -> ReplayBuffer:
        """The underlying TorchRL ``ReplayBuffer`` (read it; write through :meth:`extend`, which also
        records each episode's filled rows for :meth:`max_rows_filled`)."""
        return self._rb

    def __len__(self) -> int:
        return len(self._rb)

    @property
    def max_rows(self) -> int:
        """T_max + 1, the rows of a stored episode (0 while empty)."""
        return self._max_rows if len(self) else 0

    def set_generator(self, generator: torch.Generator) -> None:
        """Sampling RNG, for reproducible batches (``ReplayBuffer.set_rng``)."""
        self._generator = generator
        self._rb.set_rng(generator)

    def can_sample(self, batch_size: int) -> bool:
        return len(self) >= batch_size

    def extend(self, episodes: TensorDictBase | None) -> torch.Tensor | None:
        """Add episodes ``[E, T_max + 1]`` (with the layout's ``filled`` flags); returns the storage
        indices written (``None`` if ``episodes`` is ``None`` or empty, as
        :meth:`EpisodeAssembler.add` may return)."""
        if episodes is None or episodes.shape[0] == 0:
            return None
        if episodes.batch_dims != 2:
            raise ValueError(f"episodes must have batch dims [E, T], got {tuple(episodes.batch_size)}")
        if len(self) and episodes.shape[1] != self.max_rows:
            raise ValueError("episode length (T_max + 1) differs from the stored episodes")
        idx = self._rb.extend(episodes)
        self._max_rows = episodes.shape[1]
        self.episodes_added += episodes.shape[0]
        # More episodes than slots repeat slots in the write: read back which episode each kept.
        written = self._rb.storage[idx] if episodes.shape[0] > self.capacity else episodes
        self._rows_filled[idx.cpu()] = rows_filled(written).cpu()
        return idx

    def oldest_first_indices(self) -> torch.Tensor:
        """Storage indices of the held episodes from oldest to newest ``[len]`` (the ring
        buffer's write cursor marks the oldest once it has wrapped around)."""
        n = len(self)
        idx = torch.arange(n)
        if self.episodes_added > self.capacity:
            idx = torch.roll(idx, -(self.episodes_added % self.capacity))
        return idx

    def get(self, indices: torch.Tensor, rows: int | None = None) -> TensorDictBase:
        """The stored episodes at ``indices``: ``[len(indices), T_max + 1]``, or their first
        ``rows`` rows (gathered alone: the other rows are never read)."""
        if rows is None:
            return self._rb.storage[indices]
        return self._rb.storage[(indices, slice(0, rows))]

    def max_rows_filled(self, indices: torch.Tensor) -> int:
        """Rows up to the last filled one of the longest episode at ``indices`` (0 if none)."""
        return int(self._rows_filled[indices.cpu()].max()) if indices.numel() else 0

    def sample_indices(self, batch_size: int, replace: bool = True) -> torch.Tensor:
        """Storage indices of ``batch_size`` episodes drawn uniformly ``[batch_size]``; with
        ``replace=False`` no episode twice (needs ``batch_size <= len(self)``). With replacement
        the draw is TorchRL's ``RandomSampler``'s, the one :meth:`sample` makes."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if not replace:
            return sample_indices(len(self), batch_size, self._generator)
        return self._rb.sampler.sample(self._rb.storage, batch_size)[0]

    def sample(self, batch_size: int, replace: bool = True) -> TensorDictBase:
        """``batch_size`` episodes drawn uniformly: ``[batch_size, T_max + 1]``; with
        ``replace=False`` no episode twice in the batch (needs ``batch_size <= len(self)``)."""
        return self.get(self.sample_indices(batch_size, replace))


def sample_indices(n: int, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``batch_size`` distinct indices drawn uniformly from ``range(n)`` ``[batch_size]``."""
    if batch_size > n:
        raise ValueError(f"cannot draw {batch_size} distinct episodes from {n}")
    return torch.randperm(n, generator=generator)[:batch_size]

"""``ReplayDataModule``: mixes an offline dataset and an online episode replay buffer.

Every batch holds exactly ``n_offline = round(offline_fraction * batch_size)`` episodes drawn
from the offline buffer followed by ``batch_size - n_offline`` episodes drawn from the online
buffer (a fixed split, not a random one per batch). Within each source episodes are drawn
uniformly, without replacement unless ``replace=True``.

Row order of a batch: rows ``[0, n_offline)`` are offline episodes, rows
``[n_offline, batch_size)`` are online episodes. The bool entry ``"from_offline"``
(shape ``[B, T_max + 1, 1]``, constant along time; a TensorDict entry must share the
``[B, T_max + 1]`` batch dims) marks the offline rows, so losses / metrics can tell them
apart without relying on the order.

Every batch is cut to its longest filled episode (what :func:`~ovmse.collection.layout.trim_to_filled`
keeps, PyMARL2's ``max_t_filled``): ``T_max + 1`` below is the episode limit + 1 of the buffers,
a batch has ``L + 1 <= T_max + 1`` rows, L the longest episode in it. The buffers know each
stored episode's filled rows, so only those ``L + 1`` rows are gathered.

Sampling is lazy: :meth:`ReplayDataModule.train_dataloader` draws a new batch from the
buffers each time the iterator is advanced, so episodes added to the buffers (e.g. by a
collection callback during training) are visible to the very next batch. The loader uses
``num_workers=0`` because the buffers live in the main process.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset

from ovmse.collection.layout import rows_kept
from ovmse.collection.replay import EpisodeReplayBuffer
from ovmse.datasets import OfflineDataset

FROM_OFFLINE_KEY = "from_offline"


def _identity(batch):
    return batch


class _ReplayStream(IterableDataset):
    """Infinite stream of ``ReplayDataModule.sample()`` batches (drawn lazily, one per step)."""

    def __init__(self, dm: "ReplayDataModule") -> None:
        super().__init__()
        self.dm = dm

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            yield self.dm.sample()


class ReplayDataModule(pl.LightningDataModule):
    """Serves batches of episodes ``[batch_size, T_max + 1]`` mixed from two replay buffers.

    Args:
        online: buffer filled by the env collector during training (may stay empty when
            ``offline_fraction == 1``, the offline phase).
        offline: the fixed offline data, an :class:`~ovmse.datasets.OfflineDataset` (or an
            :class:`EpisodeReplayBuffer`); required when ``offline_fraction > 0``.
        batch_size: episodes per batch (>= 1).
        offline_fraction: share of each batch taken from ``offline``, in ``[0, 1]``;
            ``n_offline = round(offline_fraction * batch_size)`` rows exactly, every batch.
            ``0`` = online only, ``1`` = offline only (offline pre-training phase; the online
            buffer is then never read and may be empty).
        generator: optional ``torch.Generator`` for reproducible sampling; when given it is
            installed as the sampling RNG of both sources (``set_generator``), so it replaces
            whatever generator they had.
        replace: draw each source's rows with replacement. ``False`` (PyMARL2 and CFCQL:
            ``np.random.choice(..., replace=False)``) never puts an episode twice in a batch.
    """

    def __init__(
        self,
        online: EpisodeReplayBuffer,
        offline: OfflineDataset | EpisodeReplayBuffer | None = None,
        batch_size: int = 128,
        offline_fraction: float = 0.0,
        generator: torch.Generator | None = None,
        replace: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        offline_fraction = float(offline_fraction)
        if not 0.0 <= offline_fraction <= 1.0:  # also rejects NaN
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction!r}")
        if offline_fraction > 0.0 and offline is None:
            raise ValueError(
                f"offline_fraction={offline_fraction!r} > 0 requires an offline buffer, got offline=None"
            )
        self.online = online
        self.offline = offline
        self.batch_size = int(batch_size)
        self.offline_fraction = offline_fraction
        self.n_offline = int(round(offline_fraction * self.batch_size))
        self.n_online = self.batch_size - self.n_offline
        self.generator = generator
        self.replace = bool(replace)
        if generator is not None:
            for buf in (online, offline):
                if buf is not None:
                    buf.set_generator(generator)

    # ------------------------------------------------------------------ sampling
    def _shortfalls(self) -> list[str]:
        out = []
        if self.n_offline > 0 and (self.offline is None or len(self.offline) < self.n_offline):
            have = 0 if self.offline is None else len(self.offline)
            out.append(f"offline buffer holds {have} episodes, needs >= {self.n_offline}")
        if self.n_online > 0 and len(self.online) < self.n_online:
            out.append(f"online buffer holds {len(self.online)} episodes, needs >= {self.n_online}")
        return out

    def ready(self) -> bool:
        """True when every contributing buffer holds at least as many episodes as it gives per
        batch (online >= ``n_online``, offline >= ``n_offline``)."""
        return not self._shortfalls()

    def sample(self) -> TensorDictBase:
        """One batch ``[batch_size, L + 1]`` cut to its longest filled episode (L <= T_max):
        ``n_offline`` offline rows then ``n_online`` online rows, with bool ``"from_offline"``
        ``[B, L + 1, 1]``.

        Raises:
            RuntimeError: if :meth:`ready` is False.
        """
        missing = self._shortfalls()
        if missing:
            raise RuntimeError(
                f"ReplayDataModule not ready (batch_size={self.batch_size}, "
                f"offline_fraction={self.offline_fraction}): " + "; ".join(missing)
            )
        draws = []  # (buffer, indices, from_offline)
        if self.n_offline > 0:
            draws.append((self.offline, self.offline.sample_indices(self.n_offline, replace=self.replace), True))
        if self.n_online > 0:
            draws.append((self.online, self.online.sample_indices(self.n_online, replace=self.replace), False))
        if len(draws) == 2 and self.offline.max_rows != self.online.max_rows:
            raise RuntimeError(f"offline episodes have length {self.offline.max_rows} but online episodes "
                               f"{self.online.max_rows} (T_max + 1 differs)")
        # The cut of trim_to_filled, known before the gather: only those rows are read.
        rows = rows_kept(max(buf.max_rows_filled(idx) for buf, idx, _ in draws), draws[0][0].max_rows)
        parts = [self._tagged(buf.get(idx, rows), offline) for buf, idx, offline in draws]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    @staticmethod
    def _tagged(td: TensorDictBase, offline: bool) -> TensorDictBase:
        flag = torch.full((*td.batch_size, 1), offline, dtype=torch.bool, device=td.device)
        td.set(FROM_OFFLINE_KEY, flag)
        return td

    # ------------------------------------------------------------------ Lightning
    def train_dataloader(self) -> DataLoader:
        """Infinite loader yielding :meth:`sample` batches, drawn lazily at each step
        (``batch_size=None``, identity collate, ``num_workers=0``). Bound the epoch with the
        Trainer's ``limit_train_batches`` / ``max_steps``."""
        return DataLoader(_ReplayStream(self), batch_size=None, collate_fn=_identity, num_workers=0)

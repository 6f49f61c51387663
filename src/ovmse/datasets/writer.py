"""Write a dataset directory: episodes go straight to memory-mapped files, metadata last.

A dataset is assembled in ``<path>.partial-<pid>/`` and renamed into place only by
:meth:`EpisodeDatasetWriter.close`, so an interrupted run never leaves something that
looks like a finished dataset, and an existing dataset is never replaced unless asked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from ovmse.collection.layout import field_specs
from ovmse.envs import MapSpec
from ovmse.provenance import code_version

from .format import (
    EPISODES_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_FILE,
    check_quality,
    content_digest,
    key_name,
)
from .stats import dataset_stats

DTYPE_NAMES = {torch.float32: "float32", torch.bool: "bool", torch.int64: "int64"}
OWNER_FILE = ".owner"  # "host pid" of the process assembling a partial dataset


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete the ``<path>.partial-<pid>/`` directories that killed processes left on this host
    (a preallocated dataset can take GBs), and their ``<path>.replaced-<pid>/`` (the dataset an
    ``overwrite=true`` run replaced) once ``path`` holds the new one; a live process's, or another
    host's, stay. Returns what was removed (each is also printed)."""
    from ovmse.sweeps.locks import lock_is_stale

    removed = []
    for partial in sorted(Path(path).parent.glob(f"{Path(path).name}.partial-*")):
        owner = partial / OWNER_FILE
        pid = partial.name.rpartition("-")[2]
        holder = owner.read_text() if owner.is_file() else f"{socket.gethostname()} {pid}"  # before the owner file
        if partial.is_dir() and lock_is_stale(holder):
            shutil.rmtree(partial, ignore_errors=True)
            print(f"removed {partial}: a partial dataset that a killed process ({holder}) left behind")
            removed.append(partial)
    # A writer killed between moving the replaced dataset aside and deleting it (overwrite=true)
    # leaves the whole old dataset as <path>.replaced-<pid>: removed once the new one is in place.
    for replaced in sorted(Path(path).parent.glob(f"{Path(path).name}.replaced-*")):
        pid = replaced.name.rpartition("-")[2]
        if replaced.is_dir() and Path(path).is_dir() and lock_is_stale(f"{socket.gethostname()} {pid}"):
            shutil.rmtree(replaced, ignore_errors=True)
            print(f"removed {replaced}: a replaced dataset that a killed process left behind")
            removed.append(replaced)
    return removed


class EpisodeDatasetWriter:
    """Writes exactly ``n_episodes`` episodes ``[*, T_max + 1]`` of map ``spec`` to ``path``.

    Usage::

        with EpisodeDatasetWriter(path, spec, 5000, quality="medium") as writer:
            writer.append(episodes)          # any number of times, [E_i, T+1] each
            writer.close(behaviour={...})    # stats + dataset.json, then rename into place

    Leaving the ``with`` block without :meth:`close` (an exception) deletes the partial files.

    Args:
        overwrite: replace an existing dataset at ``path`` (otherwise that is an error).
    """

    def __init__(self, path: str | Path, spec: MapSpec, n_episodes: int, *, quality: str,
                 overwrite: bool = False) -> None:
        if n_episodes < 1:
            raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
        self.path = Path(path)
        self.spec = spec
        self.quality = check_quality(quality)
        self.n_episodes = int(n_episodes)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"Dataset directory {self.path} already exists; pass overwrite=true to replace it "
                "(or choose another data root)."
            )
        remove_stale_partials(self.path)
        self.tmp = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        (self.tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
        T1 = spec.episode_limit + 1
        template = TensorDict(
            {key: torch.zeros((1, T1, *shape), dtype=dtype).expand(self.n_episodes, T1, *shape)
             for key, (dtype, shape) in field_specs(spec).items()},
            batch_size=(self.n_episodes, T1),
        )
        self.count = 0
        self.closed = False
        try:
            self.episodes = template.memmap_like(self.tmp / EPISODES_DIR, num_threads=0)
            self._reserve_disk_space()
        except BaseException:
            self.abort()
            raise

    def _reserve_disk_space(self) -> None:
        """Allocate every field file's blocks now. The episodes are written through memory maps,
        and a write into a sparse file on a full disk kills the process (SIGBUS) instead of
        raising; reserved blocks make "disk full" an error here, before any episode is made."""
        files = [f for f in (self.tmp / EPISODES_DIR).rglob("*.memmap")]
        needed = sum(f.stat().st_size for f in files)
        for f in files:
            size = f.stat().st_size
            if size == 0:
                continue
            fd = os.open(f, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as err:
                free = shutil.disk_usage(self.tmp).free
                raise OSError(
                    err.errno,
                    f"not enough disk space for dataset {self.path}: it needs {needed / 2**30:.2f} GiB, "
                    f"{free / 2**30:.2f} GiB are free on that disk ({err.strerror}); nothing was written there. "
                    "Free space or pass data_root=<a directory on a larger disk>") from None
            finally:
                os.close(fd)

    def __enter__(self) -> "EpisodeDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            self.abort()

    def append(self, episodes: TensorDictBase | None) -> int:
        """Write ``episodes`` ``[E, T+1]`` after those already written; returns how many were
        taken. Episodes beyond ``n_episodes`` are an error, not silently dropped."""
        if episodes is None or episodes.shape[0] == 0:
            return 0
        E = episodes.shape[0]
        if self.count + E > self.n_episodes:
            raise ValueError(
                f"{self.path}: appending {E} episodes to {self.count} exceeds the {self.n_episodes} "
                "this dataset was created for"
            )
        if tuple(episodes.shape[1:]) != tuple(self.episodes.shape[1:]):
            raise ValueError(
                f"{self.path}: episodes have batch shape {tuple(episodes.shape)}, expected [E, "
                f"{self.episodes.shape[1]}] (episode limit {self.spec.episode_limit} + 1)"
            )
        src = episodes.select(*field_specs(self.spec).keys(), strict=True).to("cpu")
        self.episodes[self.count : self.count + E] = src
        self.count += E
        return E

    def close(self, **metadata: Any) -> Path:
        """Check the count, compute the statistics, write ``dataset.json`` and move the dataset
        to ``path``. ``metadata`` (JSON-serialisable: ``behaviour``, ``generator``, ``source``,
        ...) is stored alongside the computed entries. Returns ``path``."""
        if self.count != self.n_episodes:
            raise ValueError(
                f"{self.path}: {self.count} episodes written, but the dataset was created for "
                f"{self.n_episodes}"
            )
        stats, _ = dataset_stats(self.episodes)
        del self.episodes  # the writer's memmaps are closed before the files are read and renamed
        s = self.spec
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": f"{s.name}/{self.quality}",
            "map": s.name,
            "quality": self.quality,
            "n_agents": s.n_agents,
            "obs_dim": s.obs_dim,
            "state_dim": s.state_dim,
            "n_actions": s.n_actions,
            "episode_limit": s.episode_limit,
            **stats,
            "fields": {key_name(k): {"dtype": DTYPE_NAMES[d], "shape": [s.episode_limit + 1, *shape]}
                       for k, (d, shape) in field_specs(s).items()},
            # What the set is: its episodes' digest. When and by which code it was made is
            # provenance: the same commit makes the same set again (docs/datasets.md).
            "content_sha256": content_digest(self.tmp, s),
            "created": dt.datetime.now().isoformat(timespec="seconds"),
            "code_version": code_version(),
            **metadata,
        }
        (self.tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (self.tmp / OWNER_FILE).unlink(missing_ok=True)  # complete: no longer a partial dataset
        old = None
        if self.path.exists():
            if not self.overwrite:
                self.closed = True  # keep the finished files, as the message says (no abort on exit)
                kept = self.path.with_name(f"{self.path.name}.finished-{os.getpid()}")
                self.tmp.rename(kept)
                raise FileExistsError(f"Dataset directory {self.path} appeared while writing; kept "
                                      f"the new one at {kept}")
            old = self.path.with_name(f"{self.path.name}.replaced-{os.getpid()}")
            self.path.rename(old)
        self.tmp.rename(self.path)
        if old is not None:
            shutil.rmtree(old)
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Delete the partial files (nothing at ``path`` is touched)."""
        self.closed = True
        if hasattr(self, "episodes"):
            del self.episodes
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_writable_dir(path: str | Path, what: str = "data_root") -> Path:
    """Create ``path`` if needed and prove it writable with a probe file; a ``PermissionError``
    naming ``what`` otherwise (checked before hours of data generation, not after)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{what}={str(path)!r} is not writable ({err.strerror or err}): pass "
                              f"{what}=<a directory you can write to>") from None
    return path

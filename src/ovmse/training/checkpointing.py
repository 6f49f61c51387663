"""Checkpoints that survive a kill: atomic writes, the online replay buffer beside them, resume.

Layout of ``<run dir>/checkpoints/``::

    last.ckpt                     the resume point (module, optimiser, counters, callback and RNG
                                  states, and the manifest of the replay chunks below)
    best.ckpt                     the best greedy evaluation (no replay; for inspection)
    replay/chunk-<a>-<b>/         episodes a..b-1 (ids count every episode the run ever added)
                                  as TensorDict memory-mapped storage

Every file appears under its final name only when complete: a checkpoint is written to
``<name>.partial-<pid>`` and renamed with ``os.replace`` (atomic on POSIX), a replay chunk is
written to ``chunk-...partial-<pid>/`` and renamed, and chunks are deleted only after the
``last.ckpt`` that stops referencing them is in place. A kill at any moment leaves ``last.ckpt``
either the previous complete resume point or the new one, never a mix.

What a resume restores exactly: the env-step / episode / update counters (so the ε and λ_memory
schedules continue where they were), the learner's weights and optimiser state, the callbacks'
schedules (next evaluation, next log row, best win rate), the RNG states (torch, numpy, python,
the exploration generator) and the replay buffer's episodes, oldest first. What it cannot
restore: battles that were in progress (they restart from fresh battles; their partial
episodes were not in the buffer yet) and the env steps those battles had taken after the
checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from tensordict import TensorDict

from ovmse.collection import EpisodeReplayBuffer

CHUNK_PREFIX = "chunk-"


class NonFiniteWeightsError(RuntimeError):
    """The weights hold NaN or infinity: they are never written as a checkpoint."""


def count_nonfinite(tensors) -> tuple[int, int]:
    """``(non-finite values, tensors holding any)`` over the floating-point tensors of ``tensors``
    (a state dict's values, or module parameters); a tensor that a state dict lists under two
    names (a shared module) counts once."""
    values = tensors_with = 0
    seen = set()
    for t in tensors:
        if torch.is_tensor(t) and t.is_floating_point():
            key = (t.data_ptr(), t.shape, t.stride())
            if key in seen:
                continue
            seen.add(key)
            bad = int((~torch.isfinite(t)).sum())
            values += bad
            tensors_with += bad > 0
    return values, tensors_with


def finished_run_beside(path: str | Path) -> bool:
    """Whether the offline run that wrote the snapshot ``path`` (e.g. its ``best.ckpt``) finished:
    the ``last.ckpt`` beside it, written at the run's end, says so."""
    final = Path(path).with_name("last.ckpt")
    if not final.is_file() or final.resolve() == Path(path).resolve():
        return False
    raw = torch.load(final, map_location="cpu", weights_only=True)
    return bool((raw.get("offline_run") or {}).get("finished"))


def atomic_save_checkpoint(trainer: pl.Trainer, path: str | Path) -> Path:
    """``trainer.save_checkpoint`` (with the optimiser) into ``path`` via a temporary file and an
    atomic rename, so ``path`` is always either the old or the new complete checkpoint.

    Weights with NaN or infinity are refused (:class:`NonFiniteWeightsError`, ``path`` is left as
    it was): a diverged run must not leave a checkpoint that loads and looks normal."""
    path = Path(path)
    module = getattr(trainer, "lightning_module", None)
    bad, tensors = count_nonfinite(p.detach() for p in module.parameters()) if module is not None else (0, 0)
    if bad:
        raise NonFiniteWeightsError(
            f"not writing {path}: {bad} weight values in {tensors} tensors are NaN or infinite at update "
            f"{getattr(module, 'updates', '?')} (training diverged; common causes: a learning rate or CQL weight "
            "too large, or corrupt data)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    trainer.save_checkpoint(tmp, weights_only=False)
    if trainer.is_global_zero:
        os.replace(tmp, path)
    trainer.strategy.barrier("atomic_save_checkpoint")
    return path


def rng_states(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, plus the states of ``extra`` generators."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": _python_state_to_tensors(random.getstate()),
        "generators": {k: g.get_state() for k, g in (extra or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    random.setstate(_python_state_from_tensors(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (extra or {}).items():
        if name in state["generators"]:
            gen.set_state(state["generators"][name])


# Checkpoints are read with torch.load(weights_only=True): only tensors, numbers, strings and
# containers. The numpy and python RNG states are turned into those.
def _numpy_state_to_tensors(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensors(d: dict):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _python_state_to_tensors(state) -> dict:
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss)}


def _python_state_from_tensors(d: dict):
    return (d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"])


def replay_digest(replay: EpisodeReplayBuffer) -> str:
    """SHA-256 of the buffer's episodes oldest first (every field, in key order): equal digests
    mean the same episodes in the same order."""
    import hashlib

    h = hashlib.sha256()
    if len(replay):
        eps = replay.get(replay.oldest_first_indices()).cpu()
        for key in sorted(eps.keys(include_nested=True, leaves_only=True), key=str):
            h.update(str(key).encode())
            h.update(eps.get(key).contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ReplayChunks:
    """The online replay buffer on disk beside ``last.ckpt``, written incrementally.

    Each :meth:`write` stores only the episodes added since the previous one as a new chunk and
    returns the manifest of the chunks that hold the buffer's current contents; the manifest goes
    into the checkpoint. :meth:`prune` deletes chunks no manifest in force refers to.

    Args:
        root: ``<run dir>/checkpoints/replay``.
        replay: the online buffer.
        base: episodes the run had added before ``replay`` was created (set by :meth:`restore`).
    """

    def __init__(self, root: str | Path, replay: EpisodeReplayBuffer) -> None:
        self.root = Path(root)
        self.replay = replay
        self.base = 0  # global id of the buffer's first ever episode after a restore
        self.written_upto = 0  # global id one past the last episode on disk

    def total_added(self) -> int:
        return self.base + self.replay.episodes_added

    def write(self) -> dict[str, Any]:
        """Write the new episodes (at most the buffer's capacity) as one chunk; the manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*.partial-*"):  # left by a killed write
            shutil.rmtree(stale, ignore_errors=True)
        total = self.total_added()
        held = len(self.replay)
        first_held = total - held
        start = max(self.written_upto, first_held)
        if total > start:
            order = self.replay.oldest_first_indices()
            episodes = self.replay.get(order[start - first_held:])
            name = f"{CHUNK_PREFIX}{start}-{total}"
            tmp = self.root / f"{name}.partial-{os.getpid()}"
            episodes.cpu().memmap_(str(tmp))
            os.replace(tmp, self.root / name)
            self.written_upto = total
        chunks = [c for c in self._chunks_on_disk() if c[2] > first_held and c[1] < total]
        return {"chunks": [c[0] for c in chunks], "first": first_held, "total": total,
                "capacity": self.replay.capacity}

    def prune(self, manifest: dict[str, Any]) -> None:
        """Delete the chunks ``manifest`` does not list (call once its checkpoint is in place)."""
        keep = set(manifest["chunks"])
        for name, _, _ in self._chunks_on_disk():
            if name not in keep:
                shutil.rmtree(self.root / name, ignore_errors=True)

    def restore(self, manifest: dict[str, Any]) -> None:
        """Refill the (empty) buffer with the episodes ``manifest`` names, oldest first."""
        if len(self.replay):
            raise RuntimeError("restore needs an empty replay buffer")
        first, total = int(manifest["first"]), int(manifest["total"])
        for name in manifest["chunks"]:
            path = self.root / name
            if not path.is_dir():
                raise FileNotFoundError(f"replay chunk {path} named by the checkpoint is missing: the run directory "
                                        "is incomplete (was checkpoints/replay/ moved or deleted?)")
            _, a, b = _parse_chunk(name)
            episodes = TensorDict.load_memmap(str(path), allow_pickle=False)  # tensors only, never code
            lo = max(a, first) - a
            self.replay.extend(episodes[lo:].clone())
        if len(self.replay) != total - first:
            raise RuntimeError(f"restored {len(self.replay)} replay episodes, the checkpoint expects {total - first}")
        self.base = total - self.replay.episodes_added
        self.written_upto = total

    def _chunks_on_disk(self) -> list[tuple[str, int, int]]:
        if not self.root.is_dir():
            return []
        out = [_parse_chunk(p.name) for p in self.root.iterdir()
               if p.is_dir() and p.name.startswith(CHUNK_PREFIX) and ".partial-" not in p.name]
        return sorted(out, key=lambda c: c[1])


def remove_replay_chunks(checkpoint_dir: str | Path) -> int:
    """Delete ``<checkpoint_dir>/replay`` (a finished run's resume buffer); returns the bytes freed.
    ``last.ckpt`` stays, for inspection and fine-tuning, but can no longer be resumed."""
    replay = Path(checkpoint_dir) / "replay"
    if not replay.is_dir():
        return 0
    size = sum(f.stat().st_size for f in replay.rglob("*") if f.is_file())
    shutil.rmtree(replay)
    return size


def _parse_chunk(name: str) -> tuple[str, int, int]:
    a, b = name[len(CHUNK_PREFIX):].split("-")
    return name, int(a), int(b)

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

import json
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


class ResumePointCallback(pl.Callback):
    """Writes the resume point ``last.ckpt`` (with the replay chunks and RNG states) every
    ``every_env_steps`` env steps, whenever :meth:`save` is called (after every evaluation) and
    at the end of training; with ``resume_from`` it restores that resume point when fit starts.

    Put it first among the callbacks: its ``on_fit_start`` must refill the replay buffer before
    the collection callback's warm-up looks at it.

    Args:
        checkpoint_dir: ``<run dir>/checkpoints``.
        replay: the online replay buffer.
        generators: generators whose states travel with the checkpoint (the exploration RNG).
        every_env_steps: env steps between two resume points (0: only after evaluations and at the end).
        resume_from: a ``last.ckpt`` to continue from.
    """

    def __init__(self, checkpoint_dir: str | Path, replay: EpisodeReplayBuffer, *,
                 generators: dict[str, torch.Generator] | None = None, every_env_steps: int = 0,
                 resume_from: str | Path | None = None) -> None:
        if every_env_steps < 0:
            raise ValueError(f"checkpoint.every_env_steps must be >= 0, got {every_env_steps}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.chunks = ReplayChunks(self.checkpoint_dir / "replay", replay)
        self.generators = dict(generators or {})
        self.every = int(every_env_steps)
        self.resume_from = None if resume_from is None else Path(resume_from)
        self._pending: dict | None = None
        self._next = self.every or None
        self.resumed: dict[str, Any] | None = None

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    def save(self, trainer: pl.Trainer, module: pl.LightningModule) -> Path:
        if trainer.world_size > 1:
            # trainer=ddp: every rank has its own buffer and resume is single-process
            # (ovmse.phases.resume), so last.ckpt is a plain checkpoint there.
            return atomic_save_checkpoint(trainer, self.last_path)
        manifest = self.chunks.write()
        self._pending = manifest
        try:
            atomic_save_checkpoint(trainer, self.last_path)
        finally:
            self._pending = None
        self.chunks.prune(manifest)
        if self.every:
            self._next = (module.env_steps // self.every + 1) * self.every
        return self.last_path

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        if self._pending is not None:  # only the resume point carries the replay and the RNGs
            checkpoint["resume"] = {"replay": self._pending, "rng": rng_states(self.generators)}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._next is not None and module.env_steps >= self._next:
            self.save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer, module)

    def on_fit_start(self, trainer, module) -> None:
        if self.resume_from is None:
            return
        ckpt = torch.load(self.resume_from, map_location="cpu", weights_only=True)
        resume = ckpt.get("resume")
        if resume is None:
            raise ValueError(f"{self.resume_from} is not a resume point (no replay manifest): resume from the "
                             "last.ckpt of an online run")
        self.chunks.prune(resume["replay"])  # chunks a killed save wrote after this checkpoint
        self.chunks.restore(resume["replay"])
        for optimizer, state in zip(trainer.optimizers, ckpt.get("optimizer_states", [])):
            optimizer.load_state_dict(state)
        states = ckpt.get("callbacks", {})
        for cb in trainer.callbacks:
            if cb.state_key in states and cb is not self:
                cb.load_state_dict(states[cb.state_key])
        restore_rng_states(resume["rng"], self.generators)
        if self.every:
            self._next = (module.env_steps // self.every + 1) * self.every
        self.resumed = {"resumed_from": str(self.resume_from), "env_steps": module.env_steps,
                        "episodes": module.episodes, "updates": module.updates,
                        "replay_episodes": len(self.chunks.replay), "replay_total_added": resume["replay"]["total"],
                        "replay_digest": replay_digest(self.chunks.replay)}
        if trainer.is_global_zero:  # one line per resume, beside the checkpoints
            with open(self.checkpoint_dir.parent / "resumes.jsonl", "a") as f:
                f.write(json.dumps(self.resumed) + "\n")
            print(f"resumed from {self.resume_from} at {module.env_steps} env steps ({module.updates} updates, "
                  f"{len(self.chunks.replay)} replay episodes)")

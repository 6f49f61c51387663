"""The online run's resume point: ``last.ckpt`` with the replay buffer and RNG states beside it
(the file layout and what a resume restores: :mod:`ovmse.training.checkpointing`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ovmse.collection import EpisodeReplayBuffer

from .checkpointing import ReplayChunks, atomic_save_checkpoint, replay_digest, restore_rng_states, rng_states


class ResumeWriter:
    """Writes the resume point ``last.ckpt`` (with the replay chunks and RNG states) when the loop
    asks (after every evaluation, every ``every_env_steps`` env steps and at the end) and, with
    ``resume_from``, restores one when fitting starts.

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

    def due(self, module) -> bool:
        return self._next is not None and module.env_steps >= self._next

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
        self._schedule(module)
        return self.last_path

    def add_to(self, checkpoint: dict[str, Any]) -> None:
        """Called from the loop's ``on_save_checkpoint``: only the resume point carries the
        replay manifest and the RNG states."""
        if self._pending is not None:
            checkpoint["resume"] = {"replay": self._pending, "rng": rng_states(self.generators)}

    def restore(self, trainer: pl.Trainer, module) -> dict[str, Any]:
        """Refill the replay, load the optimiser and RNG states of ``resume_from``; returns the
        checkpoint's callback states for the loop to load ({} without ``resume_from``)."""
        if self.resume_from is None:
            return {}
        ckpt = torch.load(self.resume_from, map_location="cpu", weights_only=True)
        resume = ckpt.get("resume")
        if resume is None:
            raise ValueError(f"{self.resume_from} is not a resume point (no replay manifest): resume from the "
                             "last.ckpt of an online run")
        self.chunks.prune(resume["replay"])  # chunks a killed save wrote after this checkpoint
        self.chunks.restore(resume["replay"])
        for optimizer, state in zip(trainer.optimizers, ckpt.get("optimizer_states", [])):
            optimizer.load_state_dict(state)
        restore_rng_states(resume["rng"], self.generators)
        self._schedule(module)
        self.resumed = {"resumed_from": str(self.resume_from), "env_steps": module.env_steps,
                        "episodes": module.episodes, "updates": module.updates,
                        "replay_episodes": len(self.chunks.replay), "replay_total_added": resume["replay"]["total"],
                        "replay_digest": replay_digest(self.chunks.replay)}
        if trainer.is_global_zero:  # one line per resume, beside the checkpoints
            with open(self.checkpoint_dir.parent / "resumes.jsonl", "a") as f:
                f.write(json.dumps(self.resumed) + "\n")
            print(f"resumed from {self.resume_from} at {module.env_steps} env steps ({module.updates} updates, "
                  f"{len(self.chunks.replay)} replay episodes)")
        return ckpt.get("callbacks", {})

    def _schedule(self, module) -> None:
        if self.every:
            self._next = (module.env_steps // self.every + 1) * self.every

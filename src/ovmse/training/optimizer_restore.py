"""Carry the offline run's optimiser state into the online phase (PyMARL2 / CFCQL ``load_models``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


def restore_optimizer(trainer: pl.Trainer, checkpoint: str | Path) -> None:
    """Load the Adam state (moments, step counts) saved in ``checkpoint`` into the trainer's
    optimisers, as PyMARL2's and CFCQL's ``load_models`` do when an online run starts from a
    pretrained model (called by the online loop when fitting starts). The learning rate stays
    the one this run configured (the same ``algo.lr`` as offline by default).

    Raises ``ValueError`` naming the checkpoint when it holds no optimiser state or one whose
    parameter groups do not match this module's.
    """
    checkpoint = Path(checkpoint)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    states = ckpt.get("optimizer_states") or []
    if len(states) != len(trainer.optimizers):
        raise ValueError(f"{checkpoint}: holds {len(states)} optimiser state(s), the run has "
                         f"{len(trainer.optimizers)}; pass algo.online.restore_optimizer=false to start "
                         "the online phase with a fresh optimiser")
    for optimizer, state in zip(trainer.optimizers, states):
        lrs = [group["lr"] for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(state)
        except ValueError as err:
            raise ValueError(f"{checkpoint}: its optimiser state does not fit this module ({err}); pass "
                             "algo.online.restore_optimizer=false for a fresh optimiser") from None
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr

"""Metric rows against the run's clock (env steps online, updates offline)."""

from __future__ import annotations

import pytorch_lightning as pl


def log_env_metrics(trainer: pl.Trainer, module, metrics: dict[str, float]) -> None:
    """Write ``metrics`` to every logger at x = the module's clock (env steps online, updates
    offline), with ``env_steps``, ``episodes`` and ``updates`` as columns.

    Rank 0 only (the other DDP ranks return at once)."""
    if not trainer.is_global_zero:
        return
    row = {"env_steps": float(module.env_steps), "episodes": float(module.episodes),
           "updates": float(module.updates), **{k: float(v) for k, v in metrics.items()}}
    for logger in trainer.loggers:
        logger.log_metrics(row, step=module.progress())
        logger.save()  # flush: a killed run keeps every row written so far

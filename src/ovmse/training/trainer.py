"""The one place a phase's Lightning Trainer is built."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl

from .ddp import TrainerSettings, debug_callbacks, trainer_kwargs
from .guards import NonFiniteGuard


def make_trainer(settings: TrainerSettings, out_dir: str | Path, loop: pl.Callback, progress: pl.Callback, *,
                 loggers, gradient_clip_val: float, num_threads: int | None = None, distributed: bool = True,
                 extra_callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """One epoch of as many updates as the phase's ``loop`` lets run (it stops the Trainer), with
    Lightning's own checkpointing, sanity checks and summaries off (the loop writes the run's
    checkpoints). Callbacks, in order: the non-finite guard (before every optimiser step), the
    loop, ``extra_callbacks`` (they see the loop's evaluations), the debug dump when asked for,
    the progress bar.

    ``distributed``: the online phase may run under ``trainer=ddp`` (:func:`trainer_kwargs`);
    the offline phase (``False``) takes only the accelerator and devices.
    """
    out_dir = Path(out_dir)
    if distributed:
        kwargs = trainer_kwargs(settings, num_threads)
    else:
        kwargs = {"accelerator": settings.accelerator,
                  "devices": list(settings.devices) if isinstance(settings.devices, tuple) else settings.devices}
    return pl.Trainer(
        **kwargs,
        max_epochs=1,
        max_steps=-1,
        gradient_clip_val=gradient_clip_val,
        logger=loggers,
        callbacks=[NonFiniteGuard(out_dir / "checkpoints"), loop, *extra_callbacks, *debug_callbacks(out_dir), progress],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )

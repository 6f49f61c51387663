"""Stop training at the first non-finite loss or gradient instead of training on garbage."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from .checkpointing import NonFiniteWeightsError, atomic_save_checkpoint


class NonFiniteLossError(RuntimeError):
    """A loss, gradient or weight became NaN or infinite; the message says where and what was saved."""


class NonFiniteGuard(pl.Callback):
    """Before every optimiser step, checks the loss and the gradients. At the first NaN or
    infinity it saves the weights as they are (not yet touched by this step) to
    ``<checkpoint_dir>/last_good.ckpt``, if they are finite themselves (a huge but finite step
    can make them infinite one update before the loss is), and raises
    :class:`NonFiniteLossError` naming the update and env step."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        metrics = getattr(module, "latest_train_metrics", {})
        loss = metrics.get("train/loss")
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        values = torch.stack([*(n.float() for n in norms), *([loss.float()] if loss is not None else [])])
        if bool(torch.isfinite(values).all()):
            return
        bad = [k for k, v in metrics.items() if not bool(torch.isfinite(torch.as_tensor(v)).all())]
        what = ", ".join(bad) if bad else "a gradient"
        try:
            saved = f"The last good weights are in {atomic_save_checkpoint(trainer, self.checkpoint_dir / 'last_good.ckpt')}."
        except NonFiniteWeightsError:
            saved = ("The weights are already non-finite, so no last_good.ckpt was written: use the run's last "
                     "evaluation checkpoint, or restart with other settings.")
        raise NonFiniteLossError(
            f"non-finite training values ({what}) at update {module.updates}, env step "
            f"{getattr(module, 'env_steps', 0)}: training stopped before this update was applied. {saved} Common "
            "causes: a learning rate or CQL weight too large, or corrupt data (validate the dataset with "
            "python -m ovmse.datasets validate).")

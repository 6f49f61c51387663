"""Greedy evaluation on a schedule of the run's clock, with the best checkpoint kept."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

from .checkpointing import atomic_save_checkpoint
from .evaluation import GreedyEvaluator
from .metrics_log import log_env_metrics


class ScheduledEvaluation:
    """Greedy evaluation every ``interval`` units of the module's clock (env steps online,
    updates offline), on the grid of multiples of the interval (the first right after update 1).

    :meth:`run` logs ``eval/win_rate``, ``eval/return``, ``eval/episode_length`` over
    ``episodes`` battles, saves ``<dir>/best.ckpt`` whenever the win rate beats the best so far
    and then ``last.ckpt``: with ``save_last(trainer, module)`` when given (the online phase's
    resume point, with the replay buffer), else as a plain checkpoint (both written atomically).

    Under ``trainer=ddp`` every rank plays its share of the battles (own seeds), the metrics are
    averaged over all battles of all ranks, and whether this is the best is rank 0's decision.
    """

    def __init__(self, evaluator: GreedyEvaluator, interval: int, episodes: int, checkpoint_dir: str | Path,
                 save_last: Callable[[pl.Trainer, pl.LightningModule], object] | None = None):
        self.evaluator = evaluator
        self.interval = interval
        self.episodes = episodes
        self.checkpoint_dir = Path(checkpoint_dir)
        self.save_last = save_last
        self.best = -math.inf
        self.latest: dict[str, float] = {}
        self.evaluations = 0  # how many evaluations have run (milestones watch it)
        self._next = 0
        self._evaluated_at = -1

    def due(self, module) -> bool:
        return module.progress() >= self._next

    def evaluated_now(self, module) -> bool:
        """Whether the policy at the module's clock has been evaluated already."""
        return self._evaluated_at == module.progress()

    def run(self, trainer: pl.Trainer, module, save_last: bool = True) -> dict[str, float]:
        """Evaluate now; ``save_last=False`` keeps best.ckpt only (the evaluation before any
        collection, whose resume point would hold nothing to resume)."""
        was_training = module.training
        module.eval()
        metrics = GreedyEvaluator.metrics(self.evaluator.run(math.ceil(self.episodes / trainer.world_size)))
        module.train(was_training)
        if trainer.world_size > 1:
            metrics = _mean_over_ranks(trainer, metrics, module.device)
        self.latest = metrics
        self.evaluations += 1
        self._evaluated_at = module.progress()
        self._next = (module.progress() // self.interval + 1) * self.interval
        log_env_metrics(trainer, module, metrics)
        # save_checkpoint runs on every rank (rank 0 writes, then all meet at a barrier), so all
        # ranks must take the same branch: rank 0's.
        if trainer.strategy.broadcast(metrics["eval/win_rate"] > self.best, src=0):
            self.best = metrics["eval/win_rate"]
            atomic_save_checkpoint(trainer, self.checkpoint_dir / "best.ckpt")
        if not save_last:
            pass
        elif self.save_last is not None:
            self.save_last(trainer, module)
        else:
            atomic_save_checkpoint(trainer, self.checkpoint_dir / "last.ckpt")
        return metrics

    # The schedule and the best win rate travel with checkpoints (resume).
    def state_dict(self) -> dict:
        return {"best": float(self.best), "next": int(self._next), "evaluations": int(self.evaluations),
                "evaluated_at": int(self._evaluated_at), "latest": {k: float(v) for k, v in self.latest.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.best, self._next = float(state["best"]), int(state["next"])
        self.evaluations, self._evaluated_at = int(state["evaluations"]), int(state["evaluated_at"])
        self.latest = dict(state["latest"])


def _mean_over_ranks(trainer: pl.Trainer, metrics: dict[str, float], device) -> dict[str, float]:
    """Battle-weighted mean of every rank's ``eval/`` metrics; ``eval/episodes`` becomes the total."""
    n = float(metrics["eval/episodes"])
    keys = [k for k in metrics if k != "eval/episodes"]
    sums = torch.tensor([float(metrics[k]) * n for k in keys] + [n], dtype=torch.float64, device=device)
    sums = trainer.strategy.reduce(sums, reduce_op="sum").cpu()
    total = float(sums[-1])
    return {**{k: float(v) / total for k, v in zip(keys, sums[:-1].tolist())}, "eval/episodes": total}

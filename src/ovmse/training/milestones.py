"""Act once when the greedy win rate first reaches a level (e.g. "medium", "expert")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytorch_lightning as pl

from .callbacks import GreedyEvaluationCallback
from .qmix_module import QMixModule

# action(trainer, module, info) with info = {"reason", "env_steps", "eval/win_rate", ...}
MilestoneAction = Callable[[pl.Trainer, QMixModule, dict], None]


@dataclass
class WinRateMilestone:
    """A level of play: reached when a greedy evaluation's win rate lies in ``[low, high]``."""

    name: str
    low: float
    high: float
    action: MilestoneAction

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"milestone {self.name!r}: need 0 <= low <= high <= 1, got [{self.low}, {self.high}]")


class WinRateMilestoneCallback(pl.Callback):
    """Runs milestone actions in order, each once, after the evaluation that reaches it.

    The ``reason`` passed to an action says how its policy was chosen:

    * ``"band"``: the win rate entered ``[low, high]``;
    * ``"overshot"``: an evaluation scored above ``high`` before any scored inside the band
      (evaluate more often, or widen the band, to land in it);
    * ``"budget"``: training ended (env-step budget) before the milestone was reached; the
      final policy is used.

    Training stops as soon as every milestone is done.

    Args:
        milestones: levels in increasing order.
        evaluation: the evaluation to watch (default: the trainer's
            :class:`GreedyEvaluationCallback`, found when fitting starts).
    """

    def __init__(self, milestones: list[WinRateMilestone], evaluation: GreedyEvaluationCallback | None = None):
        if not milestones:
            raise ValueError("no milestones given")
        self.evaluation = evaluation
        self.pending = list(milestones)
        self.done: dict[str, dict] = {}
        self._seen = 0

    def _fire(self, trainer: pl.Trainer, module: QMixModule, reason: str) -> None:
        milestone = self.pending.pop(0)
        info = {"reason": reason, "env_steps": module.env_steps, "episodes": module.episodes,
                "updates": module.updates, **self.evaluation.latest}
        was_training = module.training
        module.eval()
        milestone.action(trainer, module, info)
        module.train(was_training)
        self.done[milestone.name] = info

    def _check(self, trainer: pl.Trainer, module: QMixModule) -> None:
        if self.evaluation.evaluations == self._seen:
            return
        self._seen = self.evaluation.evaluations
        rate = self.evaluation.latest["eval/win_rate"]
        while self.pending:
            m = self.pending[0]
            if m.low <= rate <= m.high:
                self._fire(trainer, module, "band")
            elif rate > m.high:
                self._fire(trainer, module, "overshot")
            else:
                break
        if not self.pending:
            trainer.should_stop = True

    def on_fit_start(self, trainer: pl.Trainer, module: QMixModule) -> None:
        if self.evaluation is None:
            found = [c for c in trainer.callbacks if isinstance(c, GreedyEvaluationCallback)]
            if not found:
                raise RuntimeError("WinRateMilestoneCallback needs a GreedyEvaluationCallback in the trainer")
            self.evaluation = found[0]

    def on_train_batch_end(self, trainer, module: QMixModule, outputs, batch, batch_idx) -> None:
        self._check(trainer, module)

    def on_train_end(self, trainer, module: QMixModule) -> None:
        self._check(trainer, module)  # the final evaluation (runs before this callback's hook)
        while self.pending:
            self._fire(trainer, module, "budget")

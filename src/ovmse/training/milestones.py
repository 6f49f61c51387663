"""Act once when the greedy win rate reaches a level (e.g. "medium", "expert") and holds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytorch_lightning as pl

from .loops import OnlineLoop
from .scheduled_evaluation import ScheduledEvaluation
from .qmix_module import QMixModule

# action(trainer, module, info) with info = {"reason", "env_steps", "eval/win_rate", "history", ...}
MilestoneAction = Callable[[pl.Trainer, QMixModule, dict], None]


@dataclass
class WinRateMilestone:
    """A level of play: greedy evaluation win rates in ``[low, high]``."""

    name: str
    low: float
    high: float
    action: MilestoneAction

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"milestone {self.name!r}: need 0 <= low <= high <= 1, got [{self.low}, {self.high}]")


class WinRateMilestoneCallback(pl.Callback):
    """Runs milestone actions in order, each once, after the evaluation that reaches it.

    A level counts as reached when the last ``consecutive`` evaluations all lie at or above
    its floor ``low`` and the latest lies in ``[low, high]``: the policy has held the level,
    not touched it once. A single in-band evaluation is not enough: on our simulator QMIX's
    early win rate rises to a transient peak and falls back before it climbs for good (2s3z:
    about 0.4 near 50k env steps, 0.03-0.13 at 90-130k), and a 32-battle evaluation swings by
    ±0.08 on its own. (Evaluations that swing across ``high``, e.g. 0.45 then 0.38 for
    ``[0.1, 0.4]``, count: requiring both inside would leave the level pending until the run
    settles above it and then take a much stronger policy as "overshot".)

    The ``reason`` passed to an action says how its policy was chosen:

    * ``"band"``: the last ``consecutive`` evaluations were at or above ``low``, the latest
      inside ``[low, high]``;
    * ``"overshot"``: the last ``consecutive`` evaluations were all above ``high`` before the
      band held (evaluate more often, or widen the band, to land in it);
    * ``"budget"``: training ended (env-step budget) before the milestone was reached; the
      final policy is used.

    Every evaluation seen is kept in :attr:`history` (env steps, episodes, updates and the
    ``eval/`` metrics); actions get it as ``info["history"]``. Training stops as soon as every
    milestone is done.

    Args:
        milestones: levels in increasing order.
        evaluation: the evaluation to watch (default: the trainer's
            :class:`~ovmse.training.loops.OnlineLoop`'s, found when fitting starts).
        consecutive: evaluations in a row that must agree (1 = the first in-band evaluation).
        min_episodes: battles each counted evaluation must have played; an evaluation with
            fewer is an error (a level decided on a handful of battles is noise).
    """

    def __init__(self, milestones: list[WinRateMilestone], evaluation: ScheduledEvaluation | None = None,
                 consecutive: int = 2, min_episodes: int = 128):
        if not milestones:
            raise ValueError("no milestones given")
        if consecutive < 1:
            raise ValueError(f"consecutive evaluations must be >= 1, got {consecutive}")
        if min_episodes < 1:
            raise ValueError(f"min_episodes must be >= 1, got {min_episodes}")
        self.evaluation = evaluation
        self.pending = list(milestones)
        self.consecutive, self.min_episodes = int(consecutive), int(min_episodes)
        self.done: dict[str, dict] = {}
        self.history: list[dict] = []
        self._seen = 0

    def _fire(self, trainer: pl.Trainer, module: QMixModule, reason: str) -> None:
        milestone = self.pending.pop(0)
        info = {"reason": reason, "env_steps": module.env_steps, "episodes": module.episodes,
                "updates": module.updates, **self.evaluation.latest,
                "consecutive": self.consecutive, "history": [dict(h) for h in self.history]}
        was_training = module.training
        module.eval()
        milestone.action(trainer, module, info)
        module.train(was_training)
        self.done[milestone.name] = {k: v for k, v in info.items() if k != "history"}

    def _record(self, module: QMixModule) -> None:
        latest = dict(self.evaluation.latest)
        played = latest.get("eval/episodes")
        if played is not None and float(played) < self.min_episodes:
            raise ValueError(f"a win-rate level is decided on evaluations of at least {self.min_episodes} battles; "
                             f"this one played {int(played)} (raise eval.episodes or lower level.min_eval_episodes)")
        self.history.append({"env_steps": int(module.env_steps), "episodes": int(module.episodes),
                             "updates": int(module.updates), **{k: float(v) for k, v in latest.items()}})

    def _check(self, trainer: pl.Trainer, module: QMixModule) -> None:
        if self.evaluation.evaluations == self._seen:
            return
        self._seen = self.evaluation.evaluations
        self._record(module)
        recent = [h["eval/win_rate"] for h in self.history[-self.consecutive:]]
        while self.pending and len(recent) == self.consecutive:
            m = self.pending[0]
            if all(r >= m.low for r in recent) and recent[-1] <= m.high:
                self._fire(trainer, module, "band")
            elif all(r > m.high for r in recent):
                self._fire(trainer, module, "overshot")
            else:
                break
        if not self.pending:
            trainer.should_stop = True

    def on_fit_start(self, trainer: pl.Trainer, module: QMixModule) -> None:
        if self.evaluation is None:
            found = [c for c in trainer.callbacks if isinstance(c, OnlineLoop)]
            if not found:
                raise RuntimeError("WinRateMilestoneCallback needs an OnlineLoop in the trainer")
            self.evaluation = found[0].evaluation
        if getattr(self.evaluation, "episodes", self.min_episodes) < self.min_episodes:
            raise ValueError(f"eval.episodes={self.evaluation.episodes}: a win-rate level is decided on evaluations "
                             f"of at least {self.min_episodes} battles (level.min_eval_episodes)")

    def on_train_batch_end(self, trainer, module: QMixModule, outputs, batch, batch_idx) -> None:
        self._check(trainer, module)

    def on_train_end(self, trainer, module: QMixModule) -> None:
        self._check(trainer, module)  # the final evaluation (runs before this callback's hook)
        while self.pending:
            self._fire(trainer, module, "budget")

"""When the target networks are copied from the learner."""

from __future__ import annotations

import pytorch_lightning as pl


class TargetSchedule:
    """Hard target update every ``interval`` units of ``unit``:

    * ``"episodes"`` (online): collected episodes since the last update, as PyMARL2's
      ``nq_learner`` counts them (200 by default);
    * ``"updates"`` (offline): after every ``interval``-th gradient step, i.e. exactly at
      updates ``interval, 2·interval, ...`` (CFCQL's offline loop refreshes every 25 updates).

    Under ``trainer=ddp`` ranks count their own episodes; the update happens on every rank when
    any rank is due.
    """

    UNITS = ("episodes", "updates")

    def __init__(self, interval: int, unit: str = "episodes"):
        if unit not in self.UNITS:
            raise ValueError(f"target update unit must be one of {self.UNITS}, got {unit!r}")
        if interval < 1:
            raise ValueError(f"target update interval must be >= 1 {unit[:-1]}, got {interval}")
        self.interval, self.unit = interval, unit

    def due(self, trainer: pl.Trainer, module) -> bool:
        if self.unit == "updates":
            due = module.updates % self.interval == 0
        else:
            due = module.episodes - module.last_target_update_episode >= self.interval
        return bool(trainer.strategy.reduce_boolean_decision(due, all=False))

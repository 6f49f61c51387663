"""The env side of the online loop: how much to collect before and between updates.

Under ``trainer=ddp`` (docs/scaling.md) every rank has its own collector and replay; the
decisions that must agree across ranks are made collectively (the warm-up lasts until every
rank is ready; ranks collect while any rank owes data), so every rank makes the same number
of updates and the env-step counters stay in lockstep.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl

from .threads import torch_threads
from .update_ratio import UpdateRatio


class CollectionSchedule:
    """Fills the replay buffer before the first update and, after each update, collects the data
    the next update is owed at the update-to-data ``ratio``; counts env steps and episodes.

    Args:
        collection: the env side (:class:`~ovmse.collection.online.OnlineCollection` or the
            distributed workers): ``collect(env_steps) -> stats``, ``replay``, ``close()``.
        env_steps: total env-step budget of the run.
        warmup_episodes: complete episodes to collect before the first update
            (at least the batch size, so that the first batch can be drawn).
        log_every: env steps between two ``collect/`` + ``train/`` log rows.
        ratio: one update per ``ratio.every`` collected episodes or env steps
            (:class:`~ovmse.training.update_ratio.UpdateRatio`; PyMARL2: 8 episodes).
        threads: torch threads while collecting (``None``: the process's count).
    """

    def __init__(self, collection, env_steps: int, warmup_episodes: int, log_every: int = 2000,
                 ratio: UpdateRatio = UpdateRatio("episodes", 8), threads: int | None = 1):
        self.collection = collection
        self.budget = env_steps
        self.warmup_episodes = warmup_episodes
        self.log_every = log_every
        self.ratio = ratio
        self.threads = threads
        self._credit = 0  # collected units not yet spent on updates
        self._next_log = 0
        self._start = time.perf_counter()
        self._start_steps = 0
        self.latest: dict[str, float] = {}  # the last collection's collect/ statistics

    def env_steps_per_second(self, module) -> float:
        """Env steps per wall-clock second of this run so far (collection and updates)."""
        return (module.env_steps - self._start_steps) / max(time.perf_counter() - self._start, 1e-9)

    def done(self, module) -> bool:
        return module.env_steps >= self.budget

    def _collect(self, module) -> None:
        with torch_threads(self.threads):
            stats = self.collection.collect(module.env_steps)
        steps, episodes = int(stats.pop("env_steps")), int(stats.pop("episodes"))
        module.env_steps += steps
        module.episodes += episodes
        self._credit += steps if self.ratio.unit == "env_steps" else episodes
        self.latest = stats

    def warm_up(self, trainer: pl.Trainer, module) -> None:
        """Collect until every rank's replay holds ``warmup_episodes`` episodes."""
        self._start, self._start_steps = time.perf_counter(), module.env_steps
        while not trainer.strategy.reduce_boolean_decision(
                len(self.collection.replay) >= self.warmup_episodes, all=True):
            self._collect(module)
        if module.updates == 0:
            # As in PyMARL2, the first update comes as soon as a batch can be drawn: the
            # warm-up data pays for it, and the ratio counts from there.
            self._credit = self.ratio.every

    def collect_owed(self, trainer: pl.Trainer, module) -> None:
        """After one update: collect until the next update is paid for, or the budget is spent."""
        self._credit -= self.ratio.every
        while not self.done(module) and trainer.strategy.reduce_boolean_decision(
                self._credit < self.ratio.every, all=False):
            self._collect(module)

    def log_row(self, module) -> dict[str, float] | None:
        """The ``collect/`` + ``time/`` row owed at this env step (every ``log_every``), else None."""
        if module.env_steps < self._next_log or not self.latest:
            return None
        self._next_log = module.env_steps + self.log_every
        return {**self.latest, "time/env_steps_per_second": self.env_steps_per_second(module),
                "time/updates": float(module.updates),
                "time/env_steps_per_update": module.env_steps / max(module.updates, 1)}

    def close(self) -> None:
        self.collection.close()

    # The next log row's env step and the unspent data travel with checkpoints (resume).
    def state_dict(self) -> dict:
        return {"next_log": self._next_log, "credit": self._credit}

    def load_state_dict(self, state: dict) -> None:
        self._next_log = int(state["next_log"])
        self._credit = int(state["credit"])

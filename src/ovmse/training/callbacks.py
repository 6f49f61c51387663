"""Callbacks that drive online training by environment steps, not optimiser steps.

Order of work per training iteration (Lightning prefetches the next batch, so a
batch may miss the episodes collected right before it, which off-policy
learning tolerates):
``training_step`` (one update) -> :class:`OnlineCollectionCallback` collects batches of
``num_envs x steps_per_env`` env steps until the data owed to the next update is in
(:mod:`ovmse.training.update_ratio`; often none, when one batch pays for several updates) ->
:class:`TargetUpdateCallback` copies the targets every ``interval`` episodes ->
:class:`GreedyEvaluationCallback` evaluates every ``interval`` env steps and saves
``last.ckpt`` / ``best.ckpt``. Every metric is written with the env-step counter as its x-axis.
Collection and evaluation run with ``collect_threads`` torch threads, updates with the
process's own count (:mod:`ovmse.training.threads`).

Under ``trainer=ddp`` (docs/scaling.md) every rank runs these callbacks on its own
collector, replay and evaluator; the decisions that must agree across ranks are made
collectively: the warm-up lasts until every rank is ready, a target update happens on
all ranks when any rank is due, evaluation metrics are averaged over all ranks' battles
and the best-checkpoint decision is rank 0's. Env steps per update are the same on every
rank, so the env-step budget and the evaluation schedule stay in lockstep. Only rank 0
writes metrics. With one process all of this reduces to the plain single-process logic.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from .checkpointing import atomic_save_checkpoint
from ovmse.collection.online import OnlineCollection
from .evaluation import GreedyEvaluator
from .qmix_module import QMixModule
from .threads import torch_threads
from .update_ratio import UpdateRatio


def log_env_metrics(trainer: pl.Trainer, module: QMixModule, metrics: dict[str, float]) -> None:
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


class OnlineCollectionCallback(pl.Callback):
    """Fills the replay buffer before training and between updates at the update-to-data
    ``ratio``; stops at the budget.

    Args:
        collection: the env side.
        env_steps: total env-step budget of the run.
        warmup_episodes: complete episodes to collect before the first update
            (at least the batch size, so that the first batch can be drawn).
        log_every: env steps between two ``collect/`` + ``train/`` log rows.
        ratio: one update per ``ratio.every`` collected episodes or env steps
            (:class:`~ovmse.training.update_ratio.UpdateRatio`; PyMARL2: 8 episodes).
        threads: torch threads while collecting (``None``: the process's count).
    """

    def __init__(self, collection: OnlineCollection, env_steps: int, warmup_episodes: int, log_every: int = 2000,
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
        self.latest: dict[str, float] = {}

    def env_steps_per_second(self, module: QMixModule) -> float:
        """Env steps per wall-clock second of this run so far (collection and updates)."""
        return (module.env_steps - self._start_steps) / max(time.perf_counter() - self._start, 1e-9)

    def _collect(self, trainer: pl.Trainer, module: QMixModule) -> dict[str, float]:
        with torch_threads(self.threads):
            stats = self.collection.collect(module.env_steps)
        steps, episodes = int(stats.pop("env_steps")), int(stats.pop("episodes"))
        module.env_steps += steps
        module.episodes += episodes
        self._credit += steps if self.ratio.unit == "env_steps" else episodes
        return stats

    def on_fit_start(self, trainer: pl.Trainer, module: QMixModule) -> None:
        self._start, self._start_steps = time.perf_counter(), module.env_steps
        # DDP: all ranks collect until every rank holds enough episodes, so that their
        # env-step counters (budget, evaluation schedule) stay equal.
        while not trainer.strategy.reduce_boolean_decision(
                len(self.collection.replay) >= self.warmup_episodes, all=True):
            self.latest = self._collect(trainer, module)
        if module.updates == 0:
            # As in PyMARL2, the first update comes as soon as a batch can be drawn: the
            # warm-up data pays for it, and the ratio counts from there.
            self._credit = self.ratio.every
        if module.env_steps >= self.budget:
            # A resumed run that had reached its budget (killed before its final test): no
            # further update; the phase goes straight on to the final test.
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, module: QMixModule, outputs, batch, batch_idx) -> None:
        self._credit -= self.ratio.every
        # DDP: ranks collect while any rank owes data, so every rank makes the same number of
        # updates (each update is one collective gradient step).
        while module.env_steps < self.budget and trainer.strategy.reduce_boolean_decision(
                self._credit < self.ratio.every, all=False):
            self.latest = self._collect(trainer, module)
            if module.env_steps >= self._next_log:
                stats = {**self.latest, "time/env_steps_per_second": self.env_steps_per_second(module),
                         "time/updates": float(module.updates),
                         "time/env_steps_per_update": module.env_steps / max(module.updates, 1)}
                log_env_metrics(trainer, module, {**stats, **getattr(module, "latest_train_metrics", {})})
                self._next_log = module.env_steps + self.log_every
        if module.env_steps >= self.budget:
            trainer.should_stop = True

    def on_fit_end(self, trainer, module) -> None:
        self.collection.close()

    # The next log row's env step and the unspent data travel with checkpoints (resume).
    def state_dict(self) -> dict:
        return {"next_log": self._next_log, "credit": self._credit}

    def load_state_dict(self, state: dict) -> None:
        self._next_log = int(state["next_log"])
        self._credit = int(state["credit"])


class TargetUpdateCallback(pl.Callback):
    """Hard target update every ``interval`` units of ``unit``:

    * ``"episodes"`` (online): collected episodes since the last update, as PyMARL2's
      ``nq_learner`` counts them (200 by default);
    * ``"updates"`` (offline): after every ``interval``-th gradient step, i.e. exactly at
      updates ``interval, 2·interval, ...`` (CFCQL's offline loop refreshes every 25 updates).
    """

    UNITS = ("episodes", "updates")

    def __init__(self, interval: int, unit: str = "episodes"):
        if unit not in self.UNITS:
            raise ValueError(f"target update unit must be one of {self.UNITS}, got {unit!r}")
        if interval < 1:
            raise ValueError(f"target update interval must be >= 1 {unit[:-1]}, got {interval}")
        self.interval, self.unit = interval, unit

    def on_train_batch_end(self, trainer, module: QMixModule, outputs, batch, batch_idx) -> None:
        if self.unit == "updates":
            due = module.updates % self.interval == 0
        else:
            due = module.episodes - module.last_target_update_episode >= self.interval
        # DDP: ranks count their own episodes; update on every rank when any is due.
        if trainer.strategy.reduce_boolean_decision(due, all=False):
            module.update_targets()


class GreedyEvaluationCallback(pl.Callback):
    """Greedy evaluation every ``interval`` units of the module's clock (env steps online,
    updates offline) and at the end; checkpoints.

    Logs ``eval/win_rate``, ``eval/return``, ``eval/episode_length`` over
    ``episodes`` battles, saves ``<dir>/last.ckpt`` after every evaluation and
    ``<dir>/best.ckpt`` whenever the win rate beats the best so far (both written atomically).
    ``save_last(trainer, module)``, when given, writes ``last.ckpt`` instead (the online phase's
    resume point, with the replay buffer: :class:`~ovmse.training.checkpointing.ResumePointCallback`).
    """

    def __init__(self, evaluator: GreedyEvaluator, interval: int, episodes: int, checkpoint_dir: str | Path,
                 save_last=None):
        self.save_last = save_last
        self.evaluator = evaluator
        self.interval = interval
        self.episodes = episodes
        self.checkpoint_dir = Path(checkpoint_dir)
        self.best = -math.inf
        self._next = 0
        self.latest: dict[str, float] = {}
        self.evaluations = 0  # how many evaluations have run (milestones watch it)
        self._evaluated_at = -1

    def _evaluate(self, trainer: pl.Trainer, module: QMixModule) -> None:
        was_training = module.training
        module.eval()
        # DDP: every rank plays its share of the battles (own seeds), then the metrics are
        # averaged over all battles of all ranks, so every rank holds the same numbers.
        episodes = math.ceil(self.episodes / trainer.world_size)
        metrics = GreedyEvaluator.metrics(self.evaluator.run(episodes))
        module.train(was_training)
        if trainer.world_size > 1:
            metrics = _mean_over_ranks(trainer, metrics, module.device)
        self.latest = metrics
        self.evaluations += 1
        self._evaluated_at = module.progress()
        log_env_metrics(trainer, module, metrics)
        # save_checkpoint runs on every rank (rank 0 writes, then all meet at a barrier);
        # whether this is the best is rank 0's decision, so all ranks save the same files.
        if trainer.strategy.broadcast(metrics["eval/win_rate"] > self.best, src=0):
            self.best = metrics["eval/win_rate"]
            atomic_save_checkpoint(trainer, self.checkpoint_dir / "best.ckpt")
        if self.save_last is not None:
            self.save_last(trainer, module)
        else:
            atomic_save_checkpoint(trainer, self.checkpoint_dir / "last.ckpt")

    def on_train_batch_end(self, trainer, module: QMixModule, outputs, batch, batch_idx) -> None:
        if module.progress() >= self._next:
            self._evaluate(trainer, module)
            # On the grid of multiples of the interval (after the first, right after update 1).
            self._next = (module.progress() // self.interval + 1) * self.interval

    def on_train_end(self, trainer, module: QMixModule) -> None:
        if self._evaluated_at != module.progress():  # the final policy, unless just evaluated
            self._evaluate(trainer, module)

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


class OfflineTrainingCallback(pl.Callback):
    """Offline phase: counts the dataset episodes each update consumed (``episodes``, a log
    column; the offline target interval counts updates), logs ``train/`` rows every
    ``log_every`` updates and stops after ``steps`` updates."""

    def __init__(self, steps: int, batch_size: int, log_every: int = 100):
        if steps < 1:
            raise ValueError(f"offline steps must be >= 1, got {steps}")
        self.steps, self.batch_size, self.log_every = int(steps), int(batch_size), int(log_every)
        self._start = time.perf_counter()
        self._start_updates = 0

    def updates_per_second(self, module: QMixModule) -> float:
        return (module.updates - self._start_updates) / max(time.perf_counter() - self._start, 1e-9)

    def on_fit_start(self, trainer, module: QMixModule) -> None:
        self._start, self._start_updates = time.perf_counter(), module.updates

    def on_train_batch_end(self, trainer, module: QMixModule, outputs, batch, batch_idx) -> None:
        module.episodes += self.batch_size
        if module.updates % self.log_every == 0 or module.updates >= self.steps:
            metrics = {**getattr(module, "latest_train_metrics", {}),
                       "time/updates_per_second": self.updates_per_second(module)}
            log_env_metrics(trainer, module, metrics)
        if module.updates >= self.steps:
            trainer.should_stop = True


class EnvStepProgressBar(TQDMProgressBar):
    """Progress bar that shows env steps, episodes, latest greedy win rate and env steps/s.

    (Its ``it`` count is optimiser updates; the run's x-axis everywhere else is env steps.)
    """

    def __init__(self, evaluation: GreedyEvaluationCallback, collection: OnlineCollectionCallback | None, **kwargs):
        super().__init__(**kwargs)
        self._evaluation = evaluation
        self._collection = collection

    def get_metrics(self, trainer, module):
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        if module.clock == "updates":
            items["updates"] = module.updates
        else:
            items["env_steps"] = module.env_steps
            items["episodes"] = module.episodes
        if "eval/win_rate" in self._evaluation.latest:
            items["win_rate"] = f"{self._evaluation.latest['eval/win_rate']:.2f}"
        if self._collection is not None:
            items["env_steps/s"] = f"{self._collection.env_steps_per_second(module):.0f}"
        return items

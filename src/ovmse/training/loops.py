"""The training loop of each phase, written out in one place.

Lightning runs the updates (``QMixModule.training_step``, one gradient step per batch); what
happens around them is one callback per phase, whose ``on_train_batch_end`` reads top to
bottom in the order things happen:

* online (:class:`OnlineLoop`): collect the env steps the next update is owed and count them
  -> copy the targets when due -> evaluate when due (best.ckpt) -> write the resume point ->
  measure the unlearning probe -> log -> stop at the env-step budget;
* offline (:class:`OfflineLoop`): count the dataset episodes used -> copy the targets when
  due -> evaluate when due (last/best.ckpt) -> log -> stop after ``steps`` updates.

The parts (collection schedule, target schedule, scheduled evaluation, resume writer,
unlearning probe) are plain objects; the loop holds them and carries their states in
checkpoints. Lightning prefetches the next batch, so a batch may miss the episodes collected
right before it, which off-policy learning tolerates. Collection and evaluation run with
their own torch thread count, updates with the process's (:mod:`ovmse.training.threads`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from .checkpoint_compat import loop_state_of
from .collection_schedule import CollectionSchedule
from .metrics_log import log_env_metrics
from .optimizer_restore import restore_optimizer
from .resume_point import ResumeWriter
from .scheduled_evaluation import ScheduledEvaluation
from .target_schedule import TargetSchedule
from .unlearning import UnlearningProbe


class PartTimes:
    """Wall-clock seconds this process spent in each part of the online loop around the updates:
    ``collect`` (warm-up included), ``evaluate`` (greedy evaluations, with the best.ckpt and
    resume point they write), ``checkpoint`` (resume points written between evaluations; on
    resume, the replay and optimiser state read back) and ``probe`` (the unlearning probe). The
    run's wall time minus their sum is the updates (and Lightning's own work around them).
    Logged as cumulative ``time/<part>_seconds``; the summary splits the run's wall time by part
    (:meth:`split`). Counts from the start of this process: a resumed run's counters restart, as
    its ``wall_seconds`` does."""

    PARTS = ("collect", "evaluate", "checkpoint", "probe")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{part}_seconds": s for part, s in self.seconds.items()}

    def split(self, wall_seconds: float) -> dict[str, float]:
        """``{part: seconds, "updates_and_rest": the remainder}`` of ``wall_seconds``."""
        return {**self.seconds, "updates_and_rest": wall_seconds - sum(self.seconds.values())}


class OnlineLoop(pl.Callback):
    """The online phase around each update (module docstring).

    Args:
        collection: what and when to collect (:class:`CollectionSchedule`).
        targets: when to copy the targets (episodes).
        evaluation: greedy evaluation every ``eval.interval_env_steps``; it writes the resume
            point after each evaluation when ``resume`` is given (``None``: no evaluation, for
            benchmarks).
        resume: the resume-point writer (``None``: phase=collect, plain checkpoints).
        probe: the unlearning probe of a fine-tuning run, or ``None``.
        optimizer_from: at the switch to online, load the Adam state of this offline checkpoint
            (``algo.online.restore_optimizer``; not on resume, a resume point has its own).
        evaluate_at_start: evaluate before the first env step (``eval.at_start`` of a fine-tuning
            run: the offline policy's level as the curve's first point; best.ckpt starts there).
    """

    def __init__(self, collection: CollectionSchedule, targets: TargetSchedule, evaluation: ScheduledEvaluation | None,
                 resume: ResumeWriter | None = None, probe: UnlearningProbe | None = None,
                 optimizer_from: str | Path | None = None, evaluate_at_start: bool = False):
        self.collection, self.targets, self.evaluation = collection, targets, evaluation
        self.resume, self.probe, self.optimizer_from = resume, probe, optimizer_from
        self.evaluate_at_start = evaluate_at_start
        self.times = PartTimes()
        if resume is not None and evaluation is not None:
            evaluation.save_last = resume.save

    def on_fit_start(self, trainer: pl.Trainer, module) -> None:
        if self.resume is not None:  # first: the refilled replay may already pay for the warm-up
            with self.times.timing("checkpoint"):
                self.load_state_dict(loop_state_of(self.resume.restore(trainer, module)))
        if self.optimizer_from is not None:
            with self.times.timing("checkpoint"):
                restore_optimizer(trainer, self.optimizer_from)
        if self.evaluate_at_start and self.evaluation is not None and module.progress() == 0:
            # The fine-tuning curve's first point: the offline policy, before any env step.
            with self.times.timing("evaluate"):
                self.evaluation.run(trainer, module, save_last=False)
        with self.times.timing("collect"):
            self.collection.warm_up(trainer, module)
        if self.probe is not None and self.probe.due(module):
            with self.times.timing("probe"):
                self.probe.measure(trainer, module)  # the offline policy, before any update
        if self.collection.done(module):
            # A resumed run that had reached its budget (killed before its final test): no
            # further update; the phase goes straight on to the final test.
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_idx) -> None:
        with self.times.timing("collect"):
            self.collection.collect_owed(trainer, module)
        if self.targets.due(trainer, module):
            module.update_targets()
        if self.evaluation is not None and self.evaluation.due(module):
            with self.times.timing("evaluate"):
                self.evaluation.run(trainer, module)  # saves best.ckpt and the resume point
        elif self.resume is not None and self.resume.due(module):
            with self.times.timing("checkpoint"):
                self.resume.save(trainer, module)
        if self.probe is not None and self.probe.due(module):
            with self.times.timing("probe"):
                self.probe.measure(trainer, module)
        row = self.collection.log_row(module)
        if row is not None:
            log_env_metrics(trainer, module, {**row, **self.times.metrics(),
                                              **getattr(module, "latest_train_metrics", {})})
        if self.collection.done(module):
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        if self.evaluation is not None and not self.evaluation.evaluated_now(module):
            with self.times.timing("evaluate"):
                self.evaluation.run(trainer, module)  # the final policy, unless just evaluated
        elif self.resume is not None:
            with self.times.timing("checkpoint"):
                self.resume.save(trainer, module)

    def on_fit_end(self, trainer: pl.Trainer, module) -> None:
        self.collection.close()

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        if self.resume is not None:
            self.resume.add_to(checkpoint)

    # The parts' schedules (next log row, unspent data, next evaluation, best win rate, next
    # probe) travel with checkpoints.
    def state_dict(self) -> dict:
        parts = {"collection": self.collection, "evaluation": self.evaluation, "probe": self.probe}
        return {name: part.state_dict() for name, part in parts.items() if part is not None}

    def load_state_dict(self, state: dict) -> None:
        parts = {"collection": self.collection, "evaluation": self.evaluation, "probe": self.probe}
        for name, part in parts.items():
            if part is not None and name in state:
                part.load_state_dict(state[name])


class OfflineLoop(pl.Callback):
    """The offline phase around each update (module docstring): counts the dataset episodes each
    update consumed (``episodes``, a log column), copies the targets every
    ``targets.interval`` updates, evaluates every ``eval.interval_updates`` updates, logs
    ``train/`` rows every ``log_every`` updates and stops after ``steps`` updates."""

    def __init__(self, steps: int, batch_size: int, targets: TargetSchedule, evaluation: ScheduledEvaluation,
                 log_every: int = 100):
        if steps < 1:
            raise ValueError(f"offline steps must be >= 1, got {steps}")
        self.steps, self.batch_size, self.log_every = int(steps), int(batch_size), int(log_every)
        self.targets, self.evaluation = targets, evaluation
        self._start = time.perf_counter()
        self._start_updates = 0

    def updates_per_second(self, module) -> float:
        return (module.updates - self._start_updates) / max(time.perf_counter() - self._start, 1e-9)

    def on_fit_start(self, trainer: pl.Trainer, module) -> None:
        self._start, self._start_updates = time.perf_counter(), module.updates

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_idx) -> None:
        module.episodes += self.batch_size
        if self.targets.due(trainer, module):
            module.update_targets()
        if self.evaluation.due(module):
            self.evaluation.run(trainer, module)
        if module.updates % self.log_every == 0 or module.updates >= self.steps:
            log_env_metrics(trainer, module, {**getattr(module, "latest_train_metrics", {}),
                                              "time/updates_per_second": self.updates_per_second(module)})
        if module.updates >= self.steps:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        if not self.evaluation.evaluated_now(module):
            self.evaluation.run(trainer, module)

    def state_dict(self) -> dict:
        return {"evaluation": self.evaluation.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.evaluation.load_state_dict(state["evaluation"])

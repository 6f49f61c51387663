"""A progress bar in the run's own units."""

from __future__ import annotations

import time

from pytorch_lightning.callbacks import TQDMProgressBar

from .collection_schedule import CollectionSchedule
from .scheduled_evaluation import ScheduledEvaluation

BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"


class EnvStepProgressBar(TQDMProgressBar):
    """Where the run is, in its own units: env steps of the budget online (``collection`` given),
    updates of ``total`` offline; percentage, elapsed time and ETA; redrawn at most every
    ``refresh_seconds`` (not every N updates, which for a short run meant ``0/?`` until its end).
    The postfix has the updates made, the latest greedy win rate with its number of battles,
    ε, the loss and env steps per second.

    ``refresh_rate=0`` hides the bar (as Lightning's); any other value shows it.
    """

    def __init__(self, evaluation: ScheduledEvaluation, collection: CollectionSchedule | None, total: int,
                 refresh_seconds: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self._evaluation = evaluation
        self._collection = collection
        self.total = int(total)
        self.unit = "env steps" if collection is not None else "updates"
        self.refresh_seconds = refresh_seconds
        self._drawn = -float("inf")

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.bar_format = BAR_FORMAT
        return bar

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.total, bar.unit = self.total, self.unit
        bar.set_description("online" if self._collection is not None else "offline")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        now = time.monotonic()
        if now - self._drawn < self.refresh_seconds and not trainer.should_stop:
            return
        self._drawn = now
        bar.n = min(module.env_steps if self._collection is not None else module.updates, self.total)
        bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
        bar.refresh()

    def get_metrics(self, trainer, module):
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        items["updates"] = module.updates
        latest = self._evaluation.latest
        if "eval/win_rate" in latest:
            items["win_rate"] = f"{latest['eval/win_rate']:.2f} ({int(latest.get('eval/episodes', 0))} battles)"
        train = getattr(module, "latest_train_metrics", {})
        if self._collection is not None and "train/epsilon" in self._collection.latest:
            items["ε"] = f"{self._collection.latest['train/epsilon']:.2f}"
        if "train/loss" in train:
            items["loss"] = f"{train['train/loss']:.3g}"
        if self._collection is not None:
            items["env_steps/s"] = f"{self._collection.env_steps_per_second(module):.0f}"
        return items

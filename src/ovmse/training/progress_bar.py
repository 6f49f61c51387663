"""A progress bar in the run's own units."""

from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar

from .collection_schedule import CollectionSchedule
from .scheduled_evaluation import ScheduledEvaluation


class EnvStepProgressBar(TQDMProgressBar):
    """Progress bar that shows env steps, episodes, latest greedy win rate and env steps/s
    (offline: updates and the win rate).

    (Its ``it`` count is optimiser updates; the run's x-axis everywhere else is env steps.)
    """

    def __init__(self, evaluation: ScheduledEvaluation, collection: CollectionSchedule | None, **kwargs):
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

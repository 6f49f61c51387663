"""Lightning data modules for OVMSE training.

``ReplayDataModule`` serves batches of episodes to the QMIX / OVMSE learners,
mixing the offline replay buffer (a fixed SMAC dataset; the offline side arrives
with the datasets issue) and the online replay buffer filled by the env
collector with an exact offline fraction per batch.
"""

from data_modules.replay import FROM_OFFLINE_KEY, ReplayDataModule

__all__ = ["FROM_OFFLINE_KEY", "ReplayDataModule"]

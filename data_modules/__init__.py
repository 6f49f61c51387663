"""Lightning data modules for OVMSE training.

This top-level package will hold the PyTorch Lightning ``LightningDataModule``
that mixes the offline replay buffer (a fixed SMAC dataset) with the online
replay buffer filled by the env collector, serving batches of episodes to the
QMIX / OVMSE learners. It arrives with the QMIX training issue; it is empty until
then.
"""

"""Online training: the QMIX LightningModule, collection driver, evaluation and callbacks."""

from .qmix_module import QMixModule

__all__ = ["QMixModule"]

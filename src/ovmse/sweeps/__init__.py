"""Sweeps over the paper's grid: cells, their stages and the locks that let several sweep
processes share one grid (``python train.py -m phase=pipeline grid=table1``)."""

from .cells import Cell, forwarded_overrides, merge_overrides, variant_of
from .locks import StageLock
from .stages import StageError, run_stage

__all__ = ["Cell", "StageError", "StageLock", "forwarded_overrides", "merge_overrides", "run_stage", "variant_of"]

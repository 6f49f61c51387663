"""Objectives for tests, in the vocabulary of the algorithm configs (``cql``, ``cql_alpha``,
``ovm``, ``frozen_offline_target``, ...), as typed :class:`~ovmse.losses.objective.ObjectiveSettings`."""

from ovmse.losses.objective import ObjectiveSettings
from ovmse.phases.objective import online_objective
from ovmse.training.checkpoint_compat import legacy_objective

ONLINE_DEFAULTS = {"cql_calibrated": False, "ovm": False, "ovm_target": "one_step", "lambda_memory_start": 1.0,
                   "lambda_memory_end": 1.0, "lambda_memory_anneal_steps": 0}


def settings(**flat) -> ObjectiveSettings:
    """``settings(cql="macql", cql_alpha=0.5)``: today's defaults where a key is not given."""
    return legacy_objective({"cql_sampling": "available", "ovm_target": "one_step", **flat})


def fine_tune(module, **online) -> ObjectiveSettings:
    """``module.configure_fine_tuning`` with the online block's keys (``cql_alpha``, ``ovm``, ...)."""
    objective = online_objective({**ONLINE_DEFAULTS, **online}, module.settings)
    module.configure_fine_tuning(objective)
    return objective

"""Checkpoints written before the objective was one module (issue 18), read as today's.

Until then :class:`~ovmse.training.QMixModule` took the objective as flat hyperparameters
(``cql``, ``cql_alpha``, ``ovm``, ``frozen_offline_target``, ...) and held the losses and
networks as its own children (``loss.*``, ``cql_loss.*``, ``behaviour.*``, ``frozen_agent.*``,
``frozen_mixer.*``). :func:`upgrade_checkpoint` rewrites such a checkpoint in place: the flat
keys become ``hyper_parameters["objective"]`` (:class:`~ovmse.losses.objective.ObjectiveSettings`
as a dict) and the state-dict prefixes move under ``objective.``. A checkpoint in today's form is
left as it is, so it may be called more than once.
"""

from __future__ import annotations

from typing import Any

from ovmse.losses.objective import CQLSettings, ObjectiveSettings, OVMSettings, TDSettings

# (old prefix, new prefix) of the state dict
STATE_PREFIXES = (("loss.", "objective.td."), ("cql_loss.", "objective.cql."), ("behaviour.", "objective.behaviour."),
                  ("frozen_agent.", "objective.frozen_agent."), ("frozen_mixer.", "objective.frozen_mixer."))
LEGACY_OBJECTIVE_KEYS = ("gamma", "td_lambda", "double_q", "cql", "cql_alpha", "cql_samples", "cql_sampling",
                         "cfcql_temperature", "frozen_offline_target", "ovm", "ovm_target", "lambda_memory_start",
                         "lambda_memory_end", "lambda_memory_anneal_steps", "cql_calibrated")


def legacy_objective(hp: dict[str, Any]) -> ObjectiveSettings:
    """The objective of flat, pre-issue-18 hyperparameters. Their defaults are those of the code
    that wrote them: checkpoints from before issue 16 drew MACQL's joint actions over all actions
    (``cql_sampling`` absent) and compared the memory with the TD(λ) target (``ovm_target`` absent)."""
    td = TDSettings(gamma=float(hp.get("gamma", 0.99)), td_lambda=float(hp.get("td_lambda", 0.6)),
                    double_q=bool(hp.get("double_q", True)))
    cql = None
    if hp.get("cql"):
        cql = CQLSettings(variant=str(hp["cql"]), alpha=float(hp.get("cql_alpha", 0.0)),
                          samples=int(hp.get("cql_samples", 100)), sampling=str(hp.get("cql_sampling", "all")),
                          temperature=float(hp.get("cfcql_temperature", 1.0)),
                          calibrated=bool(hp.get("cql_calibrated", False)), behaviour_training="joint")
    ovm = None
    if hp.get("ovm"):
        ovm = OVMSettings(target=str(hp.get("ovm_target", "td_lambda")),
                          lambda_start=float(hp.get("lambda_memory_start", 1.0)),
                          lambda_end=float(hp.get("lambda_memory_end", 1.0)),
                          anneal_steps=int(hp.get("lambda_memory_anneal_steps", 0)))
    return ObjectiveSettings(td=td, cql=cql, ovm=ovm, keeps_offline_target=bool(hp.get("frozen_offline_target", False)))


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a pre-issue-18 checkpoint (hyperparameters and state dict) in place; returns it."""
    hp = checkpoint.get("hyper_parameters")
    if isinstance(hp, dict) and "objective" not in hp:
        settings = legacy_objective(hp)
        checkpoint["hyper_parameters"] = {
            **{k: v for k, v in hp.items() if k not in LEGACY_OBJECTIVE_KEYS}, "objective": settings.to_dict()}
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and not any(k.startswith("objective.") for k in state):
        renamed = {}
        for key, value in state.items():
            for old, new in STATE_PREFIXES:
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            renamed[key] = value
        checkpoint["state_dict"] = renamed
    return checkpoint


# Callback states of resume points written before the online loop was one callback (issue 18).
LEGACY_LOOP_STATES = {"collection": "OnlineCollectionCallback", "evaluation": "GreedyEvaluationCallback",
                      "probe": "UnlearningProbeCallback"}


def loop_state_of(callback_states: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~ovmse.training.loops.OnlineLoop` state in a checkpoint's ``callbacks``: its own
    entry, or the one built from the separate callbacks an older run had ({} if neither)."""
    if "OnlineLoop" in callback_states:
        return callback_states["OnlineLoop"]
    if LEGACY_LOOP_STATES["collection"] not in callback_states:
        return {}
    return {part: callback_states[key] for part, key in LEGACY_LOOP_STATES.items() if key in callback_states}

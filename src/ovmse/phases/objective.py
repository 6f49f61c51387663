"""The one place where an algorithm config becomes the objective the learner optimises.

:func:`resolve_objective` turns ``cfg.algo`` (with the per-map and per-task tables read by
:func:`~ovmse.phases.settings.offline_settings` and :func:`~ovmse.phases.fine_tuning.online_settings`)
into an :class:`~ovmse.losses.objective.ObjectiveSettings`:

* an algorithm without ``offline:`` / ``online:`` blocks (QMIX from scratch): TD(λ) alone;
* the offline phase of an offline-to-online algorithm: TD(λ) + its CQL variant and α
  (calibrated, Cal-QL, with ``algo.offline.calibrated``);
* fine-tuning (``pretrained`` given): the online block's CQL weight (``offline`` = the
  pretrained α), Cal-QL bound and OVM over the pretrained networks' structure; the TD
  settings are the pretrained ones, with ``algo.online.td_lambda`` replacing λ when set.
"""

from __future__ import annotations

from dataclasses import replace

from omegaconf import DictConfig

from ovmse.losses.objective import CQLSettings, ObjectiveSettings, OVMSettings, TDSettings


def td_settings(algo: DictConfig) -> TDSettings:
    return TDSettings(gamma=float(algo.gamma), td_lambda=float(algo.td_lambda), double_q=bool(algo.double_q))


def resolve_objective(cfg: DictConfig, map_name: str, dataset: str | None = None,
                      pretrained: ObjectiveSettings | None = None) -> ObjectiveSettings:
    """The objective of ``cfg.algo`` on ``map_name`` / ``dataset``: from scratch or offline when
    ``pretrained`` is None, else fine-tuning a module trained with ``pretrained``."""
    from .fine_tuning import is_fine_tuning, online_settings
    from .settings import has_offline_settings, offline_settings

    algo = cfg.algo
    if pretrained is not None:
        if not is_fine_tuning(algo):
            raise ValueError(f"algo={algo.get('name')!r} trains from scratch; fine-tune with an offline-to-online "
                             "algorithm")
        return online_objective(online_settings(cfg, map_name, dataset), pretrained)
    if not has_offline_settings(algo):
        return ObjectiveSettings(td=td_settings(algo))
    s = offline_settings(cfg, map_name)
    cql = None
    if s["cql"]:
        cql = CQLSettings(variant=s["cql"], alpha=s["cql_alpha"], samples=s["cql_samples"], sampling=s["cql_sampling"],
                          temperature=s["cfcql_temperature"], calibrated=s["cql_calibrated"],
                          behaviour_training=s["behaviour_training"])
    return ObjectiveSettings(td=td_settings(algo), cql=cql)


def online_objective(settings: dict, pretrained: ObjectiveSettings) -> ObjectiveSettings:
    """The online objective of resolved ``settings`` (:func:`~ovmse.phases.fine_tuning.online_settings`)
    over a module pretrained with ``pretrained``: its TD settings (λ replaced by
    ``settings["td_lambda"]`` unless None), CQL variant and frozen target."""
    alpha, calibrated = settings["cql_alpha"], bool(settings["cql_calibrated"])
    if alpha == "offline":  # the weight the checkpoint was pretrained with
        alpha = pretrained.cql.alpha if pretrained.cql is not None else 0.0
    alpha = float(alpha)
    if pretrained.cql is None:
        if alpha > 0:
            raise ValueError(f"online cql_alpha={alpha} needs a CQL loss, but this checkpoint was trained without CQL "
                             "(cql=None); set the online CQL weight to 0")
        if calibrated:
            raise ValueError("cql_calibrated (Cal-QL) needs a module trained with CQL (cql='macql' or 'cfcql')")
        cql = None
    else:
        cql = replace(pretrained.cql, alpha=alpha, calibrated=calibrated)
    ovm = None
    if settings["ovm"]:
        ovm = OVMSettings(target=str(settings["ovm_target"]), lambda_start=float(settings["lambda_memory_start"]),
                          lambda_end=float(settings["lambda_memory_end"]),
                          anneal_steps=int(settings["lambda_memory_anneal_steps"]))
    td = pretrained.td
    if settings.get("td_lambda") is not None:
        td = replace(td, td_lambda=float(settings["td_lambda"]))
    return ObjectiveSettings(td=td, cql=cql, ovm=ovm, keeps_offline_target=pretrained.keeps_offline_target)

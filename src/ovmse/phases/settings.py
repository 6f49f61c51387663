"""Per-map and per-task hyperparameter tables of the algo configs (paper Tables 3-7), and the
offline phase's settings read from them (:func:`offline_settings`).

A setting is either one value for every map, or a table keyed by task ``<map>_<dataset>``
(e.g. ``5m_vs_6m_medium_replay``), by map (``3s5z``), with ``default`` for the rest::

    mixing_ratio: {3s5z: 0.1, 5m_vs_6m_medium_replay: 0.0, default: 0.1}
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def per_task(value: Any, map_name: str, dataset: str | None, what: str) -> Any:
    """``value`` itself, or its entry for ``<map>_<dataset>``, else ``<map>``, else ``default``."""
    if not isinstance(value, (DictConfig, dict)):
        return value
    table = dict(value)
    keys = ([f"{map_name}_{dataset}"] if dataset else []) + [map_name, "default"]
    for key in keys:
        if key in table:
            return table[key]
    task = f"task {map_name}_{dataset}" if dataset else f"map {map_name!r}"
    raise ValueError(f"{what}: no entry for {task} and no 'default' in {table}")


def per_map(value: Any, map_name: str, what: str) -> Any:
    """``value`` itself, or ``value[map_name]`` (else ``value["default"]``) for a per-map table."""
    return per_task(value, map_name, None, what)


def has_offline_settings(algo: DictConfig) -> bool:
    """Whether ``algo`` pretrains offline: an ``offline:`` block with its CQL choice (a preset such
    as ``debug=tiny`` may add batch sizes to any algorithm's block)."""
    return "offline" in algo and "cql" in algo.offline


def offline_settings(cfg: DictConfig, map_name: str) -> dict[str, Any]:
    algo = cfg.algo
    if not has_offline_settings(algo):
        raise ValueError(f"algo={algo.get('name')!r} has no offline settings; pretrain with an offline-to-online "
                         "algorithm: algo=ovmse, macql, macalql or switch_cql")
    off = algo.offline
    cql = per_map(off.cql, map_name, "algo.offline.cql")
    cql = None if cql in (None, "none", "null") else str(cql)
    calibrated = bool(off.get("calibrated", False))
    if calibrated and not cql:
        raise ValueError("algo.offline.calibrated=true (Cal-QL) bounds the CQL push-down values: it needs a CQL "
                         f"variant, but algo.offline.cql is null on {map_name}")
    return {
        "cql": cql,
        "cql_alpha": float(per_map(off.alpha, map_name, "algo.offline.alpha")) if cql else 0.0,
        "cql_samples": int(off.samples),
        "cql_sampling": str(off.sampling),
        "cql_calibrated": calibrated,
        "cfcql_temperature": float(off.cfcql_temperature),
        "behaviour_training": str(off.behaviour_training),
        "behaviour_patience": int(off.behaviour_patience),
        "behaviour_max_updates": int(off.behaviour_max_updates),
        "target_update_updates": int(per_map(off.target_update_updates, map_name,
                                             "algo.offline.target_update_updates")),
        "batch_size": int(off.batch_size),
        "sample_with_replacement": bool(algo.sample_with_replacement),
    }

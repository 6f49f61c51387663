"""Per-map and per-task hyperparameter tables of the algo configs (paper Tables 3-7).

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

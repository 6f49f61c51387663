"""Phases of ``python train.py phase=<name>``: a registry from phase name to function.

Every phase is a function ``run(cfg: DictConfig) -> dict[str, float]`` that does
its job, writes its outputs into ``cfg.paths.output_dir`` and returns its scalar
metrics under slash names (``rollout/win_rate``, later ``eval/win_rate``,
``train/loss``, ...). A phase is registered here as ``"module:function"`` and
imported only when it runs, so a light phase does not pay for a heavy one's
imports. To add one, write ``configs/phase/<name>.yaml`` (with
``# @package _global_`` and ``task_name: <name>``) and an entry below.
"""

from __future__ import annotations

import importlib
from typing import Callable

from omegaconf import DictConfig

PhaseFn = Callable[[DictConfig], dict]

PHASES: dict[str, str] = {
    "rollout": "ovmse.phases.rollout:run",
    "online": "ovmse.phases.online:run",
    "collect": "ovmse.phases.collect:run",
    "offline": "ovmse.phases.offline:run",
    "pipeline": "ovmse.phases.pipeline:run",
}


def get_phase(name: str) -> PhaseFn:
    """The function registered for phase ``name``."""
    try:
        target = PHASES[name]
    except KeyError:
        raise ValueError(f"Unknown phase {name!r}; registered phases: {', '.join(PHASES)}.") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_phase(cfg: DictConfig) -> dict:
    """Run the phase named by ``cfg.task_name`` and return its metrics.

    Applies the settings every phase shares first: ``num_threads``, the torch threads of the
    process (updates; collection and evaluation switch to ``collect_threads`` while they run),
    and ``malloc_keep_freed`` (:mod:`ovmse.training.allocator`).
    """
    from ovmse.training.threads import check_threads

    from .checks import check_settings

    phase = get_phase(cfg.task_name)
    check_settings(cfg)
    algo = cfg.get("algo")
    if algo is not None and not algo.get("name"):
        raise ValueError("this algo config has no name: it is a base the algorithms share (configs/algo/o2o.yaml), "
                         f"not an algorithm; choose one of algo={', '.join(algorithm_names())}")
    if cfg.get("resume") and cfg.task_name != "online":
        raise ValueError(f"resume= continues phase=online runs; phase={cfg.task_name} cannot resume (run its command "
                         "again without resume, into a new directory)")
    if cfg.get("pipeline") is not None and cfg.task_name != "pipeline":
        raise ValueError(f"budget= sets the stage budgets of phase=pipeline; phase={cfg.task_name} would ignore it. "
                         "For a minute-scale run of one phase use debug=tiny, or run phase=pipeline budget=<name>")
    threads = check_threads(cfg.get("num_threads"), "num_threads")
    check_threads(cfg.get("collect_threads", 1), "collect_threads")
    keep_freed = cfg.get("malloc_keep_freed", True)
    if not isinstance(keep_freed, bool):
        raise ValueError(f"malloc_keep_freed must be true or false, got {keep_freed!r}")
    if keep_freed:
        from ovmse.training.allocator import keep_freed_memory

        keep_freed_memory()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return phase(cfg)


def algorithm_names() -> list[str]:
    """The algorithms of ``configs/algo/``: its files that set a ``name`` (bases set none)."""
    import re
    from pathlib import Path

    folder = Path(__file__).resolve().parents[3] / "configs" / "algo"
    return sorted(f.stem for f in folder.glob("*.yaml")
                  if re.search(r"^name:\s*(?!null\s*$)\S", f.read_text(), re.MULTILINE))


__all__ = ["PHASES", "algorithm_names", "get_phase", "run_phase"]

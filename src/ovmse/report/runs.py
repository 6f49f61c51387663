"""Load a sweep root's run directories into records.

Layout read (``root`` is e.g. ``outputs/sweeps/short``)::

    <root>/online/<task>/<run_name>/seed<k>/   online_summary.json (finished runs), metrics.csv
    <root>/offline/<task>/<name>/              offline_summary.json
    <root>/collect/<map>_seed<k>/              collect_summary.json, config_resolved.yaml

``task`` is ``<map>_<dataset>``, or a bare ``<map>`` for runs that do not use a dataset (QMIX
from scratch): :func:`by_task` lists those under every task of their map. ``run_name`` is ``<algo>`` or ``<algo>+<variant>``, the variant
being the run's Hydra overrides joined by ``,``. Every directory becomes one record with a
``status``: ``finished``, ``unfinished`` (no summary yet: still running, stopped or never
started) or ``unreadable`` (a file is missing or cannot be parsed; ``reason`` says which), so
nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

# Longest first: "medium" is a suffix of "medium_replay" and must not match it.
DATASETS = ("medium_replay", "medium", "expert", "mixed")
FINISHED, UNFINISHED, UNREADABLE = "finished", "unfinished", "unreadable"
# metrics.csv columns kept as evaluation curves (rows with a value in the first two).
EVAL_COLUMNS = ("eval/win_rate", "eval/return")
PROBE_COLUMNS = ("eval/probe_q_tot", "eval/probe_mc_return")


class ReportError(Exception):
    """The sweep root cannot be reported at all (missing, or no online runs)."""


@dataclass
class OnlineRun:
    """One ``online/<task>/<run_name>/seed<k>/`` directory.

    ``curves`` maps a metric name (``EVAL_COLUMNS`` and ``PROBE_COLUMNS``, those logged) to
    ``(steps, values)``: float arrays of shape ``[n_evals]``, steps strictly increasing.
    ``summary`` is online_summary.json as a dict, empty unless finished; ``budget`` the
    configured ``env_steps`` (``.hydra/config.yaml``) or None when unreadable or unfinished.
    An unfinished run has the curves logged so far (empty when it has none yet).
    """

    path: Path
    task: str
    map: str
    dataset: str
    run_name: str
    algo: str
    variant: str | None
    seed: int | None
    status: str
    reason: str = ""
    summary: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    budget: int | None = None

    @property
    def env_steps(self) -> int:
        """Env steps the finished run made (its summary), the end of its curves."""
        return int(self.summary["env_steps"])

    @property
    def final_win_rate(self) -> float:
        return float(self.summary["eval/final_win_rate"])


@dataclass
class SideRun:
    """One offline pretraining or dataset collection directory.

    ``wall_seconds`` is None unless finished; ``updates`` is set for offline runs only.
    """

    kind: str  # "offline" or "collect"
    path: Path
    name: str
    status: str
    reason: str = ""
    wall_seconds: float | None = None
    updates: int | None = None


def split_task(task: str) -> tuple[str, str]:
    """``"5m_vs_6m_medium_replay"`` -> ``("5m_vs_6m", "medium_replay")``; ``(task, "")``
    when no known dataset suffix ends it."""
    for dataset in DATASETS:
        if task.endswith("_" + dataset):
            return task[: -len(dataset) - 1], dataset
    return task, ""


def split_run_name(run_name: str) -> tuple[str, str | None]:
    """``"ovmse+algo.online.mixing_ratio=0.1"`` -> ``("ovmse", "algo.online.mixing_ratio=0.1")``;
    a variant-free name gives ``(name, None)``."""
    algo, plus, variant = run_name.partition("+")
    return algo, (variant if plus else None)


def variant_overrides(variant: str | None) -> dict[str, str]:
    """The variant's Hydra overrides as ``{key: value}``; ``{}`` for a variant-free run."""
    if not variant:
        return {}
    return dict(item.partition("=")[::2] for item in variant.split(","))


def load_online_runs(root: Path) -> list[OnlineRun]:
    """All seed directories under ``root/online``, sorted by path; raises :class:`ReportError`
    when there are none."""
    online = root / "online"
    # The pipeline keeps an unfinished run it restarts as seed<k>.incomplete-<time>: not a run.
    seed_dirs = sorted(p for p in online.glob("*/*/*") if p.is_dir() and ".incomplete-" not in p.name) \
        if online.is_dir() else []
    if not seed_dirs:
        raise ReportError(f"{root} holds no online runs: expected directories "
                          f"{online}/<map>_<dataset>/<algo>[+variant]/seed<k>/")
    return [load_online_run(p) for p in seed_dirs]


def by_task(runs: list[OnlineRun]) -> list[OnlineRun]:
    """``runs`` with each dataset-free run (``online/<map>/...``) listed once per task of its
    map: the tasks the other runs have, or the paper's medium and medium-replay when none do."""
    tasks: dict[str, set[str]] = {}
    for run in runs:
        if run.dataset:
            tasks.setdefault(run.map, set()).add(run.dataset)
    out = []
    for run in runs:
        if run.dataset:
            out.append(run)
            continue
        for dataset in sorted(tasks.get(run.map) or {"medium", "medium_replay"}):
            out.append(replace(run, task=f"{run.map}_{dataset}", dataset=dataset))
    return out


def load_online_run(path: Path) -> OnlineRun:
    """Read one seed directory; never raises for bad files (the record is ``unreadable``)."""
    run_name, task = path.parent.name, path.parent.parent.name
    map_name, dataset = split_task(task)
    algo, variant = split_run_name(run_name)
    match = re.fullmatch(r"seed(\d+)", path.name)
    run = OnlineRun(path=path, task=task, map=map_name, dataset=dataset, run_name=run_name,
                    algo=algo, variant=variant, seed=int(match[1]) if match else None,
                    status=UNFINISHED)
    if match is None:
        run.status, run.reason = UNREADABLE, "directory name is not seed<k>"
        return run
    summary_path = path / "online_summary.json"
    if not summary_path.exists():
        run.reason = ("no online_summary.json (running or stopped)" if (path / "metrics.csv").exists()
                      else "no online_summary.json and no metrics.csv (not started)")
        try:
            # The evaluations so far, for the progress of a sweep; tables use finished runs only.
            run.curves = read_curves(path / "metrics.csv")
        except (OSError, ValueError):
            pass
        return run
    try:
        run.summary = _read_summary(summary_path, ("env_steps", "eval/final_win_rate"))
        run.curves = read_curves(path / "metrics.csv")
    except (OSError, ValueError) as error:
        run.status, run.reason, run.summary = UNREADABLE, str(error), {}
        return run
    run.budget = _configured(path, "env_steps")
    run.status = FINISHED
    return run


def read_curves(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Evaluation curves from a Lightning ``metrics.csv``: ``{column: (steps, values)}``.

    A row belongs to a curve when that column is filled; rows of the final 640-battle test
    (any ``eval/final_*`` filled) are left out. A resumed run may log one step twice: the
    later row wins. Raises ValueError when the file has no evaluation row.
    """
    points: dict[str, dict[float, float]] = {c: {} for c in EVAL_COLUMNS + PROBE_COLUMNS}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            if any(v for k, v in row.items() if k and k.startswith("eval/final_")):
                continue
            for column, by_step in points.items():
                if row.get(column):
                    by_step[_number(row, "env_steps", path)] = _number(row, column, path)
    if not points["eval/win_rate"] or not points["eval/return"]:
        raise ValueError(f"{path}: no evaluation row (eval/win_rate and eval/return)")
    return {column: (np.array(sorted(by_step)), np.array([by_step[s] for s in sorted(by_step)]))
            for column, by_step in points.items() if by_step}


def load_side_runs(root: Path) -> list[SideRun]:
    """Offline runs (``offline/<task>/<name>/``) then collect runs (``collect/<name>/``)."""
    offline = sorted(p for p in (root / "offline").glob("*/*") if p.is_dir())
    collect = sorted(p for p in (root / "collect").glob("*") if p.is_dir())
    return ([_load_side(p, "offline", f"{p.parent.name}/{p.name}") for p in offline]
            + [_load_side(p, "collect", p.name) for p in collect])


def _load_side(path: Path, kind: str, name: str) -> SideRun:
    run = SideRun(kind=kind, path=path, name=name, status=UNFINISHED)
    summary_path = path / f"{kind}_summary.json"
    if not summary_path.exists():
        run.reason = f"no {summary_path.name}"
        return run
    try:
        summary = _read_summary(summary_path, ("updates", "wall_seconds") if kind == "offline" else ())
        if kind == "offline":
            run.updates, run.wall_seconds = int(summary["updates"]), float(summary["wall_seconds"])
        elif "wall_seconds" in summary:
            run.wall_seconds = float(summary["wall_seconds"])
        else:
            # The collect phase records no wall time: the run directory's first file
            # (written at start) and its summary (written last) bound it.
            start = path / "config_resolved.yaml"
            run.wall_seconds = summary_path.stat().st_mtime - start.stat().st_mtime
    except (OSError, ValueError) as error:
        run.status, run.reason = UNREADABLE, str(error)
        return run
    run.status = FINISHED
    return run


def _read_summary(path: Path, required: tuple[str, ...]) -> dict:
    """A summary JSON object holding ``required`` keys; ValueError naming the file otherwise."""
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a JSON object")
    missing = [k for k in required if summary.get(k) is None]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}")
    return summary


def _number(row: dict, column: str, path: Path) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {column} is {row.get(column)!r}, not a number") from None


def configured(path: Path, key: str):
    """Top-level ``key`` of the run's composed Hydra config, None when absent or unreadable
    (it only annotates the report: the summary holds what the run did)."""
    try:
        return yaml.safe_load((path / ".hydra" / "config.yaml").read_text()).get(key)
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _configured(path: Path, key: str) -> int | None:
    """:func:`configured` as an int, None when it is not one."""
    try:
        return int(configured(path, key))
    except (TypeError, ValueError):
        return None

"""The paper's claims checked on our numbers, each with a plain verdict.

A claim is a dict (written to report.json as it is)::

    {"id": "a".."d", "claim": str, "paper": str, "verdict": "holds" | "does not hold" | "no data",
     "details": [str], "values": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import paper
from .curves import initial_drop
from .runs import FINISHED, OnlineRun
from .tables import best_algos

HOLDS, FAILS, NO_DATA = "holds", "does not hold", "no data"
DROP_FRACTION = 0.2


def all_claims(table1: dict, table2: dict, runs: list[OnlineRun]) -> list[dict]:
    return [best_on_tasks(table1), beats_scratch(table1), smallest_drop(runs), mixing_ratio(table2),
            values_kept(runs)]


def _verdict(checks: list[bool]) -> str:
    return NO_DATA if not checks else HOLDS if all(checks) else FAILS


def best_on_tasks(table1: dict) -> dict:
    """(a) OVMSE's median final win rate is the highest (ties count) of Table 1's algorithms,
    on the tasks where OVMSE and at least one baseline finished."""
    best = {}
    for task in table1["tasks"]:
        medians = {a: c["median"] for a, c in table1["cells"][task].items() if a in paper.TABLE1_ALGOS and c}
        if "ovmse" in medians and len(medians) > 1:
            best[task] = "ovmse" in best_algos(medians)
    paper_best = [task for task, row in paper.TABLE1.items() if "ovmse" in best_algos(row)]
    missed = [task for task in paper.TABLE1 if task not in paper_best]
    return {"id": "a", "claim": "OVMSE has the highest median final win rate on every task",
            "paper": f"paper's Table 1: OVMSE best on {len(paper_best)} of {len(paper.TABLE1)} tasks"
                     + (f" (not on {', '.join(missed)})" if missed else ""),
            "verdict": _verdict(list(best.values())),
            "details": [f"OVMSE highest on {sum(best.values())} of {len(best)} tasks"]
                       + [f"{task}: {'yes' if ok else 'no'}" for task, ok in best.items()],
            "values": {"k": sum(best.values()), "n": len(best), "per_task": best}}


def beats_scratch(table1: dict) -> dict:
    """(b) Per task, OVMSE's median final win rate is at least QMIX's (trained from scratch)."""
    pairs = {}
    for task in table1["tasks"]:
        ovmse, qmix = table1["cells"][task].get("ovmse"), table1["cells"][task].get("qmix")
        if ovmse and qmix:
            pairs[task] = {"ovmse": ovmse["median"], "qmix": qmix["median"], "holds": ovmse["median"] >= qmix["median"]}
    return {"id": "b", "claim": "OVMSE's median final win rate is at least QMIX's (from scratch) on every task",
            "paper": "paper's Table 1: higher on all 6 tasks",
            "verdict": _verdict([p["holds"] for p in pairs.values()]),
            "details": [f"{task}: OVMSE {p['ovmse']:.3f} vs QMIX {p['qmix']:.3f}: {HOLDS if p['holds'] else FAILS}"
                        for task, p in pairs.items()],
            "values": pairs}


def offline_return(run: OnlineRun) -> float | None:
    """``eval/return`` of the offline pretraining a fine-tuning run started from: its
    ``offline_summary.json`` under this sweep root (``offline/<task>/<name>/``, so a moved
    root still works), else beside the recorded checkpoint path; None when neither is there."""
    ckpt = Path(str(run.summary.get("ckpt")))
    offline_dir = ckpt.parent.parent
    for directory in (run.path.parents[3] / "offline" / run.task / offline_dir.name, offline_dir):
        try:
            return float(json.loads((directory / "offline_summary.json").read_text())["eval/return"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def smallest_drop(runs: list[OnlineRun]) -> dict:
    """(c) After the switch to online, OVMSE's return drops least.

    Drop of a run: the offline policy's greedy test return (the last evaluation of the offline
    pretraining it starts from; its first own evaluation when that cannot be found) minus the
    lowest evaluation return in the early window (the first 20% of the budget or the
    first 5000 env steps, whichever is longer). Averaged per algorithm over all finished
    variant-free runs (tasks and seeds) that start from an offline checkpoint (``ckpt`` set).
    """
    drops: dict[str, list[float]] = {}
    for run in runs:
        if run.status == FINISHED and run.variant is None and run.summary.get("ckpt"):
            steps, returns = run.curves["eval/return"]
            reference = offline_return(run)
            drops.setdefault(run.algo, []).append(initial_drop(steps, returns, run.env_steps, reference,
                                                               DROP_FRACTION))
    means = {a: float(np.mean(d)) for a, d in sorted(drops.items(), key=lambda item: paper.algo_sort_key(item[0]))}
    checks = [means["ovmse"] <= min(means.values())] if "ovmse" in means and len(means) > 1 else []
    return {"id": "c", "claim": "after the switch OVMSE's test return drops least: mean over tasks and seeds of the "
                                "offline policy's greedy test return minus the lowest test return in the first 20% of "
                                "the budget (at least the first 5000 env steps)",
            "paper": "paper: OVMSE shows the smallest initial drop",
            "verdict": _verdict(checks),
            "details": [f"{paper.label(a)}: {m:.2f} (n={len(drops[a])} runs)" for a, m in means.items()],
            "values": {a: {"mean_drop": m, "drops": drops[a]} for a, m in means.items()}}


def mixing_ratio(table2: dict) -> dict:
    """(d) Per task, OVMSE's mean return with mixing ratios 0.0 and 0.1 (those run) is at
    least that with 0.3."""
    per_task = {}
    for task, groups in table2["tasks"].items():
        low = {r: groups[r]["mean"] for r in (0.0, 0.1) if r in groups}
        if 0.3 in groups and low:
            per_task[task] = {"low": low, "ratio_0.3": groups[0.3]["mean"],
                              "holds": min(low.values()) >= groups[0.3]["mean"]}
    return {"id": "d", "claim": "OVMSE with mixing ratios 0.0 and 0.1 is at least as good as with 0.3 (Table 2)",
            "paper": f"paper's Table 2 ({paper.TABLE2_TASK}): "
                     + ", ".join(f"{r}: {v:.2f}" for r, v in paper.TABLE2.items()) + ": yes",
            "verdict": _verdict([t["holds"] for t in per_task.values()]),
            "details": [f"{task}: " + ", ".join(f"{r}: {v:.2f}" for r, v in t["low"].items())
                        + f" vs 0.3: {t['ratio_0.3']:.2f}: {HOLDS if t['holds'] else FAILS}"
                        for task, t in per_task.items()],
            "values": per_task}


def values_kept(runs: list[OnlineRun]) -> dict:
    """(e) Figure 1: OVMSE's Q_tot on the offline policy's trajectories falls least.

    Fall of a run: its first probe Q_tot minus the lowest later one (0 when it never falls
    below the first); averaged per algorithm over the finished variant-free runs with a probe.
    """
    falls: dict[str, list[float]] = {}
    for run in runs:
        probe = run.curves.get("eval/probe_q_tot")
        if run.status == FINISHED and run.variant is None and probe is not None and len(probe[1]):
            q = np.asarray(probe[1], dtype=float)
            falls.setdefault(run.algo, []).append(float(q[0] - q.min()))
    means = {a: float(np.mean(f)) for a, f in sorted(falls.items(), key=lambda item: paper.algo_sort_key(item[0]))}
    checks = [means["ovmse"] <= min(means.values())] if "ovmse" in means and len(means) > 1 else []
    return {"id": "e", "claim": "OVMSE's Q_tot on the offline policy's trajectories falls least (Figure 1): mean "
                                "over tasks and seeds of the first probe Q_tot minus the lowest one",
            "paper": "paper: OVM preserves the offline Q-values, which fall without it",
            "verdict": _verdict(checks),
            "details": [f"{paper.label(a)}: {m:.2f} (n={len(falls[a])} runs)" for a, m in means.items()],
            "values": {a: {"mean_fall": m, "falls": falls[a]} for a, m in means.items()}}

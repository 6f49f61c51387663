"""Table 1 (final win rates) and Table 2 (mixing-ratio ablation): numbers and markdown.

The numbers are plain JSON-ready dicts, written to report.json as they are:

- Table 1 cell (per task, per algorithm; None when no seed finished)::

    {"median": float, "q25": float, "q75": float, "n": int, "seeds": {seed: final win rate}}

- Table 2 group (per task, per recorded mixing ratio)::

    {"mean": float, "std": float, "n": int,
     "seeds": {seed: {"step": evaluation's env steps, "return": float, "limit": min(200k, budget)}}}
"""

from __future__ import annotations

from . import paper
from .curves import mean_std, median_iqr, value_at
from .runs import FINISHED, OnlineRun, variant_overrides

NONE = "—"


def table1(runs: list[OnlineRun], metric: str = "eval/final_win_rate") -> dict:
    """Our Table 1 from the variant-free runs: medians over seeds of the summary's ``metric``
    (the final test's win rate; ``eval/final_return`` gives its companion table of returns).

    Returns ``{"tasks": [task], "algos": [algo], "cells": {task: {algo: cell or None}}}``:
    tasks with any variant-free run in paper order; Table 1's five algorithms always, then
    any other present.
    """
    plain = [r for r in runs if r.variant is None]
    tasks = sorted({r.task for r in plain}, key=paper.task_sort_key)
    algos = sorted(set(paper.TABLE1_ALGOS) | {r.algo for r in plain}, key=paper.algo_sort_key)
    cells = {task: {algo: _cell([r for r in plain if r.task == task and r.algo == algo and r.status == FINISHED],
                                metric)
                    for algo in algos} for task in tasks}
    return {"tasks": tasks, "algos": algos, "cells": cells}


def _cell(finished: list[OnlineRun], metric: str) -> dict | None:
    seeds = {r.seed: float(r.summary[metric]) for r in sorted(finished, key=lambda r: r.seed) if metric in r.summary}
    if not seeds:
        return None
    median, q25, q75 = median_iqr(list(seeds.values()))
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "n": len(seeds), "seeds": seeds}


def best_algos(medians: dict[str, float | None]) -> set[str]:
    """Algorithms whose median equals the row's highest (ties all win); empty if none."""
    present = {a: m for a, m in medians.items() if m is not None}
    top = max(present.values(), default=None)
    return {a for a, m in present.items() if m == top}


def _medians(cells: dict, algos) -> dict[str, float | None]:
    return {a: cells[a]["median"] if cells.get(a) else None for a in algos}


def table1_markdown(table: dict, digits: int = 3) -> str:
    """Ours: ``median [q25, q75] (n=k)`` per cell, the best median per row bold."""
    rows = []
    for task in table["tasks"]:
        cells = table["cells"][task]
        best = best_algos(_medians(cells, table["algos"]))
        rows.append([task] + [_bold(f"{c['median']:.{digits}f}", a in best)
                              + f" [{c['q25']:.{digits - 1}f}, {c['q75']:.{digits - 1}f}] (n={c['n']})"
                              if c else NONE for a, c in cells.items()])
    return markdown(["Task"] + [paper.label(a) for a in table["algos"]], rows)


def paper_table1_markdown(tasks: list[str]) -> str:
    """The paper's Table 1 on our tasks plus the paper's own, best per row bold."""
    algos = paper.TABLE1_ALGOS
    rows = []
    for task in sorted(set(tasks) | set(paper.TABLE1), key=paper.task_sort_key):
        values = paper.TABLE1.get(task, {})
        best = best_algos(values)
        rows.append([task] + [_bold(f"{values[a]:.3f}", a in best) if a in values else NONE for a in algos])
    return markdown(["Task"] + [paper.label(a) for a in algos], rows)


def comparison(table: dict) -> dict:
    """Per task of ours: the best of Table 1's five algorithms, ours and the paper's.

    Returns ``{task: {"ours": [algo], "paper": [algo], "same": bool | None,
    "ovmse_ours": float | None, "ovmse_paper": float | None}}`` (``same`` None when a side
    has no number).
    """
    result = {}
    for task in table["tasks"]:
        ours = best_algos(_medians(table["cells"][task], paper.TABLE1_ALGOS))
        theirs = best_algos(paper.TABLE1.get(task, {}))
        ovmse = table["cells"][task].get("ovmse")
        result[task] = {"ours": sorted(ours, key=paper.algo_sort_key), "paper": sorted(theirs, key=paper.algo_sort_key),
                        "same": bool(ours & theirs) if ours and theirs else None,
                        "ovmse_ours": ovmse and ovmse["median"], "ovmse_paper": paper.TABLE1.get(task, {}).get("ovmse")}
    return result


def comparison_markdown(compared: dict) -> str:
    def names(algos):
        return ", ".join(paper.label(a) for a in algos) or NONE

    def number(value):
        return NONE if value is None else f"{value:.3f}"

    rows = [[task, names(c["ours"]), names(c["paper"]), {True: "yes", False: "no", None: NONE}[c["same"]],
             number(c["ovmse_ours"]), number(c["ovmse_paper"])] for task, c in compared.items()]
    return markdown(["Task", "best (ours)", "best (paper)", "same best", "OVMSE median (ours)", "OVMSE median (paper)"],
                    rows)


def table2(runs: list[OnlineRun]) -> dict:
    """OVMSE's eval return at ``min(200k, budget)`` env steps grouped by recorded mixing ratio.

    Runs taken: finished OVMSE runs, variant-free or whose overrides only set a
    ``*mixing_ratio`` key; the group key is ``settings.mixing_ratio`` of online_summary.json.
    The step of a run is its last evaluation at or before ``min(200_000, env steps it made)``.
    Returns ``{"tasks": {task: {ratio: group}}, "excluded": [(run dir, why)]}``, tasks in
    paper order; only tasks with runs of two or more ratios.
    """
    groups: dict[str, dict[float, dict]] = {}
    excluded = []
    for run in runs:
        if run.algo != "ovmse" or run.status != FINISHED:
            continue
        if any(not key.endswith("mixing_ratio") for key in variant_overrides(run.variant)):
            excluded.append((str(run.path), "its variant changes more than the mixing ratio"))
            continue
        ratio = run.summary.get("settings", {}).get("mixing_ratio")
        if ratio is None:
            excluded.append((str(run.path), "online_summary.json records no settings.mixing_ratio"))
            continue
        limit = min(paper.TABLE2_STEP, run.env_steps)
        point = value_at(*run.curves["eval/return"], limit)
        if point is None:
            excluded.append((str(run.path), f"no evaluation at or before {limit:,} env steps"))
            continue
        group = groups.setdefault(run.task, {}).setdefault(float(ratio), {"seeds": {}})
        group["seeds"][run.seed] = {"step": point[0], "return": point[1], "limit": limit}
    for task_groups in groups.values():
        for group in task_groups.values():
            mean, std = mean_std([s["return"] for s in group["seeds"].values()])
            group.update(mean=float(mean), std=float(std), n=len(group["seeds"]))
    # An ablation needs two ratios: a task whose OVMSE runs all share one is not in the table.
    tasks = {task: dict(sorted(groups[task].items())) for task in sorted(groups, key=paper.task_sort_key)
             if len(groups[task]) > 1}
    return {"tasks": tasks, "excluded": excluded}


def table2_markdown(table: dict) -> str:
    """Our rows ``mean ± std (n=k)`` per mixing ratio, the paper's row, then a caption saying
    at which env steps each task's returns were read."""
    ratios = sorted({r for groups in table["tasks"].values() for r in groups} | set(paper.TABLE2))
    header = ["Task", "source"] + [f"mixing ratio {r}" for r in ratios]
    rows = [[task, "ours"] + [_group_text(groups.get(r)) for r in ratios] for task, groups in table["tasks"].items()]
    rows.append([paper.TABLE2_TASK, "paper"] + [f"{paper.TABLE2[r]:.2f}" if r in paper.TABLE2 else NONE
                                                for r in ratios])
    lines = [markdown(header, rows), "",
             f"Mean ± std (population) over seeds of OVMSE's eval/return at its last evaluation at or before "
             f"min({paper.TABLE2_STEP:,}, the run's budget) env steps; the paper's is at {paper.TABLE2_STEP:,}. "
             f"Runs are grouped by the mixing ratio recorded in online_summary.json."]
    for task, groups in table["tasks"].items():
        seeds = [s for g in groups.values() for s in g["seeds"].values()]
        steps = sorted({s["step"] for s in seeds})
        span = f"{steps[0]:,.0f}" if len(steps) == 1 else f"{steps[0]:,.0f}–{steps[-1]:,.0f}"
        short = sum(s["limit"] < paper.TABLE2_STEP for s in seeds)
        why = ("all runs reach 200k" if short == 0 else "the budget: runs are shorter than 200k" if short == len(seeds)
               else f"{short} of {len(seeds)} runs are shorter than 200k: read at their budget")
        lines.append(f"- {task}: evaluations at {span} env steps ({why}).")
    lines += [f"- excluded {path}: {why}" for path, why in table["excluded"]]
    return "\n".join(lines)


def _group_text(group: dict | None) -> str:
    return f"{group['mean']:.2f} ± {group['std']:.2f} (n={group['n']})" if group else NONE


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text

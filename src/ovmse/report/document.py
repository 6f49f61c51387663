"""Assemble the report of a sweep root: ``table1.md``, ``table2.md``, the figures,
``report.md`` and ``report.json`` under the output directory.

report.json keys: ``root``, ``budgets``, ``table1`` (:func:`tables.table1`), ``paper_table1``,
``comparison``, ``table2`` (:func:`tables.table2`), ``paper_table2``, ``claims``
(:mod:`claims`), ``figures`` ({file: path or None}), ``runs`` (one entry per directory with
its status and reason) and ``compute`` ({phase: {"seconds", "finished", "timed"}}).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from . import paper
from .claims import all_claims
from .field_statistics import marl_eval, table1_statistics, table1_statistics_markdown
from .figures import draw_figures
from .runs import (FINISHED, UNFINISHED, UNREADABLE, OnlineRun, ReportError, SideRun, by_task, load_online_runs,
                   load_side_runs)
from .tables import (comparison, comparison_markdown, markdown, paper_table1_markdown, table1, table1_markdown, table2,
                     table2_markdown)

FIGURE_CAPTIONS = {
    "figure2_win_rate.png": "Figure 2: median test win rate over seeds (interquartile range shaded).",
    "figure3_return.png": "Figure 3: mean test return over seeds (± one std shaded).",
    "figure1_unlearning.png": "Figure 1: mean Q_tot of the probe trajectories (± one std shaded) and, dashed, "
                              "their Monte-Carlo return.",
}


def write_report(root, out=None) -> Path:
    """Write the report of sweep ``root`` under ``out`` (default ``root/report``); returns the
    path of report.md. Raises :class:`ReportError` when ``root`` is not a directory or holds
    no online runs."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} does not exist or is not a directory: expected a sweep root holding "
                          f"online/<map>_<dataset>/<algo>[+variant]/seed<k>/")
    runs = load_online_runs(root)
    side_runs = load_side_runs(root)
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)

    # Per task, a dataset-free run (QMIX from scratch) counts for each task of its map; compute
    # and the run list count every directory once.
    task_runs = by_task(runs)
    t1, t2 = table1(task_runs), table2(task_runs)
    returns = table1(task_runs, "eval/final_return")
    compared = comparison(t1)
    stats = table1_statistics(t1)
    (out / "marl_eval.json").write_text(json.dumps(marl_eval(task_runs), indent=2) + "\n")
    claims = all_claims(t1, t2, task_runs)
    figures = draw_figures(task_runs, out)
    compute = compute_totals(runs, side_runs)
    budgets = budget_lines(runs, side_runs)

    table1_text = "\n\n".join([
        "## Table 1: final median win rate (640 test battles per seed)",
        "Ours: median over finished seeds of eval/final_win_rate [25th, 75th percentile] (n seeds); "
        "variant-free runs only; best median per row in bold.", table1_markdown(t1),
        "The paper's Table 1 (2s3z is not in it):", paper_table1_markdown(t1["tasks"]),
        "Ours vs the paper: best of Table 1's five algorithms per task:", comparison_markdown(compared),
        "The same final tests' median return (eval/final_return [25th, 75th percentile]), which still "
        "separates the algorithms where win rates are all near 0 (the paper gives no such table):",
        table1_markdown(returns, digits=2),
        "The field's statistics of the same final tests (rliable, marl-eval): IQM and median over seeds with "
        "stratified-bootstrap 95% intervals (from 3 seeds on), and P(OVMSE > X), the probability that an OVMSE "
        "run ends above a run of X, ties counting half. The runs in marl-eval's JSON layout: `marl_eval.json`.",
        table1_statistics_markdown(stats, t1["algos"])])
    table2_text = "## Table 2: mixing-ratio ablation (OVMSE)\n\n" + table2_markdown(t2)
    (out / "table1.md").write_text(table1_text + "\n")
    (out / "table2.md").write_text(table2_text + "\n")

    sections = [f"# OVMSE sweep report\n\nSweep root: `{root}`", "Budgets:\n\n" + "\n".join(budgets),
                table1_text, table2_text, _figures_section(figures, out), _claims_section(claims),
                _runs_section(runs, side_runs, root), _compute_section(compute)]
    report = out / "report.md"
    report.write_text("\n\n".join(sections) + "\n")
    numbers = {"root": str(root), "budgets": budgets, "table1": t1, "paper_table1": paper.TABLE1,
               "comparison": compared, "table1_return": returns, "table1_statistics": stats, "table2": t2, "paper_table2": {"task": paper.TABLE2_TASK,
                                                                      "env_steps": paper.TABLE2_STEP,
                                                                      "mean_return": paper.TABLE2},
               "claims": claims, "figures": {k: v and str(v) for k, v in figures.items()},
               "runs": [_run_entry(r, root) for r in runs] + [_side_entry(r, root) for r in side_runs],
               "compute": compute}
    (out / "report.json").write_text(json.dumps(numbers, indent=2) + "\n")
    return report


def compute_totals(runs: list[OnlineRun], side_runs: list[SideRun]) -> dict:
    """Wall time summed over finished runs per phase: ``{phase: {"seconds": float,
    "finished": runs finished, "timed": runs with a wall time}}`` for collect, offline, online;
    online also has ``"by_part"`` (the summaries' ``wall_seconds_by_part`` summed: collection,
    evaluations, resume points, probe, updates and the rest) and ``"split"`` (runs that have it)."""
    timed = {"collect": [], "offline": [], "online": []}
    finished = dict.fromkeys(timed, 0)
    by_part: dict[str, float] = {}
    split = 0
    for run in side_runs:
        if run.status == FINISHED:
            finished[run.kind] += 1
            timed[run.kind].append(run.wall_seconds)
    for run in runs:
        if run.status == FINISHED:
            finished["online"] += 1
            if run.summary.get("wall_seconds") is not None:
                timed["online"].append(float(run.summary["wall_seconds"]))
            parts = run.summary.get("wall_seconds_by_part")
            if isinstance(parts, dict):
                split += 1
                for part, seconds in parts.items():
                    by_part[part] = by_part.get(part, 0.0) + float(seconds)
    totals = {phase: {"seconds": sum(seconds), "finished": finished[phase], "timed": len(seconds)}
              for phase, seconds in timed.items()}
    totals["online"].update(by_part=by_part, split=split)
    return totals


def budget_lines(runs: list[OnlineRun], side_runs: list[SideRun]) -> list[str]:
    """One markdown bullet per phase with budgets: online env steps (configured in the runs'
    ``.hydra/config.yaml``, and made per their summaries) and offline updates."""
    finished = [r for r in runs if r.status == FINISHED]
    configured = sorted({r.budget for r in finished if r.budget is not None})
    made = sorted({r.env_steps for r in finished})
    updates = sorted({r.updates for r in side_runs if r.kind == "offline" and r.status == FINISHED})
    return [f"- online: {_list(configured)} env steps configured; finished runs made {_list(made)}",
            f"- offline pretraining: {_list(updates)} updates"]


def _list(numbers: list[int]) -> str:
    if not numbers:
        return "not readable"
    return f"{numbers[0]:,}" if len(numbers) == 1 else f"{numbers[0]:,}–{numbers[-1]:,}"


def _figures_section(figures: dict, out: Path) -> str:
    lines = ["## Figures", "Seeds are aligned by linear interpolation onto the union of their evaluation steps, "
             "within the range every seed covers; finished variant-free runs only."]
    for name, path in figures.items():
        lines.append(f"![{FIGURE_CAPTIONS[name]}]({path.relative_to(out)})\n\n{FIGURE_CAPTIONS[name]}" if path
                     else f"{FIGURE_CAPTIONS[name]} Not drawn: no finished run logged its metric.")
    return "\n\n".join(lines)


def _claims_section(claims: list[dict]) -> str:
    lines = ["## Claims"]
    for claim in claims:
        lines.append(f"**({claim['id']})** {claim['claim']} ({claim['paper']}): **{claim['verdict']}**")
        lines.append("\n".join(f"- {detail}" for detail in claim["details"]) or "- no runs to compare")
    return "\n\n".join(lines)


def _runs_section(runs: list[OnlineRun], side_runs: list[SideRun], root: Path) -> str:
    """Counts per task × run name, then every unfinished or unreadable directory with why."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for run in runs:
        row = counts.setdefault((run.task, run.run_name), dict.fromkeys((FINISHED, UNFINISHED, UNREADABLE), 0))
        row[run.status] += 1
    keys = sorted(counts, key=lambda k: (paper.task_sort_key(k[0]), paper.algo_sort_key(k[1].partition("+")[0]), k[1]))
    rows = [[task, name] + [str(counts[task, name][s]) for s in (FINISHED, UNFINISHED, UNREADABLE)]
            for task, name in keys]
    side = Counter((r.kind, r.status) for r in side_runs)
    side_counts = ", ".join(f"{kind} {status}: {n}" for (kind, status), n in sorted(side.items()))
    lines = ["## Runs", markdown(["Task", "run", FINISHED, UNFINISHED, UNREADABLE], rows),
             f"Offline and collect runs: {side_counts or 'none'}"]
    problems = [r for r in runs + side_runs if r.status != FINISHED]
    if problems:
        lines.append("\n".join(f"- {r.status}: `{r.path.relative_to(root)}`: {r.reason}" for r in problems))
    return "\n\n".join(lines)


def _compute_section(compute: dict) -> str:
    lines = ["## Compute", "Wall time summed from the finished runs' summaries (collect runs without one: "
             "the time between their config_resolved.yaml and collect_summary.json)."]
    total = 0.0
    for phase, c in compute.items():
        total += c["seconds"]
        untimed = f", {c['finished'] - c['timed']} without a wall time" if c["timed"] < c["finished"] else ""
        lines.append(f"- {phase}: {_hours(c['seconds'])} ({c['finished']} finished runs{untimed})")
        whole = sum(c.get("by_part", {}).values())
        if c.get("split") and whole > 0:
            shares = ", ".join(f"{part.replace('_', ' ')} {100 * sec / whole:.0f}%"
                               for part, sec in sorted(c["by_part"].items(), key=lambda kv: -kv[1]))
            lines.append(f"  - where the time of the {c['split']} runs that split it went: {shares}")
    lines.append(f"- total: {_hours(total)}")
    return "\n\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:])


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _run_entry(run: OnlineRun, root: Path) -> dict:
    return {"phase": "online", "path": str(run.path.relative_to(root)), "task": run.task, "run_name": run.run_name,
            "algo": run.algo, "variant": run.variant, "seed": run.seed, "status": run.status, "reason": run.reason,
            "final_win_rate": run.final_win_rate if run.status == FINISHED else None}


def _side_entry(run: SideRun, root: Path) -> dict:
    return {"phase": run.kind, "path": str(run.path.relative_to(root)), "status": run.status, "reason": run.reason,
            "wall_seconds": run.wall_seconds, "updates": run.updates}

"""The field's statistics of Table 1 (rliable / marl-eval, computed by
:mod:`ovmse.report.statistics`): per task and algorithm the IQM and median of the final win rate
with stratified-bootstrap 95% intervals, the probability that OVMSE ends above each baseline,
and the runs in marl-eval's JSON layout. Written by ``write_report`` beside the median [IQR]
table it complements:

- ``table1_statistics(table1)`` -> ``{task: {algo: {"n", "iqm", "median"[, "iqm_ci", "median_ci",
  "p_better", "p_better_ci"]}}}`` (intervals from 3 seeds on; ``p_better`` = P(OVMSE > algo));
- ``marl_eval(runs)``: the finished variant-free runs, evaluation curves and final tests.
"""

from __future__ import annotations

from . import paper
from .runs import FINISHED, OnlineRun
from .statistics import final_score_rows, marl_eval_runs
from .tables import NONE, markdown

REFERENCE = "ovmse"
MIN_SEEDS = 3


def table1_statistics(table: dict, reps: int = 2000) -> dict:
    return {task: final_score_rows({algo: list(cell["seeds"].values()) for algo, cell in cells.items() if cell},
                                   reference=REFERENCE, reps=reps, min_runs=MIN_SEEDS)
            for task, cells in table["cells"].items()}


def table1_statistics_markdown(stats: dict, algos: list[str]) -> str:
    """One row per task and algorithm: seeds, IQM [CI], median [CI], P(OVMSE > X) [CI]."""
    def with_ci(row: dict, key: str) -> str:
        ci = row.get(f"{key}_ci")
        return f"{row[key]:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{row[key]:.3f} (no interval: {row['n']} seeds)"

    rows = []
    for task, by_algo in stats.items():
        for algo in algos:
            row = by_algo.get(algo)
            if row is None:
                continue
            better = (f"{row['p_better']:.2f} [{row['p_better_ci'][0]:.2f}, {row['p_better_ci'][1]:.2f}]"
                      if "p_better" in row else NONE)
            rows.append([task, paper.label(algo), str(row["n"]), with_ci(row, "iqm"), with_ci(row, "median"), better])
    return markdown(["Task", "Algorithm", "seeds", "IQM [95% CI]", "median [95% CI]", "P(OVMSE > X) [95% CI]"], rows)


def marl_eval(runs: list[OnlineRun], environment: str = "smac", metric: str = "win_rate") -> dict:
    """The finished variant-free runs in marl-eval's JSON layout (evaluation win rates by env
    step, the final test as the absolute metric)."""
    records = []
    for r in runs:
        if r.variant is not None or r.status != FINISHED or "eval/win_rate" not in r.curves:
            continue
        steps, values = r.curves["eval/win_rate"]
        records.append({"task": r.task, "algorithm": r.algo, "seed": r.seed, "steps": steps.tolist(),
                        "values": values.tolist(), "final": r.final_win_rate})
    return marl_eval_runs(records, environment, metric)

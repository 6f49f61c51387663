"""Report of issue 17's sweep (``scripts/o2o_2s3z.py report``): 2s3z, 300k env steps, 3 seeds.

Reads ``<root>/online/*/*/seed*`` (finished runs, and the curves of unfinished ones) and
``<root>/offline/*/*/offline_summary.json``, takes into the tables, verdicts and figures the
finished runs that the result files of earlier sweep roots hold on the sets this root pinned
(a new machine starts without their outputs), and writes

* ``benchmarks/results/o2o_2s3z.json`` (``--out-json``): one record per run of the root (task,
  algorithm, seed, status, env steps reached, final win rate and return over 640 battles, drop,
  env steps to a 0.8 win rate, mean win rate over the run, wall-clock, evaluation and probe
  curves, the diagnosis tables' training-batch values) and the offline policies' levels;
* ``docs/img/o2o_2s3z_curves.png`` (win rate and return per task, median and interquartile
  range over seeds, the offline policy dashed), ``docs/img/o2o_2s3z_ablations.png`` (2s3z
  medium: OVMSE, OVM only, SE only and the mixing ratios) and ``docs/img/o2o_2s3z_unlearning.png``
  (Figure 1: Q_tot on the offline policy's trajectories);
* the section of ``docs/results.md`` between the O2O-2S3Z markers: the tables per task and
  the paper's claims with a verdict each.

Definitions (per run):

* offline level: the greedy win rate / return of the offline pretraining the run starts from
  (its last evaluation, 128 battles; ``offline_summary.json``);
* drop: that return minus the lowest evaluation return in the first 50k env steps;
* env steps to 0.8: the first evaluation with a win rate of at least 0.8 (128 battles) that the
  next one holds too (the last evaluation of a curve counts alone): a run that starts above 0.8
  and collapses after the switch has not reached it (records written before the ninth session
  of the experiment, without ``steps_to_0.8_rule``, took the first such evaluation alone);
* mean win rate: the mean of the evaluation win rates up to the budget (the area under the
  curve divided by its length, evaluations being evenly spaced).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_sections import replace_section  # noqa: E402

from ovmse.report import paper  # noqa: E402
from ovmse.report.curves import align, initial_drop, median_iqr, value_at  # noqa: E402
from ovmse.report.runs import FINISHED, OnlineRun, by_task, configured, load_online_runs  # noqa: E402

BEGIN = "<!-- O2O-2S3Z:BEGIN (written by scripts/o2o_2s3z.py report) -->"
END = "<!-- O2O-2S3Z:END -->"
TASKS = ("2s3z_medium", "2s3z_medium_replay")
MAIN = ("ovmse", "switch_cql", "macql", "macalql", "qmix")
O2O = ("ovmse", "switch_cql", "macql", "macalql")
ABLATIONS = ("ovmse", "ovm_only", "se_only", "ovmse+algo.online.mixing_ratio=0.1", "ovmse+algo.online.mixing_ratio=0.3")
# MACal-QL fine-tuning the plain CQL pretraining the others share (this project until 2026-12-04;
# Cal-QL calibrates its pretraining too, configs/algo/macalql.yaml): kept as a variant row.
MACALQL_PLAIN = "macalql+algo.offline.calibrated=false"
LABELS = {**paper.ALGO_LABELS, "qmix": "QMIX (scratch)", MACALQL_PLAIN: "MACal-QL, plain CQL pretraining",
          "ovmse+algo.online.mixing_ratio=0.1": "OVMSE, mixing 0.1", "ovmse+algo.online.mixing_ratio=0.3": "OVMSE, mixing 0.3"}
COLOURS = {"ovmse": "C0", "switch_cql": "C1", "macql": "C2", "macalql": "C3", "qmix": "C4", "ovm_only": "C5",
           "se_only": "C6", "ovmse+algo.online.mixing_ratio=0.1": "C7", "ovmse+algo.online.mixing_ratio=0.3": "C8"}
DROP_WINDOW = 50_000
# An evaluation fires at the first collection chunk past its mark (at 50,176 for "50k", 300,032
# for the last): windows and read-outs at a mark include the evaluation that belongs to it.
EVAL_SLACK = 1_000
WIN_TARGET = 0.8
TABLE2_STEP = paper.TABLE2_STEP
LEAD = 100_000  # the paper: OVMSE reaches 0.8 more than 100k env steps ahead
NEAR_ONE = 0.9  # "every method ends near 100%"


# ------------------------------------------------------------------------------------ records

def offline_levels(root: Path) -> dict[str, dict]:
    """``{offline dir name relative to root: {win_rate, return, updates}}`` of finished pretrainings."""
    levels = {}
    for summary in sorted((root / "offline").glob("*/*/offline_summary.json")):
        data = json.loads(summary.read_text())
        levels[str(summary.parent.relative_to(root))] = {
            "task": summary.parent.parent.name, "win_rate": float(data["eval/win_rate"]),
            "return": float(data["eval/return"]), "updates": int(data["updates"]),
            "wall_seconds": float(data["wall_seconds"]),
            # MACal-QL's own pretraining is calibrated (Cal-QL); a summary from before the key is plain CQL.
            "calibrated": bool((data.get("settings") or {}).get("cql_calibrated", False)),
            "cql_alpha": data.get("cql_alpha"), "best": _best_evaluation(summary.parent),
            "dataset": _dataset_identity(summary.parent)}
    return levels


def _best_evaluation(offline_dir: Path) -> dict | None:
    """The pretraining's best greedy evaluation (``metrics.csv``): its win rate, return and update
    (the first of equal ones), the evaluation ``best.ckpt`` holds. None when unreadable."""
    import csv

    try:
        with open(offline_dir / "metrics.csv", newline="") as file:
            rows = [r for r in csv.DictReader(file) if r.get("eval/win_rate")]
    except OSError:
        return None
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["eval/win_rate"]))  # max keeps the first of equal ones
    return {"win_rate": float(best["eval/win_rate"]), "return": float(best["eval/return"]),
            "update": int(float(best["updates"]))}


def _dataset_identity(offline_dir: Path) -> dict | None:
    """The dataset a pretraining read, from its ``hparams.yaml`` (transitions, creation time,
    the commit that made it, its episodes' digest where the set records one): two sweeps of the same protocol can hold different "medium" sets
    (docs/results.md, eighth session). None when the run recorded none or it is unreadable (it
    only annotates the report, as :func:`~ovmse.report.runs.configured` does)."""
    try:
        data = (yaml.safe_load((offline_dir / "hparams.yaml").read_text()) or {}).get("dataset")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in ("name", "episodes", "transitions", "created", "git_commit", "content_sha256")}


def offline_of(run: OnlineRun, root: Path, levels: dict) -> dict | None:
    """The offline pretraining a fine-tuning run started from (its ``ckpt``)."""
    ckpt = run.summary.get("ckpt") or configured(run.path, "ckpt")  # an unfinished run has no summary yet
    if not ckpt:
        return None
    offline_dir = Path(str(ckpt)).parent.parent
    key = f"offline/{run.task}/{offline_dir.name}"
    return levels.get(key)


HOLD = 2  # evaluations in a row at or above the target (one of 128 battles has a standard error near 0.035 at 0.8)


def steps_to(steps: np.ndarray, values: np.ndarray, target: float, hold: int = HOLD) -> float | None:
    """The env steps of the first evaluation at or above ``target`` that the next ``hold - 1``
    evaluations hold too (fewer at the end of the curve); None when there is none."""
    above = np.asarray(values) >= target
    for i in np.flatnonzero(above):
        if above[i:i + hold].all():
            return float(steps[i])
    return None


def run_record(run: OnlineRun, root: Path, levels: dict, budget: int) -> dict:
    record = {"task": run.task, "algorithm": run.run_name, "seed": run.seed, "status": run.status,
              "path": str(run.path.relative_to(root))}
    if "eval/win_rate" not in run.curves:
        return record
    steps, wins = run.curves["eval/win_rate"]
    _, returns = run.curves["eval/return"]
    offline = offline_of(run, root, levels)
    record.update({
        "env_steps_reached": int(run.summary["env_steps"]) if run.status == FINISHED else int(steps[-1]),
        "offline_win_rate": offline["win_rate"] if offline else None,
        "offline_return": offline["return"] if offline else None,
        "dataset": offline.get("dataset") if offline else None,
        "steps_to_0.8": steps_to(steps, wins, WIN_TARGET),
        "steps_to_0.8_rule": f"first evaluation >= {WIN_TARGET} held by the next {HOLD - 1}",
        "mean_win_rate": float(np.mean(wins[steps <= budget + EVAL_SLACK])),
        "curve": {"env_steps": steps.tolist(), "win_rate": wins.tolist(), "return": returns.tolist()},
    })
    if offline and steps[0] <= DROP_WINDOW:
        record["drop"] = initial_drop(steps, returns, budget, offline["return"], fraction=0.0,
                                      min_steps=DROP_WINDOW + EVAL_SLACK)
    at = value_at(steps, returns, TABLE2_STEP + EVAL_SLACK)
    if at is not None and steps[-1] >= TABLE2_STEP:
        record["return_at_200k"] = at[1]
    if "eval/probe_q_tot" in run.curves:
        ps, pq = run.curves["eval/probe_q_tot"]
        record["probe"] = {"env_steps": ps.tolist(), "q_tot": pq.tolist()}
        if "eval/probe_mc_return" in run.curves:
            record["probe"]["mc_return"] = run.curves["eval/probe_mc_return"][1].tolist()
    # The training-batch values the diagnosis tables read (from metrics.csv): kept in the record,
    # so that a report from a later sweep root can show them once this root's outputs are gone.
    record["values"] = {"switch": switch_values(run.path), "over_run": run_values(run.path),
                        "first_100k": run_values(run.path, until=EXPLORATION_STEPS)}
    if run.status == FINISHED:
        record.update({"final_win_rate": float(run.summary["eval/final_win_rate"]),
                       "final_return": float(run.summary.get("eval/final_return", math.nan)),
                       "final_battles": int(run.summary.get("eval/final_episodes", 0) or 0),
                       "wall_seconds": float(run.summary["wall_seconds"]), "resumed": _resumed(run)})
    return record


def _offline_row(name: str, level: dict) -> str:
    """A pretraining's row: its CQL (plain or calibrated, α where not the paper's 0.05), set,
    length, last and best greedy evaluation (records from before the best was kept: a dash)."""
    cql = "calibrated (MACal-QL)" if level.get("calibrated") else "plain"
    if level.get("cql_alpha") not in (None, 0.05):
        cql += f", α {level['cql_alpha']:g}"
    best = level.get("best")
    best_cell = f"{best['win_rate']:.3f}, {best['return']:.2f} ({best['update']})" if best else "—"
    return (f"| {level['task']} | {name.split('/')[-1]}{' (recorded)' if level.get('recorded_in') else ''} | {cql} | "
            f"{_dataset_cell(level.get('dataset'))} | {level['updates']} | {_fmt(level['win_rate'])} | "
            f"{_fmt(level['return'], 2)} | {best_cell} | {level['wall_seconds'] / 60:.0f} min |")


def _dataset_cell(dataset: dict | None) -> str:
    if not dataset or dataset.get("transitions") is None:
        return "not recorded"
    commit = f"{dataset['git_commit']}, " if dataset.get("git_commit") else ""
    return f"{int(dataset['transitions']):,}, {commit}{dataset.get('created') or '?'}"


def _resumed(run: OnlineRun) -> bool:
    """Whether the run's last process continued an earlier one (its wall_seconds is that process's)."""
    try:
        stages = json.loads((run.path / "pipeline.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return False
    return any(s.get("stage") == "online" and s.get("status") == "resumed" for s in stages)


# ------------------------------------------------------------------------------------ tables

def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _steps(value: float | None) -> str:
    return "not reached" if value is None else f"{value / 1000:.0f}k"


def _median_steps(values: list[float | None], budget: int) -> float | None:
    """Median of the seeds' steps to 0.8, a seed that never got there counting as beyond the
    budget (the median is None when it falls on such a seed)."""
    if not values:
        return None
    filled = sorted(math.inf if v is None else v for v in values)
    median = statistics.median(filled)
    return None if math.isinf(median) else median


def task_table(records: list[dict], task: str, algos: tuple[str, ...], budget: int) -> str:
    header = ["algorithm", "seeds done", "final win rate, 640 battles: median (per seed)",
              "final return: median", "drop after the switch: median (per seed)",
              "env steps to 0.8 (per seed)", "mean win rate over the run: median (per seed)", "wall-clock per run"]
    rows = []
    for algo in algos:
        mine = sorted((r for r in records if r["task"] == task and r["algorithm"] == algo), key=lambda r: r["seed"])
        done = [r for r in mine if r["status"] == FINISHED]
        if not mine:
            continue
        finals = [r["final_win_rate"] for r in done]
        drops = [r["drop"] for r in done if "drop" in r]
        means = [r["mean_win_rate"] for r in done]
        # A resumed run's summary times its last process only: left out of the median.
        walls = [r["wall_seconds"] / 60 for r in done if not r["resumed"]]
        resumed = sum(r["resumed"] for r in done)
        rows.append([
            LABELS.get(algo, algo), f"{len(done)} of 3" + (f" (+{len(mine) - len(done)} unfinished)" if len(mine) > len(done) else ""),
            f"**{_fmt(_median(finals))}** ({', '.join(_fmt(v) for v in finals)})" if finals else "—",
            _fmt(_median([r["final_return"] for r in done]), 2),
            f"{_fmt(_median(drops), 2)} ({', '.join(_fmt(v, 2) for v in drops)})" if drops else "—",
            ", ".join(_steps(r["steps_to_0.8"]) for r in done) or "—",
            f"{_fmt(_median(means))} ({', '.join(_fmt(v) for v in means)})" if means else "—",
            (f"{_median(walls):.0f} min" if walls else "—") + (f" ({resumed} resumed left out)" if resumed else "")])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ claims

def _done(records, task, algo):
    return [r for r in records if r["task"] == task and r["algorithm"] == algo and r["status"] == FINISHED]


def _complete(records, task, algos) -> bool:
    return all(len(_done(records, task, a)) >= 3 for a in algos)


def _least(values: dict[str, float | None]) -> str:
    """The verdict of "OVMSE's value is the smallest" over the algorithms that have one."""
    known = {a: v for a, v in values.items() if v is not None}
    if "ovmse" not in known or len(known) < 2:
        return "**not measured** (no value for OVMSE or for every other algorithm)"
    return "**agrees**" if known["ovmse"] <= min(known.values()) else "**does not agree**"


def claims(records: list[dict], budget: int) -> list[str]:
    out = []
    pending = "**pending** (not every run of the comparison has finished)"
    for task in TASKS:
        # (1) smallest drop after the switch.
        drops = {a: _median([r["drop"] for r in _done(records, task, a) if "drop" in r]) for a in O2O}
        verdict = _least(drops) if _complete(records, task, O2O) else pending
        out.append(f"- {task}: *OVMSE drops least right after the switch* (median over seeds of the offline "
                   f"policy's return minus the lowest evaluation return in the first 50k env steps): {verdict}. "
                   + ", ".join(f"{LABELS[a]} {_fmt(v, 2)}" for a, v in drops.items()) + ".")
        # (2) 0.8 at least 100k env steps before MACQL, MACal-QL and QMIX.
        to80 = {a: _median_steps([r["steps_to_0.8"] for r in _done(records, task, a)], budget)
                for a in ("ovmse", "macql", "macalql", "qmix")}
        if _complete(records, task, ("ovmse", "macql", "macalql", "qmix")):
            ovmse = to80["ovmse"]
            holds = ovmse is not None and all(
                (v is None and ovmse + LEAD <= budget) or (v is not None and v - ovmse >= LEAD)
                for a, v in to80.items() if a != "ovmse")
            verdict = "**agrees**" if holds else "**does not agree**"
        else:
            verdict = pending
        out.append(f"- {task}: *OVMSE reaches a 0.8 win rate at least 100k env steps before MACQL, MACal-QL "
                   f"and QMIX* (median env steps to 0.8 over seeds; a seed that never reaches it counts as beyond "
                   f"{budget // 1000}k): {verdict}. "
                   + ", ".join(f"{LABELS[a]} {_steps(v)}" for a, v in to80.items()) + ".")
        # (3) every method ends near 100%.
        finals = {a: _median([r["final_win_rate"] for r in _done(records, task, a)]) for a in MAIN}
        if _complete(records, task, MAIN):
            holds = all(v >= NEAR_ONE for v in finals.values())
            verdict = "**agrees**" if holds else "**does not agree**"
        else:
            verdict = pending
        out.append(f"- {task}: *every method ends near a 100% win rate* (median final win rate ≥ {NEAR_ONE}; the "
                   f"paper at 1M env steps, ours at {budget // 1000}k): {verdict}. "
                   + ", ".join(f"{LABELS[a]} {_fmt(v)}" for a, v in finals.items()) + ".")
    # (4) Table 2.
    ratios = {"0.0": "ovmse", "0.1": "ovmse+algo.online.mixing_ratio=0.1", "0.3": "ovmse+algo.online.mixing_ratio=0.3"}
    at200 = {r: [x["return_at_200k"] for x in _done(records, "2s3z_medium", a) if "return_at_200k" in x]
             for r, a in ratios.items()}
    means = {r: (statistics.mean(v) if v else None) for r, v in at200.items()}
    if _complete(records, "2s3z_medium", tuple(ratios.values())):
        holds = min(means["0.0"], means["0.1"]) >= means["0.3"]
        verdict = "**agrees**" if holds else "**does not agree**"
    else:
        verdict = pending
    out.append("- 2s3z_medium: *Table 2, mixing ratios 0.0 and 0.1 are at least as good as 0.3* (OVMSE's mean "
               "evaluation return at 200k env steps; the paper: "
               + ", ".join(f"{r}: {v:.2f}" for r, v in paper.TABLE2.items()) + f"): {verdict}. Ours: "
               + ", ".join(f"{r}: {_fmt(v, 2)} (" + ", ".join(_fmt(x, 2) for x in at200[r]) + ")"
                           for r, v in means.items()) + ".")
    # (5) Figure 4(a).
    abl = {a: _median([r["mean_win_rate"] for r in _done(records, "2s3z_medium", a)]) for a in ("ovmse", "ovm_only", "se_only")}
    if _complete(records, "2s3z_medium", ("ovmse", "ovm_only", "se_only")):
        holds = abl["ovmse"] >= max(abl["ovm_only"], abl["se_only"])
        verdict = "**agrees**" if holds else "**does not agree**"
    else:
        verdict = pending
    out.append("- 2s3z_medium: *Figure 4(a), OVMSE learns faster than OVM only and SE only* (median over seeds of "
               f"the mean evaluation win rate over the run): {verdict}. "
               + ", ".join(f"{LABELS[a]} {_fmt(v)}" for a, v in abl.items()) + ".")
    # (6) Figure 1.
    falls = {}
    for a in ("ovmse", "switch_cql", "macql"):
        values = [r["probe"]["q_tot"][0] - min(r["probe"]["q_tot"]) for r in _done(records, "2s3z_medium", a)
                  if r.get("probe")]
        falls[a] = _median(values)
    verdict = _least(falls) if _complete(records, "2s3z_medium", ("ovmse", "switch_cql", "macql")) else pending
    out.append("- 2s3z_medium: *Figure 1, OVMSE's Q_tot on the offline policy's trajectories falls least* (median "
               f"over seeds of the first probe Q_tot minus the lowest later one): {verdict}. "
               + ", ".join(f"{LABELS[a]} {_fmt(v, 2)}" for a, v in falls.items()) + ".")
    return out


# ------------------------------------------------------------------------------------ diagnosis

EXPLORATION = {("ovmse", "1.0"): "ovmse", ("ovm_only", "1.0"): "ovm_only",
               **{(a, e): f"{a}+algo.epsilon_start={e},env_steps=100000" for a in ("ovmse", "ovm_only")
                  for e in ("0.2", "0.05")}}
LAMBDA_ANNEALED = "ovmse+algo.online.lambda_memory_anneal_steps=100000,algo.online.lambda_memory_end=0.05"
MEMORY_TD_LAMBDA = "ovmse+algo.online.ovm_target=td_lambda"
ONE_STEP_QMIX = "qmix+algo.td_lambda=0.0"
# OVM only with the memory taken out (configs/grid/o2o_2s3z_no_memory.yaml).
NO_MEMORY = "macql+algo.online.mixing_ratio=0.0,algo.online.td_lambda=0.0,env_steps=100000"
# MACQL without offline data in its batches (configs/grid/o2o_2s3z_no_offline_data.yaml).
NO_OFFLINE_DATA = "macql+algo.online.mixing_ratio=0.0,env_steps=100000"
# OVMSE with the memory taken out: SE only with one-step targets (configs/grid/o2o_2s3z_se_no_memory.yaml).
SE_NO_MEMORY = "se_only+algo.online.td_lambda=0.0,env_steps=100000"
DIAGNOSIS_LABELS = {MEMORY_TD_LAMBDA: "OVMSE, memory vs TD(λ) target", LAMBDA_ANNEALED: "OVMSE, λ_memory annealed",
                    ONE_STEP_QMIX: "QMIX (scratch), one-step targets",
                    NO_MEMORY: "OVM only without the memory (one-step TD + CQL, 100k)",
                    NO_OFFLINE_DATA: "MACQL without offline data (100k)",
                    SE_NO_MEMORY: "OVMSE without the memory (one-step TD + CQL, 100k)"}
EXPLORATION_STEPS = 100_000


def _win_at(record: dict, step: float) -> float | None:
    curve = record.get("curve")
    if not curve:
        return None
    at = value_at(np.asarray(curve["env_steps"]), np.asarray(curve["win_rate"]), step + EVAL_SLACK)
    return None if at is None else at[1]


def _early_mean(record: dict, limit: float) -> float | None:
    curve = record.get("curve")
    if not curve:
        return None
    steps, wins = np.asarray(curve["env_steps"]), np.asarray(curve["win_rate"])
    window = steps <= limit + EVAL_SLACK
    return float(np.mean(wins[window])) if window.any() else None


def _per_seed(values: list[float | None], digits: int = 3) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    return f"{_fmt(statistics.median(known), digits)} ({', '.join(_fmt(v, digits) for v in values)})"


SWITCH_RUNS = {(r, e): f"ovmse+algo.epsilon_start={e},algo.online.restore_optimizer={r},env_steps=16000"
               for r in ("True", "False") for e in ("1.0", "0.05")}


def switch_diagnosis_table(records: list[dict]) -> str:
    """OVMSE's first 16k env steps: Adam state restored or fresh x ε start."""
    lines = ["| offline Adam state | ε start | seeds done | first evaluation, after one update (per seed) | "
             "lowest evaluation win rate (per seed) | win rate at 16k (per seed) |", "|---|---:|---:|---|---|---|"]
    for (restore, eps), name in SWITCH_RUNS.items():
        done = _medium_runs(records, name)
        if done:
            wins = [r["curve"]["win_rate"] for r in done]
            lines.append(f"| {'restored' if restore == 'True' else 'fresh'} | {eps} | {len(done)} | "
                         f"{_per_seed([w[0] for w in wins])} | {_per_seed([min(w) for w in wins])} | "
                         f"{_per_seed([w[-1] for w in wins])} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


def _medium_runs(records: list[dict], name: str, past: float | None = None) -> list[dict]:
    """The 2s3z medium runs of ``name``, by seed: the finished ones, or (``past``) those that
    reached ``past`` env steps, finished or not."""
    return sorted((r for r in records if r["task"] == "2s3z_medium" and r["algorithm"] == name
                   and (r["status"] == FINISHED if past is None else r.get("env_steps_reached", 0) >= past)),
                  key=lambda r: r["seed"])


def _first_steps_cells(runs: list[dict], steps: float = EXPLORATION_STEPS) -> str:
    """Table cells of ``runs`` read over their first ``steps`` env steps: drop after the switch,
    evaluation win rate at ``steps``, mean evaluation win rate up to it."""
    return (f"{_per_seed([r.get('drop') for r in runs], 2)} | {_per_seed([_win_at(r, steps) for r in runs])} | "
            f"{_per_seed([_early_mean(r, steps) for r in runs])}")


def exploration_table(records: list[dict]) -> str:
    """ε_start x exploration from the medium pretrainings, read over the first 100k env steps
    (the ε = 1.0 rows are the main grid's and the ablation's 300k runs, cut there)."""
    lines = ["| exploration | ε start | seeds | drop in the first 50k: median (per seed) | "
             "evaluation win rate at 100k: median (per seed) | mean win rate over the first 100k: median (per seed) |",
             "|---|---:|---:|---|---|---|"]
    for (algo, eps), name in EXPLORATION.items():
        mine = _medium_runs(records, name, past=EXPLORATION_STEPS)
        if not mine:
            continue
        label = "decentralised SE (OVMSE)" if algo == "ovmse" else "ε-greedy (OVM only)"
        lines.append(f"| {label} | {eps} | {len(mine)} | {_first_steps_cells(mine)} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


def memory_table(records: list[dict]) -> str:
    """OVMSE's memory: the paper's setting, its target compared with TD(λ), λ_memory annealed."""
    lines = ["| λ_memory | memory compared with | seeds done | final win rate: median (per seed) | "
             "env steps to 0.8 (per seed) | mean win rate over the run: median (per seed) |",
             "|---|---|---:|---|---|---|"]
    for name, label in (("ovmse", "1.0 (constant, the paper's 2s3z setting) | one-step target (Eq. 4)"),
                        (MEMORY_TD_LAMBDA, "1.0 (constant) | TD(λ) target"),
                        (LAMBDA_ANNEALED, "1.0 -> 0.05 over 100k env steps | one-step target (Eq. 4)")):
        done = _medium_runs(records, name)
        if done:
            lines.append(f"| {label} | {len(done)} | {_per_seed([r['final_win_rate'] for r in done])} | "
                         f"{', '.join(_steps(r['steps_to_0.8']) for r in done)} | "
                         f"{_per_seed([r['mean_win_rate'] for r in done])} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


def targets_table(records: list[dict]) -> str:
    """QMIX from scratch with PyMARL2's TD(λ = 0.6) targets and with one-step ones (the targets
    OVMSE learns from on 2s3z, where λ_memory = 1 leaves Eq. 5 no TD(λ) term)."""
    lines = ["| QMIX from scratch, targets | seeds done | final win rate: median (per seed) | env steps to 0.8 (per seed) | "
             "Q_tot minus Monte-Carlo return after 50k: median (per seed) |", "|---|---:|---|---|---|"]
    for name, label in (("qmix", "TD(λ = 0.6), PyMARL2's default"), (ONE_STEP_QMIX, "one-step (TD(λ = 0))")):
        done = _medium_runs(records, name)
        if done:
            values = [_values(r, "over_run") for r in done]
            lines.append(f"| {label} | {len(done)} | {_per_seed([r['final_win_rate'] for r in done])} | "
                         f"{', '.join(_steps(r['steps_to_0.8']) for r in done)} | "
                         f"{_per_seed([v['q_minus_mc'] if v else None for v in values], 2)} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


def no_memory_table(records: list[dict]) -> str:
    """OVM only and OVMSE against the same runs with their memory taken out, and MACQL and SE
    only for reference, all from the medium pretrainings with exploration from ε = 1.0, read
    over their first 100k env steps (the 300k runs cut there): is it the memory, the one-step
    targets or the missing offline data that brings them down?"""
    lines = ["| run | exploration | loss | seeds | drop in the first 50k: median (per seed) | evaluation win rate "
             "at 100k: median (per seed) | mean win rate over the first 100k: median (per seed) | "
             "Q_tot minus Monte-Carlo return, 50k-100k: median (per seed) |", "|---|---|---|---:|---|---|---|---|"]
    greedy, se = "ε-greedy", "decentralised SE"
    for name, exploration, loss in (
            ("ovm_only", greedy, "one-step target floored by the memory (λ_memory 1) + CQL α 0.05"),
            (NO_MEMORY, greedy, "one-step TD + CQL α 0.05"),
            (NO_OFFLINE_DATA, greedy, "TD(λ = 0.6) + CQL α 0.05"),
            ("macql", greedy, "TD(λ = 0.6) + CQL α 0.05, offline share 0.3"),
            ("ovmse", se, "one-step target floored by the memory (λ_memory 1) + CQL α 0.05"),
            (SE_NO_MEMORY, se, "one-step TD + CQL α 0.05"),
            ("se_only", se, "TD(λ = 0.6) + CQL α 0.05")):
        mine = _medium_runs(records, name, past=EXPLORATION_STEPS)
        if not mine:
            continue
        gaps = [_values(r, "first_100k") for r in mine]
        lines.append(f"| {LABELS.get(name, DIAGNOSIS_LABELS.get(name, name))} | {exploration} | {loss} | {len(mine)} | "
                     f"{_first_steps_cells(mine)} | {_per_seed([g['q_minus_mc'] if g else None for g in gaps], 2)} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


SWITCH_COLUMNS = ("train/q_taken_mean", "train/target_mean", "train/mc_return_mean")


def _values(record: dict, which: str) -> dict | None:
    """A record's diagnosis values (``switch``, ``over_run``, ``first_100k``: :func:`run_record`);
    None for records written before the report kept them (their sweep roots' outputs are gone)."""
    return (record.get("values") or {}).get(which)


def switch_values(run_dir: Path, limit: float = DROP_WINDOW) -> dict | None:
    """Training-batch values around the switch, from ``metrics.csv``: at the first logged
    update, the mean Q_tot of the batch's actions, its target and the Monte-Carlo return;
    over the first ``limit`` env steps, the largest Q_tot minus Monte-Carlo return."""
    import csv

    try:
        with open(run_dir / "metrics.csv", newline="") as file:
            rows = [r for r in csv.DictReader(file) if all(r.get(c) for c in SWITCH_COLUMNS)]
    except OSError:
        return None
    if not rows:
        return None
    first = rows[0]
    early = [float(r["train/q_taken_mean"]) - float(r["train/mc_return_mean"]) for r in rows
             if float(r["env_steps"]) <= limit + EVAL_SLACK]
    # OVM's Q_OVM (older runs do not log it); with λ_memory = 1 it, not the TD(λ) target, is trained on.
    ovm_target = first.get("train/ovm_target_mean")
    return {"q": float(first["train/q_taken_mean"]), "target": float(first["train/target_mean"]),
            "ovm_target": float(ovm_target) if ovm_target else None,
            "mc": float(first["train/mc_return_mean"]), "max_q_minus_mc_50k": max(early) if early else None}


def switch_table(records: list[dict]) -> str:
    lines = ["| algorithm | runs | first update: Q_tot of the batch's actions | their TD(λ) target | OVM's Q_OVM "
             "(runs that log it) | their Monte-Carlo return | largest Q_tot minus Monte-Carlo return in the first 50k |",
             "|---|---:|---|---|---|---|---|"]
    for algo in MAIN:
        values = [v for r in records if r["task"] == "2s3z_medium" and r["algorithm"] == algo
                  for v in [_values(r, "switch")] if v]
        if values:
            lines.append(f"| {LABELS[algo]} | {len(values)} | " + " | ".join(
                _per_seed([v[k] for v in values if v[k] is not None], 2)
                for k in ("q", "target", "ovm_target", "mc", "max_q_minus_mc_50k")) + " |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


RUN_COLUMNS = {"q_minus_mc": "train/q_minus_mc_return", "ovm_active": "train/ovm_active_fraction",
               "explored": "collect/explored_fraction"}


def run_values(run_dir: Path, after: float = DROP_WINDOW, until: float = math.inf) -> dict | None:
    """Medians over a run's metric rows after ``after`` and up to ``until`` env steps
    (``metrics.csv``): Q_tot of the batch's actions minus their Monte-Carlo return, the share
    of transitions where OVM's memory sets the target, and the share of exploratory agent
    actions."""
    import csv

    try:
        with open(run_dir / "metrics.csv", newline="") as file:
            rows = [r for r in csv.DictReader(file) if after < float(r["env_steps"]) <= until]
    except OSError:
        return None
    out = {}
    for name, column in RUN_COLUMNS.items():
        values = [float(r[column]) for r in rows if r.get(column)]
        out[name] = statistics.median(values) if values else None
    return out if out["q_minus_mc"] is not None else None


def run_values_table(records: list[dict]) -> str:
    names = (*MAIN, *ABLATIONS[1:3], MEMORY_TD_LAMBDA, LAMBDA_ANNEALED, ONE_STEP_QMIX, NO_MEMORY, NO_OFFLINE_DATA,
             SE_NO_MEMORY)
    lines = ["| run | runs | Q_tot minus Monte-Carlo return (per run) | OVM memory sets the target (per run) | "
             "exploratory agent actions (per run) |", "|---|---:|---|---|---|"]
    # Medium's runs, then the main comparison on medium-replay (its offline policy wins nothing).
    rows = [("2s3z_medium", name, "") for name in names] + [(TASKS[1], name, ", medium-replay") for name in O2O]
    for task, name, suffix in rows:
        values = [v for r in records if r["task"] == task and r["algorithm"] == name
                  for v in [_values(r, "over_run")] if v]
        if not values:
            continue
        label = LABELS.get(name, DIAGNOSIS_LABELS.get(name, name)) + suffix
        lines.append(f"| {label} | {len(values)} | " + " | ".join(
            _per_seed([v[k] for v in values if v[k] is not None], 3 if k != "q_minus_mc" else 2)
            for k in RUN_COLUMNS) + " |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


# What sets each qmix-start method apart (configs/algo/*.yaml, Tables 4-7): OVMSE differs from
# the baselines in both its memory and its exploration; OVM only and SE only split the two.
QMIX_START_METHODS = {"ovmse": ("decentralised SE", "OVM, λ_memory 1 + CQL"),
                      "ovm_only": ("ε-greedy", "OVM, λ_memory 1 + CQL"),
                      "se_only": ("decentralised SE", "TD(λ) + CQL"),
                      "switch_cql": ("ε-greedy", "TD(λ), offline share 0.5"),
                      "macql": ("ε-greedy", "TD(λ) + CQL, offline share 0.3"),
                      "macalql": ("ε-greedy", "TD(λ) + calibrated CQL, offline share 0.5")}
# The qmix-start runs last 50k env steps: their training values are read after the first 10k.
QMIX_START_VALUES_AFTER = 10_000


def _fine_tuning_records(root: Path, diagnosis: str, task: str, budget: int) -> list[tuple[Path, dict]]:
    """``(run dir, record)`` of the diagnosis runs under ``<root>/diagnosis/<diagnosis>/<name>/seed<k>``
    (their starts under ``start/`` and runs set aside left out), named by ``<name>``."""
    from ovmse.report.runs import load_online_run

    out = []
    for path in sorted((root / "diagnosis" / diagnosis).glob("*/seed*")):
        if path.parent.name == "start" or ".incomplete-" in path.name:
            continue
        record = run_record(load_online_run(path), root, {}, budget)
        record.update(task=task, algorithm=path.parent.name, diagnosis=diagnosis)
        out.append((path, record))
    return out


def qmix_start_records(root: Path, budget: int) -> list[dict]:
    """The fine-tuning runs of QMIX's own online policy (``<root>/diagnosis/qmix_start``)."""
    records = []
    for path, record in _fine_tuning_records(root, "qmix_start", "2s3z_medium", budget):
        record.setdefault("values", {})["after_10k"] = run_values(path, after=QMIX_START_VALUES_AFTER)
        curve = record.get("curve")
        if curve:
            record["start_win_rate"] = curve["win_rate"][0]  # the first evaluation comes after one update
            record["lowest_win_rate"] = min(curve["win_rate"])
        records.append(record)
    return records


def qmix_start_table(records: list[dict]) -> str:
    lines = ["| method | exploration (ε from 1.0) | online loss | seeds done | first evaluation, after one update "
             "(per seed) | lowest evaluation win rate (per seed) | final win rate, 640 battles (per seed) | "
             "Q_tot minus Monte-Carlo return after 10k (per seed) | OVM memory sets the target after 10k (per seed) |",
             "|---|---|---|---:|---|---|---|---|---|"]
    for algo, (exploration, loss) in QMIX_START_METHODS.items():
        done = sorted((r for r in records if r["algorithm"] == algo and r["status"] == FINISHED),
                      key=lambda r: r["seed"])
        if done:
            values = [_values(r, "after_10k") or {} for r in done]
            lines.append(f"| {LABELS[algo]} | {exploration} | {loss} | {len(done)} | "
                         f"{_per_seed([r.get('start_win_rate') for r in done])} | "
                         f"{_per_seed([r.get('lowest_win_rate') for r in done])} | "
                         f"{_per_seed([r['final_win_rate'] for r in done])} | "
                         f"{_per_seed([v.get('q_minus_mc') for v in values if v.get('q_minus_mc') is not None], 2)} | "
                         f"{_per_seed([v.get('ovm_active') for v in values if v.get('ovm_active') is not None])} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


# The stalled start's arms (scripts/o2o_2s3z.py STALL_ARMS): Switch-CQL from medium-replay seed 1's
# pretraining, where every O2O method stayed near a 0 win rate; what each arm changes.
STALL_ARM_CHANGES = {"other_online_seed": "nothing but the online seed (11)",
                     "no_offline_data": "offline share 0.5 -> 0",
                     "grad_clip_10": "gradient clip 1 -> 10",
                     "fresh_adam": "the offline Adam state -> a fresh one",
                     "qmix_settings": "all three: QMIX from scratch's settings on the pretrained weights",
                     "best_start": "the start: the pretraining's best evaluation (best.ckpt), not its end",
                     "best_start_alpha_1": "the start: the best evaluation of a pretraining with CQL α 1.0",
                     "best_start_alpha_1_ovmse": "the same start as best_start_alpha_1, fine-tuned by OVMSE",
                     "best_start_alpha_1_macql": "the same start as best_start_alpha_1, fine-tuned by MACQL"}
STALL_WINDOW = 150_000
STALL_SEED = 1


def stalled_start_records(root: Path, budget: int) -> list[dict]:
    """The runs from medium-replay's stalled start (``<root>/diagnosis/stalled_start``)."""
    records = []
    for path, record in _fine_tuning_records(root, "stalled_start", TASKS[1], budget):
        record.setdefault("values", {})["stall_window"] = run_values(path, until=STALL_WINDOW)
        records.append(record)
    return records


def _first_probe(record: dict) -> tuple[float, float] | None:
    probe = record.get("probe") or {}
    return (probe["q_tot"][0], probe["mc_return"][0]) if probe.get("q_tot") and probe.get("mc_return") else None


def _best_up_to(record: dict, limit: float) -> float | None:
    curve = record.get("curve") or {}
    wins = [w for s, w in zip(curve.get("env_steps", []), curve.get("win_rate", [])) if s <= limit + EVAL_SLACK]
    return max(wins) if wins else None


def _window_cells(record: dict, values: dict | None) -> str:
    """First probe (Q_tot, Monte-Carlo return; after the first update), best evaluation win rate up to 150k, the win
    rate and return of the last evaluation there, and Q_tot minus Monte-Carlo return 50k-150k."""
    probe = _first_probe(record)
    first = f"{probe[0]:.2f} / {probe[1]:.2f}" if probe else "—"
    best = _best_up_to(record, STALL_WINDOW)
    curve = record.get("curve") or {}
    steps = np.asarray(curve.get("env_steps", []))
    reached = best is not None and steps[-1] >= STALL_WINDOW  # a running run has no value at 150k yet
    at = value_at(steps, np.asarray(curve["return"]), STALL_WINDOW + EVAL_SLACK) if reached else None
    win_at = _win_at(record, STALL_WINDOW) if reached else None
    short = record.get("env_steps_reached", 0) <= STALL_WINDOW + EVAL_SLACK  # a 150k run: its final test
    gap = (values or {}).get("q_minus_mc")
    return (f"{first} | {_fmt(best)} | {_fmt(win_at)} | {_fmt(at[1] if at else None, 2)} | "
            f"{_fmt(record.get('final_win_rate')) if short else '—'}"
            f" | {_fmt(gap, 2)} |")


# Medium-replay's diagnosis grids (configs/grid/o2o_2s3z_stronger_cql.yaml, o2o_2s3z_replay_lambda.yaml).
STRONGER_CQL = {a: f"{a}+algo.offline.alpha=1.0,env_steps=150000" for a in ("switch_cql", "ovmse")}
REPLAY_ROWS = (("switch_cql", "Switch-CQL (main sweep)", "CQL α 0.05"),
               (STRONGER_CQL["switch_cql"], "Switch-CQL, 150k", "CQL α 1.0"),
               ("ovmse", "OVMSE (main sweep)", "CQL α 0.05"),
               (STRONGER_CQL["ovmse"], "OVMSE, 150k", "CQL α 1.0"),
               (LAMBDA_ANNEALED, "OVMSE, λ_memory annealed 1.0 -> 0.05 over 100k", "CQL α 0.05"),
               # The early-stopped starts of every seed (stalled-start arms, diagnosis/stalled_start/<arm>/seed<k>).
               ("best_start_alpha_1", "Switch-CQL from the pretraining's best evaluation, 150k",
                "CQL α 1.0, early-stopped"),
               ("best_start_alpha_1_ovmse", "OVMSE from the pretraining's best evaluation, 150k",
                "CQL α 1.0, early-stopped"),
               ("best_start_alpha_1_macql", "MACQL from the pretraining's best evaluation, 150k",
                "CQL α 1.0, early-stopped"))
# The stalled-start arms that start from a pretraining's best evaluation; the stalled-start table
# shows their seed-1 run (the stalled run's seed), the replay table every seed's.
BEST_START_ARM_NAMES = ("best_start", "best_start_alpha_1", "best_start_alpha_1_ovmse", "best_start_alpha_1_macql")


def replay_table(records: list[dict]) -> str:
    """Medium-replay's starts and OVMSE's memory: the main runs and the diagnosis runs from the same
    seeds (the stalled-start records included), per seed (0, 1, 2 in order; runs still going show
    their evaluations so far)."""
    lines = ["| run | pretraining | seeds (finished) | offline policy: win rate / return (per seed) | first probe (after one "
             "update): Q_tot minus Monte-Carlo return (per seed) | best evaluation win rate up to 150k (per seed) | "
             "final win rate, 640 battles, at the run's end (per seed) | Q_tot minus Monte-Carlo return, 50k to the "
             "run's end (per seed) |", "|---|---|---:|---|---|---|---|---|"]
    for name, label, pretraining in REPLAY_ROWS:
        runs = sorted((r for r in records if r["task"] == TASKS[1] and r["algorithm"] == name and r.get("curve")),
                      key=lambda r: r["seed"])
        if not runs:
            continue
        done = [r for r in runs if r["status"] == FINISHED]  # the per-seed cells follow the seeds column
        probes = [_first_probe(r) for r in runs]
        offline = ", ".join(f"{_fmt(r.get('offline_win_rate'), 2)} / {_fmt(r.get('offline_return'), 1)}" for r in runs)
        seeds = f"{', '.join(str(r['seed']) for r in runs)} ({len(done)} done)"
        lines.append(f"| {label} | {pretraining} | {seeds} | {offline} | "
                     f"{_per_seed([p[0] - p[1] if p else None for p in probes], 2)} | "
                     f"{_per_seed([_best_up_to(r, STALL_WINDOW) for r in runs])} | "
                     f"{_per_seed([r['final_win_rate'] if r['status'] == FINISHED else None for r in runs])} | "
                     f"{_per_seed([(_values(r, 'over_run') or {}).get('q_minus_mc') for r in runs], 2)} |")
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


def stalled_start_table(records: list[dict], arms: list[dict], root: Path) -> str:
    """The stalled Switch-CQL run and QMIX from scratch (same seed, the main sweep's 300k runs read
    over their first 150k), then each arm from the stalled run's start."""
    lines = ["| run | what differs from the stalled Switch-CQL run | online seed | first probe (after one update): Q_tot / "
             "Monte-Carlo return | best evaluation win rate up to 150k | evaluation win rate at 150k | return at 150k | final "
             "test, 640 battles (runs of 150k) | Q_tot minus Monte-Carlo return, 50k-150k |",
             "|---|---|---:|---|---|---|---|---|---|"]
    for algo, label, differs in (("switch_cql", "Switch-CQL, the stalled run (main sweep)", "—"),
                                 ("qmix", "QMIX from scratch (main sweep)", "no pretraining, QMIX's settings")):
        for r in records:
            if r["task"] == TASKS[1] and r["algorithm"] == algo and r["seed"] == STALL_SEED and r.get("curve"):
                run_dir = root / r["path"]
                values = run_values(run_dir, until=STALL_WINDOW) if run_dir.is_dir() else None
                lines.append(f"| {label} | {differs} | {r['seed']} | " + _window_cells(r, values))
    for arm, differs in STALL_ARM_CHANGES.items():
        for r in (r for r in arms if r["algorithm"] == arm
                  and (arm not in BEST_START_ARM_NAMES or r["seed"] == STALL_SEED)):
            lines.append(f"| {arm}{'' if r['status'] == FINISHED else ' (running)'} | {differs} | {r['seed']} | "
                         + _window_cells(r, _values(r, "stall_window")))
    return "\n".join(lines) if len(lines) > 2 else "Not run yet."


# ------------------------------------------------------------------------------------ figures

def _new_figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, squeeze=False)


def _band(ax, records: list[dict], key: str, colour: str, label: str, curve: str = "curve") -> None:
    """Median and interquartile range of the finished runs; a run still going as a thin line
    (a band over seeds would stop where the shortest one is)."""
    running = [r for r in records if r["status"] != FINISHED and r.get(curve)]
    for i, r in enumerate(running):
        ax.plot(r[curve]["env_steps"], r[curve][key], color=colour, linewidth=0.7, alpha=0.6,
                label=f"{label}, unfinished (n={len(running)})" if i == 0 else None)
    curves = [(np.asarray(r[curve]["env_steps"]), np.asarray(r[curve][key])) for r in records
              if r.get(curve) and r["status"] == FINISHED]
    if not curves:
        return
    grid, values = align(curves)
    if grid.size == 0:
        return
    middle, low, high = median_iqr(values)
    ax.plot(grid, middle, color=colour, marker=".", markersize=3, label=f"{label} (n={len(curves)})")
    ax.fill_between(grid, low, high, color=colour, alpha=0.18, linewidth=0)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _offline_line(ax, levels: dict, task: str, key: str) -> None:
    values = [v[key] for v in levels.values() if v["task"] == task]
    if values:
        ax.axhline(statistics.median(values), color="black", linestyle="--", linewidth=1,
                   label=f"offline policy (median of {len(values)})")


def _panel(ax, records: list[dict], levels: dict, task: str, algos, key: str, ylabel: str) -> None:
    """One task's curves of ``key`` for ``algos``, the offline policy dashed."""
    for algo in algos:
        _band(ax, [r for r in records if r["task"] == task and r["algorithm"] == algo], key, COLOURS[algo],
              LABELS[algo])
    _offline_line(ax, levels, task, key)
    ax.set_xlabel("online env steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend(ax)


METRICS = (("win_rate", "evaluation win rate (128 battles)"), ("return", "evaluation return"))


def draw_curves(records: list[dict], levels: dict, path: Path) -> None:
    figure, axes = _new_figure(2, 2, 12, 7.5)
    for col, task in enumerate(TASKS):
        for row, (key, ylabel) in enumerate(METRICS):
            _panel(axes[row][col], records, levels, task, MAIN, key, ylabel)
            axes[row][col].set_title(task.replace("2s3z_", "2s3z "))
    figure.suptitle("2s3z, 300k env steps: median over seeds, interquartile range shaded")
    figure.savefig(path, dpi=100)


def draw_ablations(records: list[dict], levels: dict, path: Path) -> None:
    figure, axes = _new_figure(1, 2, 12, 4)
    for ax, (key, ylabel) in zip(axes[0], METRICS):
        _panel(ax, records, levels, "2s3z_medium", ABLATIONS, key, ylabel)
    figure.suptitle("2s3z medium: ablations (Figure 4(a)) and mixing ratios (Table 2)")
    figure.savefig(path, dpi=100)


def draw_unlearning(records: list[dict], path: Path) -> None:
    figure, axes = _new_figure(1, 1, 7, 4)
    ax = axes[0][0]
    mine = [r for r in records if r["task"] == "2s3z_medium" and r.get("probe")]
    for algo in ("ovmse", "switch_cql", "macql"):
        _band(ax, [r for r in mine if r["algorithm"] == algo], "q_tot", COLOURS[algo], LABELS[algo], curve="probe")
    mc = [r for r in mine if "mc_return" in r["probe"]]
    if mc:
        _band(ax, mc, "mc_return", "black", "Monte-Carlo return of the probe battles", curve="probe")
    ax.set_xlabel("online env steps")
    ax.set_ylabel("Q_tot on the offline policy's trajectories")
    ax.set_title("2s3z medium: unlearning probe (Figure 1)")
    ax.grid(alpha=0.3)
    _legend(ax)
    figure.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------ report

def _recorded_note(merged: list[dict], levels: dict) -> list[str]:
    """What the report took from the result files: per file, the runs (task, run, seeds)."""
    by_file: dict[str, dict[tuple, list[int]]] = {}
    for r in merged:
        by_file.setdefault(r["recorded_in"], {}).setdefault((r["task"], r["algorithm"]), []).append(r["seed"])
    parts = [f"`{name}`: " + "; ".join(f"{task} {LABELS.get(algo, algo)} seed{'s' if len(seeds) > 1 else ''} "
                                       f"{', '.join(map(str, sorted(seeds)))}" for (task, algo), seeds in runs.items())
             for name, runs in by_file.items()]
    listed = (": " + " ".join(f"{p}." for p in parts)) if parts else "."
    return [f"With {len(merged)} finished runs and {len(levels)} pretrainings (marked `recorded`) of earlier sweep "
            "roots on this root's sets, read from the result files (their outputs are gone; the diagnosis value "
            f"tables count the runs whose records keep their training-batch values){listed}", ""]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def dropped_runs(out_json: Path, records: list[dict]) -> list[str]:
    """Finished runs that ``out_json`` (the last report) holds and ``records`` do not: the report
    would lose them (a sweep root that lost its outputs, or another root). A run the last report
    took from another result file (``recorded_in``) is not lost while that file still holds it,
    finished and as its own (not a copy recorded from elsewhere)."""
    if not out_json.is_file():
        return []
    have = {r["path"] for r in records if r["status"] == FINISHED}
    old = json.loads(out_json.read_text()).get("runs", [])
    kept_by: dict[str, set[str]] = {}  # a result file -> the finished runs it holds as its own

    def kept_elsewhere(run: dict) -> bool:
        name = run.get("recorded_in")
        if not name or (out_json.parent / name).resolve() == out_json.resolve():
            return False
        if name not in kept_by:
            path = out_json.parent / name
            runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
            kept_by[name] = {r.get("path") for r in runs if r.get("status") == FINISHED and not r.get("recorded_in")}
        return run.get("path") in kept_by[name]

    return sorted({r["path"] for r in old
                   if r.get("status") == FINISHED and r.get("path") not in have and not kept_elsewhere(r)})


def recorded_elsewhere(root: Path, files: list[Path], have: set[str]) -> tuple[list[dict], dict[str, dict]]:
    """The finished runs and the pretrainings that ``files`` (result files of earlier sweep roots,
    whose outputs are gone) hold on the sets ``root`` pinned (``o2o_2s3z.on_root_set``: QMIX from
    scratch reads none), other than the runs whose paths are in ``have`` (those the root finished
    itself); each marked with its file (``recorded_in``). A run in several files is taken from
    the first."""
    from o2o_2s3z import on_root_set, on_set, pinned_set  # noqa: PLC0415
    from o2o_2s3z_stats import UNRECORDED, merged_runs, set_label  # noqa: PLC0415

    pins = {task: pin for task in TASKS if (pin := pinned_set(root, task)) is not None}
    runs, taken = [], set()
    for path in files:
        for r in merged_runs([path]):
            key = (r["task"], r["algorithm"], r["seed"])
            if (r.get("status") != FINISHED or not r.get("path") or r["path"] in have or key in taken
                    or not on_root_set(r["algorithm"], r["set"], pins.get(r["task"]))):
                continue
            taken.add(key)
            # A record copied into this file keeps the file it was first recorded in.
            runs.append({**{k: v for k, v in r.items() if k != "set"}, "recorded_in": r.get("recorded_in") or path.name})
    levels = {}
    for path in files:
        for key, level in (json.loads(path.read_text()).get("offline") or {}).items():
            dataset = level.get("dataset") or {}
            label = set_label(dataset) if dataset.get("transitions") is not None else UNRECORDED.format(level["updates"])
            if level["task"] in pins and on_set(label, pins[level["task"]]):
                levels.setdefault(key, {**level, "recorded_in": level.get("recorded_in") or path.name})
    return runs, levels


def report(root: Path, budget: int = 300_000, doc: Path = ROOT / "docs" / "results.md",
           out_json: Path = ROOT / "benchmarks" / "results" / "o2o_2s3z.json", allow_dropping: bool = False,
           recorded: list[Path] | None = None, with_recorded: bool = False) -> list[dict]:
    """Write the JSON (``root``'s runs), the figures (beside ``doc``, under ``img/``) and
    ``doc``'s section (``root``'s runs and the finished runs that the result files ``recorded``
    hold on the root's sets, :func:`recorded_elsewhere`; default: every result file but
    ``out_json``); returns the root's run records. With ``with_recorded`` the JSON holds every
    run and pretraining the section reads, the recorded ones marked ``recorded_in`` (one file for
    the whole experiment). Refuses (``SystemExit``, nothing written) when the last report holds
    finished runs that ``root`` does not, unless ``allow_dropping``."""
    from o2o_2s3z_stats import record_files  # noqa: PLC0415

    root_levels = offline_levels(root)
    runs = by_task(load_online_runs(root))
    records = [run_record(r, root, root_levels, budget) for r in runs if r.task in TASKS]
    dropped = dropped_runs(out_json, records)
    if dropped and not allow_dropping:
        raise SystemExit(f"{out_json} holds {len(dropped)} finished runs that {root} does not "
                         f"({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}): a report from this root "
                         "would lose them. Report from the sweep root that has them, write this root's runs to a "
                         f"file of their own (--out-json benchmarks/results/o2o_2s3z.part-{time.strftime('%Y-%m-%d')}"
                         ".json: the tables still take the recorded runs), or pass --allow-dropping (git keeps the "
                         "old report).")
    diagnosis = qmix_start_records(root, budget)
    stalled = stalled_start_records(root, budget)
    if recorded is None:
        recorded = [f for f in record_files() if f.is_file() and f.resolve() != out_json.resolve()]
    root_done = {r["path"] for r in records if r["status"] == FINISHED}
    merged, merged_levels = recorded_elsewhere(root, recorded, root_done)
    # A recorded finished run wins over the root's unfinished one of the same cell (the worker
    # passes over recorded cells), the root's finished one over a recorded one.
    replaced = {r["path"] for r in merged}
    root_records, records = records, [r for r in records if r["path"] not in replaced] + merged
    root_finished, levels = len(root_done), {**merged_levels, **root_levels}
    out_json.write_text(json.dumps({
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "code": _git_commit(), "sweep_root": str(_shown(root)),
        "budget_env_steps": budget, "offline": levels if with_recorded else root_levels,
        "runs": records if with_recorded else root_records,
        "diagnosis_qmix_start": diagnosis, "diagnosis_stalled_start": stalled}, indent=1) + "\n")
    print(f"wrote {out_json}" + (f" ({len(merged)} runs recorded in other result files included)" if with_recorded else ""))
    img = doc.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    draw_curves(records, levels, img / "o2o_2s3z_curves.png")
    draw_ablations(records, levels, img / "o2o_2s3z_ablations.png")
    draw_unlearning(records, img / "o2o_2s3z_unlearning.png")

    offline_rows = "\n".join(_offline_row(k, v) for k, v in levels.items())
    body = [
        f"Report written {time.strftime('%Y-%m-%dT%H:%M:%S')} from `{_shown(root)}` "
        f"(code at `{_git_commit()}`): {root_finished} finished runs. Unfinished runs (running, or stopped to be resumed) show in the curves "
        "(their evaluations so far) and in the `seeds done` column, not in the medians.",
        "",
        *(_recorded_note(merged, merged_levels) if merged or merged_levels else []),
        "Offline pretrainings (MACQL, α 0.05, 10.05M dataset timesteps; the last greedy evaluation, 128 battles; "
        "`plain`: shared by OVMSE, Switch-CQL, MACQL and the ablations; `calibrated`: Cal-QL's bound, MACal-QL's own):",
        "",
        "| task | run | CQL | dataset (transitions, collected at, made) | updates | win rate | return | best evaluation: "
        "win rate, return (update) | wall-clock |",
        "|---|---|---|---|---:|---:|---:|---|---:|",
        offline_rows or "| — | — | — | — | — | — | — | — |",
        "",
    ]
    for task in TASKS:
        body += [f"**{task}**", "", task_table(records, task, MAIN + (MACALQL_PLAIN,)
                                               + (ABLATIONS[1:] if task == "2s3z_medium" else ()), budget), ""]
    body += ["The paper's claims for 2s3z against these runs:", "", *claims(records, budget), "",
             "**Diagnosis** (`python scripts/o2o_2s3z.py diagnose`): what the results above would need to be explained.",
             "", "*Values at the switch* (2s3z medium, training batches, medians over runs with per-run values; "
             "QMIX from scratch for comparison):", "", switch_table(records), "",
             "*Values over the run* (2s3z medium, then the main comparison on medium-replay; medians over each "
             "run's logged rows after the first 50k env steps; QMIX's row is the run from scratch):", "",
             run_values_table(records), "",
             "*The first 16k env steps* (OVMSE on 2s3z medium, evaluations every 2k env steps):", "",
             switch_diagnosis_table(records), "",
             "*Exploration at the switch* (2s3z medium, from the same pretrainings; ε = 1.0 rows: the 300k runs "
             "above, read at 100k):", "", exploration_table(records), "",
             "*The offline memory* (OVMSE on 2s3z medium: with λ_memory = 1 Eq. 5 has no TD(λ) term left, so the "
             "target the memory is compared with is the only target):", "", memory_table(records), "",
             "*One-step targets* (QMIX from scratch on 2s3z; OVM only's Q_tot overestimates its return "
             "while its memory rarely sets the target: is the one-step target alone the cause?):", "",
             targets_table(records), "",
             "*The memory, the one-step targets or the offline data* (2s3z medium, exploration from ε = 1.0, from the "
             "same pretrainings; OVM only, MACQL, OVMSE and SE only are the 300k runs above read over their first "
             "100k env steps):", "",
             no_memory_table(records), "",
             "*A good policy that no offline phase made* (each O2O method, and OVMSE's two ablations, fine-tuning "
             "QMIX's own online policy, its best evaluation of the run from scratch, for 50k env steps; "
             "evaluations every 5k; ε anneals from 1.0 over 100k env steps, so it is still near 0.5 at the end):", "",
             qmix_start_table(diagnosis), "",
             "*Medium-replay's stalled start* (every O2O method fine-tuning seed 1's plain pretraining stays near a 0 "
             "win rate for 300k env steps while QMIX from scratch reaches 0.99: Switch-CQL, whose online loss is "
             "QMIX's TD(λ), from that start for 150k env steps with one setting at a time moved to QMIX from "
             "scratch's, then all of them, and with another online seed; one run each; evaluations every 10k; the "
             "probe is the offline policy's own greedy battles, Q_tot at their start against their return):", "",
             stalled_start_table(records, stalled, root), "",
             "*Medium-replay's starts and OVMSE's memory* (the main runs on medium-replay; their starts pretrained "
             "with CQL α 1.0 instead of the paper's 0.05 and fine-tuned for 150k env steps, from the pretraining's end "
             "and from its best evaluation (best.ckpt, picked by the pretraining's greedy evaluations); OVMSE with "
             "λ_memory annealed, 300k; the probe is the offline policy's own greedy battles):", "",
             replay_table(records + stalled), "",
             "![2s3z curves](img/o2o_2s3z_curves.png)", "", "![2s3z ablations](img/o2o_2s3z_ablations.png)", "",
             "![2s3z unlearning probe](img/o2o_2s3z_unlearning.png)", ""]
    replace_section(doc, BEGIN, END, "\n".join(body))
    return root_records

"""The field's statistics for the 2s3z experiment, from its records (``benchmarks/results/o2o_2s3z.json``,
written by ``python scripts/o2o_2s3z.py report``): per task and algorithm the IQM and median
of the final win rate (640 battles) with stratified-bootstrap 95% intervals, the probability
that OVMSE improves on each other algorithm, IQM sample-efficiency curves, and the runs in
marl-eval's JSON format (:mod:`ovmse.report.statistics`).

    python scripts/o2o_2s3z.py stats

Writes ``benchmarks/results/o2o_2s3z_stats.json``, ``benchmarks/results/o2o_2s3z_marl_eval.json``,
``docs/img/o2o_2s3z_iqm.png`` and the statistics section of docs/results.md. It reads only the
records, so it works wherever they are (no sweep outputs needed).

Two sweeps of one protocol can pretrain on two different "medium" sets (the data collected
again by another commit; docs/datasets.md). Each run is tagged with the set its pretraining
read (:func:`set_of`); the statistics are given twice: on the current set alone (per task, the
most recently made set its records name), and over every run with the sets pooled, one run
per seed (the current set's where a seed ran on both).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from ovmse.report.statistics import final_score_rows, iqm_curve, marl_eval_runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from docs_sections import replace_section  # noqa: E402

BEGIN, END = "<!-- O2O-2S3Z-STATS:BEGIN (written by python scripts/o2o_2s3z.py stats) -->", "<!-- O2O-2S3Z-STATS:END -->"
REFERENCE = "ovmse"
GRID = np.arange(10_000, 300_001, 10_000)
MIN_SEEDS = 3  # fewer seeds get no interval in the table (a bootstrap of 1-2 values says nothing)
SLACK = 2_000  # an evaluation counts for the grid step it is within this many env steps of


def finished_runs(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "finished" and r.get("final_win_rate") is not None]


def on_grid(record: dict) -> np.ndarray | None:
    """The run's evaluation win rates at the grid steps, or None if it misses one."""
    steps = np.asarray(record.get("curve", {}).get("env_steps", []), dtype=float)
    wins = np.asarray(record.get("curve", {}).get("win_rate", []), dtype=float)
    if steps.size == 0:
        return None
    nearest = np.abs(steps[None, :] - GRID[:, None]).argmin(axis=1)
    if (np.abs(steps[nearest] - GRID) > SLACK).any():
        return None
    return wins[nearest]


def statistics(records: list[dict], reps: int = 2000) -> dict:
    """Per task: per algorithm the final win rates, IQM and median with intervals, and the
    probability that the reference algorithm (OVMSE) improves on it; IQM curves."""
    out: dict = {}
    runs = finished_runs(records)
    for task in sorted({r["task"] for r in runs}):
        by_algo: dict[str, list[dict]] = {}
        for r in runs:
            if r["task"] == task:
                by_algo.setdefault(r["algorithm"], []).append(r)
        ordered = {algo: sorted(algo_runs, key=lambda r: r["seed"]) for algo, algo_runs in sorted(by_algo.items())}
        # Intervals for every algorithm (the table shows them from MIN_SEEDS on); variants run other
        # budgets, so OVMSE is compared with the main algorithms only.
        scores = {algo: [r["final_win_rate"] for r in algo_runs] for algo, algo_runs in ordered.items()}
        shared = final_score_rows(scores, reference=REFERENCE, reps=reps, min_runs=1)
        rows = {}
        for algo, algo_runs in ordered.items():
            row = {"seeds": [r["seed"] for r in algo_runs], "sets": [r.get("set") for r in algo_runs],
                   "final_win_rate": scores[algo],
                   **{k: shared[algo][k] for k in ("iqm", "iqm_ci", "median", "median_ci")}}
            if "p_better" in shared[algo] and "+" not in algo:
                row[f"p_{REFERENCE}_better"] = shared[algo]["p_better"]
                row[f"p_{REFERENCE}_better_ci"] = shared[algo]["p_better_ci"]
            curves = [c for c in (on_grid(r) for r in algo_runs) if c is not None]
            if curves:
                row["iqm_curve"] = {"env_steps": GRID.tolist(), **iqm_curve(np.array(curves)[:, None, :], reps=reps // 4)}
            rows[algo] = row
        out[task] = rows
    return out


def _ci(pair) -> str:
    return f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def _table(rows: dict, tags: dict[str | None, str] | None = None) -> list[str]:
    """One task's rows; ``tags`` marks each per-seed value with the set it ran on."""
    lines = ["| algorithm | seeds | final win rate per seed | IQM [95% CI] | median [95% CI] | P(OVMSE > X) [95% CI] |",
             "|---|---:|---|---|---|---|"]
    # The main algorithms and ablations first, then the diagnosis variants (other settings or budgets).
    for algo, row in sorted(rows.items(), key=lambda kv: ("+" in kv[0], kv[0])):
        n = len(row["seeds"])
        ci = (lambda pair: _ci(pair)) if n >= MIN_SEEDS else (lambda pair: f"(no interval: {n} seed{'s' * (n > 1)})")
        poi = (f"{row[f'p_{REFERENCE}_better']:.2f} {ci(row[f'p_{REFERENCE}_better_ci'])}"
               if f"p_{REFERENCE}_better" in row else "—")
        values = [f"{v:.3f}" + (f" ({tags[s]})" if tags and s is not None else "")
                  for v, s in zip(row["final_win_rate"], row.get("sets") or [None] * n)]
        lines.append(f"| {algo} | {n} | {', '.join(values)} | {row['iqm']:.3f} {ci(row['iqm_ci'])} | "
                     f"{row['median']:.3f} {ci(row['median_ci'])} | {poi} |")
    return lines


def markdown(result: dict, source: str) -> str:
    current, current_stats, pooled = result["current_set"], result["tasks"], result["pooled"]
    lines = [f"Written {time.strftime('%Y-%m-%dT%H:%M:%S')} by `python scripts/o2o_2s3z.py stats` from `{source}` "
             "(finished runs only). Final win rate over 640 battles; IQM and median over seeds with "
             "stratified-bootstrap 95% intervals; P(OVMSE > X): the probability that an OVMSE run (the paper's "
             "2s3z setting) ends above a run of X, ties counting half (300k-step runs only). Intervals are shown "
             f"from {MIN_SEEDS} seeds on; with 3 they are wide, and say how little the runs can tell apart.", ""]
    labels = sorted({s for rows in pooled.values() for row in rows.values() for s in row["sets"] if s is not None})
    tags = {label: chr(ord("A") + i) for i, label in enumerate(labels)}
    for task in pooled:
        if current.get(task) is not None and task in current_stats:
            lines += [f"**{task}, runs on one set: {current[task]}** (and QMIX from scratch, which reads none)", "",
                      *_table(current_stats[task]), ""]
        lines += [f"**{task}, every run, the sets pooled** (one run per seed, the current set's where a seed ran on "
                  "both; the letter after a value is the set its pretraining read)", "", *_table(pooled[task], tags), ""]
    if labels:
        lines += ["Sets: " + "; ".join(f"{tags[label]}: {label}" for label in labels) + ".", ""]
    lines += ["![IQM sample-efficiency curves](img/o2o_2s3z_iqm.png)", ""]
    return "\n".join(lines)


def draw(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, rows in stats.items() if any("iqm_curve" in r for r in rows.values())]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(7 * max(len(tasks), 1), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for algo, row in stats[task].items():
            if "iqm_curve" not in row or "+" in algo:  # the main algorithms; variants are in the table
                continue
            c = row["iqm_curve"]
            x = np.asarray(c["env_steps"]) / 1000
            ax.plot(x, c["iqm"], label=f"{algo} ({len(row['seeds'])})")
            if len(row["seeds"]) >= MIN_SEEDS:
                ax.fill_between(x, c["low"], c["high"], alpha=0.2)
        ax.set(title=f"{task}: IQM of the greedy win rate, datasets pooled (95% CI from {MIN_SEEDS} seeds)",
               xlabel="env steps (k)", ylabel="win rate",
               ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def record_files(results: Path = ROOT / "benchmarks" / "results") -> list[Path]:
    """The report's records, then the parts reported from other sweep roots
    (``o2o_2s3z.part-*.json``: runs of a session whose machine lacked the earlier outputs)."""
    return [results / "o2o_2s3z.json", *sorted(results.glob("o2o_2s3z.part-*.json"))]


def set_label(dataset: dict) -> str:
    """A dataset identity (a record's ``dataset``, a sweep root's pin) as a label: its size and the
    commit that collected it (the same commit makes the same set again:
    ``ovmse.phases.fine_tuning.SET_FIELDS``); the creation time for records without the commit."""
    if dataset.get("git_commit"):
        return f"{int(dataset['transitions']):,} transitions, collected at {dataset['git_commit']}"
    return f"{int(dataset['transitions']):,} transitions, made {dataset.get('created') or '?'}"


def set_of(record: dict, offline: dict) -> str | None:
    """The dataset a run's pretraining read, as a label: its recorded identity (:func:`set_label`:
    transitions and the commit that collected it), or, for records from before the report kept it, the update count of the
    file's pretrainings of the task (10.05M dataset timesteps make a count that depends on the
    set's size: 1355 updates for Table 8's 284,872-transition 2s3z medium set, 1263 for the
    305,838 one). None for QMIX from scratch (no dataset)."""
    dataset = record.get("dataset")
    if dataset and dataset.get("transitions") is not None:
        return set_label(dataset)
    if record["algorithm"].split("+")[0] == "qmix":
        return None
    updates = {v["updates"] for v in offline.values() if v.get("task") == record["task"] and "updates" in v}
    if not updates:
        return "not recorded"
    if len(updates) > 1 and record.get("status") != "finished":
        return None  # an unfinished run enters no statistic
    if len(updates) > 1:
        raise SystemExit(f"{record['task']} {record['algorithm']} seed {record['seed']}: the record names no dataset "
                         f"and its file's pretrainings made {sorted(updates)} updates: cannot tell its set")
    return UNRECORDED.format(updates.pop())


UNRECORDED = "not recorded (pretrainings of {} updates)"


def unrecorded_updates(label: str | None) -> int | None:
    """The pretrainings' update count of an :data:`UNRECORDED` label (None for another label)."""
    match = re.fullmatch(re.escape(UNRECORDED).replace(r"\{\}", r"(\d+)"), label or "")
    return int(match.group(1)) if match else None


def merged_runs(paths: list[Path]) -> list[dict]:
    """The runs of every file, each tagged with its ``set`` (:func:`set_of`), and each (task,
    algorithm, seed, set) once: the first file's wins."""
    runs, seen = [], {}  # key -> the file the kept record says it was first recorded in
    for path in paths:
        data = json.loads(path.read_text())
        for r in data["runs"]:
            r = {**r, "set": set_of(r, data.get("offline") or {})}
            key = (r["task"], r["algorithm"], r["seed"], r["set"])
            if r.get("status") == "finished" and key in seen:
                if seen[key] != path.name:  # not just the copy a report made of this file's record
                    print(f"{path.name}: {key[:3]} on {key[3] or 'no dataset'} is in an earlier file too; the earlier "
                          "one is kept")
                continue
            if r.get("status") == "finished":
                seen[key] = r.get("recorded_in")
            runs.append(r)
    return runs


def current_set(runs: list[dict]) -> str | None:
    """The most recently made set the records of one task name; where none names one, the only
    set its runs read (None when they read several and none is recorded: no set is "current")."""
    made = {(r["dataset"].get("created") or "", r["set"]) for r in runs
            if r.get("dataset") and r["dataset"].get("transitions") is not None}
    if made:
        return max(made)[1]
    sets = {r["set"] for r in runs if r.get("set") is not None}
    return sets.pop() if len(sets) == 1 else None


def one_run_per_seed(runs: list[dict], preferred: dict[str, str | None]) -> list[dict]:
    """Finished runs, one per (task, algorithm, seed): the one on its task's ``preferred`` set
    where a seed ran on two."""
    chosen: dict[tuple, dict] = {}
    for r in finished_runs(runs):
        key, best = (r["task"], r["algorithm"], r["seed"]), preferred.get(r["task"])
        if key not in chosen or (r["set"] == best and chosen[key]["set"] != best):
            chosen[key] = r
    return list(chosen.values())


def main(records_paths: list[Path] | None = None, out_dir: Path = ROOT / "benchmarks" / "results",
         doc: Path = ROOT / "docs" / "results.md", reps: int = 2000) -> dict:
    """Statistics on the current set and pooled over sets; returns what it writes to the JSON."""
    paths = record_files() if records_paths is None else list(records_paths)
    records = merged_runs(paths)
    # Per task: each task has a dataset of its own (medium, medium-replay).
    current = {task: current_set([r for r in records if r["task"] == task]) for task in sorted({r["task"] for r in records})}
    runs = one_run_per_seed(records, current)
    on_current = [r for r in runs if current[r["task"]] is not None and r["set"] in (current[r["task"]], None)]
    result = {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "records": [p.name for p in paths],
              "reference": REFERENCE, "current_set": current, "tasks": statistics(on_current, reps=reps),
              "pooled": statistics(runs, reps=reps)}
    (out_dir / "o2o_2s3z_stats.json").write_text(json.dumps(result, indent=1) + "\n")
    marl = [{"task": r["task"], "algorithm": r["algorithm"], "seed": r["seed"], "steps": r["curve"]["env_steps"],
             "values": r["curve"]["win_rate"], "final": r["final_win_rate"]} for r in runs if r.get("curve")]
    (out_dir / "o2o_2s3z_marl_eval.json").write_text(json.dumps(marl_eval_runs(marl, "smac_sim"), indent=1) + "\n")
    (doc.parent / "img").mkdir(parents=True, exist_ok=True)
    draw(result["pooled"], doc.parent / "img" / "o2o_2s3z_iqm.png")
    replace_section(doc, BEGIN, END, markdown(result, ", ".join(p.name for p in paths)))
    print(f"wrote {out_dir / 'o2o_2s3z_stats.json'}, {out_dir / 'o2o_2s3z_marl_eval.json'} and {doc}")
    return result


if __name__ == "__main__":
    main()

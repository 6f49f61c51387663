#!/usr/bin/env python
"""Offline pretraining on our 2s3z datasets, with and without CQL: run (resumable) and report.

    python scripts/offline_pretraining.py                 # train the 4 runs (in parallel), evaluate, report
    python scripts/offline_pretraining.py --report-only   # only rebuild the docs/results.md section

Runs, each ``python train.py phase=offline env=2s3z algo=ovmse dataset=<d> steps=<n>
algo.offline.batch_size=<b> [algo.offline.cql=null]`` into
``outputs/experiments/offline_2s3z_<dataset>_<cql>_seed<s>``:

* datasets ``medium`` and ``medium_replay`` (``data/2s3z/``, made by ``phase=collect``);
* MACQL with the paper's α = 0.05 for 2s3z, and no CQL (plain offline QMIX).

A run whose ``offline_summary.json`` exists is skipped. For every finished run the report

* evaluates ``checkpoints/last.ckpt`` greedily over 640 battles (``evaluate.py``, cached);
* measures on 1000 dataset episodes (the same for every run of a dataset) the mean
  ``Q_tot(τ, a_dataset)``, the mean ``Q_tot(τ, a_greedy)`` and the mean Monte-Carlo
  return-to-go ``G_t`` of the dataset (cached);

and writes the table into ``docs/results.md`` between the OFFLINE markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from docs_sections import replace_section
from run_queue import run_queue

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- OFFLINE-PRETRAINING:BEGIN (written by scripts/offline_pretraining.py) -->"
END = "<!-- OFFLINE-PRETRAINING:END -->"
DATASETS = ("medium", "medium_replay")
VARIANTS = ("macql", "none")


def run_dir(out_root: Path, dataset: str, cql: str, seed: int) -> Path:
    return out_root / f"offline_2s3z_{dataset}_{cql}_seed{seed}"


def command(out: Path, dataset: str, cql: str, seed: int, steps: int, batch: int, eval_every: int) -> list[str]:
    cmd = [sys.executable, "train.py", "phase=offline", "env=2s3z", "algo=ovmse", f"dataset={dataset}",
           f"steps={steps}", f"algo.offline.batch_size={batch}", f"seed={seed}", f"eval.interval_updates={eval_every}",
           "trainer.progress_refresh_rate=100", f"hydra.run.dir={out}"]
    if cql == "none":
        cmd.append("algo.offline.cql=null")
    return cmd


def train_all(args, out_root: Path) -> None:
    jobs = []
    for dataset in DATASETS:
        for cql in VARIANTS:
            out = run_dir(out_root, dataset, cql, args.seed)
            if (out / "offline_summary.json").exists():
                print(f"skip {out} (finished)")
                continue
            jobs.append((command(out, dataset, cql, args.seed, args.steps, args.batch_size, args.eval_every), out))
    run_queue(jobs, args.parallel)


def final_evaluation(out: Path, episodes: int) -> dict | None:
    cache = out / f"final_eval_{episodes}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    if not (out / "offline_summary.json").exists():
        return None
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt={out / 'checkpoints' / 'last.ckpt'}",
                           f"episodes={episodes}"], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def value_diagnostics(out: Path, dataset_path: Path, episodes: int = 1000, seed: int = 0) -> dict:
    """Mean Q_tot of dataset and greedy actions vs the dataset's Monte-Carlo return-to-go over
    the valid transitions of ``episodes`` dataset episodes (a fixed, seeded subset)."""
    cache = out / "value_diagnostics.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from ovmse.datasets import load_dataset
    from ovmse.training.qmix_module import load_qmix_checkpoint
    from ovmse.training.value_diagnostics import value_sums

    module = load_qmix_checkpoint(str(out / "checkpoints" / "last.ckpt")).eval()
    ds = load_dataset(dataset_path, validate="structure", in_memory=False)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ds), generator=g)[: min(episodes, len(ds))].sort().values
    sums = {"q_data": 0.0, "q_greedy": 0.0, "mc_return": 0.0, "n": 0.0}
    for start in range(0, len(pick), 100):
        for key, value in value_sums(module, ds.episodes[pick[start : start + 100]]).items():
            sums[key] += value
    result = {k: sums[k] / sums["n"] for k in ("q_data", "q_greedy", "mc_return")}
    result["transitions"] = int(sums["n"])
    result["episodes"] = int(len(pick))
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def training_evals(out_root: Path, dataset: str, cql: str, seed: int) -> str:
    """``update: win rate`` of the greedy evaluations logged during training."""
    import csv

    rows = csv.DictReader((run_dir(out_root, dataset, cql, seed) / "metrics.csv").open())
    return ", ".join(f"{int(float(r['updates']))}: {float(r['eval/win_rate']):.2f}" for r in rows
                     if r.get("eval/win_rate"))


def report(args, out_root: Path) -> str:
    rows = []
    for dataset in DATASETS:
        meta = json.loads((ROOT / "data" / "2s3z" / dataset / "dataset.json").read_text())
        for cql in VARIANTS:
            out = run_dir(out_root, dataset, cql, args.seed)
            ev = final_evaluation(out, 640)
            if ev is None:
                continue
            summary = json.loads((out / "offline_summary.json").read_text())
            vd = value_diagnostics(out, ROOT / "data" / "2s3z" / dataset)
            rows.append((dataset, cql, summary, ev, vd, meta))
    if not rows:
        return "(no finished runs)"
    lines = [
        "| dataset | CQL (α) | updates | greedy win rate, 640 battles | dataset behaviour win rate | "
        "evaluations during training (32 battles each, by update) | "
        "Q_tot(τ, a_data) | Q_tot(τ, a_greedy) | MC return G_t | Q_data − G_t | wall-clock |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for dataset, cql, summary, ev, vd, meta in rows:
        label = f"MACQL ({summary['cql_alpha']:g})" if cql == "macql" else "none"
        minutes = summary.get("wall_seconds")
        lines.append(
            f"| 2s3z {dataset} | {label} | {summary['updates']} | **{ev['win_rate']:.3f}** | {meta['win_rate']:.3f} | "
            f"{training_evals(out_root, dataset, cql, args.seed)} | "
            f"{vd['q_data']:.2f} | {vd['q_greedy']:.2f} | {vd['mc_return']:.2f} | {vd['q_data'] - vd['mc_return']:+.2f} | "
            f"{'' if minutes is None else f'{minutes / 60:.0f} min'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--out", default="outputs/experiments")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out_root = ROOT / args.out
    if not args.report_only:
        train_all(args, out_root)
    table = report(args, out_root)
    print(table)
    args.table = table
    write_docs(args, table)


def write_docs(args, table: str) -> None:
    replace_section(ROOT / "docs" / "results.md", BEGIN, END, "\n" + table + "\n", "## Offline pretraining (2s3z)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Offline pretraining on our 2s3z datasets, 3 seeds per setting: run (resumable) and report.

    python scripts/offline_pretraining.py                    # train what is missing, evaluate, report
    python scripts/offline_pretraining.py --settings macql   # one setting only
    python scripts/offline_pretraining.py --report-only      # only rebuild the JSON and the docs table

Each run is ``python train.py phase=offline env=2s3z algo=ovmse dataset=<d> steps=<n> seed=<s>
algo.offline.batch_size=128 ...`` into ``<out>/offline_2s3z_<dataset>_<setting>_seed<s>`` (``--out``, default
``outputs/experiments/offline_2s3z``):

* datasets ``medium`` and ``medium_replay`` (``<data_root>/2s3z/``, made by ``phase=collect``);
* settings: ``macql`` = MACQL with the paper's α (Table 3: 0.05 on 2s3z), valid sampled joint
  actions; ``cfcql`` = CFCQL with the CFCQL README's α and softmax temperature for the set
  (medium 0.1 / 0.5, medium-replay 5 / 0.1); ``none`` = plain offline QMIX (on request);
  and two diagnostics that undo one issue-16 fix each: ``macql_refresh1`` (the target copied
  after every update, as before) and ``macql_sample_all`` (MACQL samples over all actions,
  invalid ones left out, as before);
* budget: CFCQL's, which counts dataset timesteps (``t_max`` 10,050,000 of ``filled`` rows):
  ``ceil(t_max / (batch · mean filled rows per episode))`` updates for the dataset;
* target refresh every 7 updates (the paper's 50 episodes at CFCQL's 8 per update), batches
  without replacement: the defaults of ``configs/algo/o2o.yaml``.

A run whose ``offline_summary.json`` exists is skipped (an interrupted one starts again). For
every finished run the report

* evaluates ``checkpoints/last.ckpt`` greedily over 640 battles (``evaluate.py``, cached);
* measures on 1000 dataset episodes (the same for every run of a dataset) the mean
  ``Q_tot(τ, a_dataset)``, ``Q_tot(τ, a_greedy)``, the Monte-Carlo return-to-go ``G_t`` and the
  share of agent decisions whose greedy action is the dataset's (cached);

and writes ``benchmarks/results/offline_2s3z.json`` (one record per dataset, setting and seed)
and the table into ``docs/results.md`` between the OFFLINE markers.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from docs_sections import replace_section
from ovmse.phases.common import write_json
from ovmse.phases.offline import offline_updates
from run_queue import run_queue

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- OFFLINE-PRETRAINING:BEGIN (written by scripts/offline_pretraining.py) -->"
END = "<!-- OFFLINE-PRETRAINING:END -->"
DATASETS = ("medium", "medium_replay")
CFCQL_T_MAX = 10_050_000  # dataset timesteps (CFCQL cql_qmix.yaml t_max)
# CFCQL README α / softmax temperature per 2s3z dataset.
CFCQL_README = {"medium": (0.1, 0.5), "medium_replay": (5.0, 0.1)}
SETTINGS = ("macql", "cfcql", "none", "macql_refresh1", "macql_sample_all")


def run_dir(out_root: Path, dataset: str, setting: str, seed: int) -> Path:
    return out_root / f"offline_2s3z_{dataset}_{setting}_seed{seed}"


def cfcql_budget(meta: dict, batch: int) -> int:
    """Updates that consume CFCQL's t_max dataset timesteps (``phase=offline dataset_timesteps=``)."""
    return offline_updates(0, CFCQL_T_MAX, batch, meta["episodes"], meta["transitions"])


def setting_overrides(setting: str, dataset: str) -> list[str]:
    if setting == "macql":
        return ["algo.offline.cql=macql"]  # α: the paper's, from configs/algo/o2o.yaml
    if setting == "cfcql":
        alpha, temperature = CFCQL_README[dataset]
        return ["algo.offline.cql=cfcql", f"algo.offline.alpha={alpha}", f"algo.offline.cfcql_temperature={temperature}"]
    if setting == "none":
        return ["algo.offline.cql=null"]
    if setting == "macql_refresh1":
        return ["algo.offline.cql=macql", "algo.offline.target_update_updates=1"]
    if setting == "macql_sample_all":
        return ["algo.offline.cql=macql", "algo.offline.sampling=all"]
    raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")


def command(args, out: Path, dataset: str, setting: str, seed: int, steps: int) -> list[str]:
    return [sys.executable, "train.py", "phase=offline", "env=2s3z", "algo=ovmse", f"dataset={dataset}",
            f"data_root={args.data_root}", f"steps={steps}", f"algo.offline.batch_size={args.batch_size}",
            f"seed={seed}", f"eval.interval_updates={args.eval_every}", f"eval.episodes={args.eval_episodes}",
            f"eval.num_envs={args.eval_episodes}", f"num_threads={args.threads}", "trainer.progress_refresh_rate=100",
            f"hydra.run.dir={out}", *setting_overrides(setting, dataset)]


def dataset_meta(args, dataset: str) -> dict:
    return json.loads((Path(args.data_root) / "2s3z" / dataset / "dataset.json").read_text())


def train_all(args, out_root: Path) -> None:
    jobs = []
    for dataset in args.datasets:
        steps = args.steps or cfcql_budget(dataset_meta(args, dataset), args.batch_size)
        for setting in args.settings:
            for seed in args.seeds:
                out = run_dir(out_root, dataset, setting, seed)
                if (out / "offline_summary.json").exists():
                    check_current(out)
                    print(f"skip {out} (finished)")
                    continue
                if out.exists():  # killed: offline runs start again, the old directory kept beside
                    from ovmse.sweeps.stages import set_aside

                    set_aside(out)
                jobs.append((command(args, out, dataset, setting, seed, steps), out))
    run_queue(jobs, args.parallel)


def check_current(out: Path) -> None:
    """A finished run counts only if it was made with this protocol (its summary records the
    offline settings, which runs from before issue 16 do not)."""
    summary = json.loads((out / "offline_summary.json").read_text())
    if "target_update_updates" not in summary.get("settings", {}):
        raise SystemExit(f"{out}: a run from before issue 16 (no target_update_updates in its offline_summary.json); "
                         "move it away or pass --out to a fresh directory")


def final_evaluation(out: Path, episodes: int) -> dict | None:
    cache = out / f"final_eval_{episodes}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    if not (out / "offline_summary.json").exists():
        return None
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt={out / 'checkpoints' / 'last.ckpt'}",
                           f"episodes={episodes}"], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    write_json(cache, result)  # atomic: a kill leaves no half-written cache
    return result


@torch.no_grad()
def value_diagnostics(out: Path, dataset_path: Path, episodes: int = 1000, seed: int = 0) -> dict:
    """Mean Q_tot of dataset and greedy actions vs the dataset's Monte-Carlo return-to-go over
    the valid transitions of ``episodes`` dataset episodes (a fixed, seeded subset), and the
    share of agent decisions whose greedy action is the dataset action."""
    cache = out / "value_diagnostics.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if "greedy_is_data_action" in cached:
            return cached
    from ovmse.datasets import load_dataset
    from ovmse.training.qmix_module import load_qmix_checkpoint
    from ovmse.training.value_diagnostics import value_sums

    module = load_qmix_checkpoint(str(out / "checkpoints" / "last.ckpt")).eval()
    ds = load_dataset(dataset_path, validate="structure", in_memory=False)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ds), generator=g)[: min(episodes, len(ds))].sort().values
    sums: dict[str, float] = {}
    for start in range(0, len(pick), 100):
        for key, value in value_sums(module, ds.episodes[pick[start : start + 100]]).items():
            sums[key] = sums.get(key, 0.0) + value
    result = {k: sums[k] / sums["n"] for k in ("q_data", "q_greedy", "mc_return")}
    result["greedy_is_data_action"] = sums["agree"] / max(sums["decisions"], 1.0)
    result["transitions"] = int(sums["n"])
    result["episodes"] = int(len(pick))
    write_json(cache, result)  # atomic: a kill leaves no half-written cache
    return result


def training_curve(out: Path) -> list[dict]:
    """The greedy evaluations logged during training: ``[{"updates", "win_rate", "return", "episodes"}]``."""
    rows = csv.DictReader((out / "metrics.csv").open())
    return [{"updates": int(float(r["updates"])), "win_rate": float(r["eval/win_rate"]),
             "return": float(r["eval/return"]), "episodes": int(float(r["eval/episodes"]))}
            for r in rows if r.get("eval/win_rate")]


def records(args, out_root: Path) -> list[dict]:
    out = []
    for dataset in DATASETS:
        meta_path = Path(args.data_root) / "2s3z" / dataset / "dataset.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        behaviour = meta.get("behaviour", {})
        for setting in SETTINGS:
            for seed in range(args.max_seed + 1):
                run = run_dir(out_root, dataset, setting, seed)
                ev = final_evaluation(run, 640)
                if ev is None:
                    continue
                check_current(run)
                summary = json.loads((run / "offline_summary.json").read_text())
                vd = value_diagnostics(run, meta_path.parent)
                out.append({
                    "dataset": f"2s3z/{dataset}", "setting": setting, "cql": summary["cql"],
                    "cql_alpha": summary["cql_alpha"], "seed": seed, "updates": summary["updates"],
                    "batch_size": summary.get("settings", {}).get("batch_size"),
                    "target_update_updates": summary.get("settings", {}).get("target_update_updates"),
                    "greedy_win_rate_640": ev["win_rate"], "greedy_return_640": ev["return_mean"],
                    "behaviour_win_rate_eval": behaviour.get("eval/win_rate"),
                    "dataset_win_rate": meta["win_rate"], "dataset_return_mean": meta["return_mean"],
                    "q_tot_data_actions": vd["q_data"], "q_tot_greedy_actions": vd["q_greedy"],
                    "mc_return": vd["mc_return"], "greedy_is_data_action": vd["greedy_is_data_action"],
                    "cql_valid_sample_fraction": summary.get("train/cql_valid_sample_fraction"),
                    "cql_no_valid_sample_fraction": summary.get("train/cql_no_valid_sample_fraction"),
                    "wall_seconds": summary.get("wall_seconds"), "training_evaluations": training_curve(run),
                    "run_dir": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
                })
    return out


LABELS = {"macql": "MACQL, paper α", "cfcql": "CFCQL, README α / temperature", "none": "no CQL",
          "macql_refresh1": "MACQL, paper α, target copied every update (old)",
          "macql_sample_all": "MACQL, paper α, samples over all actions (old)"}


def table(recs: list[dict]) -> str:
    if not recs:
        return "(no finished runs)"
    lines = [
        "| dataset | setting (α) | seeds | updates | greedy win rate, 640 battles: median (per seed) | "
        "dataset win rate | return: greedy / dataset | Q_tot(τ, a_data) | Q_tot(τ, a_greedy) | MC return G_t | "
        "greedy = data action | wall-clock per run |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        groups.setdefault((r["dataset"], r["setting"]), []).append(r)
    for (dataset, setting), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])

        def med(key: str) -> float:
            return statistics.median(r[key] for r in rs)

        per_seed = ", ".join(f"{r['greedy_win_rate_640']:.3f}" for r in rs)
        minutes = statistics.median(r["wall_seconds"] / 60 for r in rs if r["wall_seconds"])
        lines.append(
            f"| {dataset} | {LABELS[setting]} ({rs[0]['cql_alpha']:g}) | {len(rs)} | {rs[0]['updates']} | "
            f"**{med('greedy_win_rate_640'):.3f}** ({per_seed}) | {rs[0]['dataset_win_rate']:.3f} | "
            f"{med('greedy_return_640'):.2f} / {rs[0]['dataset_return_mean']:.2f} | "
            f"{med('q_tot_data_actions'):.2f} | {med('q_tot_greedy_actions'):.2f} | {med('mc_return'):.2f} | "
            f"{med('greedy_is_data_action'):.2f} | {minutes:.0f} min |")
    curves = ["", "Greedy evaluations during training (median over seeds, by update; battles per evaluation in "
              "`benchmarks/results/offline_2s3z.json`):", ""]
    for (dataset, setting), rs in groups.items():
        by_update: dict[int, list[float]] = {}
        for r in rs:
            for e in r["training_evaluations"]:
                by_update.setdefault(e["updates"], []).append(e["win_rate"])
        points = ", ".join(f"{u}: {statistics.median(v):.2f}" for u, v in sorted(by_update.items()))
        curves.append(f"- {dataset}, {LABELS[setting]}: {points}")
    return "\n".join(lines + curves)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["macql", "cfcql"], choices=SETTINGS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=0, help="updates per run (0: CFCQL's budget for the dataset)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-episodes", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--out", default=str(ROOT / "outputs" / "experiments" / "offline_2s3z"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    args.max_seed = max(args.seeds)
    out_root = Path(args.out)
    if not args.report_only:
        train_all(args, out_root)
    recs = records(args, out_root)
    results = ROOT / "benchmarks" / "results" / "offline_2s3z.json"
    results.write_text(json.dumps({"generated_by": "python scripts/offline_pretraining.py", "t_max": CFCQL_T_MAX,
                                   "records": recs}, indent=2) + "\n")
    print(f"wrote {results} ({len(recs)} runs)")
    text = table(recs)
    print(text)
    replace_section(ROOT / "docs" / "results.md", BEGIN, END, "\n" + text + "\n", "## Offline pretraining (2s3z)")


if __name__ == "__main__":
    main()

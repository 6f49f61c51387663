#!/usr/bin/env python
"""The paper's Figure 1 on our simulator: how much of the offline value each O2O method keeps.

    python scripts/unlearning_figure.py                  # train (resumable) and plot
    python scripts/unlearning_figure.py --report-only

Fine-tunes the offline MACQL checkpoint of ``scripts/offline_pretraining.py`` (2s3z medium)
with each algorithm for ``--env-steps`` env steps, with the settings of
``scripts/o2o_finetuning.py`` and the unlearning probe measured every ``--probe-every`` env
steps: the learner's Q_tot on 32 fixed greedy battles of the offline policy, recorded before the
first online update. Writes ``docs/img/unlearning_2s3z_medium.png`` and
``benchmarks/results/unlearning_2s3z_medium.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import o2o_finetuning  # noqa: E402  (scripts/ is not a package)
from run_queue import run_queue  # noqa: E402

ALGOS = ("ovmse", "switch_cql", "macql")


def probe_curve(run: Path) -> list[tuple[int, float, float, float]]:
    """``(env_steps, Q_tot of the taken actions, Q_tot greedy, MC return)`` per measurement."""
    rows = csv.DictReader((run / "metrics.csv").open())
    return [(int(float(r["env_steps"])), float(r["eval/probe_q_tot"]), float(r["eval/probe_q_tot_greedy"]),
             float(r["eval/probe_mc_return"])) for r in rows if r.get("eval/probe_q_tot")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", default=list(ALGOS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-steps", type=int, default=20_000)
    p.add_argument("--probe-every", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="outputs/experiments/unlearning_2s3z_medium")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out_root = ROOT / args.out
    if not args.report_only:
        ckpt = o2o_finetuning.offline_checkpoint(args)
        jobs = []
        for algo in args.algos:
            run = out_root / f"{algo}_seed{args.seed}"
            if (run / "online_summary.json").exists():
                print(f"skip {run} (finished)")
                continue
            settings = argparse.Namespace(env_steps=args.env_steps, batch_size=32, eval_every=5000)
            cmd = o2o_finetuning.command(settings, run, algo, args.seed, ckpt)
            jobs.append((cmd + [f"unlearning_probe.every_env_steps={args.probe_every}", "final_eval.episodes=0"], run))
        run_queue(jobs, args.jobs)

    curves = {a: probe_curve(out_root / f"{a}_seed{args.seed}") for a in args.algos
              if (out_root / f"{a}_seed{args.seed}" / "online_summary.json").exists()}
    if not curves:
        raise SystemExit("no finished runs")
    result = {"settings": vars(args), "curves": curves}
    (ROOT / "benchmarks" / "results" / "unlearning_2s3z_medium.json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for algo, c in curves.items():
        ax.plot([x[0] for x in c], [x[1] for x in c], label=o2o_finetuning.LABELS.get(algo, algo))
    mc = next(iter(curves.values()))[0][3]
    ax.axhline(mc, color="grey", ls="--", lw=1, label="Monte-Carlo return of the probe")
    ax.set_xlabel("online env steps")
    ax.set_ylabel("mean Q_tot(τ, a) on the offline policy's trajectories")
    ax.set_title(f"2s3z medium: unlearning probe (seed {args.seed}, 32 battles)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    img = ROOT / "docs" / "img" / "unlearning_2s3z_medium.png"
    fig.savefig(img, dpi=110)
    plt.close(fig)
    for algo, c in curves.items():
        print(f"{algo}: Q_tot {c[0][1]:.2f} at {c[0][0]} -> min {min(x[1] for x in c):.2f} -> {c[-1][1]:.2f} at "
              f"{c[-1][0]} (MC return {c[0][3]:.2f})")
    print(f"wrote {img}")


if __name__ == "__main__":
    main()

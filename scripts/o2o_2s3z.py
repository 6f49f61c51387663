#!/usr/bin/env python
"""Issue 17: offline-to-online on 2s3z at 300k env steps, 3 seeds: run (resumable) and report.

    python scripts/o2o_2s3z.py run                # run or continue the whole sweep, two workers
    python scripts/o2o_2s3z.py report             # JSON, figures and the docs/results.md section

``run`` starts ``--workers`` processes (one torch thread each; two fill a 2-core machine).
Each goes through the sweep's stages in order, each a Hydra multirun of ``phase=pipeline``
with ``budget=300k`` (``configs/budget/300k.yaml``), so that 2s3z medium is complete first:

1. ``grid=o2o_2s3z`` on 2s3z medium: OVMSE, QMIX (scratch), MACQL, Switch-CQL, MACal-QL x
   seeds 0-2 (seeds outermost);
2. ``grid=o2o_2s3z_ablations``: OVM only, SE only on 2s3z medium, seeds 0-2;
3. ``grid=table2``: OVMSE on 2s3z medium with mixing ratios 0.1 and 0.3, seeds 0-2;
4. ``grid=o2o_2s3z`` on 2s3z medium-replay.

The workers share the cells through the pipeline's locks (``pipeline.wait_for_shared=false``:
a cell whose offline pretraining another worker is making is passed over and taken on the
next pass), so each worker passes over the grids until every cell is finished. A killed
sweep resumes with the same command: finished stages are skipped, a killed online run
continues from its last resume point. Everything lives under ``outputs/sweeps/300k``
(``--root``); each worker logs to ``<root>/worker<k>.log``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUDGET = "300k"
# (grid, overrides): the multiruns a worker runs, in order.
STAGES = (("o2o_2s3z", ("hydra.sweeper.params.experiment=2s3z_medium",)), ("o2o_2s3z_ablations", ()), ("table2", ()),
          ("o2o_2s3z", ("hydra.sweeper.params.experiment=2s3z_medium_replay",)))
GRIDS = tuple(dict.fromkeys(grid for grid, _ in STAGES))
SEEDS = (0, 1, 2)
MAIN_ALGOS = ("ovmse", "qmix", "macql", "switch_cql", "macalql")
# Cells of each grid as (task, run name) under <root>/online/; QMIX from scratch serves both tasks.
CELLS = (
    [(t, a) for t in ("2s3z_medium", "2s3z_medium_replay") for a in MAIN_ALGOS if a != "qmix"] + [("2s3z", "qmix")]
    + [("2s3z_medium", a) for a in ("ovm_only", "se_only")]
    + [("2s3z_medium", f"ovmse+algo.online.mixing_ratio={r}") for r in ("0.1", "0.3")]
)
IDLE_PASS_SECONDS = 60  # a pass shorter than this ran nothing: wait before the next one
IDLE_WAIT_SECONDS = 120


def sweep_root(args) -> Path:
    return Path(args.root).resolve() if args.root else ROOT / "outputs" / "sweeps" / BUDGET


def missing_cells(root: Path) -> list[str]:
    return [f"{task}/{name}/seed{s}" for task, name in CELLS for s in SEEDS
            if not (root / "online" / task / name / f"seed{s}" / "online_summary.json").is_file()]


def grid_command(args, grid: str, overrides: tuple[str, ...], root: Path) -> list[str]:
    return [sys.executable, "train.py", "-m", "phase=pipeline", f"grid={grid}", *overrides, f"budget={BUDGET}",
            f"num_threads={args.threads}", f"device={args.device}", f"data_root={args.data_root}",
            f"pipeline.root={root}", "pipeline.wait_for_shared=false",
            f"hydra.sweep.dir={root}/multiruns/{grid}/{time.strftime('%Y-%m-%d_%H-%M-%S')}-{args.worker}"]


def worker(args) -> None:
    """One worker: passes over the grids until no cell is missing."""
    root = sweep_root(args)
    while missing := missing_cells(root):
        print(f"[worker {args.worker}] {time.strftime('%H:%M:%S')} pass: {len(missing)} cells missing", flush=True)
        start = time.monotonic()
        for grid, overrides in STAGES:
            cmd = grid_command(args, grid, overrides, root)
            print("[worker] run:", " ".join(cmd[1:]), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                raise SystemExit(f"[worker {args.worker}] grid={grid} failed: the error is above; fix it and run "
                                 "the same command again (finished stages are kept)")
        if time.monotonic() - start < IDLE_PASS_SECONDS and missing_cells(root):
            # Every missing cell is held by the other worker.
            time.sleep(IDLE_WAIT_SECONDS)
    print(f"[worker {args.worker}] every cell is finished", flush=True)


def run(args) -> None:
    root = sweep_root(args)
    root.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(args.workers):
        log = open(root / f"worker{k}.log", "a")
        cmd = [sys.executable, __file__, "worker", f"--worker={k}", f"--threads={args.threads}", f"--device={args.device}",
               f"--data-root={args.data_root}", f"--root={root}"]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), root / f"worker{k}.log"))
        print(f"worker {k}: pid {procs[-1][0].pid}, log {procs[-1][1]}", flush=True)
        time.sleep(20)  # the first worker claims its first cell before the second looks
    failed = [str(log) for proc, log in procs if proc.wait() != 0]
    if failed:
        raise SystemExit(f"workers failed, see {', '.join(failed)}")
    print(f"every cell finished; report: python scripts/o2o_2s3z.py report --root {root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "worker", "report", "status"))
    parser.add_argument("--root", default=None, help="sweep root (default outputs/sweeps/300k)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "worker":
        worker(args)
    elif args.command == "status":
        missing = missing_cells(sweep_root(args))
        print(f"{len(CELLS) * len(SEEDS) - len(missing)} of {len(CELLS) * len(SEEDS)} cells finished; missing:")
        print("\n".join(f"  {m}" for m in missing))
    else:
        from o2o_2s3z_report import report  # noqa: PLC0415  (matplotlib only when reporting)

        report(sweep_root(args))


if __name__ == "__main__":
    main()

"""Does a refactoring change what training does? Runs the same tiny offline, online QMIX and
online OVMSE runs (3m, one thread, fixed seeds) with the code of ``--base`` (a git worktree) and
with this checkout, and compares every logged metric row by row (wall-clock ``time/`` columns and
``collect/env_steps_per_second`` excepted). Exit status 1 if any differs.

    python scripts/same_behaviour.py --base aca6877      # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = ("time/", "collect/env_steps_per_second")
ONLINE = ["env=3m", "env_steps=768", "env.num_envs=4", "algo.steps_per_env=32", "algo.env_steps_per_update=128",
          "algo.batch_size=8", "algo.buffer_size=64", "eval.interval_env_steps=384", "eval.episodes=8",
          "eval.num_envs=8", "log_every_env_steps=128", "num_threads=1", "final_eval.episodes=8",
          "final_eval.num_envs=8", "trainer.progress_refresh_rate=0", "checkpoint.every_env_steps=256"]


def runs(work: Path, data: Path) -> dict[str, list[str]]:
    offline_ckpt = work / "offline" / "checkpoints" / "last.ckpt"
    return {
        "offline": ["phase=offline", "env=3m", "algo=ovmse", f"dataset={data}", "algo.offline.batch_size=8",
                    "algo.offline.samples=8", "steps=12", "log_every_updates=1", "eval.interval_updates=6",
                    "eval.episodes=8", "eval.num_envs=8", "num_threads=1", "trainer.progress_refresh_rate=0"],
        "qmix": ["phase=online", "algo=qmix", "algo.target_update_interval=8", *ONLINE],
        "ovmse": ["phase=online", "algo=ovmse", f"ckpt={offline_ckpt}", f"data_root={data.parents[1]}",
                  "unlearning_probe.episodes=4", "unlearning_probe.every_env_steps=256", *ONLINE],
    }


def run_tree(tree: Path, work: Path, data: Path) -> None:
    # The tree's own src/ first: older train.py files do not put it there themselves.
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    for name, overrides in runs(work, data).items():
        proc = subprocess.run([sys.executable, str(tree / "train.py"), *overrides, f"hydra.run.dir={work / name}"],
                              cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{tree}: {name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def metric_rows(path: Path) -> dict[tuple[float, str], set[float]]:
    out: dict[tuple[float, str], set[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value in ("", None) or key == "step" or key.startswith(SPEED):
                    continue
                out.setdefault((float(row["step"]), key), set()).add(round(float(value), 6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True)
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from simtools import random_dataset

            data = tmp / "data" / "3m" / "medium"
            random_dataset(data)
            run_tree(base, tmp / "base-runs", data)
            run_tree(ROOT, tmp / "this-runs", data)
            differ = 0
            for name in runs(tmp, data):
                a = metric_rows(tmp / "base-runs" / name / "metrics.csv")
                b = metric_rows(tmp / "this-runs" / name / "metrics.csv")
                diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                differ += len(diff)
                print(f"{name}: {len(a)} logged values at {args.base}, {len(b)} here; {len(diff)} differ"
                      + "".join(f"\n  {k}: {a.get(k)} vs {b.get(k)}" for k in diff[:10]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()

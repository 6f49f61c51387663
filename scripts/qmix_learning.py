#!/usr/bin/env python
"""QMIX from scratch on the embedded simulator: run (resumable) and report learning curves.

    python scripts/qmix_learning.py                       # 3m for 300k and 2s3z for 1M env steps, seed 0
    python scripts/qmix_learning.py --runs 3m:300000 --seeds 0,1,2
    python scripts/qmix_learning.py --report-only         # only rebuild docs/results.md from the runs

Each (map, seed) trains with ``python train.py phase=online env=<map> env_steps=<n> seed=<s>``
(PyMARL2 settings from configs/algo/qmix.yaml) into
``outputs/experiments/qmix_<map>_seed<s>``; a run whose ``online_summary.json``
exists is skipped, so the script can be re-run after an interruption (an
interrupted run restarts from scratch). The report reads the runs' TensorBoard
events (greedy ``eval/win_rate`` every 10k env steps over 32 battles, x-axis = env
steps), evaluates each finished run's last checkpoint greedily over 640 battles
(``evaluate.py``, cached as ``final_eval_640.json``) and writes
``docs/results.md`` plus ``docs/img/qmix_learning.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

from docs_sections import replace_section
from ovmse.phases.common import write_json

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- QMIX-LEARNING:BEGIN (written by scripts/qmix_learning.py) -->"
END = "<!-- QMIX-LEARNING:END -->"
TARGETS = {"3m": "greedy win rate >= 0.9 within 300k env steps", "2s3z": "clearly rising win rate within 1M env steps"}


def run_dir(out_root: Path, map_name: str, seed: int) -> Path:
    return out_root / f"qmix_{map_name}_seed{seed}"


def train(map_name: str, env_steps: int, seed: int, out_root: Path, threads: int) -> None:
    out = run_dir(out_root, map_name, seed)
    if (out / "online_summary.json").exists():
        print(f"skip {out} (finished)")
        return
    # A killed run continues from its resume point; one killed before it had any starts again,
    # its directory kept beside (train.py refuses a new run in a directory that holds one).
    resume = (out / "checkpoints" / "last.ckpt").is_file()
    if out.exists() and not resume:
        from ovmse.sweeps.stages import set_aside

        set_aside(out)
    cmd = [sys.executable, "train.py", "phase=online", f"env={map_name}", f"env_steps={env_steps}", f"seed={seed}",
           f"num_threads={threads}", "trainer.progress_refresh_rate=200", f"hydra.run.dir={out}",
           *([f"resume={out}"] if resume else [])]
    print("run:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def final_evaluation(out: Path, episodes: int) -> dict | None:
    """Greedy evaluation of a finished run's last checkpoint over ``episodes`` battles (cached)."""
    cache = out / f"final_eval_{episodes}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    ckpt = out / "checkpoints" / "last.ckpt"
    if not (out / "online_summary.json").exists() or not ckpt.exists():
        return None
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt={ckpt}", f"episodes={episodes}"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    write_json(cache, result)  # atomic: a kill leaves no half-written cache
    return result


def run_settings(out: Path) -> str:
    """Collection, update ratio and threads of a run, read from its recorded Hydra config."""
    from omegaconf import OmegaConf

    path = out / ".hydra" / "config.yaml"
    if not path.is_file():
        return "settings not recorded"
    cfg = OmegaConf.load(path)
    algo = cfg.algo
    ratio = (f"one update per {algo.env_steps_per_update} env steps" if algo.get("env_steps_per_update")
             else f"one update per {algo.get('episodes_per_update', '?')} episodes")
    return (f"{cfg.env.num_envs} battles x {algo.steps_per_env} steps per collection call, {ratio}, "
            f"update threads {cfg.get('num_threads')}, collection threads {cfg.get('collect_threads', 1)}")


def read_curve(out: Path) -> dict:
    """Greedy win-rate curve and timing of one run from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*")))
    steps, win, ret, wall = [], [], [], []
    for f in files:
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        if "eval/win_rate" in tags:
            for e in acc.Scalars("eval/win_rate"):
                steps.append(e.step)
                win.append(e.value)
                wall.append(e.wall_time)
        if "eval/return" in tags:
            ret += [e.value for e in acc.Scalars("eval/return")]
    order = sorted(range(len(steps)), key=steps.__getitem__)
    summary = out / "online_summary.json"
    return {
        "steps": [steps[i] for i in order],
        "win_rate": [win[i] for i in order],
        "return": [ret[i] for i in order] if len(ret) == len(steps) else [],
        "wall_seconds": (max(wall) - min(wall)) if wall else 0.0,
        "finished": summary.exists(),
        "summary": json.loads(summary.read_text()) if summary.exists() else None,
    }


def report(runs: list[tuple[str, int]], seeds: list[int], out_root: Path, doc: Path, img: Path,
           final_episodes: int = 640) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves = [], {}
    for map_name, budget in runs:
        for seed in seeds:
            out = run_dir(out_root, map_name, seed)
            if not out.exists():
                continue
            c = read_curve(out)
            curves[(map_name, seed)] = c
            if not c["steps"]:
                continue
            first_09 = next((s for s, w in zip(c["steps"], c["win_rate"]) if w >= 0.9), None)
            final = final_evaluation(out, final_episodes)
            final_txt = "—" if final is None else f"{final['win_rate']:.3f}"
            rows.append(
                f"| {map_name} | {seed} | {budget:,} | {c['steps'][-1]:,} | {c['win_rate'][-1]:.3f} | "
                f"{max(c['win_rate']):.3f} | {'—' if first_09 is None else f'{first_09:,}'} | {final_txt} | "
                f"{c['wall_seconds'] / 60:.1f} | {'yes' if c['finished'] else 'no'} |"
            )
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(5.5 * max(1, len(runs)), 3.6), squeeze=False)
    for ax, (map_name, budget) in zip(axes[0], runs):
        for seed in seeds:
            c = curves.get((map_name, seed))
            if c and c["steps"]:
                ax.plot(c["steps"], c["win_rate"], marker=".", label=f"seed {seed}")
        ax.set_title(f"QMIX from scratch, {map_name}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("greedy win rate (32 battles)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(0, budget)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(img, dpi=110)
    plt.close(fig)

    from ovmse.provenance import machine_info

    info = machine_info(ROOT)
    cmd = "python scripts/qmix_learning.py --runs " + ",".join(f"{m}:{b}" for m, b in runs)
    cmd += " --seeds " + ",".join(map(str, seeds))
    lines = [
        BEGIN,
        "## QMIX from scratch (online phase, embedded simulator)",
        "",
        f"Command: `{cmd}` (each run is `python train.py phase=online env=<map> env_steps=<budget> seed=<seed> "
        "num_threads=<threads>` with configs/algo/qmix.yaml: PyMARL2 settings, batch 128 episodes, buffer 5000, "
        "target update every 200 episodes, ε 1.0 → 0.05 over 100k env steps; "
        f"{run_settings(run_dir(out_root, runs[0][0], seeds[0]))}). Greedy evaluation: 32 battles every 10k env steps. "
        f"Report written {info['date']} on {info['cpu_count']} CPU cores ({info['cpu']}), torch {info['torch']}, "
        f"code at `{info['git']}`.",
        "",
        "| map | seed | budget (env steps) | reached | last eval win rate (32) | best eval win rate | first eval ≥ 0.9 at "
        f"| final greedy win rate ({final_episodes} battles) | wall-clock (min) | finished |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Targets of the issue: " + "; ".join(f"{m}: {t}" for m, t in TARGETS.items()) + ".",
        "",
        f"![QMIX learning curves]({img.relative_to(doc.parent).as_posix()})",
        END,
    ]
    replace_section(doc, BEGIN, END, "\n".join(lines[1:-1]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="3m:300000,2s3z:1000000", help="map:env_steps,...")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-root", type=Path, default=ROOT / "outputs" / "experiments")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--img", type=Path, default=ROOT / "docs" / "img" / "qmix_learning.png")
    p.add_argument("--final-episodes", type=int, default=640, help="battles of the final greedy evaluation")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    runs = [(m, int(b)) for m, b in (x.split(":") for x in args.runs.split(",") if x)]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    start = time.time()
    if not args.report_only:
        for map_name, budget in runs:
            for seed in seeds:
                train(map_name, budget, seed, args.out_root, args.threads)
    print(report(runs, seeds, args.out_root, args.doc, args.img, args.final_episodes))
    print(f"({(time.time() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()

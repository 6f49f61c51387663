#!/usr/bin/env python
"""Memory and log growth of a long online run, measured from outside the process.

    python benchmarks/long_run_memory.py                          # 3m, 150k env steps, buffer 300 episodes
    python benchmarks/long_run_memory.py --map 2s3z --env-steps 300000 --buffer 1000

Starts ``python train.py phase=online`` (QMIX from scratch, resume points every 10k env steps)
and samples, every ``--every`` seconds, the process's resident memory (``VmRSS`` of
``/proc/<pid>/status``, summed over its child processes), the env-step counter (the last row of
its ``metrics.csv``) and the sizes of its log files (``metrics.csv``, TensorBoard events, stdout)
and of ``checkpoints/``. The buffer is chosen small so that it is full early: after that, a
leak-free run holds its memory flat. Writes ``benchmarks/results/long_run_memory.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def env_steps_so_far(run: Path) -> int:
    try:
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        return int(float(rows[-1]["env_steps"])) if rows else 0
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def episodes_per_buffer_fill(run: Path, buffer: int) -> int | None:
    """Env steps at which the replay buffer first held ``buffer`` episodes (from the logged episode counter)."""
    try:
        for row in csv.DictReader((run / "metrics.csv").open()):
            if float(row["episodes"]) >= buffer:
                return int(float(row["env_steps"]))
    except FileNotFoundError:
        pass
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="3m")
    p.add_argument("--env-steps", type=int, default=150_000)
    p.add_argument("--buffer", type=int, default=300)
    p.add_argument("--every", type=float, default=5.0)
    p.add_argument("--run-dir", default="outputs/benchmarks/long_run_memory")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the saved .json")
    args = p.parse_args()
    if args.report_only:
        result = json.loads((OUT / "long_run_memory.json").read_text())
        plot(result, OUT / "long_run_memory.png")
        (OUT / "long_run_memory.md").write_text(report(result) + "\n")
        print(report(result))
        return
    run = ROOT / args.run_dir
    cmd = [sys.executable, "train.py", "phase=online", f"env={args.map}", f"env_steps={args.env_steps}",
           f"algo.buffer_size={args.buffer}", "algo.batch_size=32", "checkpoint.every_env_steps=10000",
           "trainer.progress_refresh_rate=50", f"hydra.run.dir={run}"]
    run.mkdir(parents=True, exist_ok=True)
    stdout = run.parent / f"{run.name}.log"
    from ovmse.provenance import machine_info

    machine = machine_info(ROOT, threads=1)  # the code the run starts with
    samples = []
    start = time.perf_counter()
    with stdout.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            samples.append({
                "seconds": round(time.perf_counter() - start, 1), "rss_mib": rss_mib(proc.pid),
                "env_steps": env_steps_so_far(run),
                "metrics_csv_kib": (run / "metrics.csv").stat().st_size / 1024 if (run / "metrics.csv").exists() else 0,
                "tensorboard_kib": dir_mib(run / "tensorboard") * 1024,
                "stdout_kib": stdout.stat().st_size / 1024,
                "checkpoints_mib": dir_mib(run / "checkpoints"),
            })
            time.sleep(args.every)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (rc {proc.returncode}); see {stdout}")
    full_at = episodes_per_buffer_fill(run, args.buffer)
    after = [s for s in samples if full_at is not None and s["env_steps"] >= full_at and s["rss_mib"] > 0]
    steps = max(s["env_steps"] for s in samples) or 1
    result = {
        "command": " ".join(cmd[1:]), "map": args.map, "env_steps": args.env_steps, "buffer_episodes": args.buffer,
        "buffer_full_at_env_steps": full_at, "wall_seconds": time.perf_counter() - start, "samples": samples,
        "rss_after_full_first_mib": after[0]["rss_mib"] if after else None,
        "rss_after_full_last_mib": after[-1]["rss_mib"] if after else None,
        "rss_after_full_max_mib": max(s["rss_mib"] for s in after) if after else None,
        "rss_after_full_min_mib": min(s["rss_mib"] for s in after) if after else None,
        "log_bytes_per_1k_env_steps": {
            "metrics_csv": samples[-1]["metrics_csv_kib"] * 1024 / steps * 1000,
            "tensorboard": samples[-1]["tensorboard_kib"] * 1024 / steps * 1000,
            "stdout": samples[-1]["stdout_kib"] * 1024 / steps * 1000,
        },
        "checkpoints_mib_final": samples[-1]["checkpoints_mib"],
    }
    result["machine"] = machine
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "long_run_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT / "long_run_memory.png")
    md = report(result)
    (OUT / "long_run_memory.md").write_text(md + "\n")
    print(md)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].plot([x["env_steps"] for x in s], [x["rss_mib"] for x in s])
    if result["buffer_full_at_env_steps"] is not None:
        ax[0].axvline(result["buffer_full_at_env_steps"], color="grey", ls="--", lw=1, label="replay buffer full")
        ax[0].legend()
    ax[0].set_xlabel("env steps")
    ax[0].set_ylabel("resident memory (MiB)")
    for key, label in (("metrics_csv_kib", "metrics.csv"), ("tensorboard_kib", "TensorBoard"), ("stdout_kib", "stdout")):
        ax[1].plot([x["env_steps"] for x in s], [x[key] for x in s], label=label)
    ax[1].set_xlabel("env steps")
    ax[1].set_ylabel("size (KiB)")
    ax[1].legend()
    fig.suptitle(f"{result['map']}: {result['env_steps']} env steps, buffer {result['buffer_episodes']} episodes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(r: dict) -> str:
    m = r["machine"]
    lg = r["log_bytes_per_1k_env_steps"]
    lines = [
        f"# Long-run memory ({r['map']})",
        "",
        f"Command: `python benchmarks/long_run_memory.py --map {r['map']} --env-steps {r['env_steps']} --buffer "
        f"{r['buffer_episodes']}` (runs `python {r['command']}`). {m['date']}, {m['cpu_count']} CPU cores "
        f"({m['cpu']}), torch {m['torch']}, code at `{m['git']}`; {r['wall_seconds'] / 60:.1f} min.",
        "",
        f"- Replay buffer full ({r['buffer_episodes']} episodes) at {r['buffer_full_at_env_steps']} env steps.",
        f"- Resident memory after that: first sample {r['rss_after_full_first_mib']:.0f} MiB, last "
        f"{r['rss_after_full_last_mib']:.0f} MiB, range {r['rss_after_full_min_mib']:.0f}–"
        f"{r['rss_after_full_max_mib']:.0f} MiB, over the "
        f"{sum(1 for s in r['samples'] if s['env_steps'] >= (r['buffer_full_at_env_steps'] or 0) and s['rss_mib'] > 0)}"
        " samples after it.",
        f"- Log growth per 1000 env steps: metrics.csv {lg['metrics_csv']:.0f} B, TensorBoard {lg['tensorboard']:.0f} B, "
        f"stdout {lg['stdout']:.0f} B (rows are written every log_every_env_steps, not every step).",
        f"- checkpoints/ at the end: {r['checkpoints_mib_final']:.1f} MiB (last.ckpt, best.ckpt and the replay chunks "
        "of the buffer's current episodes only).",
        "",
        "![memory and log size over the run](long_run_memory.png)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

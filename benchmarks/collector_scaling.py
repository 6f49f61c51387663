#!/usr/bin/env python
"""Env steps per second of online collection with 1, 2, 4 collector processes.

Times :meth:`ovmse.collection.online.OnlineCollection.collect` -- the real online
path: TorchRL collector, :class:`~ovmse.collection.RecurrentQPolicy` (GRU agent of the QMIX
config, ``hidden_dim`` 64) with ε-greedy exploration on the real schedule (1.0 → 0.05 over
100k env steps), episode assembly and the replay buffer -- for the same total number of
battles split over ``P`` processes (``collector.num_workers``):

* ``P = 1``: the in-process ``Collector`` over all ``num_envs`` battles, one torch thread;
* ``P > 1``: ``MultiSyncCollector`` with ``P`` spawned workers of ``num_envs / P`` battles,
  one torch thread each; every ``collect`` also pushes the weights and ε to the workers
  (``update_policy_weights_``), which is part of the time measured.

For each ``num_envs`` all process counts are built side by side (idle workers block on a pipe
and use no CPU), warmed up, then timed in ``--rounds`` interleaved rounds (the order rotates
every round) of about ``--seconds`` each: rate = env steps of the whole ``collect`` calls in
the window / the window's wall-clock time. The table gives the median over rounds and the
speed-up against ``P = 1`` (median over rounds of the ratio within a round, so the ratios come
from the same stretch of machine load). No learner runs between the batches here; in
training the (synchronous) collection and the updates alternate.

    python benchmarks/collector_scaling.py                        # 2s3z, 8 and 64 battles x {1, 2, 4} processes
    python benchmarks/collector_scaling.py --num-envs 64 --procs 1,2 --seconds 5 --rounds 5

Writes benchmarks/results/collector_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from ovmse.collection import EpisodeReplayBuffer
from ovmse.envs import get_map
from ovmse.exploration import LinearSchedule
from ovmse.nets import RNNAgent
from ovmse.provenance import machine_info
from ovmse.collection.online import OnlineCollection

ROOT = Path(__file__).resolve().parents[1]
EPS_START, EPS_END, EPS_ANNEAL = 1.0, 0.05, 100_000


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class Config:
    """One collection being measured and its env-step counter (drives ε)."""

    def __init__(self, map_name: str, num_envs: int, procs: int, steps_per_env: int, hidden: int, seed: int):
        spec = get_map(map_name)
        self.map_name, self.num_envs, self.procs = map_name, num_envs, procs
        agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, hidden)
        start = time.perf_counter()
        self.collection = OnlineCollection(
            agent, map_name, num_envs, EpisodeReplayBuffer(capacity=5000),
            exploration="epsilon_greedy", epsilon=LinearSchedule(EPS_START, EPS_END, EPS_ANNEAL),
            steps_per_env=steps_per_env, seed=seed, num_workers=procs,
        )
        self.env_steps = 0
        self.collect()  # the first batch: workers have started and stepped once
        self.startup_seconds = time.perf_counter() - start
        self.rates: list[float] = []

    def collect(self) -> int:
        stats = self.collection.collect(self.env_steps)
        self.env_steps += int(stats["env_steps"])
        return int(stats["env_steps"])

    def timed(self, seconds: float) -> float:
        steps, start = 0, time.perf_counter()
        while True:
            steps += self.collect()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return steps / elapsed


def run(args) -> list[dict]:
    results = []
    for num_envs in _ints(args.num_envs):
        procs_list = [p for p in _ints(args.procs) if num_envs % p == 0]
        configs: list[Config] = []
        try:
            for procs in procs_list:
                c = Config(args.map, num_envs, procs, args.steps_per_env, args.hidden, args.seed)
                configs.append(c)
                print(f"{args.map} num_envs={num_envs:<4} procs={procs}: started in {c.startup_seconds:.1f} s", flush=True)
            for c in configs:
                for _ in range(args.warmup):
                    c.collect()
            ratios: dict[int, list[float]] = {c.procs: [] for c in configs}
            for r in range(args.rounds):
                order = configs[r % len(configs):] + configs[: r % len(configs)]
                rates = {}
                for c in order:
                    rates[c.procs] = c.timed(args.seconds)
                    c.rates.append(rates[c.procs])
                if 1 in rates:
                    for p, v in rates.items():
                        ratios[p].append(v / rates[1])
                print(f"  round {r + 1}: " + ", ".join(f"{p} proc {v:,.0f}/s" for p, v in sorted(rates.items())),
                      flush=True)
            for c in configs:
                results.append({
                    "map": args.map,
                    "num_envs": num_envs,
                    "procs": c.procs,
                    "battles_per_proc": num_envs // c.procs,
                    "threads_per_proc": 1,
                    "steps_per_env": args.steps_per_env,
                    "frames_per_collect": num_envs * args.steps_per_env,
                    "startup_seconds": c.startup_seconds,
                    "env_steps_per_second": statistics.median(c.rates),
                    "env_steps_per_second_rounds": c.rates,
                    "speedup_vs_1proc": statistics.median(ratios[c.procs]) if ratios.get(c.procs) else None,
                    "speedup_vs_1proc_rounds": ratios.get(c.procs, []),
                    "epsilon_at_end": LinearSchedule(EPS_START, EPS_END, EPS_ANNEAL)(c.env_steps),
                })
        finally:
            for c in configs:
                c.collection.close()
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| map | battles (total) | processes × battles | start-up, s | env steps/s (median) | rounds | speed-up vs 1 process |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for r in results:
        rounds = ", ".join(f"{v:,.0f}" for v in r["env_steps_per_second_rounds"])
        sp = "" if r["speedup_vs_1proc"] is None else f"{r['speedup_vs_1proc']:.2f}×"
        lines.append(f"| {r['map']} | {r['num_envs']} | {r['procs']} × {r['battles_per_proc']} | {r['startup_seconds']:.1f} | "
                     f"{r['env_steps_per_second']:,.0f} | {rounds} | {sp} |")
    return "\n".join(lines)


def markdown(results: list[dict], info: dict, args, elapsed: float, load_end: float | None) -> str:
    cmd = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if sys.argv[1:] else "benchmarks/collector_scaling.py"
    return "\n".join([
        "# Online collection: env steps per second vs collector processes",
        "",
        f"`python {cmd}` on {info['date']}: torch {info['torch']}, Python {info['python']}, "
        f"{info['cpu_count']} CPU cores ({info['cpu']})" + (f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU")
        + f", code at `{info['git']}`. One torch thread per process. Load average (1 min) at start "
        f"{info.get('load_average_1min_at_start', float('nan')):.2f}, at end "
        f"{load_end if load_end is not None else float('nan'):.2f} (the machine is shared: another training job "
        f"may be running). Total {elapsed:.0f} s.",
        "",
        f"Timed: `OnlineCollection.collect` on {args.map} (ε-greedy, real schedule 1.0 → 0.05 over 100k steps, "
        f"GRU agent hidden {args.hidden}, {args.steps_per_env} steps per battle per collect, episode assembly and "
        f"replay included). For each total number of battles the process counts run side by side, "
        f"{args.warmup} warm-up collects each, then {args.rounds} interleaved rounds of about {args.seconds:g} s per "
        f"configuration. Speed-up = median over rounds of (rate / 1-process rate in the same round). Start-up = "
        f"construction + first batch (spawning the workers, importing torch/TorchRL in each). `P × b`: P "
        f"processes with b battles each (P = 1 is the in-process `Collector`).",
        "",
        table(results),
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="2s3z")
    p.add_argument("--num-envs", default="8,64", help="comma-separated totals of battles (all processes)")
    p.add_argument("--procs", default="1,2,4", help="comma-separated collector process counts (must divide num_envs)")
    p.add_argument("--steps-per-env", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed collects per configuration after the first batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    info = machine_info(ROOT, 1)
    print(f"torch {info['torch']}, {info['cpu_count']} cores, load {info.get('load_average_1min_at_start')}", flush=True)
    t0 = time.perf_counter()
    results = run(args)
    elapsed = time.perf_counter() - t0
    load_end = _load()
    out = ROOT / args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "collector_scaling.json").write_text(json.dumps(
        {"args": vars(args), "machine": info, "load_average_1min_at_end": load_end, "elapsed_seconds": elapsed,
         "results": results}, indent=1))
    (out / "collector_scaling.md").write_text(markdown(results, info, args, elapsed, load_end))
    print()
    print(table(results))
    print(f"\nwrote {out / 'collector_scaling.json'}, {out / 'collector_scaling.md'} ({elapsed:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Training throughput, old code path vs new, measured side by side in one run.

The old path is a baseline commit (``--baseline``, default: the last commit before the speed
work) checked out as a temporary git worktree; the new path is this checkout. Every
measurement is a fresh process (benchmarks/throughput_worker.py, or ``train.py`` itself) whose
``ovmse`` comes from one tree or the other through PYTHONPATH, and old and new alternate over
``--rounds`` so that both see the same machine load. Parts:

* ``update``: ms per QMIX update, 2s3z, batch 128 episodes (the same recorded random-play
  episodes for both trees), at 1 and 2 torch threads; the update's FLOPs (torch's
  FlopCounterMode) and the time of the very same matmuls replayed on random tensors (the
  roofline of this machine for this update).
* ``cql``: one update at batch 128 without CQL, with MACQL (100 samples) and with CFCQL
  (+ behaviour cloning), 1 thread: the offline update's cost.
* ``collect``: env steps per second of collection (simulator + acting policy + episode
  assembly), 8 battles x 32 steps and 32 x 8 per call, 1 thread; the new path also with
  ``env.compile_step=true`` and with the simulator's arithmetic frozen (what surrounds it).
* ``online``: a whole ``python train.py phase=online env=2s3z algo=qmix`` run (warm-up, updates,
  two greedy evaluations of 32 battles, no final test): old defaults (8 battles x 32 steps, one
  update per 256 env steps, 1 thread), new at the same ratio (``algo.env_steps_per_update=256``,
  its defaults: 32 x 8 per call, updates on every core, collection on one thread), new at
  its default ratio (PyMARL2: one update per 8 episodes), and new at the same ratio with
  ``env.compile_step=true`` (its compilation inside the timed run).

    python benchmarks/train_throughput.py                  # everything (about 15 min on 2 cores)
    python benchmarks/train_throughput.py --parts update,cql
    python benchmarks/train_throughput.py --quick          # tiny settings: a smoke run, numbers not meaningful

Writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "a860934"  # main before issue 15 (speed): padded batches, one thread, 8 x 32 collection
WORKER = ROOT / "benchmarks" / "throughput_worker.py"
PARTS = ("update", "cql", "collect", "online")
TARGETS = {"online_speedup": 3.0, "roofline_ratio": 1.5, "cql_ratio": 2.0, "step_call_ms": 1.5}


def tree_env(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(tree)])
    env.pop("OMP_NUM_THREADS", None)
    return env


def worker(tree: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(WORKER), *args], cwd=tree, env=tree_env(tree), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} in {tree} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = str(tree / "src" / "ovmse")
    if not result["sources"]["ovmse"].startswith(expected):
        raise SystemExit(f"worker in {tree} imported ovmse from {result['sources']['ovmse']}, not {expected}")
    return result


def online_run(tree: Path, map_name: str, overrides: list[str], out: Path) -> dict:
    cmd = [sys.executable, "train.py", "phase=online", f"env={map_name}", "algo=qmix", "seed=0",
           "eval.interval_env_steps=1000000000", "eval.episodes=32", "eval.num_envs=32", "final_eval.episodes=0",
           "checkpoint.every_env_steps=1000000000", "log_every_env_steps=1000000000", "logger.tensorboard=false",
           "trainer.progress_refresh_rate=0", f"hydra.run.dir={out}", *overrides]
    proc = subprocess.run(cmd, cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} in {tree} failed:\n{proc.stderr[-3000:]}")
    s = json.loads((out / "online_summary.json").read_text())
    return {"env_steps": s["env_steps"], "updates": s["updates"], "wall_seconds": s["wall_seconds"],
            "env_steps_per_second": s["env_steps"] / s["wall_seconds"],
            "env_steps_per_update": s["env_steps"] / max(s["updates"], 1), "overrides": overrides}


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=BASELINE, help="commit of the old path")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--rounds", type=int, default=2, help="old/new alternations of every measurement")
    p.add_argument("--repeats", type=int, default=5, help="timed updates per update process")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--online-env-steps", type=int, default=30000)
    p.add_argument("--no-compile", action="store_true", help="skip the compile_step collection runs")
    p.add_argument("--quick", action="store_true", help="tiny settings on 3m (a smoke run)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--merge", action="store_true",
                   help="keep the parts not measured now from the existing results in --out-dir (each part "
                        "keeps the date, code and load of the run that measured it)")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    map_name, n_record, warmup = "2s3z", 256, "2"
    if args.quick:
        map_name, n_record, warmup = "3m", 24, "1"
        args.rounds, args.repeats, args.batch_size, args.online_env_steps = 1, 2, 8, 1500
        args.no_compile = True

    sys.path.insert(0, str(ROOT / "src"))
    from ovmse.provenance import machine_info

    info = machine_info(ROOT)
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    old_tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    trees = {"old": old_tree, "new": ROOT}
    results: dict = {"machine": info, "baseline": args.baseline, "args": vars(args) | {"out_dir": str(args.out_dir)},
                     "map": map_name}
    started = time.perf_counter()
    try:
        episodes = work / "episodes.pt"
        results["episodes"] = worker(ROOT, "record", "--map", map_name, "--n", str(n_record),
                                     "--episodes-out", str(episodes))
        common = ["--map", map_name, "--episodes", str(episodes), "--batch-size", str(args.batch_size),
                  "--repeats", str(args.repeats), "--warmup", warmup]
        if "update" in parts:
            runs = {f"{path}_{t}": [] for path in trees for t in (1, 2)}
            for _ in range(args.rounds):
                for t in (1, 2):
                    for path, tree in trees.items():
                        runs[f"{path}_{t}"].append(worker(tree, "update", *common, "--threads", str(t), "--roofline"))
            results["update"] = runs
        if "cql" in parts:
            runs = {f"{path}_{cql}": [] for path in trees for cql in ("none", "macql", "cfcql")}
            for _ in range(args.rounds):
                for cql in ("none", "macql", "cfcql"):
                    for path, tree in trees.items():
                        runs[f"{path}_{cql}"].append(worker(tree, "update", *common, "--threads", "1", "--cql", cql))
            results["cql"] = runs
        if "collect" in parts:
            shapes = [(8, 32), (32, 8)] if not args.quick else [(4, 8)]
            runs = {}
            for _ in range(args.rounds):
                for envs, steps in shapes:
                    variants = [("old", old_tree, []), ("new", ROOT, [])]
                    if not args.no_compile:
                        variants.append(("new_compiled", ROOT, ["--compile"]))
                    # What surrounds the simulator (collector, TensorDicts, policy, assembly): the
                    # floor a faster simulator alone cannot go below.
                    variants.append(("new_frozen_sim", ROOT, ["--frozen-sim"]))
                    for name, tree, extra in variants:
                        runs.setdefault(f"{name}_{envs}x{steps}", []).append(worker(
                            tree, "collect", "--map", map_name, "--num-envs", str(envs), "--steps", str(steps),
                            "--calls", "6" if not args.quick else "2", *extra))
            results["collect"] = runs
        if "online" in parts:
            base = [f"env_steps={args.online_env_steps}", f"algo.batch_size={args.batch_size}"]
            if args.quick:
                base += ["env.num_envs=4", "algo.buffer_size=64", "eval.episodes=4", "eval.num_envs=4"]
            ratio = (4 if args.quick else 8) * 32  # the old path: one update per collection call
            variants = {
                f"old (8 x 32 per call, {ratio} env steps/update, 1 thread)": (old_tree, ["num_threads=1"]),
                f"new, same ratio (32 x 8 per call, {ratio} env steps/update, update 2 threads / collect 1)":
                    (ROOT, [f"algo.env_steps_per_update={ratio}"]),
                "new, default ratio (one update per 8 episodes, PyMARL2)": (ROOT, []),
            }
            if not args.no_compile:
                variants["new, same ratio, env.compile_step=true (compilation included)"] = (
                    ROOT, [f"algo.env_steps_per_update={ratio}", "env.compile_step=true"])
            runs = {name: [] for name in variants}
            for r in range(args.rounds):
                for i, (name, (tree, extra)) in enumerate(variants.items()):
                    runs[name].append(online_run(tree, map_name, base + extra, work / f"online-{r}-{i}"))
            results["online"] = runs
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    results["seconds"] = time.perf_counter() - started
    results["provenance"] = {part: {"date": info["date"], "git": info["git"], "seconds": results["seconds"],
                                    "load_average_1min_at_start": info.get("load_average_1min_at_start")}
                             for part in parts}
    if args.merge:
        results = merged(args.out_dir / "train_throughput.json", results, parts)
    text = report(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "train_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "train_throughput.md").write_text(text)
    print(text)
    return 0


def merged(path: Path, new: dict, parts: list[str]) -> dict:
    """``new`` plus the parts of the results at ``path`` that ``new`` did not measure; both must
    compare the same baseline on the same map and batch (else the parts would not be comparable)."""
    if not path.is_file():
        raise SystemExit(f"--merge: {path} does not exist; run every part once without --merge")
    old = json.loads(path.read_text())
    same = ("baseline", "map")
    settings = ("batch_size", "rounds", "repeats", "quick")
    if any(old.get(k) != new.get(k) for k in same) or any(old["args"][k] != new["args"][k] for k in settings):
        def described(res: dict) -> str:
            return ", ".join([*(f"{k}={res.get(k)}" for k in same), *(f"{k}={res['args'][k]}" for k in settings)])

        raise SystemExit(f"--merge: {path} was measured with {described(old)}; this run with {described(new)}: "
                         "not comparable")
    out = dict(old)
    provenance = dict(old.get("provenance") or {k: {"date": old["machine"]["date"], "git": old["machine"]["git"],
                                                     "load_average_1min_at_start":
                                                         old["machine"].get("load_average_1min_at_start")}
                                                 for k in PARTS if k in old})
    for part in parts:
        out[part] = new[part]
        provenance[part] = new["provenance"][part]
    out["provenance"] = provenance
    out["machine"], out["args"] = new["machine"], {**old["args"], "merged_parts": parts}
    out["seconds"], out["episodes"] = new["seconds"], new["episodes"]  # the header describes this run
    return out


def _paired(old: list[dict], new: list[dict], label: str) -> str:
    """``label: old/new per round 1.15x, 1.06x (median 1.10x), new faster in 2 of 2``."""
    ratios = [o["ms_per_update"] / n["ms_per_update"] for o, n in zip(old, new)]
    return (f"{label}: old/new per round {', '.join(f'{r:.2f}x' for r in ratios)} (median "
            f"{statistics.median(ratios):.2f}x), new faster in {sum(r > 1 for r in ratios)} of {len(ratios)}")


def _allocator(runs: list[dict]) -> str:
    """What the worker's ``--malloc-keep-freed`` did in these runs ("not recorded" before it existed)."""
    return ", ".join(sorted({str(r.get("malloc_keep_freed", "not recorded")) for r in runs}))


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def report(res: dict) -> str:
    info, a = res["machine"], res["args"]
    ep = res["episodes"]
    lines = [
        "# Training throughput: old path vs new, side by side",
        "",
        f"Generated by `python benchmarks/train_throughput.py{' --quick' if a['quick'] else ''}` on {info['date']} "
        f"({info['cpu']}, {info['cpu_count']} cores, torch {info['torch']}, code at `{info['git']}`; load average "
        f"at start {info.get('load_average_1min_at_start', 'n/a')}). Old path: commit `{res['baseline']}` in a git "
        f"worktree; new path: this checkout. Each number is the median over {a['rounds']} alternating old/new "
        f"rounds of fresh processes ({a['repeats']} timed updates each, after warm-up). Map {res['map']}; update "
        f"batches of {a['batch_size']} episodes drawn from the same {ep['episodes']} recorded random-play "
        f"episodes (lengths {ep['length_min']}-{ep['length_max']}, mean {ep['length_mean']:.1f}; rows "
        f"{ep['rows']} padded). Total {res['seconds'] / 60:.1f} min.",
        "",
    ]
    runs = {(v["date"], v["git"]) for v in (res.get("provenance") or {}).values()}
    if len(runs) > 1:  # --merge: say which run measured which part
        lines += ["Parts measured in different runs (`--merge`): " + "; ".join(
            f"`{part}` on {v['date']} at `{v['git']}` (load {v.get('load_average_1min_at_start')})"
            for part, v in res["provenance"].items()) + ".", ""]
    if "update" in res:
        u = res["update"]
        lines += ["## One QMIX update (no CQL)", "",
                  "| threads | old ms | new ms | speed-up | rows old / new | GFLOP (new) | GFLOP/s (new) "
                  "| matmul roofline ms (new) | new / roofline | transcendental ms (new) "
                  "| new / (matmul + transcendental) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t in (1, 2):
            old, new = u[f"old_{t}"], u[f"new_{t}"]
            o, n = median_of(old, "ms_per_update"), median_of(new, "ms_per_update")
            flops, roof = median_of(new, "flops"), median_of(new, "roofline_ms")
            # Older result files have no transcendental replay.
            trans = median_of(new, "transcendental_ms") if all("transcendental_ms" in r for r in new) else None
            lines.append(f"| {t} | {_fmt(o)} | {_fmt(n)} | {o / n:.2f}x | {median_of(old, 'batch_rows'):.0f} / "
                         f"{median_of(new, 'batch_rows'):.0f} | {flops / 1e9:.2f} | {flops / 1e9 / (n / 1000):.1f} | "
                         f"{_fmt(roof)} | {n / roof:.2f} | {_fmt(trans) if trans is not None else 'n/a'} | "
                         f"{f'{n / (roof + trans):.2f}' if trans is not None else 'n/a'} |")
        lines += ["", "Paired by round (old and new run one after the other; this machine's speed drifts over "
                      "minutes, so the per-round ratio is steadier than the ratio of medians): "
                  + "; ".join(_paired(u[f"old_{t}"], u[f"new_{t}"], f"{t} thread{'s' if t > 1 else ''}")
                              for t in (1, 2)) + "."]
        calls = sorted({r.get("matmul_ops") for r in u["new_1"] if r.get("matmul_ops") is not None})
        lines += ["", f"Roofline: every mm/addmm/bmm/baddbmm (in-place and out= forms included) of one new update "
                      f"(same shapes, same order{'; ' + ', '.join(map(str, calls)) + ' calls' if calls else ''}) "
                      f"replayed on random tensors in the same process; target: update <= "
                      f"{TARGETS['roofline_ratio']}x it. Each call is timed with its own overhead, so an update "
                      "of fewer, larger matmuls has a faster roofline. Transcendental: the update's "
                      "sigmoid/tanh/exp/log/elu/softmax calls (in-place forms included) replayed the same way "
                      "(each a vector exp or log per element; on this CPU a sigmoid costs several multiplies).",
                  "", "Allocator (train.yaml `malloc_keep_freed`, applied by the worker as train.py applies it): "
                      + "; ".join(f"{path}: {_allocator(u[f'{path}_1'])}" for path in ("old", "new")) + ".",
                  ""]
    if "cql" in res:
        c = res["cql"]
        lines += ["## One update with the CQL terms (1 thread)", "",
                  "| objective | old ms | new ms | speed-up | old / no-CQL | new / no-CQL |", "|---|---:|---:|---:|---:|---:|"]
        base_o, base_n = median_of(c["old_none"], "ms_per_update"), median_of(c["new_none"], "ms_per_update")
        for cql, name in (("none", "no CQL"), ("macql", "MACQL, 100 samples"), ("cfcql", "CFCQL + behaviour net (old: a cloning step with every update; new: trained before, frozen)")):
            o, n = median_of(c[f"old_{cql}"], "ms_per_update"), median_of(c[f"new_{cql}"], "ms_per_update")
            lines.append(f"| {name} | {_fmt(o)} | {_fmt(n)} | {o / n:.2f}x | {o / base_o:.2f} | {n / base_n:.2f} |")
        lines += ["", f"Target: a CQL update at most {TARGETS['cql_ratio']}x a plain update at the same batch.", ""]
    if "collect" in res:
        c = res["collect"]
        lines += ["## Collection (simulator + acting policy + episode assembly, 1 thread)", "",
                  "| battles x steps per call | path | env steps/s | ms per step call | first call s |",
                  "|---|---|---:|---:|---:|"]
        for key in c:
            name, shape = key.rsplit("_", 1)
            lines.append(f"| {shape} | {name} | {median_of(c[key], 'env_steps_per_second'):,.0f} | "
                         f"{median_of(c[key], 'ms_per_step_call'):.2f} | {median_of(c[key], 'first_collect_s'):.1f} |")
        lines += ["", f"Target: one step call of 8 battles, policy included, <= {TARGETS['step_call_ms']} ms. "
                      "`first call` includes the compilation of `new_compiled` (cached on disk afterwards). "
                      "`new_frozen_sim`: the simulator's physics and features replaced by their first result "
                      "(throughput_worker.py --frozen-sim), i.e. the cost of TorchRL's collector, the env's "
                      "TensorDicts, the acting policy and the episode assembly alone.", ""]
    if "online" in res:
        o = res["online"]
        names = list(o)
        old_rate = median_of(o[names[0]], "env_steps_per_second")
        lines += ["## Whole online run (QMIX, train.py phase=online)", "",
                  "| path | env steps/s | speed-up vs old | updates | env steps per update | minutes per 1M env steps |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name in names:
            rate = median_of(o[name], "env_steps_per_second")
            lines.append(f"| {name} | {rate:,.0f} | {rate / old_rate:.2f}x | {median_of(o[name], 'updates'):.0f} | "
                         f"{median_of(o[name], 'env_steps_per_update'):.0f} | {1e6 / rate / 60:.0f} |")
        same = median_of(o[names[1]], "env_steps_per_second") / old_rate
        lines += ["", f"{a['online_env_steps']:,} env steps per run, from the first env step (warm-up of a "
                      f"batch of random episodes and two greedy evaluations of 32 battles included). "
                      f"Target: >= {TARGETS['online_speedup']}x at the same update-to-data ratio: "
                      f"**{same:.2f}x, {'met' if same >= TARGETS['online_speedup'] else 'not met'}**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

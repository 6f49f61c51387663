#!/usr/bin/env python
"""Env-steps per second of the embedded SMAC simulator (random valid actions).

One env step is one battle advancing one SMAC step (0.5 game-seconds), so a
call of ``env.step`` on ``num_envs`` batched battles counts ``num_envs`` env
steps: ``env-steps/s = num_envs * calls / seconds``. The loop timed is what a
collector does: ``env.rand_action`` + ``env.step_and_maybe_reset`` (battles
that end are reset inside the loop).

    python benchmarks/env_throughput.py                         # 2s3z, 6h_vs_8z x {1, 64, 1024} x {1, 2} processes on CPU (+CUDA)
    python benchmarks/env_throughput.py --compare-substeps 4,8  # same configs for several physics sub-step counts
    python benchmarks/env_throughput.py --threads 2 --seconds 5 --num-envs 1024 --maps 2s3z --procs 1,2

``--procs P`` with P > 1 (CPU only) runs P worker processes (start method
"spawn"), each simulating ``num_envs // P`` battles with one torch thread,
all stepping at the same time; their rate is the sum over workers of
battles x calls divided by the common wall-clock window (first worker's start
to last worker's end). P = 1 is the in-process loop with ``--threads``.

Writes benchmarks/results/env_throughput.{json,md,png} and, when
docs/simulator.md exists, fills its "Throughput" section.

Target: >= 100,000 env-steps/s at num_envs=1024 on 2s3z on 2 CPU cores, with
the simulator's default physics resolution (substeps=8); checked against the
best configuration that uses at most 2 cores (procs x threads <= 2).
References (the project's SMAC fact sheet): one StarCraft II process runs
on the order of 10^2 env-steps/s; SMAClite about 110-170/s; JaxMARL's SMAX
about 15-43k/s on the same 2 cores with 64-1024 battles batched.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import queue as queue_lib
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ovmse.provenance import machine_info
from ovmse.envs import SimSMACEnv, make_env

ROOT = Path(__file__).resolve().parents[1]
# The target holds for the simulator's default physics resolution (SimSMACEnv's default substeps, 8) and at
# most `cores` CPU cores in total (processes x torch threads per process).
TARGET = {"map": "2s3z", "num_envs": 1024, "device": "cpu", "cores": 2,
          "substeps": inspect.signature(SimSMACEnv.__init__).parameters["substeps"].default,
          "env_steps_per_second": 100_000}
REFERENCES = {  # env-steps/s, (low, high)
    "StarCraft II (one game process, real SMAC)": (100.0, 100.0),
    "SMAClite (one battle per process)": (110.0, 170.0),
    "JaxMARL SMAX (2 cores, 64-1024 batched)": (15_000.0, 43_000.0),
}
THROUGHPUT_BEGIN = "<!-- THROUGHPUT:BEGIN (filled by benchmarks/env_throughput.py) -->"
THROUGHPUT_END = "<!-- THROUGHPUT:END -->"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(map_name: str, num_envs: int, device: str, substeps: int, seconds: float, repeats: int,
            warmup: int, env_options: dict) -> dict:
    """Median env-steps/s of ``repeats`` timed runs of a fixed number of ``env.step`` calls (in this process)."""
    dev = torch.device(device)
    t_build = time.perf_counter()
    env = make_env(map_name, num_envs, device=dev, seed=0, substeps=substeps, **env_options)
    td = env.reset()
    build_s = time.perf_counter() - t_build

    def run(calls: int) -> float:
        nonlocal td
        _sync(dev)
        start = time.perf_counter()
        for _ in range(calls):
            td = env.rand_action(td)
            _, td = env.step_and_maybe_reset(td)
        _sync(dev)
        return time.perf_counter() - start

    warmup_s = run(warmup)
    # Calibrate: enough calls that the repeats together take about `seconds`.
    probe_calls, probe_s = 1, run(1)
    while probe_s < 0.3 and probe_calls < 4096:
        probe_calls *= 2
        probe_s = run(probe_calls)
    per_call = probe_s / probe_calls
    calls = max(2, round(seconds / repeats / per_call))
    times = [run(calls) for _ in range(repeats)]
    rates = [num_envs * calls / t for t in times]
    med = statistics.median(rates)
    return {
        "map": map_name,
        "device": str(dev),
        "num_envs": num_envs,
        "substeps": substeps,
        "procs": 1,
        "threads_per_proc": torch.get_num_threads(),
        "calls_per_repeat": calls,
        "repeats": repeats,
        "env_steps_per_second": med,
        "env_steps_per_second_all": rates,
        "ms_per_call": 1000 * num_envs / med,
        "build_seconds": build_s,
        "warmup_seconds": warmup_s,
        "options": {k: v for k, v in env_options.items()},
    }


# ---------------------------------------------------------------------------------------------------------------
# P worker processes stepping at the same time
# ---------------------------------------------------------------------------------------------------------------
#
# Protocol (the parent takes part in every barrier, so the barrier has procs + 1 parties):
#   worker: build env + warm up -> put ("ready")         parent: collect procs x "ready"
#   all:    barrier (start of the concurrent calibration)
#   worker: step until PROBE_SECONDS have passed -> put ("probe", calls, seconds)
#                                                       parent: collect procs x "probe", set the agreed call count
#   all:    barrier (the call count is visible to every worker)
#   repeat `repeats` times:
#     all:    barrier (timing starts together)
#     worker: run the agreed calls -> put ("repeat", start, end)      parent: collect procs x "repeat"
# Any failure in a worker puts ("error", traceback) and aborts the barrier; every wait and get has a timeout, and the
# parent terminates (then kills) the workers it started on the way out, however it leaves.
# Timestamps are time.monotonic(), CLOCK_MONOTONIC on Linux, which all processes of the machine share.

PROBE_SECONDS = 0.3
TIMEOUT_BASE_SECONDS = 180.0  # per wait: start-up (import torch + ovmse) on a loaded machine, build and warm-up


def _exit_with_parent(parent_pid: int) -> None:
    """Daemon thread of a worker: leave as soon as the parent is gone (e.g. killed before it could clean up)."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


@torch.no_grad()
def _worker(rank: int, map_name: str, battles: int, substeps: int, warmup: int, repeats: int, env_options: dict,
            barrier, calls_value, results, timeout: float, parent_pid: int) -> None:
    _exit_with_parent(parent_pid)
    try:
        torch.set_num_threads(1)
        t_build = time.perf_counter()
        env = make_env(map_name, battles, device="cpu", seed=rank, substeps=substeps, **env_options)
        td = env.reset()
        build_s = time.perf_counter() - t_build

        def step() -> None:
            nonlocal td
            td = env.rand_action(td)
            _, td = env.step_and_maybe_reset(td)

        start = time.monotonic()
        for _ in range(warmup):
            step()
        results.put(("ready", rank, build_s, time.monotonic() - start))

        barrier.wait(timeout)  # concurrent calibration
        start, probe_calls = time.monotonic(), 0
        while True:
            step()
            probe_calls += 1
            elapsed = time.monotonic() - start
            if elapsed >= PROBE_SECONDS:
                break
        results.put(("probe", rank, probe_calls, elapsed))

        barrier.wait(timeout)  # the parent has set the call count
        calls = calls_value.value
        for i in range(repeats):
            barrier.wait(timeout)
            start = time.monotonic()
            for _ in range(calls):
                step()
            results.put(("repeat", rank, i, start, time.monotonic()))
    except threading.BrokenBarrierError:
        results.put(("error", rank, "barrier broken (another process failed, or a wait timed out)"))
    except BaseException:  # noqa: BLE001 - report anything, including KeyboardInterrupt, to the parent
        results.put(("error", rank, traceback.format_exc()))
        barrier.abort()


def _collect(results, kind: str, procs: list, timeout: float) -> list[tuple]:
    """One message of ``kind`` from each worker, failing fast on a worker error or death."""
    got: dict[int, tuple] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            msg = results.get(timeout=1.0)
        except queue_lib.Empty:
            dead = [f"worker {i} exit code {p.exitcode}" for i, p in enumerate(procs)
                    if p.exitcode is not None and i not in got]
            if dead:
                raise RuntimeError(f"waiting for {kind!r}: {', '.join(dead)}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"waiting for {kind!r}: no answer from workers "
                                   f"{sorted(set(range(len(procs))) - set(got))} after {timeout:.0f} s") from None
            continue
        if msg[0] == "error":
            raise RuntimeError(f"worker {msg[1]} failed:\n{msg[2]}")
        if msg[0] != kind:
            raise RuntimeError(f"expected {kind!r} from the workers, got {msg[0]!r} from worker {msg[1]}")
        got[msg[1]] = msg
    return [got[i] for i in range(len(procs))]


def _drain_errors(results) -> str:
    errors = []
    try:
        while True:
            msg = results.get(timeout=0.5)
            if msg[0] == "error":
                errors.append(f"worker {msg[1]}: {msg[2]}")
    except (queue_lib.Empty, OSError, ValueError):
        pass
    return "\n".join(errors)


def measure_procs(map_name: str, num_envs: int, procs: int, substeps: int, seconds: float, repeats: int,
                  warmup: int, env_options: dict) -> dict:
    """Median aggregate env-steps/s of ``procs`` single-threaded CPU workers with ``num_envs // procs`` battles each."""
    if procs < 2 or num_envs < procs or num_envs % procs:
        raise ValueError(f"procs={procs} needs num_envs >= procs and divisible by it, got {num_envs}")
    battles = num_envs // procs
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    calls_value = ctx.Value("i", 0)
    results = ctx.Queue()
    # Generous limits: process start-up on a loaded 2-core machine, build, warm-up, and one timed repeat (about
    # seconds / repeats, x 20 for contention) must fit in one wait.
    timeout = TIMEOUT_BASE_SECONDS + 20.0 * seconds / max(1, repeats)
    workers = [ctx.Process(target=_worker, name=f"env_throughput-worker-{i}", daemon=True,
                           args=(i, map_name, battles, substeps, warmup, repeats, env_options, barrier, calls_value,
                                 results, timeout, os.getpid()))
               for i in range(procs)]
    t_start = time.perf_counter()
    try:
        for w in workers:
            w.start()
        try:
            ready = _collect(results, "ready", workers, timeout)
            startup_s = time.perf_counter() - t_start
            barrier.wait(timeout)
            probes = _collect(results, "probe", workers, timeout)
            per_call = max(elapsed / calls for _, _, calls, elapsed in probes)  # the slowest worker sets the pace
            calls = max(2, round(seconds / repeats / per_call))
            calls_value.value = calls
            barrier.wait(timeout)
            rates, windows, worker_seconds = [], [], []
            for _ in range(repeats):
                barrier.wait(timeout)
                done = _collect(results, "repeat", workers, timeout)
                window = max(end for *_, end in done) - min(start for *_, start, _ in done)
                windows.append(window)
                worker_seconds.append([end - start for *_, start, end in done])
                rates.append(procs * battles * calls / window)
        except threading.BrokenBarrierError:
            barrier.abort()
            detail = _drain_errors(results)
            raise RuntimeError(f"{procs} workers on {map_name}, num_envs={num_envs}: barrier broken"
                               + (f"\n{detail}" if detail else " (a wait timed out)")) from None
        for w in workers:
            w.join(timeout=30)
    finally:
        barrier.abort()  # releases any worker still waiting (no-op when all are done)
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
            if w.is_alive():
                w.kill()
                w.join(timeout=5)
        results.close()
        results.cancel_join_thread()
    med = statistics.median(rates)
    return {
        "map": map_name,
        "device": "cpu",
        "num_envs": num_envs,
        "substeps": substeps,
        "procs": procs,
        "threads_per_proc": 1,
        "battles_per_proc": battles,
        "calls_per_repeat": calls,
        "repeats": repeats,
        "env_steps_per_second": med,
        "env_steps_per_second_all": rates,
        "ms_per_call": 1000 * num_envs / med,  # wall time of one round in which every worker steps its battles once
        "window_seconds_all": windows,
        "worker_seconds_all": worker_seconds,
        "startup_seconds": startup_s,
        "build_seconds": max(r[2] for r in ready),
        "warmup_seconds": max(r[3] for r in ready),
        "options": {k: v for k, v in env_options.items()},
    }


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _cores(r: dict) -> int:
    return r["procs"] * r["threads_per_proc"]


def _config(r: dict) -> str:
    return f"{r['procs']} × {r['threads_per_proc']}"


def _config_words(r: dict) -> str:
    p, t = r["procs"], r["threads_per_proc"]
    return (f"{p} process{'es' if p > 1 else ''} × {t} torch thread{'s' if t > 1 else ''}"
            + (f" ({r['num_envs'] // p} battles each)" if p > 1 else ""))


def table(results: list[dict]) -> str:
    rows = ["| device | map | substeps | num_envs | procs × threads | env-steps/s (median) | min–max of repeats "
            "| ms per env.step | calls × repeats |",
            "|---|---|---:|---:|---|---:|---|---:|---|"]
    for r in results:
        rates = r["env_steps_per_second_all"]
        rows.append(
            f"| {r['device']} | {r['map']} | {r['substeps']} | {r['num_envs']} | {_config(r)} "
            f"| {_fmt(r['env_steps_per_second'])} | {_fmt(min(rates))}–{_fmt(max(rates))} | {r['ms_per_call']:.2f} "
            f"| {r['calls_per_repeat']} × {r['repeats']} |"
        )
    return "\n".join(rows)


def verdict(results: list[dict]) -> dict:
    """Target check (best configuration within the core budget, default substeps) and reference comparison."""
    goal, cores = TARGET["env_steps_per_second"], TARGET["cores"]
    where = (f"num_envs={TARGET['num_envs']} on {TARGET['map']} on {cores} CPU cores "
             f"(default substeps={TARGET['substeps']}; best configuration with procs × threads ≤ {cores})")
    head = f"Target: >= {_fmt(goal)} env-steps/s at {where}."
    hits = [r for r in results if r["map"] == TARGET["map"] and r["num_envs"] == TARGET["num_envs"]
            and r["device"] == TARGET["device"]]
    within = [r for r in hits if _cores(r) <= cores]
    default = [r for r in within if r["substeps"] == TARGET["substeps"]]
    over = sorted({_config(r) for r in hits if _cores(r) > cores})
    note_over = (f" Not counted, as they use more than {cores} cores: {', '.join(over)}." if over else "")

    def shortfall(rate: float) -> str:
        return "**MET**." if rate >= goal else f"**NOT MET** ({100 * rate / goal:.1f}% of target, {goal / rate:.1f}x short)."

    out: dict = {"measured": bool(default), "target": TARGET}
    if default:
        best = max(default, key=lambda r: r["env_steps_per_second"])
        rate = best["env_steps_per_second"]
        met = rate >= goal
        others = [r for r in default if r is not best]
        lines = [head + f" Best: {_config_words(best)} = {_fmt(rate)} env-steps/s ({os.cpu_count()} cores on this "
                 f"machine) -> " + shortfall(rate)
                 + ("" if not others else " Other configurations: "
                    + "; ".join(f"{_config(r)}: {_fmt(r['env_steps_per_second'])}" for r in others) + ".")
                 + note_over]
        comparisons = {}
        for name, (lo, hi) in REFERENCES.items():
            comparisons[name] = [rate / hi, rate / lo]
            span = f"{rate / lo:.1f}x" if lo == hi else f"{rate / hi:.2f}–{rate / lo:.2f}x"
            ref = f"~{_fmt(lo)}" if lo == hi else f"{_fmt(lo)}–{_fmt(hi)}"
            lines.append(f"- vs {name}, {ref} env-steps/s: {span}")
        out.update(met=met, env_steps_per_second=rate, config=best, comparisons=comparisons)
    else:
        lines = [head + " Not measured in this run (no such configuration at the default substeps)." + note_over]

    # Other physics resolutions: reported apart, as they are not the setting the target is stated for.
    nondefault = {}
    for s in sorted({r["substeps"] for r in within if r["substeps"] != TARGET["substeps"]}):
        b = max((r for r in within if r["substeps"] == s), key=lambda r: r["env_steps_per_second"])
        nondefault[s] = {"met": b["env_steps_per_second"] >= goal, "env_steps_per_second": b["env_steps_per_second"],
                         "config": b}
    if nondefault:
        lines.append("")
        lines.append(f"Non-default physics resolution (substeps ≠ {TARGET['substeps']}; the target does not apply as "
                     f"stated, shown for comparison only):")
        for s, v in nondefault.items():
            b = v["config"]
            lines.append(f"- substeps={s}: best {_config_words(b)} = {_fmt(v['env_steps_per_second'])} env-steps/s -> "
                         + ("would meet" if v["met"] else "would not meet") + f" the {_fmt(goal)} figure "
                         f"({100 * v['env_steps_per_second'] / goal:.1f}%).")
    out["non_default_substeps"] = nondefault
    out["text"] = "\n".join(lines)
    return out


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["device"], r["map"], r["substeps"], r["procs"], r["threads_per_proc"]), []).append(r)
    markers = "osD^v<>"
    for k, ((device, m, s, p, t), rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["num_envs"])
        ax.plot([r["num_envs"] for r in rs], [r["env_steps_per_second"] for r in rs], marker=markers[k % len(markers)],
                ls="-" if device != "cpu" else ("-" if p == 1 else "--"),
                label=f"{m}, {device}, substeps={s}" + (f", {p} proc{'s' if p > 1 else ''} × {t} thread{'s' if t > 1 else ''}"
                                                        if device == "cpu" else ""))
    ax.axhline(TARGET["env_steps_per_second"], color="k", ls=":", lw=1.2,
               label=f"target {_fmt(TARGET['env_steps_per_second'])}/s ({TARGET['map']}, {TARGET['num_envs']} envs, "
                     f"≤{TARGET['cores']} cores)")
    colours = ["#999999", "#d4a017", "#8e44ad"]
    for (name, (lo, hi)), c in zip(REFERENCES.items(), colours):
        if lo == hi:
            ax.axhline(lo, color=c, lw=1.2, ls="-.", label=name)
        else:
            ax.axhspan(lo, hi, color=c, alpha=0.18, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r["num_envs"] for r in results})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("num_envs (battles stepped together, over all processes)")
    ax.set_ylabel("env-steps / s")
    ax.set_title("SMAC simulator throughput, random valid actions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _threads_text(info: dict, results: list[dict]) -> str:
    text = f"in-process runs with {info['torch_threads']} torch thread{'s' if info['torch_threads'] > 1 else ''}"
    if any(r["procs"] > 1 for r in results):
        text += ", P-process runs with 1 thread per process"
    return text


def markdown(results: list[dict], info: dict, args, check: dict, elapsed: float, png: Path, md_path: Path) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in results[0]["options"].items()) if results else ""
    return "\n".join([
        "# Env throughput",
        "",
        f"`python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if sys.argv[1:] else 'benchmarks/env_throughput.py'}` "
        f"on {info['date']}: torch {info['torch']}, {_threads_text(info, results)}, {info['cpu_count']} CPU cores "
        f"({info['cpu']})" + (f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU")
        + f"; code at `{info['git']}`; env options: {opts}. Loop: `env.rand_action` + `env.step_and_maybe_reset` "
        f"after {args.warmup} warm-up calls; each config runs {args.repeats} timed repeats of a fixed number of calls "
        f"(about {args.seconds:g} s in all) and reports the median. One env step = one battle advancing one "
        f"SMAC step. `procs × threads`: 1 × T is one process stepping all `num_envs` battles with T torch threads; "
        f"P × 1 (P > 1) is P processes (spawned) with one thread and `num_envs / P` battles each, stepping at the "
        f"same time, rated by all their env steps over the common wall-clock window (first start to last end; "
        f"'ms per env.step' is then that window per call). Total {elapsed:.0f} s. The machine may be shared: load "
        f"average at start {info.get('load_average_1min_at_start', float('nan')):.2f}.",
        "",
        table(results),
        "",
        check["text"],
        "",
        f"![throughput]({os.path.relpath(png, md_path.parent)})",
        "",
    ])


def fill_doc(doc: Path, results: list[dict], check: dict, info: dict, md: Path, png: Path) -> bool:
    if not doc.exists():
        return False
    text = doc.read_text()
    if THROUGHPUT_BEGIN not in text or THROUGHPUT_END not in text:
        return False
    body = "\n".join([
        f"Measured by `benchmarks/env_throughput.py` on {info['date']} (torch {info['torch']}, "
        f"{_threads_text(info, results)}, {info['cpu_count']} cores"
        + (f", GPU {info['cuda']}" if info.get("cuda") else "")
        + f"; code at `{info['git']}`). `procs × threads`: P processes with T torch threads each, "
        f"`num_envs / P` battles per process. Full results: [{md.name}]({os.path.relpath(md, doc.parent)}).",
        "",
        table(results),
        "",
        check["text"],
        "",
        f"![throughput]({os.path.relpath(png, doc.parent)})",
    ])
    new = re.sub(re.escape(THROUGHPUT_BEGIN) + r".*?" + re.escape(THROUGHPUT_END),
                 lambda _: f"{THROUGHPUT_BEGIN}\n{body}\n{THROUGHPUT_END}", text, flags=re.S)
    doc.write_text(new)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when unavailable")
    p.add_argument("--num-envs", default="1,64,1024", help="comma-separated batch sizes (battles over all processes)")
    p.add_argument("--maps", default="2s3z,6h_vs_8z", help="comma-separated map names")
    p.add_argument("--substeps", type=int, default=TARGET["substeps"], help="physics sub-steps per env step")
    p.add_argument("--compare-substeps", default=None, help="comma-separated sub-step counts to run instead, e.g. 4,8")
    p.add_argument("--procs", default="1,2",
                   help="comma-separated process counts; P > 1 runs P single-threaded CPU workers with num_envs/P "
                        "battles each (only where P divides num_envs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for procs=1 (default: torch's choice)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per config (all repeats)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per config (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed env.step calls before timing")
    p.add_argument("--check-actions", action="store_true", help="validate actions against the mask (one sync per step)")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--doc", default="docs/simulator.md", help="fill this document's Throughput section if it exists")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    # SIGTERM -> SystemExit, so that worker processes are cleaned up as on an error.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    procs_list = _ints(args.procs)
    if not procs_list or min(procs_list) < 1:
        p.error("--procs needs positive integers")
    if args.repeats < 1 or args.seconds <= 0:
        p.error("--repeats must be >= 1 and --seconds > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    devices = []
    for d in _names(args.devices):
        if d.startswith("cuda") and not torch.cuda.is_available():
            print(f"skipping {d}: torch.cuda.is_available() is False")
            continue
        devices.append(d)
    substeps = _ints(args.compare_substeps) if args.compare_substeps else [args.substeps]
    env_options = {"check_actions": args.check_actions}

    info = machine_info(ROOT, threads)
    print(f"torch {info['torch']}, {threads} threads, {info['cpu_count']} cores, devices {devices}, "
          f"substeps {substeps}, procs {procs_list}, options {env_options}", flush=True)
    t0 = time.perf_counter()
    results = []
    for device in devices:
        for s in substeps:
            for m in _names(args.maps):
                for n in _ints(args.num_envs):
                    for procs in procs_list:
                        if procs > 1 and torch.device(device).type != "cpu":
                            continue  # worker processes are a CPU configuration
                        if procs > 1 and (n < procs or n % procs):
                            print(f"{device:>6} {m:>9} substeps={s:<2} num_envs={n:<5} procs={procs}: skipped "
                                  f"(num_envs not divisible into {procs} processes)", flush=True)
                            continue
                        if procs == 1:
                            r = measure(m, n, device, s, args.seconds, args.repeats, args.warmup, env_options)
                        else:
                            r = measure_procs(m, n, procs, s, args.seconds, args.repeats, args.warmup, env_options)
                        results.append(r)
                        print(f"{device:>6} {m:>9} substeps={s:<2} num_envs={n:<5} {_config(r):>6} "
                              f"{_fmt(r['env_steps_per_second']):>10} env-steps/s  ({r['ms_per_call']:.2f} ms/call, "
                              f"repeats {', '.join(_fmt(x) for x in r['env_steps_per_second_all'])})", flush=True)
    elapsed = time.perf_counter() - t0
    check = verdict(results)

    out = ROOT / args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / "env_throughput.json", out / "env_throughput.md", out / "env_throughput.png"
    json_path.write_text(json.dumps({"args": vars(args), "machine": info, "elapsed_seconds": elapsed,
                                     "target": TARGET, "references": REFERENCES, "check": check,
                                     "results": results}, indent=1, default=str))
    plot(results, png_path)
    md_path.write_text(markdown(results, info, args, check, elapsed, png_path, md_path))
    print()
    print(table(results))
    print()
    print(check["text"])
    filled = False if args.no_doc else fill_doc(ROOT / args.doc, results, check, info, md_path, png_path)
    print(f"\nwrote {json_path}, {md_path}, {png_path}" + (f"; filled the Throughput section of {args.doc}" if filled else "")
          + f"  ({elapsed:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

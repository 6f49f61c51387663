#!/usr/bin/env python
"""Env-steps per second of the embedded SMAC simulator (random valid actions).

One env step is one battle advancing one SMAC step (0.5 game-seconds), so a
call of ``env.step`` on ``num_envs`` batched battles counts ``num_envs`` env
steps: ``env-steps/s = num_envs * calls / seconds``. The loop timed is what a
collector does: ``env.rand_action`` + ``env.step_and_maybe_reset`` (battles
that end are reset inside the loop).

    python benchmarks/env_throughput.py                         # 2s3z, 6h_vs_8z x {1, 64, 1024} on CPU (+CUDA if present)
    python benchmarks/env_throughput.py --compare-substeps 4,8  # same configs for several physics sub-step counts
    python benchmarks/env_throughput.py --threads 2 --seconds 5 --num-envs 1024 --maps 2s3z

Writes benchmarks/results/env_throughput.{json,md,png} and, when
docs/simulator.md exists, fills its "Throughput" section.

Target: >= 100,000 env-steps/s at num_envs=1024 on 2s3z on 2 CPU cores.
References (the project's SMAC fact sheet): one StarCraft II process runs
on the order of 10^2 env-steps/s; SMAClite about 110-170/s; JaxMARL's SMAX
about 15-43k/s on the same 2 cores with 64-1024 battles batched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ovmse.envs import SimSMACEnv, make_env

ROOT = Path(__file__).resolve().parents[1]
TARGET = {"map": "2s3z", "num_envs": 1024, "device": "cpu", "env_steps_per_second": 100_000}
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


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        commit += "+uncommitted changes in src/" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        pass
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": commit,
    }
    try:
        info["load_average_1min_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


@torch.no_grad()
def measure(map_name: str, num_envs: int, device: str, substeps: int, seconds: float, repeats: int,
            warmup: int, env_options: dict) -> dict:
    """Median env-steps/s of ``repeats`` timed runs of a fixed number of ``env.step`` calls."""
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
        "calls_per_repeat": calls,
        "repeats": repeats,
        "env_steps_per_second": med,
        "env_steps_per_second_all": rates,
        "ms_per_call": 1000 * num_envs / med,
        "build_seconds": build_s,
        "warmup_seconds": warmup_s,
        "options": {k: v for k, v in env_options.items()},
    }


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def table(results: list[dict]) -> str:
    rows = ["| device | map | substeps | num_envs | env-steps/s (median) | min–max of repeats | ms per env.step | calls × repeats |",
            "|---|---|---:|---:|---:|---|---:|---|"]
    for r in results:
        rates = r["env_steps_per_second_all"]
        rows.append(
            f"| {r['device']} | {r['map']} | {r['substeps']} | {r['num_envs']} | {_fmt(r['env_steps_per_second'])} "
            f"| {_fmt(min(rates))}–{_fmt(max(rates))} | {r['ms_per_call']:.2f} | {r['calls_per_repeat']} × {r['repeats']} |"
        )
    return "\n".join(rows)


def verdict(results: list[dict], threads: int) -> dict:
    """Target check and comparison with the reference simulators."""
    hits = [r for r in results if r["map"] == TARGET["map"] and r["num_envs"] == TARGET["num_envs"]
            and r["device"] == TARGET["device"]]
    if not hits:
        return {"measured": False,
                "text": f"Target ({_fmt(TARGET['env_steps_per_second'])} env-steps/s, {TARGET['map']}, "
                        f"num_envs={TARGET['num_envs']}, CPU) not measured in this run."}
    best = max(hits, key=lambda r: (r["substeps"] == 8, r["env_steps_per_second"]))
    rate = best["env_steps_per_second"]
    met = rate >= TARGET["env_steps_per_second"]
    lines = [
        f"Target: >= {_fmt(TARGET['env_steps_per_second'])} env-steps/s at num_envs={TARGET['num_envs']} on "
        f"{TARGET['map']} on 2 CPU cores. Measured: {_fmt(rate)} env-steps/s (substeps={best['substeps']}, "
        f"{threads} torch threads, {os.cpu_count()} cores) -> "
        + ("**MET**." if met else f"**NOT MET** ({100 * rate / TARGET['env_steps_per_second']:.1f}% of target, "
                                  f"{TARGET['env_steps_per_second'] / rate:.1f}x short).")
    ]
    comparisons = {}
    for name, (lo, hi) in REFERENCES.items():
        comparisons[name] = [rate / hi, rate / lo]
        span = f"{rate / lo:.1f}x" if lo == hi else f"{rate / hi:.2f}–{rate / lo:.2f}x"
        ref = f"~{_fmt(lo)}" if lo == hi else f"{_fmt(lo)}–{_fmt(hi)}"
        lines.append(f"- vs {name}, {ref} env-steps/s: {span}")
    return {"measured": True, "met": met, "env_steps_per_second": rate, "config": best,
            "comparisons": comparisons, "text": "\n".join(lines)}


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["device"], r["map"], r["substeps"]), []).append(r)
    markers = "osD^v<>"
    for k, ((device, m, s), rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["num_envs"])
        ax.plot([r["num_envs"] for r in rs], [r["env_steps_per_second"] for r in rs], marker=markers[k % len(markers)],
                ls="-" if device == "cpu" else "--", label=f"{m}, {device}, substeps={s}")
    ax.axhline(TARGET["env_steps_per_second"], color="k", ls=":", lw=1.2,
               label=f"target {_fmt(TARGET['env_steps_per_second'])}/s ({TARGET['map']}, {TARGET['num_envs']} envs, CPU)")
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
    ax.set_xlabel("num_envs (battles stepped together)")
    ax.set_ylabel("env-steps / s")
    ax.set_title("SMAC simulator throughput, random valid actions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown(results: list[dict], info: dict, args, check: dict, elapsed: float, png: Path, md_path: Path) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in results[0]["options"].items()) if results else ""
    return "\n".join([
        "# Env throughput",
        "",
        f"`python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if sys.argv[1:] else 'benchmarks/env_throughput.py'}` "
        f"on {info['date']}: torch {info['torch']}, {info['torch_threads']} threads, {info['cpu_count']} CPU cores "
        f"({info['cpu']})" + (f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU")
        + f"; code at `{info['git']}`; env options: {opts}. Loop: `env.rand_action` + `env.step_and_maybe_reset` "
        f"after {args.warmup} warm-up calls; each config runs {args.repeats} timed repeats of a fixed number of calls "
        f"(about {args.seconds:g} s in all) and reports the median. One env step = one battle advancing one "
        f"SMAC step. Total {elapsed:.0f} s. The machine may be shared: load average at start "
        f"{info.get('load_average_1min_at_start', float('nan')):.2f}.",
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
        f"{info['torch_threads']} threads, {info['cpu_count']} cores"
        + (f", GPU {info['cuda']}" if info.get("cuda") else "")
        + f"; code at `{info['git']}`). Full results: [{md.name}]({os.path.relpath(md, doc.parent)}).",
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
    p.add_argument("--num-envs", default="1,64,1024", help="comma-separated batch sizes")
    p.add_argument("--maps", default="2s3z,6h_vs_8z", help="comma-separated map names")
    p.add_argument("--substeps", type=int, default=8, help="physics sub-steps per env step")
    p.add_argument("--compare-substeps", default=None, help="comma-separated sub-step counts to run instead, e.g. 4,8")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per config (all repeats)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per config (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed env.step calls before timing")
    p.add_argument("--check-actions", action="store_true", help="validate actions against the mask (one sync per step)")
    p.add_argument("--compile", action="store_true", help="pass compile=True to the env (if it supports it)")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--doc", default="docs/simulator.md", help="fill this document's Throughput section if it exists")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)

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
    if args.compile:
        if "compile" not in inspect.signature(SimSMACEnv.__init__).parameters:
            p.error("this version of the simulator has no compile option")
        env_options["compile"] = True

    info = machine_info(threads)
    print(f"torch {info['torch']}, {threads} threads, {info['cpu_count']} cores, devices {devices}, "
          f"substeps {substeps}, options {env_options}", flush=True)
    t0 = time.perf_counter()
    results = []
    for device in devices:
        for s in substeps:
            for m in _names(args.maps):
                for n in _ints(args.num_envs):
                    r = measure(m, n, device, s, args.seconds, args.repeats, args.warmup, env_options)
                    results.append(r)
                    print(f"{device:>6} {m:>9} substeps={s:<2} num_envs={n:<5} {_fmt(r['env_steps_per_second']):>10} "
                          f"env-steps/s  ({r['ms_per_call']:.2f} ms/call, repeats "
                          f"{', '.join(_fmt(x) for x in r['env_steps_per_second_all'])})", flush=True)
    elapsed = time.perf_counter() - t0
    check = verdict(results, threads)

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

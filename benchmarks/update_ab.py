#!/usr/bin/env python
"""One QMIX update (2s3z, batch 128), or one collection step call, A against B, side by side in
one run: fresh processes of benchmarks/throughput_worker.py ``update`` (or ``collect``) alternate
between the two settings over ``--rounds``, so both see the same machine load. Variants:

* ``bf16``: the agent network's large matmuls in float32 (A) and in bfloat16 (B). The bf16
  code is commit ``0b044c9`` (``RNNAgent.matmul_dtype``: the input layer, the GRU's input gates
  and its per-step recurrent matmul, forward and backward, with bf16 operands; the weights,
  hidden state, gate arithmetic, Q-values and the mixer in float32), reverted in the commit
  after it because this benchmark found it no faster; both settings run from a temporary git
  worktree of that commit (its own worker script).
* ``allocator``: this checkout with glibc's default malloc settings (A) and with
  ``ovmse.training.allocator.keep_freed_memory()`` (B; train.yaml ``malloc_keep_freed``).
* ``sample_mixing``: an update with MACQL's sampled term (K = 100, α 0.05), the CQL mixing of
  commit ``186577d`` (A: ``F.elu`` and matrix-vector ``bmm``; a worktree of that commit) against
  this checkout's (B: ELU through ``exp2``, products in their fast layouts;
  ``ovmse/nets/sample_mixing.py``). Both run this checkout's worker script.
* ``collector_device`` (collection, not an update): one step call of 8 battles, acting policy
  included, on one thread, compiled, eager and with the simulator frozen, with TorchRL's
  collector given no device (A: commit ``7458bd4``, a worktree) and given the env's
  (B: commit ``e10eada``, the change and its review fixes, before the collection_step changes;
  ``ovmse/collection/online.py``; its results were measured with B = that change's checkout).
* ``collection_step`` (collection): the same rows, commit ``e10eada`` (A, a worktree) against this
  checkout (B): with ``compile_step`` the simulator's orders, physics, reward rule and features
  are one compiled graph (``SimSMACEnv._step_math``; A compiled the physics and the features
  apart and ran the rest eager) and the acting policy's step is compiled too
  (``RecurrentQPolicy(compile=True)``); in every row the episodes are assembled on plain
  tensors and TorchRL's collector keeps no trajectory ids.

* ``gru_steps``: one update, commit ``926219b`` (A, a worktree) against this checkout (B): the
  packed GRU's steps with fewer calls (the r, z recurrent matmul added in place onto the input
  side, the candidate's tanh as one in-place sigmoid, ``lerp``; backward without per-step
  concatenations, the carry added in place), the agent inputs built once per batch for the
  online and target unrolls (``pack_agent_inputs``), and batches gathered only up to their
  longest episode. Both run this checkout's worker script (its roofline counts in-place matmuls).

    python benchmarks/update_ab.py --variant allocator      # benchmarks/results/allocator_update.{json,md}
    python benchmarks/update_ab.py --variant bf16           # benchmarks/results/bf16_update.{json,md}
    python benchmarks/update_ab.py --variant sample_mixing  # benchmarks/results/sample_mixing_update.{json,md}
    python benchmarks/update_ab.py --variant collector_device  # benchmarks/results/collector_device_collect.{json,md}
    python benchmarks/update_ab.py --variant collection_step   # benchmarks/results/collection_step_collect.{json,md}
    python benchmarks/update_ab.py --variant gru_steps      # benchmarks/results/gru_steps_update.{json,md}
    python benchmarks/update_ab.py --variant bf16 --rounds 1 --repeats 2 --name /tmp/smoke

benchmarks/matmul_dtypes.py times the update's matmul shapes alone in both dtypes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_dtypes import cpu_flags  # noqa: E402
import train_throughput  # noqa: E402
from train_throughput import worker  # noqa: E402  fresh process, ovmse from the given tree

# variant: (commit whose own worker script runs both, or None for this checkout's worker;
#           (label, worker flags, commit the setting's code comes from, None: this checkout) of A and B)
VARIANTS = {
    "bf16": ("0b044c9", (("float32", ("--matmul-dtype", "float32"), "0b044c9"),
                         ("bfloat16", ("--matmul-dtype", "bfloat16"), "0b044c9"))),
    "allocator": (None, (("glibc default", ("--malloc-keep-freed", "false"), None),
                         ("keep freed memory", ("--malloc-keep-freed", "true"), None))),
    "sample_mixing": (None, (("mixing of 186577d", ("--cql", "macql"), "186577d"),
                             ("this checkout's mixing", ("--cql", "macql"), None))),
    "collector_device": (None, (("collector without a device (7458bd4)", (), "7458bd4"),
                                ("collector on the env's device (e10eada)", (), "e10eada"))),
    "collection_step": (None, (("before (e10eada)", (), "e10eada"),
                               ("one step graph, compiled policy, tensor assembly, no trajectory ids", (), None))),
    "gru_steps": (None, (("before (926219b)", (), "926219b"),
                         ("fewer GRU step calls, shared agent inputs, row-limited gather", (), None))),
}
RESULT_NAMES = {"bf16": "bf16_update", "allocator": "allocator_update", "sample_mixing": "sample_mixing_update",
                "collector_device": "collector_device_collect", "collection_step": "collection_step_collect",
                "gru_steps": "gru_steps_update"}
# The variants that time collection (one step call of 8 battles x 32 steps per process), each
# row a setting of the collection: (label, worker flags).
COLLECT_VARIANTS = {"collector_device", "collection_step"}
COLLECT_ROWS = (("8 x 32, env.compile_step", ("--compile",)), ("8 x 32, eager", ()),
                ("8 x 32, simulator frozen", ("--frozen-sim",)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating A / B rounds per row (thread count or collection setting)")
    p.add_argument("--repeats", type=int, default=5,
                   help="update variants: timed updates per process (after 2 warm-up updates)")
    p.add_argument("--threads", default="1,2", help="thread counts of an update variant")
    p.add_argument("--variant", choices=tuple(VARIANTS), required=True)
    p.add_argument("--name", default=None, help="result files benchmarks/results/<name>.{json,md} "
                   "(default: bf16_update, allocator_update, sample_mixing_update, collector_device_collect or "
                   "collection_step_collect)")
    args = p.parse_args(argv)
    import torch

    name = args.name or RESULT_NAMES[args.variant]
    worker_commit, settings = VARIANTS[args.variant]
    collect = args.variant in COLLECT_VARIANTS
    # The table's rows: thread counts of an update, or the collection settings.
    rows = ([(label, flags) for label, flags in COLLECT_ROWS] if collect
            else [(str(t), ("--threads", str(t))) for t in (int(t) for t in args.threads.split(","))])
    work = Path(tempfile.mkdtemp(prefix="update-ab-"))
    commits = {c for _, _, c in settings if c is not None} | ({worker_commit} - {None})
    trees = {None: ROOT, **{c: work / f"tree-{c}" for c in commits}}
    load_start, started = os.getloadavg()[0], time.perf_counter()
    runs: dict[str, list[dict]] = {f"{label}_{row}": [] for row, _ in rows for label, _, _ in settings}
    try:
        for c in commits:
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[c]), c], cwd=ROOT, check=True,
                           capture_output=True)
        if worker_commit is not None:
            # That commit's own worker script: it has the variant's flags, this checkout's may not.
            train_throughput.WORKER = trees[worker_commit] / "benchmarks" / "throughput_worker.py"
        episodes, recorded = work / "episodes.pt", None
        if not collect:
            recorded = worker(trees[settings[0][2]], "record", "--map", "2s3z", "--n", "256", "--episodes-out",
                              str(episodes))
        for _ in range(args.rounds):
            for row, row_flags in rows:
                for label, flags, c in settings:
                    what = (["collect", "--map", "2s3z", "--num-envs", "8", "--steps", "32", "--calls", "6",
                             "--threads", "1"] if collect else
                            ["update", "--map", "2s3z", "--episodes", str(episodes), "--batch-size", "128",
                             "--repeats", str(args.repeats)])
                    runs[f"{label}_{row}"].append(worker(trees[c], *what, *row_flags, *flags))
    finally:
        for c in commits:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees[c])], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    (a_label, _, _), (b_label, _, _) = settings
    out = {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "variant": args.variant,
           "commits": {label: c or "this checkout" for label, _, c in settings},
           "worker_script_from": worker_commit or "this checkout",
           "settings": {label: list(flags) for label, flags, _ in settings}, "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags(),
           "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
           "minutes": (time.perf_counter() - started) / 60, "episodes": recorded, "args": vars(args), "runs": runs}
    results = ROOT / "benchmarks" / "results"
    (results / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    command = f"python benchmarks/update_ab.py --variant {args.variant}" + (f" --name {name}" if args.name else "")
    described = "".join(f"{k}: `{' '.join(v)}`, " for k, v in out["settings"].items() if v)
    where = "; ".join(f"{label} from " + (f"a worktree of commit `{c}`" if c else "this checkout")
                      for label, _, c in settings)
    title = "One collection step call (2s3z, 8 battles, acting policy included, 1 thread)" if collect else \
        "One QMIX update (2s3z, batch 128)"
    metric = "ms_per_step_call" if collect else "ms_per_update"
    each = ("each the median of 6 calls of 32 steps after a warm-up call" if collect
            else f"each the median of {args.repeats} updates after 2 warm-up ones")
    lines = [f"# {title}: {a_label} (A) vs {b_label} (B)", "",
             f"Generated by `{command}` on {out['written']} (torch {out['torch']}; CPU capability "
             f"{out['cpu_capability']}; avx512_bf16 {'present' if 'avx512_bf16' in out['cpu_flags'] else 'absent'}; "
             f"load average {load_start:.2f} at start, {out['load_average_end']:.2f} at end, on 2 cores; "
             f"{out['minutes']:.1f} min). Settings: {described}"
             f"{where}; {args.rounds} alternating rounds of fresh processes, {each}.", "",
             f"| {'collection' if collect else 'threads'} | A ms | B ms | A / B (of medians) | A / B per round | "
             "B faster in |", "|---:|---:|---:|---:|---|---:|"]
    digits = 3 if collect else 1
    for row, _ in rows:
        a = [r[metric] for r in runs[f"{a_label}_{row}"]]
        b = [r[metric] for r in runs[f"{b_label}_{row}"]]
        per_round = [x / y for x, y in zip(a, b)]
        rounds = ", ".join(f"{x:.2f}x" for x in per_round)
        lines.append(f"| {row} | {statistics.median(a):,.{digits}f} | {statistics.median(b):,.{digits}f} | "
                     f"{statistics.median(a) / statistics.median(b):.2f}x | "
                     f"{rounds} | {sum(x > 1 for x in per_round)} of {len(per_round)} |")
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

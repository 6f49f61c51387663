#!/usr/bin/env python
"""Costs of the offline side on a real dataset: loading, validating, sampling, and one update.

    python benchmarks/offline_costs.py                     # data/2s3z/medium (make it with phase=collect)
    python benchmarks/offline_costs.py --dataset data/3s5z/medium --repeats 5

Prints and writes ``benchmarks/results/offline_costs.{md,json}``:

* ``load_dataset`` with ``validate="structure"`` and ``"full"`` (memory-mapped), and reading
  the episodes into memory;
* ``sample(128)`` from the memory-mapped and the in-memory dataset;
* one optimiser update (forward, backward, Adam step) of :class:`~ovmse.training.QMixModule`
  without CQL, with MACQL (100 samples) and with CFCQL (+ behaviour cloning), at batch 32
  and 128 episodes.

Medians over ``--repeats`` (after one warm-up), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(ROOT / "data" / "2s3z" / "medium"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from ovmse.datasets import load_dataset
    from ovmse.provenance import machine_info
    from ovmse.losses.objective import CQLSettings, ObjectiveSettings
    from ovmse.training.qmix_module import QMixModule

    rows: list[tuple[str, float]] = []
    r = args.repeats
    rows.append(("load, validate=structure (memory-mapped)",
                 median_seconds(lambda: load_dataset(args.dataset, validate="structure", in_memory=False), r)))
    rows.append(("load, validate=full (memory-mapped)",
                 median_seconds(lambda: load_dataset(args.dataset, validate="full", in_memory=False), r)))
    rows.append(("load, validate=structure, read into memory",
                 median_seconds(lambda: load_dataset(args.dataset, validate="structure", in_memory=True), r)))
    mapped = load_dataset(args.dataset, validate="structure", in_memory=False)
    memory = load_dataset(args.dataset, validate="structure", in_memory=True)
    for ds, name in ((mapped, "memory-mapped"), (memory, "in memory")):
        ds.set_generator(torch.Generator().manual_seed(0))
        rows.append((f"sample(128), {name}", median_seconds(lambda ds=ds: ds.sample(128), max(r, 10))))
    spec = mapped.spec
    for cql in (None, "macql", "cfcql"):
        for batch_size in (32, 128):
            torch.manual_seed(0)
            module = QMixModule(spec.obs_dim, spec.state_dim, spec.n_agents, spec.n_actions,
                                objective=ObjectiveSettings(cql=CQLSettings(cql, alpha=0.05) if cql else None))
            if module.objective.needs_behaviour_pretraining:  # CFCQL: trained once before the Q updates, then frozen
                module.objective.behaviour_pretrained.fill_(True)
            opt = module.configure_optimizers()

            def update(module=module, opt=opt, batch_size=batch_size):
                loss = module.training_step(memory.sample(batch_size), 0)
                opt.zero_grad()
                loss.backward()
                opt.step()

            rows.append((f"one update, {cql or 'no CQL'}, batch {batch_size}", median_seconds(update, r)))

    info = machine_info(ROOT, threads=args.threads)
    header = (f"`python benchmarks/offline_costs.py --dataset {args.dataset} --repeats {r}` on {info['date']}: "
              f"{info['cpu_count']} CPU cores ({info['cpu']}), torch {info['torch']}, {args.threads} thread(s), "
              f"code at `{info['git']}`, load average at start {info.get('load_average_1min_at_start', 'n/a')}. "
              f"Dataset {mapped.name}: {len(mapped)} episodes, {mapped.n_transitions} transitions. "
              "Medians after one warm-up.")
    table = ["| what | seconds |", "|---|---:|"] + [f"| {name} | {sec:.3f} |" for name, sec in rows]
    text = "# Offline costs: dataset loading, sampling and updates\n\n" + header + "\n\n" + "\n".join(table) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "offline_costs.md").write_text(text)
    (out / "offline_costs.json").write_text(json.dumps({"machine": info, "dataset": str(args.dataset),
                                                        "seconds": dict(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    main()

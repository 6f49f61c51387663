"""Regenerate docs/results.md's paper reproduction: the sweeps, then the report.

    python scripts/reproduce_paper.py                       # budget=short, 2 sweep processes
    python scripts/reproduce_paper.py --budget paper --workers 8 --out docs/reproduction_paper

Runs ``python train.py phase=pipeline grid=<grid> budget=<budget>`` for the Table 1 and
Table 2 grids with ``--workers`` sweep processes side by side. They share the grids through
the pipeline's locks: a cell or shared stage in another process's hands is skipped, and
passes repeat until a pass leaves nothing skipped. Everything finished is kept, so the script
can be stopped and started again at any point. Then ``python -m ovmse.report`` writes the
tables and figures to ``--out`` and the summary section of docs/results.md is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from docs_sections import replace_section  # noqa: E402

BEGIN, END = "<!-- BEGIN paper-reproduction -->", "<!-- END paper-reproduction -->"


def sweep_pass(grids: list[str], budget: str, workers: int, jobs_dir: Path, extra: list[str]) -> dict[str, int]:
    """One pass of every grid by ``workers`` processes; counts of the cells' outcomes."""
    if workers > 1 and not any(e.startswith("num_threads=") for e in extra):
        # Side by side, each process's updates get one core (their default is every core).
        extra = [*extra, "num_threads=1"]
    procs = []
    for w in range(workers):
        log = jobs_dir / f"worker{w}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        # Quoted for bash: an extra override may hold brackets, quotes or spaces.
        script = " && ".join(
            shlex.join([sys.executable, "train.py", "phase=pipeline", f"grid={g}", f"budget={budget}",
                        "pipeline.wait_for_shared=false", "pipeline.keep_going=true",
                        f"hydra.sweep.dir={jobs_dir / f'{g}-w{w}'}", *extra]) for g in grids)
        procs.append(subprocess.Popen(["bash", "-c", script], cwd=ROOT, stdout=open(log, "w"),
                                      stderr=subprocess.STDOUT))
        time.sleep(20)  # let the first worker claim its first cell before the next one looks
    for p in procs:
        p.wait()
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for record in jobs_dir.glob("*-w*/*/pipeline.json"):
        job = json.loads(record.read_text())
        statuses = [s["status"] for s in job.get("stages", [])]
        if "error" in job:
            counts["failed"] += 1
        elif any("skipped" in s for s in statuses):
            counts["skipped"] += 1
        else:
            counts["done"] += 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="short", help="configs/budget/<name>.yaml (default: short)")
    p.add_argument("--workers", type=int, default=2, help="sweep processes side by side (default: 2)")
    p.add_argument("--grids", nargs="+", default=["table1", "table2"], help="configs/grid/<name>.yaml")
    p.add_argument("--max-passes", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "reproduction",
                   help="where the report's tables and figures go (default: docs/reproduction)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/results.md")
    p.add_argument("extra", nargs="*", help="further overrides for every cell (e.g. device=cuda)")
    args = p.parse_args()

    root = ROOT / "outputs" / "sweeps" / args.budget
    start = time.time()
    for k in range(args.max_passes):
        jobs_dir = root / "multiruns" / time.strftime(f"%Y%m%d-%H%M%S-pass{k}")
        counts = sweep_pass(args.grids, args.budget, args.workers, jobs_dir, args.extra)
        print(f"pass {k}: {counts} ({(time.time() - start) / 60:.1f} min so far)", flush=True)
        if counts["skipped"] == 0:
            break
    report = subprocess.run([sys.executable, "-m", "ovmse.report", str(root.relative_to(ROOT)), "--out",
                             str(args.out)], cwd=ROOT)
    if report.returncode != 0:
        raise SystemExit(report.returncode)
    if not args.no_docs:
        replace_section(ROOT / "docs" / "results.md", BEGIN, END, embedded(args.out / "report.md", ROOT / "docs"),
                        heading="## Paper reproduction (Table 1, Table 2, Figures 1-3)")


def embedded(report: Path, doc_dir: Path) -> str:
    """report.md as a section of a document in ``doc_dir``: without its title, headings one
    level down, figure links relative to the document."""
    prefix = os.path.relpath(report.parent, doc_dir)
    text = report.read_text()
    if text.startswith("# "):
        text = text.split("\n", 1)[1].lstrip("\n")
    text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
    return re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({prefix}/{m[1]})", text)


if __name__ == "__main__":
    main()

"""Run one pipeline stage as its own ``python train.py`` process.

A stage is the same command a researcher would type (it is printed and recorded in
``pipeline.json``), so any cell of a sweep can be redone or inspected by hand. Its output
goes to ``<stage dir>/stage.log``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path


class StageError(RuntimeError):
    """A stage's process ended with a non-zero status."""


def train_command(root_dir: str | Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(Path(root_dir) / "train.py"), *overrides]


def run_stage(name: str, command: list[str], stage_dir: Path, leaves: Path | None = None) -> float:
    """Run ``command`` with its output in ``stage_dir/stage.log``; return its wall seconds.

    Raises :class:`StageError` naming the stage, the command and the log on failure, and when
    the command exits 0 without leaving the file ``leaves`` (its summary: a stage stopped from
    outside may still exit 0).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    log = stage_dir / "stage.log"
    shown = shlex.join(command[1:])
    print(f"[pipeline] {name}: {shown}\n[pipeline]   log: {log}", flush=True)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n# {datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n")
        out.flush()
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    wall = time.perf_counter() - start
    if status != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise StageError(f"pipeline stage {name} failed (exit status {status}) after {wall:.0f} s: {shown}\n"
                         f"log: {log}\n" + "\n".join(tail))
    if leaves is not None and not leaves.is_file():
        raise StageError(f"pipeline stage {name} exited 0 after {wall:.0f} s but did not write {leaves}: it was "
                         f"stopped before it finished; run the sweep again to redo or resume it. log: {log}")
    return wall


def set_aside(stage_dir: Path) -> Path:
    """Move an unfinished stage directory out of the way (kept, never deleted)."""
    target = stage_dir.with_name(f"{stage_dir.name}.incomplete-{datetime.now():%Y%m%d-%H%M%S}")
    stage_dir.rename(target)
    print(f"[pipeline] unfinished {stage_dir} moved to {target}", flush=True)
    return target

"""Run training commands as subprocesses, a few at a time, each logging to ``<run dir>.log``."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_queue(jobs: list[tuple[list[str], Path]], parallel: int) -> None:
    """Run every ``(command, run dir)`` of ``jobs`` from the repository root, at most ``parallel``
    at once, in order; stop with the failed run's log named if one fails."""
    running: list[tuple[subprocess.Popen, Path]] = []
    for cmd, out in jobs:
        print("run:", " ".join(cmd[1:]), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        log = open(out.with_suffix(".log"), "w")
        running.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), out))
        if len(running) >= parallel:
            _wait(running.pop(0))
    for item in running:
        _wait(item)


def _wait(item: tuple[subprocess.Popen, Path]) -> None:
    proc, out = item
    if proc.wait() != 0:
        raise SystemExit(f"{out}: training failed (see {out.with_suffix('.log')})")

"""Where and on what a measurement was taken, for the headers of reports."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

import torch


def machine_info(repo: str | Path, threads: int | None = None) -> dict:
    """Date, Python/torch versions, CPU, GPU, load and the repo's git commit.

    ``threads`` is the torch thread count to report (default: the current one).
    The commit gets ``+uncommitted changes in src/`` when ``src/`` differs from it.
    """
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "git": git_commit(repo),
    }
    try:
        info["load_average_1min_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def git_commit(repo: str | Path | None = None) -> str:
    """Short git commit of ``repo`` (default: this package's checkout), with
    ``+uncommitted changes in src/`` when ``src/`` differs from it; ``""`` outside git."""
    repo = Path(__file__).resolve().parents[2] if repo is None else repo
    try:
        run = dict(cwd=repo, capture_output=True, text=True, timeout=10)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        if commit and subprocess.run(["git", "status", "--porcelain", "src"], **run).stdout.strip():
            commit += "+uncommitted changes in src/"
        return commit
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version() -> dict[str, str]:
    """Package version and git commit, stored with generated artefacts (datasets, ...)."""
    from ovmse import __version__

    return {"ovmse": __version__, "git_commit": git_commit()}

"""A lock file per pipeline stage, so that several sweep processes can share one grid.

Two ``python train.py -m phase=pipeline ...`` processes over the same grid split its cells:
a cell's online run is taken by whoever locks it first and skipped by the other, and a
shared stage (a dataset, an offline pretraining) is waited for rather than done twice.
The lock holds ``host pid`` so that one left by a killed process is recognised (same host,
pid gone) and taken over instead of blocking the grid forever.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def _holder() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def lock_is_stale(text: str) -> bool:
    """True when the lock was written on this host by a process that no longer runs."""
    host, _, pid = text.strip().partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's lock (shared file system): trust it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StageLock:
    """``<path>``: created with O_EXCL, removed on release; a stale one is taken over."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held = False

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    text = self.path.read_text()
                except FileNotFoundError:
                    continue  # released between our open and read: try again
                if not lock_is_stale(text) or not self._take_stale(text):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                f.write(_holder())
            self.held = True
            return True
        return False

    def _take_stale(self, stale_text: str) -> bool:
        """Remove the stale lock holding ``stale_text``, and only it. Two processes may both find
        it stale: a plain unlink by the slower one could remove the lock the faster one has just
        made. A rename is atomic, so each lock file is moved away by one process, which then
        checks that it moved the stale one; a live lock moved by mistake is put back."""
        moved = self.path.with_name(f"{self.path.name}.taking-{os.getpid()}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return True  # someone else took it: try to create ours
        if moved.read_text() == stale_text:
            moved.unlink(missing_ok=True)
            return True
        try:
            os.link(moved, self.path)  # a fresh lock: back where it was (unless yet another appeared)
        except FileExistsError:
            pass
        moved.unlink(missing_ok=True)
        return False

    def holder(self) -> str | None:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return None

    def acquire(self, poll_seconds: float = 5.0, on_wait=None) -> None:
        """Block until held; ``on_wait(holder)`` is called once when another process has it."""
        told = False
        while not self.try_acquire():
            if not told and on_wait is not None:
                on_wait(self.holder())
                told = True
            time.sleep(poll_seconds)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

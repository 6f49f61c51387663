"""torch intra-op threads per side of a run: the learner's update wants every core (large
matmuls), the simulator and the acting policy one thread (thousands of tiny ops, for which
more threads only add synchronisation). ``torch.set_num_threads`` is process-wide, so each side
sets its count while it works (switching costs microseconds)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def check_threads(value, name: str) -> int | None:
    """``None`` (torch's default) or an integer >= 1; anything else is a ``ValueError`` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be null (torch's default: every core) or an integer >= 1, got {value!r}")
    return value


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: as they are), then restore."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

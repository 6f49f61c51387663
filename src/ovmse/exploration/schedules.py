"""Linear annealing with a bound at the end value (paper Eq. 6-7, footnote's max correction)."""

from __future__ import annotations

import math


class LinearSchedule:
    """``v(t) = max(end, start - (start - end) / T * t)`` for ``start >= end``.

    For an increasing schedule (``start < end``) the bound is ``min`` instead, so the value
    never overshoots ``end`` in either direction. Used for ε (1.0 → 0.05 over 100k steps) and
    for the OVM weight λ_memory (e.g. 1.0 → 0.05 over 200k steps); t counts environment steps
    since the online phase began.

    Args:
        start: value at t = 0.
        end: value for t >= duration.
        duration: T, number of steps to anneal over; must be >= 0. With ``duration == 0`` or
            ``start == end`` the schedule is the constant ``end`` (no division by zero).
    """

    def __init__(self, start: float, end: float, duration: int) -> None:
        for name, v in (("start", start), ("end", end)):
            if not math.isfinite(float(v)):
                raise ValueError(f"LinearSchedule {name} must be finite, got {v!r}")
        if duration < 0:
            raise ValueError(f"LinearSchedule duration must be >= 0, got {duration!r}")
        self.start = float(start)
        self.end = float(end)
        self.duration = int(duration)

    def __call__(self, t: int) -> float:
        if t < 0:
            raise ValueError(f"LinearSchedule step t must be >= 0, got {t!r}")
        if self.duration == 0 or self.start == self.end:
            return self.end
        v = self.start - (self.start - self.end) / self.duration * t
        return max(self.end, v) if self.start > self.end else min(self.end, v)

    def __repr__(self) -> str:
        return f"LinearSchedule(start={self.start}, end={self.end}, duration={self.duration})"

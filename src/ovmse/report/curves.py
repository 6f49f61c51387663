"""Per-seed evaluation curves: alignment across seeds and the statistics drawn and tabled.

Seeds evaluate at slightly different env steps (an evaluation fires when a collection chunk
crosses the interval), so curves are aligned before they are averaged: each seed is
linearly interpolated onto the union of all seeds' evaluation steps, restricted to the range
every seed covers (from the latest first evaluation to the earliest last one), so no point
is extrapolated.
"""

from __future__ import annotations

import numpy as np


def align(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate per-seed ``(steps, values)`` curves onto a shared grid.

    Returns ``(grid [n_points], values [n_seeds, n_points])``; ``n_points`` is 0 when the
    seeds share no step range (or there are no curves).
    """
    if not curves:
        return np.empty(0), np.empty((0, 0))
    start = max(steps[0] for steps, _ in curves)
    end = min(steps[-1] for steps, _ in curves)
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    return grid, np.stack([np.interp(grid, steps, values) for steps, values in curves])


def median_iqr(values) -> tuple[float, float, float]:
    """``(median, 25th, 75th percentile)`` of a 1-D sample, percentiles linearly interpolated
    (numpy's default); along axis 0 for a ``[n_seeds, n_points]`` array."""
    values = np.asarray(values, dtype=float)
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
    return median, q25, q75


def mean_std(values) -> tuple[float, float]:
    """``(mean, population std)`` along axis 0 (std 0 for a single seed)."""
    values = np.asarray(values, dtype=float)
    return values.mean(axis=0), values.std(axis=0)


def value_at(steps: np.ndarray, values: np.ndarray, limit: float) -> tuple[float, float] | None:
    """``(step, value)`` of the last evaluation at or before ``limit``; None if none is."""
    before = np.flatnonzero(steps <= limit)
    if before.size == 0:
        return None
    return float(steps[before[-1]]), float(values[before[-1]])


def initial_drop(steps: np.ndarray, returns: np.ndarray, budget: float, reference: float | None = None,
                 fraction: float = 0.2, min_steps: float = 5_000) -> float:
    """How far the test return falls below ``reference`` (default: the first evaluation's) at
    its lowest in the early window: the first ``fraction`` of the budget or the first
    ``min_steps`` env steps, whichever is longer (the first evaluation always included).
    Negative when every early evaluation beats the reference."""
    window = max(fraction * budget, min_steps)
    early = returns[(steps <= window) | (steps == steps[0])]
    start = float(returns[0]) if reference is None else float(reference)
    return float(start - early.min())

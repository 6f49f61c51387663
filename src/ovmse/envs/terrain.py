"""Walkable-area grids and spawn formations of the simulated maps.

A grid is a bool tensor ``[32, 32]`` indexed ``[x_cell, y_cell]`` (as SMAC's
``pathing_grid``): cell ``(i, j)`` covers ``[i, i+1) x [j, j+1)``.
"""

from __future__ import annotations

import math

import torch

from .maps import MAP_SIZE, MapSpec
from .units import UNIT_TYPES

GRID = int(MAP_SIZE)


def walkable_grid(terrain: str) -> torch.Tensor:
    """Walkable cells of a terrain kind, ``[32, 32]`` bool."""
    centres = torch.arange(GRID, dtype=torch.float32) + 0.5
    x = centres[:, None].expand(GRID, GRID)
    y = centres[None, :].expand(GRID, GRID)
    if terrain == "open":
        return torch.ones(GRID, GRID, dtype=torch.bool)
    if terrain == "strip":
        # Marine, stalker/zealot and MMM maps: a full-width corridor, y in [8, 24].
        return (y >= 8) & (y < 24)
    if terrain == "octagon":
        # 6h_vs_8z: a plateau ringed by cliffs. An axis-aligned square with its
        # corners cut at 45 degrees; the spawns (14.6, 9.5) and (14.4, 16.8) lie inside.
        dx, dy = (x - 15.5).abs(), (y - 14.0).abs()
        return (dx <= 10.0) & (dy <= 9.0) & (dx + dy <= 14.0)
    raise ValueError(f"Unknown terrain {terrain!r}; expected 'strip', 'open' or 'octagon'.")


def walkable_band(grid: torch.Tensor) -> tuple[float, float] | None:
    """``(lo, hi)`` if the walkable cells are exactly the rows ``lo <= y < hi`` across
    the whole map width (movement checks then reduce to a comparison), else None."""
    rows = grid.all(0)
    if not bool((grid == rows[None, :]).all()) or not bool(rows.any()):
        return None
    ys = rows.nonzero().flatten()
    lo, hi = int(ys[0]), int(ys[-1]) + 1
    if not bool(rows[lo:hi].all()):
        return None
    return float(lo), float(hi)


def formation(spec: MapSpec, enemies: bool) -> torch.Tensor:
    """Spawn offsets of one team relative to its spawn centre, ``[n_units, 2]``.

    Units stand in columns of up to four, one unit type after another, so
    melee units are not buried behind ranged ones; spacing exceeds the
    largest diameter so that no two units overlap at spawn.
    """
    names = spec.enemies if enemies else spec.allies
    n = len(names)
    spacing = 2 * max(UNIT_TYPES[u].radius for u in names) + 0.3
    rows = min(4, n)
    cols = math.ceil(n / rows)
    offsets = []
    for k in range(n):
        col, row = divmod(k, rows)
        dx = (col - (cols - 1) / 2) * spacing
        dy = (row - (rows - 1) / 2) * spacing
        # Enemies face west: mirror their columns so both teams lead with the same units.
        offsets.append((-dx if enemies else dx, dy))
    return torch.tensor(offsets, dtype=torch.float32)

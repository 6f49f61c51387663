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

    The team faces the other team's spawn. Units stand in ranks of up to four
    across that direction, one unit type after another from the back, so melee
    units are not buried behind ranged ones; spacing exceeds the largest
    diameter so that no two units overlap at spawn. Both teams use the same
    lateral orientation, so mirrored maps get mirror-image formations.
    """
    names = spec.enemies if enemies else spec.allies
    own, other = (spec.enemy_spawn, spec.ally_spawn) if enemies else (spec.ally_spawn, spec.enemy_spawn)
    fx, fy = other[0] - own[0], other[1] - own[1]
    norm = math.hypot(fx, fy)
    fx, fy = fx / norm, fy / norm
    # Lateral axis: the facing turned by 90 degrees, with its sign fixed so that
    # teams facing each other share it.
    lx, ly = (-fy, fx) if (fx, fy) >= (0.0, 0.0) else (fy, -fx)
    n = len(names)
    spacing = 2 * max(UNIT_TYPES[u].radius for u in names) + 0.3
    width = min(4, n)
    depth = math.ceil(n / width)
    offsets = []
    for k in range(n):
        rank, file = divmod(k, width)
        forward = (rank - (depth - 1) / 2) * spacing
        lateral = (file - (width - 1) / 2) * spacing
        offsets.append((forward * fx + lateral * lx, forward * fy + lateral * ly))
    return torch.tensor(offsets, dtype=torch.float32)

"""SMAC observations, global state and available-action masks of a ``Battle``.

Layouts follow SMAC v1 defaults (``obs_all_health``, ``obs_own_health``,
``state_last_action`` on; ``obs_last_action``, pathing grid and terrain
height off). ``B`` battles, ``N`` agents, ``M`` enemies, ``U = N + M`` units,
``A = 6 + M`` actions.

Features are written field by field into preallocated blocks laid out in
SMAC's order, with static index tables built once per map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .battle import Battle, UnitTable
from .maps import MAP_SIZE, MOVE_AMOUNT, N_NO_ATTACK_ACTIONS, SHOOT_RANGE, SIGHT_RANGE, MapSpec

# Fields of an observed unit, in this order, followed by an optional shield
# field and the unit-type one-hot.
_FLAG, _DIST, _DX, _DY, _HEALTH, _SHIELD = range(6)
# Fields of the per-unit state block.
_S_HEALTH, _S_COOLDOWN, _S_X, _S_Y, _S_SHIELD = range(5)


class FeatureTables:
    """Static per-map index tables used by the feature builders."""

    def __init__(self, spec: MapSpec, units: UnitTable):
        N, M = spec.n_agents, spec.n_enemies
        Uc = N + M
        device = units.index.device
        self.spec = spec
        bits = spec.unit_type_bits
        ids = [spec.ally_type_ids.get(u, 0) for u in spec.allies] + [spec.enemy_type_ids.get(u, 0) for u in spec.enemies]
        self.type_onehot = torch.zeros(Uc, bits, device=device)
        if bits:
            self.type_onehot[torch.arange(Uc), torch.tensor(ids)] = 1.0
        # Rows of the flattened [N * N] agent-ally pairs: others (ascending, self
        # skipped) and self.
        self.other_pairs = torch.tensor(
            [i * N + k for i in range(N) for k in range(N) if k != i], dtype=torch.long, device=device
        )
        self.own_pairs = torch.tensor([i * N + i for i in range(N)], dtype=torch.long, device=device)

        # Action 6 + j of agent i acts on unit action_unit[i, j]: enemy j, or ally j for a medivac.
        is_medivac = units.is_medivac[:N]
        j = torch.arange(M, device=device)
        self.action_unit = torch.where(is_medivac[:, None], j[None, :].clamp(max=N - 1), N + j[None, :])
        self.action_allowed = units.order_target[:N].gather(1, self.action_unit) & torch.where(
            is_medivac[:, None], j[None, :] < N, True
        )  # [N, M]
        self.move_probe = MOVE_AMOUNT / 2 * torch.tensor(
            [[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], device=device
        )  # north, south, east, west

        self.state_fields = 5 + bits
        self.state_index = self._state_index(spec).to(device)
        # Weapon cooldowns are reported in game loops (16 per game-second).
        self.cooldown_scale = torch.where(units.is_medivac, 0.0, 16.0) / units.max_cooldown_loops
        self.energy_scale = units.is_medivac.float() / units.max_cooldown_loops

    def _state_index(self, spec: MapSpec) -> torch.Tensor:
        """Flat indices into the ``[U, G]`` state block, in SMAC's state order."""
        N, M, G = spec.n_agents, spec.n_enemies, self.state_fields
        onehot = list(range(5, G))
        ally = [_S_HEALTH, _S_COOLDOWN, _S_X, _S_Y] + ([_S_SHIELD] if spec.shield_bits_ally else []) + onehot
        enemy = [_S_HEALTH, _S_X, _S_Y] + ([_S_SHIELD] if spec.shield_bits_enemy else []) + onehot
        idx = [u * G + f for u in range(N) for f in ally] + [(N + e) * G + f for e in range(M) for f in enemy]
        return torch.tensor(idx, dtype=torch.long)


@dataclass
class Geometry:
    """Agent-to-unit offsets shared by the mask and the observation, ``[B, N, U]``."""

    dx: torch.Tensor
    dy: torch.Tensor
    dist: torch.Tensor
    alive: torch.Tensor  # [B, U]


def geometry(battle: Battle) -> Geometry:
    N, x, y = battle.n_agents, battle.x, battle.y
    dx = x[:, None, :] - x[:, :N, None]
    dy = y[:, None, :] - y[:, :N, None]
    return Geometry(dx, dy, (dx * dx + dy * dy).sqrt(), battle.alive)


def available_actions(battle: Battle, tables: FeatureTables, geo: Geometry | None = None) -> torch.Tensor:
    """``[B, N, A]`` bool: SMAC's ``get_avail_actions``.

    Alive agents: stop always; a move when the cell ``MOVE_AMOUNT / 2`` away
    in that direction is inside the map and walkable (SMAC's ``can_move``,
    which truncates the probe point to its cell); attack j when enemy j is
    alive within ``SHOOT_RANGE`` (centre distance). A medivac's ``6 + j``
    heals ally j (alive, not a medivac). Dead agents: only the no-op.
    """
    geo = geo or geometry(battle)
    N, B = battle.n_agents, battle.num_envs
    probe = tables.move_probe
    can_move = battle.walkable_at(
        (battle.x[:, :N, None] + probe[:, 0]).trunc(), (battle.y[:, :N, None] + probe[:, 1]).trunc()
    )  # [B, N, 4]
    reachable = (geo.dist <= SHOOT_RANGE) & geo.alive[:, None, :]  # [B, N, U]
    can_act = reachable.gather(2, tables.action_unit.expand(B, -1, -1)) & tables.action_allowed  # [B, N, M]
    agent_alive = geo.alive[:, :N, None]
    mask = torch.cat([~agent_alive, agent_alive, can_move & agent_alive, can_act & agent_alive], -1)
    return mask


def observations(
    battle: Battle, tables: FeatureTables, avail: torch.Tensor, geo: Geometry | None = None
) -> torch.Tensor:
    """``[B, N, obs_dim]`` float32: SMAC's ``get_obs`` for every agent.

    Per agent: move flags (4) | per enemy [attackable, dist, dx, dy, health,
    (shield), (type one-hot)] | per other ally [visible, dist, dx, dy, health,
    (shield), (type one-hot)] | own [health, (shield), (type one-hot)].
    Distances are divided by the sight range; units that are dead or not
    strictly within sight range give zeros; a dead agent's row is all zeros.
    """
    geo = geo or geometry(battle)
    spec, N, B = tables.spec, battle.n_agents, battle.num_envs
    M = spec.n_enemies
    visible = (geo.dist < SIGHT_RANGE) & geo.alive[:, None, :] & geo.alive[:, :N, None]
    obs = torch.empty(B, N, spec.obs_dim, device=battle.x.device)
    obs[..., :4] = avail[..., 2:N_NO_ATTACK_ACTIONS]
    Fe, Fa = spec.enemy_feature_dim, spec.ally_feature_dim
    start = 4 + M * Fe
    # Enemies are written straight into their slice of the observation.
    enemies = obs[..., 4:start].view(B, N, M, Fe)
    _unit_block(battle, tables, geo, enemies, slice(N, None), avail[..., N_NO_ATTACK_ACTIONS:], bool(spec.shield_bits_enemy))
    enemies *= visible[:, :, N:, None]
    # Allies: every agent-ally pair, then the off-diagonal pairs as "other allies"
    # and the diagonal (own unit, minus the geometry fields) as own features.
    allies = torch.empty(B, N, N, Fa, device=battle.x.device)
    _unit_block(battle, tables, geo, allies, slice(0, N), None, bool(spec.shield_bits_ally))
    allies *= visible[:, :, :N, None]
    pairs = allies.view(B, N * N, Fa)
    end = start + (N - 1) * Fa
    obs[..., start:end] = pairs.index_select(1, tables.other_pairs).view(B, N, (N - 1) * Fa)
    obs[..., end:] = pairs.index_select(1, tables.own_pairs)[..., _HEALTH:]
    return obs


def _unit_block(battle, tables, geo, out, units: slice, flag, shield: bool) -> None:
    """Fill ``out`` ``[B, N, K, F]`` with [flag, dist, dx, dy, health, (shield), one-hot] of ``units``."""
    ut = battle.units
    if flag is None:
        out[..., _FLAG] = 1.0
    else:
        out[..., _FLAG] = flag
    out[..., _DIST] = geo.dist[..., units] / SIGHT_RANGE
    out[..., _DX] = geo.dx[..., units] / SIGHT_RANGE
    out[..., _DY] = geo.dy[..., units] / SIGHT_RANGE
    out[..., _HEALTH] = (battle.health[:, units] / ut.max_health[units])[:, None, :]
    if shield:
        out[..., _SHIELD] = (battle.shield[:, units] / ut.shield_norm[units])[:, None, :]
    out[..., _SHIELD + int(shield):] = tables.type_onehot[units]


def global_state(battle: Battle, tables: FeatureTables) -> torch.Tensor:
    """``[B, state_dim]`` float32: SMAC's ``get_state``.

    Allies [health, cooldown / max cooldown (medivac: energy / 200), x, y,
    (shield), (type one-hot)] | enemies [health, x, y, (shield), (type
    one-hot)] | last actions one-hot ``[N * A]`` (zeros before the first
    step). Positions are centred and divided by half the map size; dead
    units are all zeros.
    """
    B, Uc, ut, spec = battle.num_envs, battle.n_units, battle.units, tables.spec
    G = tables.state_fields
    block = torch.empty(B, Uc, G, device=battle.x.device)
    block[..., _S_HEALTH] = battle.health / ut.max_health
    block[..., _S_COOLDOWN] = battle.cooldown * tables.cooldown_scale + battle.energy * tables.energy_scale
    block[..., _S_X] = (battle.x - MAP_SIZE / 2) / (MAP_SIZE / 2)
    block[..., _S_Y] = (battle.y - MAP_SIZE / 2) / (MAP_SIZE / 2)
    block[..., _S_SHIELD] = battle.shield / ut.shield_norm
    block[..., 5:] = tables.type_onehot
    block *= battle.alive[..., None]
    units = block.view(B, Uc * G)[:, tables.state_index]
    last = torch.zeros(B, spec.n_agents, spec.n_actions, device=battle.x.device)
    taken = battle.last_action >= 0
    last.scatter_(2, battle.last_action.clamp(min=0)[..., None], taken[..., None].float())
    return torch.cat([units, last.view(B, -1)], -1)


def compute_features(battle: Battle, tables: FeatureTables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Action mask ``[B, N, A]``, observations ``[B, N, obs_dim]`` and state ``[B, state_dim]``."""
    geo = geometry(battle)
    mask = available_actions(battle, tables, geo)
    return mask, observations(battle, tables, mask, geo), global_state(battle, tables)

"""SMAC observations, global state and available-action masks of a ``Battle``.

Layouts follow SMAC v1 defaults (``obs_all_health``, ``obs_own_health``,
``state_last_action`` on; ``obs_last_action``, pathing grid and terrain
height off). ``B`` battles, ``N`` agents, ``M`` enemies, ``A = 6 + M`` actions.
"""

from __future__ import annotations

import torch

from .battle import Battle, UnitTable
from .maps import MAP_SIZE, MOVE_AMOUNT, N_NO_ATTACK_ACTIONS, SHOOT_RANGE, SIGHT_RANGE, MapSpec


class FeatureTables:
    """Static per-map tensors the feature builders index with."""

    def __init__(self, spec: MapSpec, units: UnitTable):
        N, M = spec.n_agents, spec.n_enemies
        device = units.index.device
        self.spec = spec
        bits = spec.unit_type_bits
        ids = [spec.ally_type_ids.get(u, 0) for u in spec.allies] + [spec.enemy_type_ids.get(u, 0) for u in spec.enemies]
        self.type_onehot = torch.zeros(N + M, bits, device=device)
        if bits:
            self.type_onehot[torch.arange(N + M), torch.tensor(ids)] = 1.0
        # Other allies of each agent in ascending id order, self skipped: [N, N-1].
        others = [[j for j in range(N) if j != i] for i in range(N)]
        self.other_allies = torch.tensor(others, dtype=torch.long, device=device).reshape(N, N - 1)
        # Unit index targeted by action 6 + j for each agent: enemies, or allies for a medivac.
        is_medivac = torch.tensor([u == "medivac" for u in spec.allies], device=device)
        j = torch.arange(M, device=device)
        self.action_target = torch.where(is_medivac[:, None], j[None, :].clamp(max=N - 1), N + j[None, :])
        # Whether slot j of agent i names a unit it may act on: [N, M].
        self.action_target_allowed = units.can_target[:N].gather(1, self.action_target) & torch.where(
            is_medivac[:, None], j[None, :] < N, True
        )
        self.move_probe = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]], dtype=torch.float32, device=device) * (
            MOVE_AMOUNT / 2
        )


def available_actions(battle: Battle, tables: FeatureTables) -> torch.Tensor:
    """``[B, N, A]`` bool: SMAC's ``get_avail_actions``.

    Alive agents: stop always; a move when the cell ``MOVE_AMOUNT / 2`` away
    in that direction is inside the map and walkable (SMAC's ``can_move``);
    attack j when enemy j is alive within ``SHOOT_RANGE`` (centre distance).
    A medivac's ``6 + j`` heals ally j (alive, not a medivac). Dead agents:
    only the no-op.
    """
    N, B = battle.n_agents, battle.num_envs
    x, y, alive = battle.x, battle.y, battle.alive
    # SMAC truncates the probe position with int() before indexing its grid.
    probe = tables.move_probe
    can_move = battle.walkable_at(
        (x[:, :N, None] + probe[:, 0]).trunc(), (y[:, :N, None] + probe[:, 1]).trunc()
    )  # [B, N, 4]
    tgt = tables.action_target  # [N, M]
    tdx = x[:, tgt] - x[:, :N, None]
    tdy = y[:, tgt] - y[:, :N, None]
    t_ok = alive[:, tgt] & (tdx * tdx + tdy * tdy <= SHOOT_RANGE**2) & tables.action_target_allowed
    a_alive = alive[:, :N, None]
    stop = torch.ones(B, N, 1, dtype=torch.bool, device=x.device)
    live = torch.cat([torch.zeros_like(stop), stop, can_move, t_ok], -1)
    dead = torch.zeros_like(live)
    dead[..., 0] = True
    return torch.where(a_alive, live, dead)


def _health_block(battle: Battle, idx: slice, with_shield: bool) -> torch.Tensor:
    ut = battle.units
    parts = [(battle.health[:, idx] / ut.max_health[idx])[..., None]]
    if with_shield:
        parts.append((battle.shield[:, idx] / ut.shield_norm[idx])[..., None])
    return torch.cat(parts, -1)


def observations(battle: Battle, tables: FeatureTables, avail: torch.Tensor) -> torch.Tensor:
    """``[B, N, obs_dim]`` float32: SMAC's ``get_obs`` for every agent.

    Per agent: move flags (4) | per enemy [attackable, dist, dx, dy, health,
    (shield), (type one-hot)] | per other ally [visible, dist, dx, dy, health,
    (shield), (type one-hot)] | own [health, (shield), (type one-hot)].
    Distances are divided by the sight range; units that are dead or not
    strictly within sight range give zeros; a dead agent's row is all zeros.
    """
    spec, N = tables.spec, battle.n_agents
    B = battle.num_envs
    x, y, alive = battle.x, battle.y, battle.alive
    rx = (x[:, None, :] - x[:, :N, None]) / SIGHT_RANGE  # [B, N, U]
    ry = (y[:, None, :] - y[:, :N, None]) / SIGHT_RANGE
    dist = (rx * rx + ry * ry).sqrt()  # in sight-range units
    visible = (dist < 1.0) & alive[:, None, :] & alive[:, :N, None]
    geo = torch.stack([dist, rx, ry], -1)  # [B, N, U, 3]

    def unit_block(sl: slice, flag: torch.Tensor, with_shield: bool) -> torch.Tensor:
        health = _health_block(battle, sl, with_shield)[:, None].expand(-1, N, -1, -1)
        onehot = tables.type_onehot[sl].expand(B, N, -1, -1)
        block = torch.cat([flag[..., None], geo[:, :, sl], health, onehot], -1)
        return block * visible[:, :, sl, None]

    enemies = unit_block(slice(N, None), avail[..., N_NO_ATTACK_ACTIONS:].float(), bool(spec.shield_bits_enemy))
    allies = unit_block(slice(0, N), torch.ones(B, N, N, device=x.device), bool(spec.shield_bits_ally))
    allies = allies[:, torch.arange(N, device=x.device)[:, None], tables.other_allies]  # [B, N, N-1, F]
    own = torch.cat([_health_block(battle, slice(0, N), bool(spec.shield_bits_ally)), tables.type_onehot[:N].expand(B, -1, -1)], -1)
    obs = torch.cat(
        [avail[..., 2:N_NO_ATTACK_ACTIONS].float(), enemies.flatten(2), allies.flatten(2), own], -1
    )
    return obs * alive[:, :N, None]


def global_state(battle: Battle, tables: FeatureTables) -> torch.Tensor:
    """``[B, state_dim]`` float32: SMAC's ``get_state``.

    Allies [health, cooldown / max cooldown (medivac: energy / 200), x, y,
    (shield), (type one-hot)] | enemies [health, x, y, (shield), (type
    one-hot)] | last actions one-hot ``[N * A]``. Positions are centred and
    divided by half the map size; dead units are all zeros.
    """
    spec, N, ut = tables.spec, battle.n_agents, battle.units
    B = battle.num_envs
    alive = battle.alive
    xy = (battle.pos - MAP_SIZE / 2) / (MAP_SIZE / 2)  # [B, U, 2]
    cooldown_loops = battle.cooldown * 16.0
    cd = torch.where(ut.is_medivac, battle.energy, cooldown_loops) / ut.max_cooldown_loops
    ally = torch.cat(
        [
            (battle.health[:, :N] / ut.max_health[:N])[..., None],
            cd[:, :N, None],
            xy[:, :N],
            _health_block(battle, slice(0, N), True)[..., 1:] if spec.shield_bits_ally else xy.new_empty(B, N, 0),
            tables.type_onehot[:N].expand(B, -1, -1),
        ],
        -1,
    ) * alive[:, :N, None]
    enemy = torch.cat(
        [
            (battle.health[:, N:] / ut.max_health[N:])[..., None],
            xy[:, N:],
            _health_block(battle, slice(N, None), True)[..., 1:] if spec.shield_bits_enemy else xy.new_empty(B, spec.n_enemies, 0),
            tables.type_onehot[N:].expand(B, -1, -1),
        ],
        -1,
    ) * alive[:, N:, None]
    # SMAC's last actions are all zeros before the first step (last_action = -1 here).
    taken = battle.last_action >= 0
    last = torch.nn.functional.one_hot(battle.last_action.clamp(min=0), spec.n_actions).float() * taken[..., None]
    return torch.cat([ally.flatten(1), enemy.flatten(1), last.flatten(1)], -1)

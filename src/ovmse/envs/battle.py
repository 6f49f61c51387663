"""Batched StarCraft II micro-battle dynamics in plain PyTorch.

``Battle`` holds the state of ``B`` independent battles of one map as tensors
and advances all of them together; nothing loops over battles or units in
Python. Units are indexed ``[allies..., enemies...]`` (``U = N + M``).

One env step issues the agents' orders and then runs ``substeps`` physics
sub-steps covering 0.5 game-seconds (default 8, one per SC2 game loop). Each
sub-step: target acquisition of AI-controlled units -> movement (chase into
weapon range edge to edge, move orders, attack-move) plus separation of
overlapping ground units, kept on walkable cells -> simultaneous attacks
(shields, armor, bonus damage, double hits) -> medivac heals -> deaths ->
shield regeneration. Weapon cooldowns carry their remainder across sub-steps
and units stop exactly at their range edge, so rates of fire and travel
times do not depend on the sub-step length.
"""

from __future__ import annotations

import torch

from . import units as U
from .maps import MAP_SIZE, MOVE_AMOUNT, SIGHT_RANGE, MapSpec
from .terrain import formation, walkable_band, walkable_grid

IDLE, MOVE, ATTACK, ATTACK_MOVE = 0, 1, 2, 3
GAME_SECONDS_PER_STEP = 0.5
# SC2's automatic target acquisition for AI units; we use the sight range.
ACQUIRE_RANGE = SIGHT_RANGE
# Dead units are parked this far off the map, so no range, sight or overlap reaches them.
PARKING = -1e4
# Target scores are squared distances plus penalties. Forbidden pairs and
# out-of-range candidates of attackers score _FORBIDDEN; an attacker's current
# (still valid) target is preferred over any other by _KEEP; a medivac's
# fallbacks (uninjured or out-of-range friends) stay below _FORBIDDEN.
_FORBIDDEN = 4000.0
_KEEP = 500.0
_PREFER_THREAT = 100.0
_MEDIVAC_FALLBACK = 600.0
# Scores are quantised to 1/64 and packed with the unit index (32 slots) so
# that one amin gives both the best score and its index, exactly, in float32.
_SCORE_STEPS, _INDEX_SLOTS = 64.0, 32.0
_NEVER_DAMAGED = 1e6


class UnitTable:
    """Per-unit static stats of a map as tensors ``[U]`` and pair tables ``[U, U]``."""

    def __init__(self, spec: MapSpec, device: torch.device):
        types = spec.ally_units + spec.enemy_units
        n, u = spec.n_agents, len(types)
        if u > _INDEX_SLOTS:
            raise ValueError(f"{spec.name}: at most {int(_INDEX_SLOTS)} units per battle are supported, got {u}")

        def t(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        self.n_agents, self.n_units = n, u
        self.index = torch.arange(u, device=device)
        self.team = t([0] * n + [1] * spec.n_enemies, torch.long)
        self.is_ally = self.team == 0
        self.max_health = t([x.health for x in types])
        self.max_shield = t([x.shield for x in types])
        self.shield_norm = torch.where(self.max_shield > 0, self.max_shield, torch.ones_like(self.max_shield))
        self.armor = t([x.armor for x in types])
        self.hits = t([x.hits for x in types])
        self.can_attack = self.hits > 0
        self.cooldown = t([x.cooldown for x in types])
        self.weapon_range = t([x.weapon_range for x in types])
        self.speed = t([x.speed for x in types])
        self.radius = t([x.radius for x in types])
        self.is_medivac = t([x.is_medivac for x in types], torch.bool)
        self.is_air = t([x.is_air for x in types], torch.bool)
        self.max_cooldown_loops = t([x.max_cooldown_loops for x in types])
        self.has_medivac = bool(self.is_medivac.any())
        self.has_shields = bool((self.max_shield > 0).any())

        # Damage of one hit of unit u on unit v, bonus included: [U, U].
        attr = t([x.attribute for x in types], torch.long)
        bonus_vs = t([x.bonus_vs for x in types], torch.long)
        bonus = t([x.bonus_damage for x in types])
        damage = t([x.damage for x in types])
        self.hit_damage = damage[:, None] + bonus[:, None] * (bonus_vs[:, None] == attr[None, :])
        # Centre distance at which u reaches v (weapon or heal range, edge to edge): [U, U].
        self.reach = self.weapon_range[:, None] + self.radius[:, None] + self.radius[None, :]

        same_team = self.team[:, None] == self.team[None, :]
        eye = torch.eye(u, dtype=torch.bool, device=device)
        # Attackers target the other team (ground-only weapons: ground units only);
        # medivacs heal their own non-medivac units.
        # SMAC offers every such order (``order_target``); the game carries out
        # only those the weapon can (``can_target``).
        hits_air = t([x.hits_air for x in types], torch.bool)
        self.order_target = torch.where(
            self.is_medivac[:, None], same_team & ~eye & ~self.is_medivac[None, :], ~same_team
        )
        self.can_target = self.order_target & (~self.is_air[None, :] | hits_air[:, None] | self.is_medivac[:, None])
        # Attackers prefer units that can shoot back (non-medivacs) and keep a
        # valid target (its _KEEP is subtracted at run time).
        prefer = torch.where(self.is_medivac[:, None], 0.0, _KEEP + _PREFER_THREAT * self.is_medivac[None, :].float())
        self.target_penalty = torch.where(self.can_target, prefer, _FORBIDDEN)
        self.keep_bonus = torch.where(self.is_medivac, 0.0, _KEEP)
        self.out_of_range_penalty = torch.where(self.is_medivac, _MEDIVAC_FALLBACK, _FORBIDDEN)
        # Ground units push each other apart; air units (medivac) do not collide.
        ground = ~self.is_air
        collide = ground[:, None] & ground[None, :] & ~eye
        self.half_separation = 0.5 * (self.radius[:, None] + self.radius[None, :]) * collide
        # (x @ pair_difference)[u * U + v] = x_v - x_u.
        self.pair_difference = torch.zeros(u, u * u, device=device)
        pairs = torch.arange(u * u, device=device)
        self.pair_difference[pairs % u, pairs] += 1.0
        self.pair_difference[pairs // u, pairs] -= 1.0
        self.ones = torch.ones(u, device=device)
        self.parking_x = PARKING - 10.0 * self.index.float()


class Battle:
    """State and dynamics of ``num_envs`` battles of one map.

    Dynamic state (``B`` battles, ``U`` units), all ``[B, U]`` unless noted:
    ``x, y`` positions; ``health, shield, energy``; ``cooldown`` (game-seconds
    until the weapon is ready); ``since_damage`` (game-seconds);
    ``target`` (unit index or -1); ``order`` (IDLE/MOVE/ATTACK/ATTACK_MOVE);
    ``goal_x, goal_y`` (move or attack-move point); ``steps`` ``[B]``;
    ``last_action`` ``[B, N]`` (-1 before the first step).
    """

    def __init__(
        self,
        spec: MapSpec,
        num_envs: int,
        *,
        device: str | torch.device = "cpu",
        substeps: int = 8,
        spawn_jitter: float = 1.0,
        scripted_allies: bool = False,
        generator: torch.Generator | None = None,
    ):
        if substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {substeps}")
        if spawn_jitter < 0:
            raise ValueError(f"spawn_jitter must be >= 0, got {spawn_jitter}")
        self.spec = spec
        self.device = torch.device(device)
        self.num_envs = B = num_envs
        self.substeps = substeps
        self.dt = GAME_SECONDS_PER_STEP / substeps
        self.spawn_jitter = spawn_jitter
        self.generator = generator
        self.units = ut = UnitTable(spec, self.device)
        # Distance each unit covers in one sub-step, [U] (constant for the env).
        self._step_length = ut.speed * self.dt
        N, Uc = spec.n_agents, ut.n_units
        self.n_agents, self.n_units = N, Uc
        # AI units pick their own targets: the built-in opponent, optionally the allies too.
        self.ai = (~ut.is_ally) | torch.tensor(scripted_allies, device=self.device)
        # AI units are a contiguous block (the enemies, or everyone), and unless
        # medivacs or scripted allies are involved they only ever target allies.
        self._ai_rows = slice(0 if scripted_allies else N, Uc)
        self._target_cols = slice(0, Uc if (scripted_allies or ut.has_medivac) else N)
        # Pair tables expanded over battles (views), for gathers by target index.
        self._reach = ut.reach.expand(B, -1, -1)
        self._hit_damage = ut.hit_damage.expand(B, -1, -1)
        grid = walkable_grid(spec.terrain)
        self.walkable = grid.to(self.device).flatten()
        self._band = walkable_band(grid)
        self.offsets = torch.cat([formation(spec, enemies=False), formation(spec, enemies=True)]).to(self.device)
        self.spawn_centre = torch.tensor(
            [spec.ally_spawn] * N + [spec.enemy_spawn] * spec.n_enemies, device=self.device
        )

        f = dict(device=self.device, dtype=torch.float32)
        zeros = lambda: torch.zeros(B, Uc, **f)  # noqa: E731
        self.x, self.y, self.goal_x, self.goal_y = zeros(), zeros(), zeros(), zeros()
        self.health, self.shield, self.energy = zeros(), zeros(), zeros()
        self.cooldown, self.since_damage = zeros(), zeros()
        self.target = torch.full((B, Uc), -1, dtype=torch.long, device=self.device)
        self.order = torch.zeros(B, Uc, dtype=torch.long, device=self.device)
        self.steps = torch.zeros(B, dtype=torch.long, device=self.device)
        self.last_action = torch.full((B, N), -1, dtype=torch.long, device=self.device)
        self.reset(torch.ones(B, dtype=torch.bool, device=self.device))

    # ------------------------------------------------------------ accessors
    @property
    def pos(self) -> torch.Tensor:
        """Positions ``[B, U, 2]`` (a copy; assign to move units)."""
        return torch.stack([self.x, self.y], -1)

    @pos.setter
    def pos(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=torch.float32, device=self.device).expand(self.num_envs, self.n_units, 2)
        self.x, self.y = value[..., 0].clone(), value[..., 1].clone()

    @property
    def alive(self) -> torch.Tensor:
        """``[B, U]`` bool."""
        return self.health > 0

    # ---------------------------------------------------------------- reset
    def reset(self, mask: torch.Tensor) -> None:
        """Start new battles where ``mask`` ``[B]`` is True; others are untouched."""
        ut, B = self.units, self.num_envs
        m = mask.to(self.device)[:, None]
        # A team-wide shift plus a smaller per-unit wobble, drawn for every battle
        # so that the random stream does not depend on which battles reset.
        team_shift = self._uniform((B, 2, 2)) * self.spawn_jitter
        wobble = self._uniform((B, self.n_units, 2)) * (0.25 * self.spawn_jitter)
        shift = team_shift[:, ut.team]  # [B, U, 2]
        spawn = self.spawn_centre + self.offsets + shift + wobble
        sx, sy = self._keep_walkable(spawn[..., 0], spawn[..., 1], *self.spawn_centre.T.expand(B, 2, -1).unbind(1))
        self.x, self.y = torch.where(m, sx, self.x), torch.where(m, sy, self.y)
        # AI units attack-move to the other team's (shifted) spawn centre.
        goal = torch.tensor([self.spec.enemy_spawn, self.spec.ally_spawn], device=self.device)[ut.team]
        goal = goal + team_shift.flip(1)[:, ut.team]
        self.goal_x = torch.where(m, goal[..., 0], self.goal_x)
        self.goal_y = torch.where(m, goal[..., 1], self.goal_y)
        self.health = torch.where(m, ut.max_health, self.health)
        self.shield = torch.where(m, ut.max_shield, self.shield)
        self.energy = torch.where(m, torch.where(ut.is_medivac, U.MEDIVAC_START_ENERGY, 0.0), self.energy)
        self.cooldown = torch.where(m, 0.0, self.cooldown)
        self.since_damage = torch.where(m, _NEVER_DAMAGED, self.since_damage)
        self.target = torch.where(m, -1, self.target)
        self.order = torch.where(m, torch.where(self.ai, ATTACK_MOVE, IDLE), self.order)
        self.steps = torch.where(m[:, 0], 0, self.steps)
        self.last_action = torch.where(m, -1, self.last_action)

    def _uniform(self, shape) -> torch.Tensor:
        """Uniform in [-1, 1) from the battle's generator."""
        return torch.rand(shape, generator=self.generator, device=self.device) * 2 - 1

    # -------------------------------------------------------------- actions
    def apply_actions(self, actions: torch.Tensor) -> None:
        """Turn SMAC actions ``[B, N]`` (int64) into orders for the allies.

        0 no-op (dead agents), 1 stop, 2-5 move north/south/east/west by
        ``MOVE_AMOUNT``, ``6 + j`` attack enemy j (a medivac heals ally j).
        Scripted allies ignore their actions; actions are recorded as the last
        actions either way.
        """
        N, ut = self.n_agents, self.units
        a = actions.to(self.device)
        controlled = ~self.ai[:N] & self.alive[:, :N]
        stop = controlled & (a == 1)
        move = controlled & (a >= 2) & (a <= 5)
        attack = controlled & (a >= 6)
        # Moves: 2 north (+y), 3 south (-y), 4 east (+x), 5 west (-x).
        mx = ((a == 4).float() - (a == 5).float()) * MOVE_AMOUNT
        my = ((a == 2).float() - (a == 3).float()) * MOVE_AMOUNT
        goal_x = torch.where(move, self.x[:, :N] + mx, self.goal_x[:, :N])
        goal_y = torch.where(move, self.y[:, :N] + my, self.goal_y[:, :N])
        # Attack targets are enemy indices; a medivac's heal targets are ally indices.
        # SC2 refuses an order the weapon cannot carry out (a ground-only weapon on
        # an air unit): the unit keeps its previous order.
        new_target = a - 6 + torch.where(ut.is_medivac[:N], 0, N)
        allowed = ut.can_target[:N].expand(self.num_envs, -1, -1).gather(2, new_target.clamp(0, self.n_units - 1)[..., None])
        attack = attack & allowed.squeeze(-1)
        target = torch.where(attack, new_target, torch.where(stop | move, -1, self.target[:, :N]))
        order = torch.where(stop, IDLE, torch.where(move, MOVE, torch.where(attack, ATTACK, self.order[:, :N])))
        self.goal_x = torch.cat([goal_x, self.goal_x[:, N:]], 1)
        self.goal_y = torch.cat([goal_y, self.goal_y[:, N:]], 1)
        self.target = torch.cat([target, self.target[:, N:]], 1)
        self.order = torch.cat([order, self.order[:, N:]], 1)
        self.last_action = a

    # -------------------------------------------------------------- physics
    def advance(self) -> None:
        """Run one env step (``substeps`` sub-steps) of every battle."""
        for _ in range(self.substeps):
            self._substep()
        self.steps += 1

    def _substep(self) -> None:
        ut, dt = self.units, self.dt
        alive = self.health > 0
        x, y = self.x, self.y
        B, Uc = x.shape
        # Pairwise offsets x_v - x_u, y_v - y_u as one matrix product: [2, B, U, U].
        dxy = (torch.stack([x, y]).view(2 * B, Uc) @ ut.pair_difference).view(2, B, Uc, Uc)
        d2 = (dxy * dxy).sum(0)
        target = self._update_targets(alive, d2)
        has_t = target >= 0
        t_idx = target.clamp(min=0)

        # --- movement: chase a target out of range up to its range edge (edge
        # to edge), else walk to the move / attack-move point.
        vx = torch.where(has_t, x.gather(1, t_idx), self.goal_x) - x
        vy = torch.where(has_t, y.gather(1, t_idx), self.goal_y) - y
        dist = (vx * vx + vy * vy).sqrt()
        gap = dist - self._reach.gather(2, t_idx[..., None]).squeeze(-1) * has_t
        in_range = has_t & (gap <= 1e-4)
        walk_order = (self.order == MOVE) | (self.order == ATTACK_MOVE)
        moving = alive & torch.where(has_t, ~in_range, walk_order)
        step = torch.minimum(self._step_length, gap).clamp(min=0) * moving
        scale = step / dist.clamp(min=1e-6)
        # A move order is complete once its point is reached.
        arrived = moving & ~has_t & (self.order == MOVE) & (dist <= self._step_length)
        self.order = torch.where(arrived, IDLE, self.order)
        # Simple separation: overlapping ground units each move half the overlap
        # apart, u by sum_v w_uv (p_u - p_v) with w_uv = (r_u + r_v - d_uv) / (2 d_uv)
        # (dead units are parked off the map, so they never overlap).
        w = ((d2 + 1e-6).rsqrt() * ut.half_separation - 0.5).clamp(min=0)
        push = ((w * dxy).view(-1, Uc) @ ut.ones).view(2, B, Uc)
        nx, ny = self._keep_walkable(x + vx * scale - push[0], y + vy * scale - push[1], x, y)
        x, y = torch.where(alive, nx, x), torch.where(alive, ny, y)

        # --- attacks (simultaneous); cooldowns keep their remainder.
        cd = self.cooldown - dt
        fire = in_range & alive & ut.can_attack & (cd <= 0)
        self.cooldown = torch.where(fire, cd + ut.cooldown, cd.clamp(min=0))
        shield_loss, health_loss = self._damage(fire, t_idx)
        health = self.health - health_loss
        shield = self.shield - shield_loss
        if ut.has_medivac:
            health = self._heal(alive & in_range & ut.is_medivac, t_idx, health)

        dead = health <= 0
        since = torch.where((shield_loss + health_loss) > 0, 0.0, self.since_damage + dt)
        if ut.has_shields:
            regen = (since >= U.SHIELD_REGEN_DELAY) & ~dead
            shield = torch.minimum(shield + U.SHIELD_REGEN_PER_SECOND * dt * regen, ut.max_shield)
        self.health = health.clamp(min=0)
        self.shield = shield  # a dead unit's shield was used up by the hit that killed it
        self.since_damage = since
        self.target = torch.where(dead, -1, target)
        self.x = torch.where(dead, ut.parking_x, x)
        self.y = torch.where(dead, PARKING, y)

    def _heal(self, healing: torch.Tensor, t_idx: torch.Tensor, health: torch.Tensor) -> torch.Tensor:
        """Medivac heals (9 hp/s, 1 energy per 3 hp, energy regenerates); returns new health."""
        ut, dt = self.units, self.dt
        missing = (ut.max_health.expand_as(health).gather(1, t_idx) - health.gather(1, t_idx)).clamp(min=0)
        heal = torch.minimum(missing.clamp(max=U.MEDIVAC_HEAL_PER_SECOND * dt), self.energy * U.MEDIVAC_HP_PER_ENERGY)
        heal = heal * healing
        energy = self.energy - heal / U.MEDIVAC_HP_PER_ENERGY + U.ENERGY_REGEN_PER_SECOND * dt * ut.is_medivac
        self.energy = energy.clamp(max=U.MEDIVAC_MAX_ENERGY)
        healed = health + torch.zeros_like(health).scatter_add_(1, t_idx, heal)
        return torch.where(health > 0, healed.clamp(max=ut.max_health), health)

    def _update_targets(self, alive: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """Targets ``[B, U]`` for this sub-step (unit index or -1).

        Agent-controlled units keep their ordered target while it lives, then
        stand idle. AI attackers keep their target while it is alive and within
        acquisition range, otherwise take the nearest hostile in range,
        preferring units that can shoot back (non-medivacs). AI medivacs re-pick
        every sub-step: the nearest injured friend in range, else the nearest
        friend (so they follow the army). Dead units are parked far off the map,
        so they are never in range.
        """
        ut, target = self.units, self.target
        valid = (target >= 0) & alive.gather(1, target.clamp(min=0))
        lost = ~self.ai & (self.order == ATTACK) & ~valid
        self.order = torch.where(lost, IDLE, self.order)

        # Candidates: AI rows x possible target columns, [B, R, C].
        rows, cols = self._ai_rows, self._target_cols
        d2 = d2[:, rows, cols]
        # Out of acquisition range: a unit step within 1e-3 (squared) of the edge.
        out_of_range = ((d2 - ACQUIRE_RANGE**2) * 1e3).clamp(0, 1)
        score = d2 + ut.target_penalty[rows, cols] + out_of_range * ut.out_of_range_penalty[rows, None]
        current = target[:, rows, None] == ut.index[cols]
        score = score - current * ut.keep_bonus[rows, None]
        if ut.has_medivac:
            uninjured = (self.health[:, cols] >= ut.max_health[cols]).float()
            score = score + (uninjured * _MEDIVAC_FALLBACK)[:, None, :] * ut.is_medivac[rows, None]
        packed = (score.clamp(max=_FORBIDDEN) * _SCORE_STEPS).floor() * _INDEX_SLOTS + ut.index[cols]
        best = packed.amin(-1)
        found = best < _FORBIDDEN * _SCORE_STEPS * _INDEX_SLOTS
        acquired = torch.where(found, torch.remainder(best, _INDEX_SLOTS).long(), -1)
        acquired = torch.cat([target[:, : rows.start], acquired], 1)
        return torch.where(self.ai, acquired, torch.where(valid, target, -1))

    def _damage(self, fire: torch.Tensor, t_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shield and health loss ``[B, U]`` from the shots fired this sub-step.

        Hits landing on one unit in the same sub-step are applied one after
        another: whole hits are absorbed by the shield, the hit that breaks it
        carries its remainder minus armor to health, and every later hit deals
        ``max(d - armor, 0.5)``. This is exact when those hits have equal raw
        damage ``d`` (the usual case); hits of different weapons landing on one
        unit within the same sub-step use their mean damage.
        """
        ut = self.units
        d = self._hit_damage.gather(2, t_idx[..., None]).squeeze(-1)  # raw damage of one hit
        hits = fire * ut.hits
        n = torch.zeros_like(d).scatter_add_(1, t_idx, hits)
        raw = torch.zeros_like(d).scatter_add_(1, t_idx, hits * d)
        shield = self.shield
        mean = raw / n.clamp(min=1)
        whole = (shield / mean.clamp(min=1e-6)).floor()  # hits the shield absorbs whole
        left = shield - whole * mean  # shield part of the breaking hit
        through = (n - whole).clamp(min=0)  # hits reaching health, the breaking one included
        breaking = ((left > 0) & (through > 0)).float()
        health_loss = (through - breaking) * (mean - ut.armor).clamp(min=U.MIN_HEALTH_DAMAGE)
        health_loss = health_loss + breaking * (mean - left - ut.armor).clamp(min=0)
        return torch.minimum(raw, shield), health_loss

    # -------------------------------------------------------------- terrain
    def walkable_at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whether points are inside the map on a walkable cell (same shape as x)."""
        inside = (x >= 0) & (x < MAP_SIZE) & (y >= 0) & (y < MAP_SIZE)
        if self._band is not None:
            lo, hi = self._band
            return inside & (y >= lo) & (y < hi)
        size = int(MAP_SIZE)
        cell = x.floor().long().clamp(0, size - 1) * size + y.floor().long().clamp(0, size - 1)
        return inside & self.walkable[cell]

    def _keep_walkable(self, nx, ny, ox, oy) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamp a move from (ox, oy) to (nx, ny) ``[B, U]`` to the map and walkable cells.

        The start (ox, oy) must be walkable. Air units only stay inside the map.
        A ground move onto an unwalkable cell slides along whichever axis stays
        walkable, else the unit stays.
        """
        eps = 1e-3
        nx, ny = nx.clamp(eps, MAP_SIZE - eps), ny.clamp(eps, MAP_SIZE - eps)
        air = self.units.is_air
        if self._band is not None:
            # Walkable rows span the whole map width: x always moves, y only inside the band.
            lo, hi = self._band
            if lo <= 0 and hi >= MAP_SIZE:
                return nx, ny
            return nx, torch.where((ny >= lo) & (ny < hi) | air, ny, oy)
        size = int(MAP_SIZE)
        cx_new, cy_new = nx.long() * size, ny.long()
        cx_old, cy_old = ox.clamp(0, MAP_SIZE - eps).long() * size, oy.clamp(0, MAP_SIZE - eps).long()
        ok_both = self.walkable[cx_new + cy_new] | air
        ok_x = self.walkable[cx_new + cy_old] | air
        ok_y = self.walkable[cx_old + cy_new] | air
        take_x = ok_both | ok_x
        take_y = ok_both | (~ok_x & ok_y)
        return torch.where(take_x, nx, ox), torch.where(take_y, ny, oy)

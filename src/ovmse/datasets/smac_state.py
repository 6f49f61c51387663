"""Reading SMAC's global state vector ``[state_dim]``: where each unit's features are, and who won.

Datasets recorded by others (CFCQL's) carry states but not SMAC's ``battle_won`` info, nor
whether an episode that ended was decided or timed out; both follow from the final state by
SMAC's rules, given where each unit's health sits in the vector: SMAC zeroes every state
feature of a dead unit, so a unit is alive iff its health feature is > 0, and medivacs do not
count as combat units. The sizes come from our maps (:mod:`ovmse.envs.maps`), which the
simulator's :func:`ovmse.envs.features.global_state` and the real game agree on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ovmse.envs import MapSpec
from ovmse.envs.units import UNIT_TYPES


@dataclass(frozen=True)
class StateLayout:
    """Where things are in SMAC's global state vector of a map (``state_last_action`` on,
    ``state_timestep_number`` off, as in SMAC's defaults, CFCQL and our simulator).

    ``[ally 0 | ... | ally N-1 | enemy 0 | ... | enemy M-1 | last actions N * A]``; an ally
    block is ``[health, cooldown, x, y, (shield), (type one-hot)]``, an enemy block
    ``[health, x, y, (shield), (type one-hot)]`` (health at offset 0 of both); a dead unit's
    block is all zeros.
    """

    n_agents: int
    n_enemies: int
    n_actions: int
    ally_dim: int
    enemy_dim: int
    ally_start: int
    enemy_start: int
    last_action_start: int
    state_dim: int
    ally_combat: tuple[bool, ...]  # not a medivac
    enemy_combat: tuple[bool, ...]

    @property
    def ally_health(self) -> list[int]:
        """Index of each ally's health (``health / max health``) in the state."""
        return [self.ally_start + i * self.ally_dim for i in range(self.n_agents)]

    @property
    def enemy_health(self) -> list[int]:
        """Index of each enemy's health in the state."""
        return [self.enemy_start + j * self.enemy_dim for j in range(self.n_enemies)]

    @property
    def last_action(self) -> slice:
        """The agents' last actions, one-hot ``[N, A]`` flattened."""
        return slice(self.last_action_start, self.last_action_start + self.n_agents * self.n_actions)


def state_layout(spec: MapSpec) -> StateLayout:
    """The :class:`StateLayout` of map ``spec`` (sizes from :mod:`ovmse.envs.maps`, order from
    :func:`ovmse.envs.features.global_state`)."""
    N, M, A = spec.n_agents, spec.n_enemies, spec.n_actions
    enemy_start = N * spec.state_ally_dim
    last_action_start = enemy_start + M * spec.state_enemy_dim
    layout = StateLayout(
        n_agents=N, n_enemies=M, n_actions=A,
        ally_dim=spec.state_ally_dim, enemy_dim=spec.state_enemy_dim,
        ally_start=0, enemy_start=enemy_start, last_action_start=last_action_start,
        state_dim=last_action_start + N * A,
        ally_combat=tuple(not UNIT_TYPES[u].is_medivac for u in spec.allies),
        enemy_combat=tuple(not UNIT_TYPES[u].is_medivac for u in spec.enemies),
    )
    if layout.state_dim != spec.state_dim:  # the two descriptions of the state disagree
        raise AssertionError(f"{spec.name}: state layout sums to {layout.state_dim}, map says {spec.state_dim}")
    return layout


def battle_outcome(state: torch.Tensor, layout: StateLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """``(over, won)`` bool ``[...]`` of global states ``[..., state_dim]``, by SMAC's rules:
    the battle is over when one side has no living combat unit, and won when that side is
    the enemy's and an allied combat unit is alive (both wiped out: over, not won)."""
    ally_combat = torch.tensor(layout.ally_combat, device=state.device)
    enemy_combat = torch.tensor(layout.enemy_combat, device=state.device)
    allies = ((state[..., layout.ally_health] > 0) & ally_combat).any(-1)
    enemies = ((state[..., layout.enemy_health] > 0) & enemy_combat).any(-1)
    return ~(allies & enemies), allies & ~enemies

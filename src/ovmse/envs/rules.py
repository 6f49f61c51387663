"""SMAC's shaped reward and episode-end rules, batched.

Reward (SMAC defaults, ``reward_only_positive``): for every enemy alive at
the previous step, its drop in health + shield, plus 10 when it dies; the
absolute value of that sum; +200 on a win; all divided by
``max_reward / 20`` so that a perfect win returns exactly 20.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .battle import Battle
from .maps import REWARD_DEATH_VALUE, REWARD_SCALE_RATE, REWARD_WIN


@dataclass
class StepOutcome:
    """Per-battle results of one env step, each ``[B]``."""

    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    battle_won: torch.Tensor


class RewardTracker:
    """Remembers the enemies' health + shield between steps to compute rewards."""

    def __init__(self, battle: Battle):
        self.battle = battle
        self.scale = battle.spec.max_reward / REWARD_SCALE_RATE
        self.prev_hp = self._enemy_hp()

    def _enemy_hp(self) -> torch.Tensor:
        b, N = self.battle, self.battle.n_agents
        return b.health[:, N:] + b.shield[:, N:]

    def reset(self, mask: torch.Tensor) -> None:
        self.prev_hp = torch.where(mask[:, None], self._enemy_hp(), self.prev_hp)

    def outcome(self) -> StepOutcome:
        """Reward and end flags of the step just advanced; updates the memory.

        Win: all enemy combat units dead with an allied combat unit alive
        (medivacs do not count, so in MMM a lone enemy medivac means a win).
        Loss: all allied combat units dead. Both wiped out: ends, not won.
        Reaching the episode limit without an end: truncated, not terminated.
        """
        b, N = self.battle, self.battle.n_agents
        hp = self._enemy_hp()
        was_alive = self.prev_hp > 0
        delta = ((self.prev_hp - hp) * was_alive).sum(1)
        deaths = (was_alive & (b.health[:, N:] <= 0)).sum(1)
        reward = (delta + REWARD_DEATH_VALUE * deaths).abs()
        combat = b.alive & ~b.units.is_medivac
        allies_left = combat[:, :N].any(1)
        enemies_left = combat[:, N:].any(1)
        won = allies_left & ~enemies_left
        terminated = ~allies_left | ~enemies_left
        truncated = ~terminated & (b.steps >= b.spec.episode_limit)
        reward = (reward + REWARD_WIN * won) / self.scale
        self.prev_hp = hp
        return StepOutcome(reward, terminated, truncated, won)

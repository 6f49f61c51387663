"""Greedy evaluation of an agent in fresh battles."""

from __future__ import annotations

import torch

from ovmse.collection import make_policy
from ovmse.collection.acting import primed_env
from ovmse.envs.rollout import BattleStats, run_battles
from ovmse.nets import RNNAgent

from .threads import torch_threads


class GreedyEvaluator:
    """Plays battles with the masked-greedy policy of ``agent`` (no exploration).

    The env is built once and reused; each :meth:`run` starts from fresh battles, with
    ``threads`` torch threads (the simulator's side, :mod:`ovmse.training.threads`; ``None``:
    the process's count).
    """

    def __init__(self, agent: RNNAgent, map_name: str, num_envs: int, *, seed: int = 10_000,
                 device: str | torch.device = "cpu", env_options: dict | None = None,
                 threads: int | None = 1) -> None:
        self.env = primed_env(map_name, num_envs, agent.hidden_dim, seed=seed, device=device, env_options=env_options)
        self.policy = make_policy(self.env, agent, exploration=None)
        self.threads = threads

    @torch.no_grad()
    def run(self, episodes: int) -> BattleStats:
        with torch_threads(self.threads):
            return run_battles(self.env, episodes, policy=self.policy)

    @staticmethod
    def metrics(stats: BattleStats) -> dict[str, float]:
        """``eval/`` metrics of a greedy run."""
        return {
            "eval/win_rate": stats.win_rate,
            "eval/return": stats.mean_return,
            "eval/episode_length": stats.mean_length,
            "eval/episodes": float(stats.battles),
        }

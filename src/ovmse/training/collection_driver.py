"""Environment side of online training: a TorchRL collector feeding an episode replay buffer."""

from __future__ import annotations

import time

import torch
from torchrl.collectors import Collector

from ovmse.collection import EpisodeAssembler, EpisodeReplayBuffer, env_with_primers, make_policy
from ovmse.envs import make_env
from ovmse.exploration import LinearSchedule, make_exploration
from ovmse.nets import RNNAgent


class OnlineCollection:
    """Runs the exploration policy in ``num_envs`` battles and stores complete episodes.

    Every :meth:`collect` pulls one collector batch of ``num_envs x steps_per_env``
    env steps (episodes are cut between batches and stitched back together by the
    :class:`~ovmse.collection.EpisodeAssembler`), updates ε from its schedule on the
    env-step counter, and adds the completed episodes to ``replay``.

    Args:
        agent: the learner's agent network (shared, so the policy always acts with
            the latest weights).
        map_name, num_envs, seed, device, env_options: the training env.
        replay: where complete episodes go.
        exploration: ``"epsilon_greedy"``, ``"sequential"`` or ``"decentralised_sequential"``.
        epsilon: the ε schedule (start, end, anneal steps).
        steps_per_env: env steps per battle per :meth:`collect`.
    """

    def __init__(
        self,
        agent: RNNAgent,
        map_name: str,
        num_envs: int,
        replay: EpisodeReplayBuffer,
        *,
        exploration: str = "epsilon_greedy",
        epsilon: LinearSchedule,
        steps_per_env: int = 32,
        seed: int = 0,
        device: str | torch.device = "cpu",
        env_options: dict | None = None,
    ) -> None:
        base = make_env(map_name, num_envs, seed=seed, device=device, **(env_options or {}))
        self.spec = base.spec
        self.env = env_with_primers(base, agent.hidden_dim)
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.exploration = make_exploration(exploration, epsilon=epsilon(0), generator=generator)
        self.policy = make_policy(self.env, agent, self.exploration)
        self.epsilon = epsilon
        self.replay = replay
        self.assembler = EpisodeAssembler(self.spec.episode_limit)
        self.collector = Collector(
            self.env, self.policy, frames_per_batch=num_envs * steps_per_env, total_frames=-1,
            auto_register_policy_transforms=False,
        )
        self._batches = iter(self.collector)

    @torch.no_grad()
    def collect(self, env_steps: int) -> dict[str, float]:
        """Collect one batch with ε for ``env_steps`` (steps done so far); return ``collect/`` stats.

        The returned dict holds ``env_steps`` and ``episodes`` (the increments), and the
        exploratory statistics of the episodes completed in this batch.
        """
        self.exploration.set_epsilon(self.epsilon(env_steps))
        start = time.perf_counter()
        batch = next(self._batches)
        seconds = time.perf_counter() - start
        episodes = self.assembler.add(batch)
        self.replay.extend(episodes)
        stats = {
            "env_steps": batch.numel(),
            "episodes": 0 if episodes is None else episodes.shape[0],
            "collect/epsilon": self.exploration.epsilon,
            "collect/explored_fraction": batch.get(("agents", "explored")).float().mean().item(),
            "collect/env_steps_per_second": batch.numel() / max(seconds, 1e-9),
        }
        if episodes is not None:
            filled = episodes.get("filled").squeeze(-1)
            reward = (episodes.get("reward").squeeze(-1) * filled).sum(-1)
            won = (episodes.get(("info", "battle_won")).squeeze(-1) & filled).any(-1)
            stats.update({
                "collect/return": reward.mean().item(),
                "collect/win_rate": won.float().mean().item(),
                "collect/episode_length": (filled.sum(-1) - 1).float().mean().item(),
            })
        return stats

    def close(self) -> None:
        self.collector.shutdown()

"""What acts in battles: a batched env carrying the recurrent-state primers, and the fresh
policy copies that collector worker processes act with."""

from __future__ import annotations

import torch
from torchrl.envs import TransformedEnv

from ovmse.collection.policy import RecurrentQPolicy, env_with_primers
from ovmse.exploration import make_exploration
from ovmse.nets import RNNAgent

# Collector worker ``w`` seeds its env with ``seed + WORKER_SEED_STRIDE * w`` and its ε
# generator with one more; DDP ranks multiply the same stride (ovmse.training.ddp).
WORKER_SEED_STRIDE = 1000


def primed_env(map_name: str, num_envs: int, hidden_dim: int, *, seed: int | None = None,
               device: str | torch.device = "cpu", env_options: dict | None = None) -> TransformedEnv:
    """``make_env(map_name, num_envs, ...)`` wrapped by :func:`env_with_primers`, so a
    :class:`RecurrentQPolicy` with a GRU of ``hidden_dim`` starts every battle from zeros."""
    from ovmse.envs import make_env

    return env_with_primers(make_env(map_name, num_envs, seed=seed, device=device, **(env_options or {})), hidden_dim)


def worker_policy(input_dim: int, n_actions: int, hidden_dim: int, exploration: str, epsilon: float, seed: int,
                  device: str | torch.device) -> RecurrentQPolicy:
    """A worker's copy of the learner's policy: the same structure (agent + exploration module,
    so synced weights and the ε buffer match key for key) with its own ε generator seeded
    ``seed``. Its initial weights are replaced by the synced ones."""
    agent = RNNAgent(input_dim, n_actions, hidden_dim).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return RecurrentQPolicy(agent, make_exploration(exploration, epsilon=epsilon, generator=generator))

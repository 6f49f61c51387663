"""Play a policy in fresh battles and write its episodes to a dataset."""

from __future__ import annotations

import torch
from torchrl.collectors import Collector

from ovmse.collection import EpisodeAssembler, env_with_primers, make_policy
from ovmse.envs import make_env
from ovmse.nets import RNNAgent

from .writer import EpisodeDatasetWriter


@torch.no_grad()
def record_episodes(
    writer: EpisodeDatasetWriter,
    agent: RNNAgent | None,
    *,
    num_envs: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    env_options: dict | None = None,
    steps_per_env: int = 40,
) -> int:
    """Fill ``writer`` with ``writer.n_episodes`` episodes of ``agent`` acting greedily (masked
    argmax, no exploration), or of uniformly random available actions when ``agent`` is None.

    Env ``b`` of the ``num_envs`` parallel battles contributes its first ``quota[b]``
    consecutive episodes from its reset (quotas differ by at most one and sum to the target),
    so the set is not biased towards short battles the way "the first N to finish" would be.
    Returns the env steps played (including the discarded tails of unfinished battles).
    """
    n = writer.n_episodes
    base = make_env(writer.spec.name, num_envs, seed=seed, device=device, **(env_options or {}))
    if agent is None:
        env, policy = base, base.rand_action
    else:
        env = env_with_primers(base, agent.hidden_dim)
        policy = make_policy(env, agent, exploration=None)
    quota = torch.full((num_envs,), n // num_envs, dtype=torch.long)
    quota[: n % num_envs] += 1
    taken = torch.zeros(num_envs, dtype=torch.long)
    assembler = EpisodeAssembler(writer.spec.episode_limit)
    collector = Collector(env, policy, frames_per_batch=num_envs * steps_per_env, total_frames=-1,
                          auto_register_policy_transforms=False)
    env_steps = 0
    try:
        for batch in collector:
            env_steps += batch.numel()
            episodes = assembler.add(batch)
            if episodes is not None:
                keep = []
                for b in assembler.last_env_indices:
                    keep.append(bool(taken[b] < quota[b]))
                    taken[b] += 1
                writer.append(episodes[torch.tensor(keep)])
            if bool((taken >= quota).all()):
                break
    finally:
        collector.shutdown()
    return env_steps

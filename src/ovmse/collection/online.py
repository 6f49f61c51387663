"""Environment side of online training: a TorchRL collector feeding an episode replay buffer."""

from __future__ import annotations

import time

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector, MultiSyncCollector

from ovmse.collection import EpisodeAssembler, EpisodeReplayBuffer, RecurrentQPolicy, make_policy
from ovmse.collection.acting import WORKER_SEED_STRIDE, primed_env, worker_policy
from ovmse.datasets.stats import episode_stats
from ovmse.envs import get_map
from ovmse.exploration import LinearSchedule, make_exploration
from ovmse.nets import RNNAgent


# The worker factories below return *nested* functions on purpose: cloudpickle (which TorchRL
# uses to send them to the spawned workers) pickles those by value, with references only to
# what they call (ovmse.envs, ovmse.collection, ...). A module-level function of this module
# would be pickled by reference, and unpickling it would import its module with all it imports
# in every worker (when this module lived in ``ovmse.training``, that was pytorch_lightning:
# about 5 s more start-up per process on 2 busy cores).


def _worker_env_fn(map_name: str, num_envs: int, seed: int, device: str, env_options: dict, hidden_dim: int):
    """Env factory of one collector worker: ``num_envs`` battles with the recurrent-state primers."""

    def make_worker_env():
        return primed_env(map_name, num_envs, hidden_dim, seed=seed, device=device, env_options=env_options)

    return make_worker_env


def _worker_policy_fn(input_dim: int, n_actions: int, hidden_dim: int, exploration: str, epsilon: float,
                      seed: int, device: str):
    """Policy factory of one collector worker (:func:`~ovmse.collection.acting.worker_policy`)."""

    def make_worker_policy():
        return worker_policy(input_dim, n_actions, hidden_dim, exploration, epsilon, seed, device)

    return make_worker_policy


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
        num_workers: collector processes. 1 (default): one in-process TorchRL ``Collector``
            over all ``num_envs`` battles. ``W > 1``: a TorchRL ``MultiSyncCollector`` with W
            spawned processes, each running its own batched env of ``num_envs // W``
            battles (``num_envs`` must be divisible by W) seeded ``seed + 1000 * w`` (its
            ε generator ``seed + 1000 * w + 1``), one torch thread each. Every
            :meth:`collect` first pushes the current agent weights and ε (a buffer of the
            exploration module) to the workers with ``update_policy_weights_()``, so each
            batch is collected with the latest learner weights. The workers' ``[b, F]``
            batches are stacked and flattened to ``[num_envs, F]`` in worker order (env
            index ``w * (num_envs // W) + b``), the same layout every batch, as the
            :class:`~ovmse.collection.EpisodeAssembler` needs.
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
        num_workers: int = 1,
    ) -> None:
        num_workers = int(num_workers)
        if num_workers < 1:
            raise ValueError(f"collector num_workers must be >= 1, got {num_workers}")
        if num_envs % num_workers:
            raise ValueError(
                f"num_envs={num_envs} is not divisible by collector num_workers={num_workers}: "
                f"every worker process runs num_envs // num_workers battles"
            )
        self.num_envs = int(num_envs)
        self.num_workers = num_workers
        self.epsilon = epsilon
        self.replay = replay
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.exploration = make_exploration(exploration, epsilon=epsilon(0), generator=generator)
        if num_workers == 1:
            self.spec = get_map(map_name)
            self.env = primed_env(map_name, num_envs, agent.hidden_dim, seed=seed, device=device,
                                  env_options=env_options)
            # ε's buffer on the device too: TorchRL acts with a copy of a policy that has a tensor
            # off the collector's device, and set_epsilon would no longer reach that copy.
            self.exploration.to(device)
            self.policy = make_policy(self.env, agent, self.exploration)
            # The device named: left unset, TorchRL stores with no device and rebuilds every step's
            # TensorDict on the env's device (`carrier.to(env_device)`, about 0.1 ms per step call).
            # No trajectory ids: the EpisodeAssembler cuts episodes at the done flags, and
            # TorchRL updates the ids at every step (a few TensorDict operations per step call).
            self.collector = Collector(
                self.env, self.policy, frames_per_batch=num_envs * steps_per_env, total_frames=-1,
                device=device, auto_register_policy_transforms=False, track_traj_ids=False,
            )
            if self.collector.policy is not self.policy:
                raise RuntimeError(
                    f"TorchRL's collector acts with a copy of the policy (a parameter or buffer is not on "
                    f"{device}; the agent's are on {next(agent.parameters()).device}): the learner's updates and ε "
                    "would not reach it. Put the agent on the collection device.")
        else:
            self.spec = get_map(map_name)
            self.env = None  # each worker builds its own
            self.policy = self._learner_policy(agent, self.spec, self.exploration)
            per_worker = num_envs // num_workers
            dev = str(torch.device(device))
            env_fns = [
                _worker_env_fn(map_name, per_worker, seed + WORKER_SEED_STRIDE * w, dev, dict(env_options or {}),
                               agent.hidden_dim)
                for w in range(num_workers)
            ]
            policy_fns = [
                _worker_policy_fn(agent.input_dim, agent.n_actions, agent.hidden_dim, exploration, epsilon(0),
                                  seed + WORKER_SEED_STRIDE * w + 1, dev)
                for w in range(num_workers)
            ]
            self.collector = MultiSyncCollector(
                env_fns,
                self.policy,  # main-process copy: only the source of the synced weights
                policy_factory=policy_fns,  # what the workers act with (own ε generator each)
                frames_per_batch=num_envs * steps_per_env,
                total_frames=-1,
                cat_results="stack",
                num_threads=torch.get_num_threads(),  # leave this process's thread count alone
                num_sub_threads=1,
                auto_register_policy_transforms=False,
            )
        self.assembler = EpisodeAssembler(self.spec.episode_limit)
        self._batches = iter(self.collector)

    @staticmethod
    def _learner_policy(agent: RNNAgent, spec, exploration) -> RecurrentQPolicy:
        """The main-process policy (the learner's agent + this exploration module), checked
        against the map's dims (there is no env in this process to run ``make_policy`` on)."""
        expected = spec.obs_dim + spec.n_actions + spec.n_agents
        if agent.input_dim != expected or agent.n_actions != spec.n_actions:
            raise ValueError(
                f"agent (input_dim={agent.input_dim}, n_actions={agent.n_actions}) does not fit map {spec.name} "
                f"(expects input_dim={expected}, n_actions={spec.n_actions})"
            )
        return RecurrentQPolicy(agent, exploration)

    def _next_batch(self) -> TensorDictBase:
        """One collector batch as ``[num_envs, frames]``."""
        if self.num_workers == 1:
            return next(self._batches)
        # Workers act with the learner's current weights and ε: copy them into the shared
        # buffers and wait until every worker has applied them (SharedMemWeightSyncScheme, sync).
        self.collector.update_policy_weights_()
        batch = next(self._batches)  # [W, num_envs // W, F], stacked in worker order
        batch.names = None
        return batch.reshape(self.num_envs, -1)

    @torch.no_grad()
    def collect(self, env_steps: int) -> dict[str, float]:
        """Collect one batch with ε for ``env_steps`` (steps done so far); return ``collect/`` stats.

        The returned dict holds ``env_steps`` and ``episodes`` (the increments), and the
        exploratory statistics of the episodes completed in this batch.
        """
        self.exploration.set_epsilon(self.epsilon(env_steps))
        start = time.perf_counter()
        batch = self._next_batch()
        seconds = time.perf_counter() - start
        episodes = self.assembler.add(batch)
        self.replay.extend(episodes)
        return collect_stats(batch, episodes, seconds, self.exploration.epsilon)

    def close(self) -> None:
        self.collector.shutdown()


def collect_stats(batch: TensorDictBase, episodes: TensorDictBase | None, seconds: float,
                  epsilon: float) -> dict[str, float]:
    """What one collection batch adds and its ``collect/`` statistics: ``env_steps`` and
    ``episodes`` (increments), ε, share of agent-steps that explored, speed, and the return,
    win rate and length of the episodes the batch completed (exploratory, not evaluation)."""
    stats = {
        "env_steps": batch.numel(),
        "episodes": 0 if episodes is None else episodes.shape[0],
        "train/epsilon": epsilon,  # the schedule value (a training setting, not a statistic)
        "collect/explored_fraction": batch.get(("agents", "explored")).float().mean().item(),
        "collect/env_steps_per_second": batch.numel() / max(seconds, 1e-9),
    }
    if episodes is not None:
        ep = episode_stats(episodes)
        stats.update({
            "collect/return": ep["return"].mean().item(),
            "collect/win_rate": ep["won"].float().mean().item(),
            "collect/episode_length": ep["length"].float().mean().item(),
        })
    return stats

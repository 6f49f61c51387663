"""Env workers in other processes or on other machines: TorchRL's ``DistributedCollector``.

:class:`DistributedEnvWorkers` runs ``num_workers`` collector processes (each one
batched simulator env of ``envs_per_worker`` battles and its own copy of the
exploration policy) connected to this process -- the learner -- by
``torch.distributed`` (backend ``gloo`` for CPU workers; TCP rendezvous at
``MASTER_ADDR:tcp_port``). It is TorchRL's
:class:`torchrl.collectors.distributed.DistributedCollector` in *synchronous* mode with
``update_after_each_batch=True``: before every batch the learner pushes its current
agent weights and ε (a buffer of the exploration module) to every worker, then each
worker collects ``envs_per_worker x steps_per_env`` steps and sends them back. So a
batch is always collected with the weights of the latest learner update (no policy
lag), and the workers never run ahead of the learner.

Batches come back as ``[num_workers * envs_per_worker, steps_per_env]`` (worker-major
env index ``w * envs_per_worker + b``), the same layout every batch, which is what
:class:`~ovmse.collection.EpisodeAssembler` needs to stitch episodes cut between batches.
:meth:`DistributedEnvWorkers.collect` has the same interface as
:meth:`ovmse.collection.online.OnlineCollection.collect` (ε from the schedule,
complete episodes into ``replay``, ``collect/`` statistics).

Launchers (TorchRL's names):

* ``"mp"``: worker processes on this machine (what the tests use: one machine,
  localhost TCP, gloo);
* ``"submitit"``: one SLURM job per worker, submitted from the learner with the
  ``submitit`` package (``slurm_kwargs``; not installed here, untested);
* ``"submitit_delayed"``: the workers are started by you (``srun``, ssh, a job array)
  with ``scripts/distributed_env_worker.py``, and the learner waits for them at the TCP
  rendezvous (see ``docs/scaling.md``).

Seeds: worker ``w`` seeds its env with ``seed + 1000 * w`` and its exploration
generator with ``seed + 1000 * w + 1`` (the convention of
``OnlineCollection(num_workers=...)``).

Limits (TorchRL 0.14.1): the learner process joins the *default* ``torch.distributed``
process group as rank 0 of ``num_workers + 1``, so it cannot at the same time be a
rank of a Lightning DDP learner (``trainer=ddp``), which needs the default group too.
TorchRL also builds one worker-0 env and policy in the learner process at start-up and
collects one batch with it to learn the batch layout.
"""

from __future__ import annotations

import functools
import os
import time

import torch
from tensordict import TensorDictBase
from torchrl.collectors.distributed import DistributedCollector
from torchrl.data.utils import CloudpickleWrapper

from ovmse.collection import EpisodeAssembler, EpisodeReplayBuffer, RecurrentQPolicy
from ovmse.collection.acting import WORKER_SEED_STRIDE, primed_env, worker_policy
from ovmse.envs import get_map
from ovmse.exploration import LinearSchedule, make_exploration
from ovmse.nets import RNNAgent
from ovmse.collection.online import collect_stats


# The endless collectors of TorchRL 0.14.1's distributed module stop at once with
# total_frames=-1 (``while total_frames < self.total_frames``); use a budget never reached.
_ENDLESS = 2**62


class _DistributedCollector(DistributedCollector):
    """TorchRL's ``DistributedCollector`` with one fix for workers started by hand.

    TorchRL 0.14.1's ``submitit_delayed`` launcher ships ``self.policy`` to the workers
    together with ``policy_factory``, and the workers' ``Collector`` then raises
    ``TypeError: policy_factory cannot be used with policy argument.``; the ``mp`` and
    ``submitit`` launchers send the policy only when there is no factory
    (``self._policy_to_send``). This does the same for ``submitit_delayed``.
    """

    def _init_worker_dist_submitit_delayed(self):
        self._init_master_dist(self.num_workers + 1, self.backend)
        objects = [None] + [
            {
                "sync": self._sync,
                "collector_class": self.collector_class,
                "num_workers": self.num_workers_per_collector,
                "env_make": CloudpickleWrapper(self.env_constructors[i]),
                "policy": self._policy_to_send,
                "policy_factory": self.policy_factory[i],
                "frames_per_batch": self._frames_per_batch_corrected,
                "collector_kwargs": self.collector_kwargs[i],
                "weight_sync_schemes": self._weight_sync_schemes,
            }
            for i in range(self.num_workers)
        ]
        torch.distributed.scatter_object_list([None], objects, src=0)


def _set_worker_threads(main_pid: int, num_threads: int | None) -> None:
    # TorchRL also calls the worker-0 factories in the learner process (to learn the batch
    # layout): leave that process's thread count alone.
    if num_threads is not None and os.getpid() != main_pid:
        torch.set_num_threads(int(num_threads))


def _worker_env(map_name: str, num_envs: int, seed: int, device: str, env_options: dict, hidden_dim: int,
                main_pid: int, num_threads: int | None):
    """Env factory of one worker (module level, so it pickles into other processes)."""
    _set_worker_threads(main_pid, num_threads)
    return primed_env(map_name, num_envs, hidden_dim, seed=seed, device=device, env_options=env_options)


def _worker_policy(input_dim: int, n_actions: int, hidden_dim: int, exploration: str, epsilon: float,
                   seed: int, device: str, main_pid: int, num_threads: int | None) -> RecurrentQPolicy:
    """Policy factory of one worker (:func:`~ovmse.collection.acting.worker_policy`)."""
    _set_worker_threads(main_pid, num_threads)
    return worker_policy(input_dim, n_actions, hidden_dim, exploration, epsilon, seed, device)


class DistributedEnvWorkers:
    """Learner side of distributed env workers (see the module docstring).

    Args:
        agent: the learner's agent network; its weights (and ε) are pushed to the
            workers before every batch.
        map_name, env_options: the simulator map and options (``configs/env``).
        num_workers: collector processes (one ``torch.distributed`` rank each, ranks 1..W).
        envs_per_worker: battles in each worker's batched env.
        steps_per_env: env steps per battle per batch.
        replay: where :meth:`collect` puts complete episodes (``None``: only
            :meth:`next_batch` / :meth:`episodes` are used).
        exploration: ``"epsilon_greedy"``, ``"sequential"`` or ``"decentralised_sequential"``.
        epsilon: a :class:`~ovmse.exploration.LinearSchedule` (for :meth:`collect`) or a
            constant ε.
        seed: worker ``w`` uses ``seed + 1000 w`` (env) and ``seed + 1000 w + 1`` (ε).
        device: device of the workers' env and policy.
        launcher: ``"mp"``, ``"submitit"`` or ``"submitit_delayed"`` (TorchRL's launchers).
        backend: ``torch.distributed`` backend (``"gloo"``).
        tcp_port: rendezvous port on the learner (TorchRL also uses the next two ports).
        worker_threads: torch threads per worker process (``None``: torch's default).
        slurm_kwargs: submitit executor parameters (``launcher="submitit"``).
    """

    def __init__(
        self,
        agent: RNNAgent,
        map_name: str,
        *,
        num_workers: int,
        envs_per_worker: int,
        steps_per_env: int = 32,
        replay: EpisodeReplayBuffer | None = None,
        exploration: str = "epsilon_greedy",
        epsilon: LinearSchedule | float = 1.0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        env_options: dict | None = None,
        launcher: str = "mp",
        backend: str = "gloo",
        tcp_port: int | None = None,
        worker_threads: int | None = 1,
        slurm_kwargs: dict | None = None,
    ) -> None:
        if num_workers < 1 or envs_per_worker < 1 or steps_per_env < 1:
            raise ValueError(f"need num_workers, envs_per_worker, steps_per_env >= 1, got "
                             f"{num_workers}, {envs_per_worker}, {steps_per_env}")
        self.spec = get_map(map_name)
        self.num_workers, self.envs_per_worker = int(num_workers), int(envs_per_worker)
        self.num_envs = self.num_workers * self.envs_per_worker
        self.steps_per_env = int(steps_per_env)
        self.replay = replay
        self.epsilon = epsilon if isinstance(epsilon, LinearSchedule) else None
        eps0 = self.epsilon(0) if self.epsilon is not None else float(epsilon)
        dev = str(torch.device(device))
        # Learner-side copy of the policy: the source of the weights (the agent itself, and the
        # exploration module whose ε buffer travels with them); it never acts.
        self.exploration = make_exploration(exploration, epsilon=eps0,
                                            generator=torch.Generator(device=dev).manual_seed(seed + 1))
        self.policy = RecurrentQPolicy(agent, self.exploration)
        pid = os.getpid()
        env_fns = [
            functools.partial(_worker_env, map_name, self.envs_per_worker, seed + WORKER_SEED_STRIDE * w, dev,
                              dict(env_options or {}), agent.hidden_dim, pid, worker_threads)
            for w in range(self.num_workers)
        ]
        policy_fns = [
            functools.partial(_worker_policy, agent.input_dim, agent.n_actions, agent.hidden_dim, exploration,
                              eps0, seed + WORKER_SEED_STRIDE * w + 1, dev, pid, worker_threads)
            for w in range(self.num_workers)
        ]
        self.collector = _DistributedCollector(
            env_fns,
            self.policy,
            policy_factory=policy_fns,
            frames_per_batch=self.num_envs * self.steps_per_env,
            total_frames=_ENDLESS,
            collector_class="single",
            sync=True,
            update_after_each_batch=True,
            launcher=launcher,
            backend=backend,
            tcp_port=tcp_port,
            slurm_kwargs=slurm_kwargs,
            collector_kwargs={"auto_register_policy_transforms": False},
        )
        self.assembler = EpisodeAssembler(self.spec.episode_limit)
        self._batches = iter(self.collector)
        self.batches = 0

    def next_batch(self) -> TensorDictBase:
        """One batch ``[num_envs, steps_per_env]``, collected by all workers with the current
        weights and ε of the learner (pushed before the workers start)."""
        batch = next(self._batches)  # [W, envs_per_worker, steps], worker-major
        self.batches += 1
        return batch.reshape(self.num_envs, self.steps_per_env)

    def episodes(self, batch: TensorDictBase) -> TensorDictBase | None:
        """The complete episodes ``[E, T_max + 1]`` that ``batch`` finished (``None`` if none)."""
        return self.assembler.add(batch)

    def set_epsilon(self, epsilon: float) -> None:
        """ε for the next batches (sent with the weights)."""
        self.exploration.set_epsilon(epsilon)

    @torch.no_grad()
    def collect(self, env_steps: int) -> dict[str, float]:
        """Like :meth:`OnlineCollection.collect`: set ε for ``env_steps``, collect one batch,
        put its complete episodes into ``replay`` and return the increments
        (``env_steps``, ``episodes``) and ``collect/`` statistics."""
        if self.epsilon is not None:
            self.set_epsilon(self.epsilon(env_steps))
        start = time.perf_counter()
        batch = self.next_batch()
        seconds = time.perf_counter() - start
        episodes = self.episodes(batch)
        if self.replay is not None:
            self.replay.extend(episodes)
        return collect_stats(batch, episodes, seconds, self.exploration.epsilon)

    def close(self) -> None:
        """Stop the workers (each acknowledges) and leave the process group."""
        # First end the workers' weight-receiver threads (TorchRL's "stop" instruction on the
        # weight-sync store): otherwise each worker waits 5 s for its thread at shutdown, and a
        # thread still blocked on the learner's store when the learner exits aborts its process.
        for scheme in (getattr(self.collector, "_weight_sync_schemes", None) or {}).values():
            scheme._send_instruction("stop")
        self.collector.shutdown()

    def __enter__(self) -> "DistributedEnvWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


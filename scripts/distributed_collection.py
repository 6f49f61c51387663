#!/usr/bin/env python
"""Distributed env workers (TorchRL ``DistributedCollector``, torch.distributed): learner and worker sides.

One machine, workers started by the learner (multiprocessing)::

    python scripts/distributed_collection.py learner --num-workers 2 --envs-per-worker 8 --batches 20

Workers started by you, on any machines that reach the learner by TCP (``submitit_delayed``
launcher; ``--world-size`` = workers + 1, worker ranks 1..W, ``MASTER_ADDR`` = the
learner's address as ``socket.gethostbyname(socket.gethostname())`` gives it there)::

    # learner machine
    python scripts/distributed_collection.py learner --launcher submitit_delayed --num-workers 2 --tcp-port 10003
    # each worker machine (or srun task), rank r in 1..2
    python scripts/distributed_collection.py worker --rank r --world-size 3 --master-addr <learner> --master-port 10003

The learner here only collects (``--batches`` batches with the initial network, ε = 1) and
prints env steps per second and complete episodes: a smoke test and throughput probe of the
transport, not training. For use inside a learner see
:class:`ovmse.collection.distributed.DistributedEnvWorkers` and docs/scaling.md.
"""

from __future__ import annotations

import argparse
import time


def learner(args: argparse.Namespace) -> None:
    import torch

    from ovmse.envs import get_map
    from ovmse.nets import RNNAgent
    from ovmse.collection.distributed import DistributedEnvWorkers

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    spec = get_map(args.map)
    agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, 64)
    start = time.perf_counter()
    workers = DistributedEnvWorkers(
        agent, args.map, num_workers=args.num_workers, envs_per_worker=args.envs_per_worker,
        steps_per_env=args.steps_per_env, epsilon=1.0, seed=args.seed, launcher=args.launcher,
        tcp_port=args.tcp_port,
    )
    print(f"{args.num_workers} workers connected in {time.perf_counter() - start:.1f} s", flush=True)
    try:
        steps = episodes = 0
        start = time.perf_counter()
        for _ in range(args.batches):
            stats = workers.collect(0)
            steps += stats["env_steps"]
            episodes += stats["episodes"]
        seconds = time.perf_counter() - start
        print(f"{steps} env steps in {seconds:.2f} s ({steps / seconds:.0f} env steps/s), "
              f"{episodes} complete episodes", flush=True)
    finally:
        workers.close()


def worker(args: argparse.Namespace) -> None:
    # TorchRL's entry point for workers started outside the learner (launcher "submitit_delayed"):
    # join the process group, receive the env / policy factories, collect on request.
    from torchrl.collectors.distributed.generic import _distributed_init_delayed

    _distributed_init_delayed(args.rank, args.backend, args.master_addr, args.master_port, args.world_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    lp = sub.add_parser("learner", help="start (or wait for) the workers and collect batches")
    lp.add_argument("--map", default="3m")
    lp.add_argument("--num-workers", type=int, default=2)
    lp.add_argument("--envs-per-worker", type=int, default=8)
    lp.add_argument("--steps-per-env", type=int, default=32)
    lp.add_argument("--batches", type=int, default=10)
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--launcher", default="mp", choices=["mp", "submitit", "submitit_delayed"])
    lp.add_argument("--tcp-port", type=int, default=10003)
    wp = sub.add_parser("worker", help="a worker started by hand (learner launcher submitit_delayed)")
    wp.add_argument("--rank", type=int, required=True, help="1..W")
    wp.add_argument("--world-size", type=int, required=True, help="W + 1")
    wp.add_argument("--master-addr", required=True)
    wp.add_argument("--master-port", type=int, default=10003)
    wp.add_argument("--backend", default="gloo")
    args = parser.parse_args()
    (learner if args.role == "learner" else worker)(args)


if __name__ == "__main__":
    main()

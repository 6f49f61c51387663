#!/usr/bin/env python
"""One measurement of benchmarks/train_throughput.py, in a fresh process, on whichever code
``ovmse`` is imported from (PYTHONPATH picks the tree: this checkout or the baseline's git
worktree). Uses only APIs both trees have (or, where an API moved, each tree's own), so the same lines
time the old and the new path.
Prints one JSON object as its last line.

    python benchmarks/throughput_worker.py update --episodes F --threads 2 --cql macql
    python benchmarks/throughput_worker.py collect --map 2s3z --num-envs 8 --steps 32
    python benchmarks/throughput_worker.py record --map 2s3z --episodes-out F --n 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_costs import median_seconds  # noqa: E402  one timing helper for the benchmarks


def _sources() -> dict:
    import data_modules
    import ovmse

    return {"ovmse": ovmse.__file__, "data_modules": data_modules.__file__}


def _online_collection():
    """The collector class, wherever this tree keeps it (it moved in issue 18)."""
    try:
        from ovmse.collection.online import OnlineCollection
    except ImportError:  # the baseline tree
        from ovmse.training.collection_driver import OnlineCollection
    return OnlineCollection


def record(args) -> dict:
    """``--n`` random-play episodes of ``--map`` (ε = 1) saved to ``--episodes-out``: the batch source
    both trees' update measurements read, so they time the very same episodes."""
    from ovmse.collection import EpisodeReplayBuffer
    from ovmse.envs import get_map
    from ovmse.exploration import LinearSchedule
    from ovmse.nets import RNNAgent

    OnlineCollection = _online_collection()

    spec = get_map(args.map)
    torch.manual_seed(args.seed)
    agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, 64)
    replay = EpisodeReplayBuffer(args.n + 64)
    coll = OnlineCollection(agent, spec.name, 32, replay, epsilon=LinearSchedule(1.0, 1.0, 1), steps_per_env=8,
                            seed=args.seed)
    while len(replay) < args.n:
        coll.collect(0)
    coll.close()
    episodes = replay.sample(args.n)  # with replacement is fine: a batch source
    torch.save(episodes.to_dict(), args.episodes_out)
    lengths = episodes["filled"].squeeze(-1).sum(1) - 1
    return {"episodes": args.n, "rows": int(episodes.shape[1]), "length_min": int(lengths.min()),
            "length_mean": float(lengths.float().mean()), "length_max": int(lengths.max())}


def _module_and_data(args):
    from tensordict import TensorDict

    from data_modules import ReplayDataModule
    from ovmse.collection import EpisodeReplayBuffer
    from ovmse.envs import get_map
    from ovmse.training.qmix_module import QMixModule

    spec = get_map(args.map)
    stored = torch.load(args.episodes, weights_only=True)
    episodes = TensorDict(stored, batch_size=stored["filled"].shape[:2])
    buf = EpisodeReplayBuffer(episodes.shape[0] + 1, generator=torch.Generator().manual_seed(args.seed))
    buf.extend(episodes)
    data = ReplayDataModule(online=buf, batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    cql = None if args.cql == "none" else args.cql
    try:
        from ovmse.losses.objective import CQLSettings, ObjectiveSettings
    except ImportError:  # a tree from before issue 18's one objective (e.g. the baseline a860934)
        objective = {"cql": cql, "cql_alpha": 0.05 if cql else 0.0}
    else:
        objective = {"objective": ObjectiveSettings(cql=CQLSettings(cql, alpha=0.05) if cql else None)}
    module = QMixModule(spec.obs_dim, spec.state_dim, spec.n_agents, spec.n_actions, map_name=spec.name, **objective)
    if getattr(getattr(module, "objective", None), "needs_behaviour_pretraining", False):
        # CFCQL trains its behaviour net once, before the Q updates (the CFCQL repo's run.py):
        # the update timed is one of those after it, with the behaviour net frozen.
        module.objective.behaviour_pretrained.fill_(True)
    return module, data


def update(args) -> dict:
    """Median ms of one update (draw the batch, loss, backward, clip, Adam) after warm-up, its FLOPs
    and, with ``--roofline``, the time of the same matmuls (shapes recorded from one update)
    replayed on random tensors: what the update would cost if it were only its matmuls."""
    torch.set_num_threads(args.threads)
    allocator = "unchanged"
    if args.malloc_keep_freed == "true":
        try:
            from ovmse.training.allocator import keep_freed_memory
        except ImportError:  # a tree from before it (e.g. the baseline a860934)
            allocator = "absent in this tree"
        else:
            allocator = keep_freed_memory()
    module, data = _module_and_data(args)
    opt = module.configure_optimizers()

    def one_update(batch=None):
        batch = data.sample() if batch is None else batch
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        module.configure_gradient_clipping(opt, 10.0)
        opt.step()
        return batch

    for _ in range(args.warmup):
        one_update()
    times, rows = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        batch = one_update()
        times.append(time.perf_counter() - start)
        rows.append(int(batch.shape[1]))
    out = {"ms_per_update": 1000 * statistics.median(times), "ms_all": [1000 * t for t in times],
           "batch_rows": statistics.median(rows), "threads": args.threads, "cql": args.cql,
           "malloc_keep_freed": allocator}
    if args.roofline:
        out.update(roofline(one_update, data.sample(), args.repeats))
    return out


def roofline(one_update, batch, repeats: int) -> dict:
    """The update's matmuls (every mm/addmm/bmm/baddbmm, same shapes, same order) replayed alone on
    random tensors: its time on this machine if it were only its matmuls. Also its transcendental
    pointwise calls (sigmoid, tanh, exp, log, elu, softmax: each a vector exp or log per element)
    replayed the same way: on a CPU whose vector exp is slow they are a floor of their own."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    # In-place and out= forms count too (the packed GRU adds each step's matmul in place).
    kinds = {aten.mm.default: "mm", aten.addmm.default: "addmm", aten.bmm.default: "bmm",
             aten.baddbmm.default: "baddbmm", aten.addmm_.default: "addmm_", aten.baddbmm_.default: "baddbmm_",
             aten.mm.out: "mm", aten.addmm.out: "addmm", aten.bmm.out: "bmm", aten.baddbmm.out: "baddbmm"}
    transcendental = {aten.sigmoid.default: torch.sigmoid, aten.tanh.default: torch.tanh, aten.exp.default: torch.exp,
                      aten.log.default: torch.log, aten.elu.default: torch.nn.functional.elu,
                      aten.sigmoid_.default: torch.sigmoid, aten.tanh_.default: torch.tanh, aten.exp_.default: torch.exp,
                      aten.log_.default: torch.log,
                      aten._softmax.default: lambda x: torch.softmax(x, -1),
                      aten._log_softmax.default: lambda x: torch.log_softmax(x, -1),
                      aten.logsumexp.default: lambda x: torch.logsumexp(x, -1)}
    recorded, pointwise = [], []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in kinds:
                recorded.append((kinds[func], [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
            elif func in transcendental:
                pointwise.append((transcendental[func], tuple(args[0].shape)))
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False)
    with counter:
        one_update(batch)
    with Record():
        one_update(batch)
    ops = []
    for kind, shapes in recorded:
        tensors = [torch.randn(s) for s in shapes]
        # An out= call replays as its plain form: it allocates its result, a little slower.
        ops.append((getattr(torch.Tensor if kind.endswith("_") else torch, kind), tensors))
    pointwise_ops = [(fn, (torch.randn(shape),)) for fn, shape in pointwise]
    matmul_flops = in_place_flops = 0
    for kind, shapes in recorded:
        a, b = shapes[-2], shapes[-1]
        batch_n = a[0] if len(a) == 3 else 1
        matmul_flops += 2 * batch_n * a[-2] * a[-1] * b[-1]
        if kind.endswith("_"):  # torch's FlopCounterMode has no formula for the in-place forms
            in_place_flops += 2 * batch_n * a[-2] * a[-1] * b[-1]

    def timed(calls) -> float:
        def replay():
            for fn, tensors in calls:
                fn(*tensors)

        return 1000 * median_seconds(replay, max(repeats, 3))

    return {"flops": int(counter.get_total_flops()) + in_place_flops, "matmul_flops": int(matmul_flops),
            "matmul_ops": len(ops),
            "roofline_ms": timed(ops), "transcendental_ops": len(pointwise_ops),
            "transcendental_elements": sum(t[0].numel() for _, t in pointwise_ops),
            "transcendental_ms": timed(pointwise_ops)}


def collect(args) -> dict:
    """Env steps per second of ``OnlineCollection.collect`` (simulator + acting policy + episode
    assembly), ``--num-envs`` battles x ``--steps`` steps per call, after a warm-up call."""
    torch.set_num_threads(args.threads)
    from ovmse.collection import EpisodeReplayBuffer
    from ovmse.envs import get_map
    from ovmse.exploration import LinearSchedule
    from ovmse.nets import RNNAgent

    OnlineCollection = _online_collection()

    spec = get_map(args.map)
    torch.manual_seed(args.seed)
    agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, 64)
    options = {"compile_step": True} if args.compile else None
    coll = OnlineCollection(agent, spec.name, args.num_envs, EpisodeReplayBuffer(4096),
                            epsilon=LinearSchedule(0.5, 0.5, 1), steps_per_env=args.steps, seed=args.seed,
                            env_options=options)
    if args.frozen_sim:
        _freeze_simulator(coll.env.base_env)
    start = time.perf_counter()
    coll.collect(0)  # warm-up (with --compile: the compilation)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        coll.collect(0)
        times.append(time.perf_counter() - start)
    coll.close()
    per_call = statistics.median(times) / args.steps  # one env.step of all battles, policy included
    return {"env_steps_per_second": args.num_envs / per_call, "ms_per_step_call": 1000 * per_call,
            "first_collect_s": first, "num_envs": args.num_envs, "steps": args.steps, "compile": args.compile,
            "frozen_sim": args.frozen_sim}


def _freeze_simulator(env) -> None:
    """Replace the battles' arithmetic (actions, physics, features) by its result at the first
    state, so a step call costs about only what surrounds the simulator: TorchRL's collector,
    the env's TensorDicts, the acting policy and the episode assembly. The reward rule still
    runs (it ends each battle at the episode limit)."""
    battle = env.battle
    features = env._features(battle, env.tables)
    battle.apply_actions = lambda action: None

    def count_the_step() -> None:  # the step counter is what ends a battle at its limit
        battle.steps += 1

    battle.advance = count_the_step
    env._features = lambda battle, tables: features
    if hasattr(env, "_step_math"):  # trees whose step math is one (compiled) function

        def frozen_step_math(action):
            count_the_step()
            return (env.rewards.outcome(), *features)

        env._step_math = frozen_step_math


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("record", "update", "collect"))
    p.add_argument("--map", default="2s3z")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", help="episodes file (update)")
    p.add_argument("--episodes-out", help="where record writes the episodes")
    p.add_argument("--n", type=int, default=256, help="episodes to record")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cql", choices=("none", "macql", "cfcql"), default="none")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--roofline", action="store_true")
    p.add_argument("--malloc-keep-freed", choices=("true", "false"), default="true",
                   help="update: ovmse.training.allocator.keep_freed_memory() first, as train.py does by default "
                        "(train.yaml malloc_keep_freed); a tree from before it has none to apply")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--calls", type=int, default=6)
    p.add_argument("--compile", action="store_true", help="collect: compile_step=True (new code only)")
    p.add_argument("--frozen-sim", action="store_true",
                   help="collect: the simulator's arithmetic replaced by its first result (the cost around it)")
    args = p.parse_args(argv)
    result = {"record": record, "update": update, "collect": collect}[args.what](args)
    result["sources"] = _sources()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

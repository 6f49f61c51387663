#!/usr/bin/env python
"""QMIX training throughput: the Lightning/TorchRL structure versus a minimal plain-PyTorch loop.

Two measurements, each comparing the project's structure ("lightning") with a loop written
in this file from plain tensors ("plain") that does the same math:

1. **Update cost** (ms per QMIX update, ``--batch-size`` episodes of ``--map``). A replay
   buffer is filled once with real episodes (random policy, ε = 1, via
   :class:`~ovmse.collection.online.OnlineCollection`). Then, interleaved over
   ``--repeats``:

   * lightning: ``pl.Trainer(max_steps=N, gradient_clip_val=10, logger=False, ...)`` fitting a
     :class:`~ovmse.training.QMixModule` with ``ReplayDataModule(online=replay)``;
   * plain: batches drawn by indexing pre-stacked episode tensors, the double-Q TD(λ) loss
     written inline (no ``QMixTDLoss``, no TensorDict), ``Adam`` + ``clip_grad_norm_(10)``.

   Both use the same networks (``ovmse.nets.RNNAgent`` / ``QMixer``, same sizes) and the same
   per-time-step unroll (``RNNAgent.unroll``). A third, informational path "plain_hoisted"
   (``--no-hoisted`` skips it) applies fc1 / fc2 to all time steps at once: it shows what
   the math itself could gain, which is not part of the structure's overhead. Time per
   update is measured between the ends of consecutive updates after ``--warmup-updates``
   (so it includes drawing the batch and every per-step hook); the ``Trainer`` start-up
   (construction + ``fit`` set-up) is reported separately. Before timing, the inline loss
   is checked against ``QMixTDLoss`` on one batch (same weights: same value and gradients).

2. **Whole online run** (env steps per second for ``--env-steps`` env steps: collection
   + updates, no evaluation, no logger), interleaved over ``--repeats``:

   * lightning: the pieces ``ovmse.phases.online.run`` builds (``OnlineCollection`` = TorchRL
     ``Collector`` + ``EpisodeAssembler`` + ``EpisodeReplayBuffer``, ``ReplayDataModule``,
     ``OnlineLoop`` with its ``CollectionSchedule`` and ``TargetSchedule``), minus evaluation,
     loggers and progress bar;
   * plain: the same env (``ovmse.envs.make_env``, stepped with its ``_step`` / ``_reset``
     directly), the same policy math (``RNNAgent`` step + ε-greedy written inline), a
     pre-allocated tensor episode buffer, one inline update per ``num_envs x steps_per_env``
     env steps, hard target copies every ``--target-update`` episodes.

   Both start with ``--batch-size`` warm-up episodes collected before the first update and
   use the same ε schedule (1.0 → 0.05 over 100k env steps).

Both paths cut every batch to its longest filled episode (``trim_to_filled`` / ``plain_cut``)
and make one update per collection call. Old vs new code paths: benchmarks/train_throughput.py.

Overhead = lightning time / plain time - 1 (medians over repeats); the target is <= 10 %.

    python benchmarks/lightning_overhead.py                 # defaults: 2s3z, batch 128, 3 repeats
    python benchmarks/lightning_overhead.py --quick         # tiny smoke settings (numbers not meaningful)
    python benchmarks/lightning_overhead.py --parts update  # only the update-cost part

Writes benchmarks/results/lightning_overhead.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ovmse.envs import get_map, make_env
from ovmse.nets import QMixer, RNNAgent
from ovmse.provenance import machine_info
from ovmse.training.update_ratio import UpdateRatio

ROOT = Path(__file__).resolve().parents[1]
TARGET_OVERHEAD = 0.10  # Lightning/TorchRL may cost at most 10 % over the plain loop.
GAMMA, TD_LAMBDA, LR, CLIP = 0.99, 0.6, 1e-3, 10.0
EPS_START, EPS_END, EPS_ANNEAL = 1.0, 0.05, 100_000


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quiet_lightning() -> None:
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


# ============================================================================ plain loop
class PlainQMix:
    """Online + target networks, Adam and the double-Q TD(λ) loss, with plain tensors only.

    ``hoist=False`` unrolls with ``RNNAgent.unroll`` (fc1 -> GRU -> fc2 per time step, the
    very ops ``QMixTDLoss`` runs), so a comparison with the Lightning path measures only the
    structure around the math. ``hoist=True`` applies fc1 / fc2 to all time steps at once
    (only the GRU cell stays in the time loop): same values, fewer and larger kernels.
    """

    def __init__(self, spec, hidden_dim: int, device: torch.device, seed: int, hoist: bool = False) -> None:
        torch.manual_seed(seed)
        self.hoist = hoist
        self.n_agents, self.n_actions = spec.n_agents, spec.n_actions
        self.agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, hidden_dim).to(device)
        self.mixer = QMixer(spec.state_dim, spec.n_agents, 32, 64).to(device)
        self.target_agent = RNNAgent(self.agent.input_dim, spec.n_actions, hidden_dim).to(device)
        self.target_mixer = QMixer(spec.state_dim, spec.n_agents, 32, 64).to(device)
        for p in list(self.target_agent.parameters()) + list(self.target_mixer.parameters()):
            p.requires_grad_(False)
        self.update_targets()
        self.params = list(self.agent.parameters()) + list(self.mixer.parameters())
        self.opt = torch.optim.Adam(self.params, lr=LR)
        self.eye = torch.eye(spec.n_agents, device=device)

    @torch.no_grad()
    def update_targets(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    def inputs(self, obs: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
        """obs [..., N, O], last_action [..., N] (-1 = none) -> [..., N, O + A + N]."""
        oh = F.one_hot(last_action.clamp(min=0), self.n_actions).to(obs.dtype) * (last_action >= 0).unsqueeze(-1)
        return torch.cat([obs, oh, self.eye.expand(*obs.shape[:-1], self.n_agents)], dim=-1)

    def unroll(self, agent: RNNAgent, x: torch.Tensor) -> torch.Tensor:
        if not self.hoist:
            return agent.unroll(x)
        B, T1, N, D = x.shape
        h = torch.zeros(B * N, agent.hidden_dim, device=x.device)
        x = F.relu(agent.fc1(x))  # all steps at once; only the GRU is sequential
        qs = []
        for t in range(T1):
            h = agent.rnn(x[:, t].reshape(B * N, -1), h)
            qs.append(h.view(B, N, -1))
        return agent.fc2(torch.stack(qs, 1))  # [B, T+1, N, A]

    def loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """b: obs [B,T+1,N,O], avail [B,T+1,N,A] bool, action [B,T+1,N], state [B,T+1,S],
        reward / terminated / filled [B,T+1] (float / float / bool)."""
        filled = b["filled"]
        T = filled.shape[1] - 1
        act = b["action"] * filled.unsqueeze(-1)  # unfilled rows -> action 0
        last = torch.cat([torch.full_like(act[:, :1], -1), act[:, :-1]], 1)
        x = self.inputs(b["obs"], last)
        q = self.unroll(self.agent, x)  # [B, T+1, N, A]
        chosen = q[:, :T].gather(-1, act[:, :T, :, None]).squeeze(-1)
        q_taken = self.mixer(chosen, b["state"][:, :T]).squeeze(-1)  # [B, T]
        with torch.no_grad():
            tq = self.unroll(self.target_agent, x)
            a_star = q.detach().masked_fill(~b["avail"], float("-inf")).argmax(-1)
            q_next = self.target_mixer(tq.gather(-1, a_star[..., None]).squeeze(-1), b["state"]).squeeze(-1)
            q_next = q_next * filled  # [B, T+1]
            mask = filled[:, 1:].float()
            term = b["terminated"][:, :T] * mask
            ended = torch.cat([torch.zeros_like(term[:, :1]), term[:, :-1].cumsum(1)], 1)
            mask = mask * (ended == 0)
            term = term * mask
            rew = b["reward"][:, :T] * mask
            nxt = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
            early = mask * (1 - nxt) * (1 - term)
            early[:, -1] = 0
            rew = rew + early * (TD_LAMBDA * GAMMA) * q_next[:, 1:]
            one_step = mask * (rew + (1 - TD_LAMBDA) * GAMMA * q_next[:, 1:] * (1 - term))
            ret = q_next[:, T] * (1 - term.sum(1))
            ys = []
            for t in range(T - 1, -1, -1):
                ret = TD_LAMBDA * GAMMA * ret + one_step[:, t]
                ys.append(ret)
            y = torch.stack(ys[::-1], 1)
        td = (q_taken - y) * mask
        return 0.5 * td.pow(2).sum() / mask.sum().clamp(min=1.0)

    def update(self, b: dict[str, torch.Tensor]) -> float:
        loss = self.loss(b)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()
        return loss


def plain_tensors(td) -> dict[str, torch.Tensor]:
    """Episode TensorDict [E, T+1] (EpisodeAssembler layout) -> dict of plain tensors."""
    return {
        "obs": td.get(("agents", "observation")).float(),
        "avail": td.get(("agents", "action_mask")).bool(),
        "action": td.get(("agents", "action")).long(),
        "state": td.get("state").float(),
        "reward": td.get("reward").squeeze(-1).float(),
        "terminated": td.get("terminated").squeeze(-1).float(),
        "filled": td.get("filled").squeeze(-1).bool(),
    }


def plain_cut(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch cut to its longest filled episode, as the project's ReplayDataModule cuts its batches."""
    rows = int(b["filled"].any(0).nonzero().max()) + 1
    return {k: v[:, :rows] for k, v in b.items()}


# ============================================================================ part 1: update cost
def collect_random_episodes(map_name: str, n: int, num_envs: int, device: torch.device, seed: int, hidden_dim: int):
    """>= n complete episodes (ε = 1) through the project's OnlineCollection; returns a TensorDict [E, T+1]."""
    from ovmse.collection import EpisodeReplayBuffer
    from ovmse.exploration import LinearSchedule
    from ovmse.collection.online import OnlineCollection

    spec = get_map(map_name)
    agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, hidden_dim).to(device)
    replay = EpisodeReplayBuffer(capacity=max(n * 4, 16), device=device)
    coll = OnlineCollection(agent, map_name, num_envs, replay, epsilon=LinearSchedule(1.0, 1.0, 1), steps_per_env=32,
                            seed=seed, device=device)
    steps = 0
    while len(replay) < n:
        steps += int(coll.collect(steps)["env_steps"])
    coll.close()
    return replay.buffer.storage.get(torch.arange(len(replay))).clone(), steps


class _StepClock:
    """Lightning callback: perf_counter at the end of every training batch."""

    def __new__(cls, device):
        import pytorch_lightning as pl

        class Clock(pl.Callback):
            def __init__(self):
                self.ends: list[float] = []
                self.first_start: float | None = None

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if self.first_start is None:
                    self.first_start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                _sync(device)
                self.ends.append(time.perf_counter())

        return Clock()


def time_lightning_updates(episodes, spec, args, device, seed: int) -> dict:
    import pytorch_lightning as pl

    from data_modules import ReplayDataModule
    from ovmse.collection import EpisodeReplayBuffer
    from ovmse.training import QMixModule

    torch.manual_seed(seed)
    replay = EpisodeReplayBuffer(capacity=episodes.shape[0], device=device)
    replay.extend(episodes)
    t0 = time.perf_counter()
    module = QMixModule(obs_dim=spec.obs_dim, state_dim=spec.state_dim, n_agents=spec.n_agents,
                        n_actions=spec.n_actions, map_name=spec.name, hidden_dim=args.hidden_dim).to(device)
    clock = _StepClock(device)
    trainer = pl.Trainer(accelerator=_accelerator(device), devices=1, max_steps=args.updates, max_epochs=-1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=CLIP,
                         callbacks=[clock])
    trainer.fit(module, datamodule=ReplayDataModule(online=replay, batch_size=args.batch_size))
    total = time.perf_counter() - t0
    return _update_stats(clock.ends, args.warmup_updates, total, startup=clock.first_start - t0)


def time_plain_updates(tensors, spec, args, device, seed: int, hoist: bool = False) -> dict:
    t0 = time.perf_counter()
    learner = PlainQMix(spec, args.hidden_dim, device, seed, hoist=hoist)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = tensors["obs"].shape[0]
    startup = time.perf_counter() - t0
    ends = []
    for _ in range(args.updates):
        idx = torch.randint(n, (args.batch_size,), generator=gen).to(device)
        learner.update(plain_cut({k: v[idx] for k, v in tensors.items()}))
        _sync(device)
        ends.append(time.perf_counter())
    total = time.perf_counter() - t0
    return _update_stats(ends, args.warmup_updates, total, startup=startup)


def _update_stats(ends: list[float], warmup: int, total: float, startup: float) -> dict:
    w = min(max(warmup, 1), len(ends) - 1)
    steady = (ends[-1] - ends[w - 1]) / (len(ends) - w)
    return {"updates": len(ends), "timed_updates": len(ends) - w, "ms_per_update": 1000 * steady,
            "startup_s": startup, "total_s": total}


def check_loss_equivalence(episodes, spec, args, device) -> dict:
    """The inline loss equals QMixTDLoss (value and gradients) on one batch with the same weights."""
    from ovmse.losses import QMixTDLoss

    plain = PlainQMix(spec, args.hidden_dim, device, seed=123, hoist=True)
    with torch.no_grad():  # make target != online so the double-Q path is exercised
        for p in plain.target_agent.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = QMixTDLoss(plain.agent, plain.mixer, plain.target_agent, plain.target_mixer, gamma=GAMMA, td_lambda=TD_LAMBDA)
    batch = episodes[: min(episodes.shape[0], args.batch_size)].to(device)
    l_ref = ref(batch)["loss"]
    g_ref = torch.autograd.grad(l_ref, plain.params)
    l_plain = plain.loss(plain_tensors(batch))
    g_plain = torch.autograd.grad(l_plain, plain.params)
    plain.hoist = False
    l_step = plain.loss(plain_tensors(batch))
    g_step = torch.autograd.grad(l_step, plain.params)
    gdiff_step = max(float((a - b).abs().max()) for a, b in zip(g_ref, g_step))
    l_step = float(l_step.detach())
    gdiff = max(float((a - b).abs().max()) for a, b in zip(g_ref, g_plain))
    gscale = max(float(a.abs().max()) for a in g_ref)
    l_ref, l_plain = float(l_ref.detach()), float(l_plain.detach())
    out = {"loss_qmix_td": l_ref, "loss_plain": l_step, "loss_plain_hoisted": l_plain,
           "loss_abs_diff": max(abs(l_ref - l_plain), abs(l_ref - l_step)),
           "grad_max_abs_diff": max(gdiff, gdiff_step), "grad_max_abs": gscale}
    out["ok"] = out["loss_abs_diff"] <= 1e-4 * max(1.0, abs(l_ref)) and gdiff <= 1e-4 * max(1.0, gscale)
    return out


def part_updates(args, device, spec) -> dict:
    need = max(args.batch_size, args.min_episodes)
    t0 = time.perf_counter()
    episodes, steps = collect_random_episodes(args.map, need, args.collect_envs, device, args.seed, args.hidden_dim)
    collect_s = time.perf_counter() - t0
    print(f"[update] collected {episodes.shape[0]} random episodes ({steps} env steps, {collect_s:.1f} s); "
          f"T+1 = {episodes.shape[1]}", flush=True)
    check = check_loss_equivalence(episodes, spec, args, device)
    print(f"[update] inline loss vs QMixTDLoss: |dloss| {check['loss_abs_diff']:.2e}, "
          f"max |dgrad| {check['grad_max_abs_diff']:.2e} -> {'OK' if check['ok'] else 'MISMATCH'}", flush=True)
    tensors = {k: v.to(device) for k, v in plain_tensors(episodes).items()}
    paths = ["lightning", "plain"] + (["plain_hoisted"] if args.hoisted else [])
    runs = {k: [] for k in paths}
    for r in range(args.repeats):
        order = paths if r % 2 == 0 else paths[::-1]
        for path in order:
            load = _load()
            if path == "lightning":
                res = time_lightning_updates(episodes, spec, args, device, seed=args.seed + r)
            else:
                res = time_plain_updates(tensors, spec, args, device, seed=args.seed + r,
                                         hoist=path == "plain_hoisted")
            res["load_average_1min"] = load
            runs[path].append(res)
            print(f"[update] repeat {r + 1}/{args.repeats} {path:>13}: {res['ms_per_update']:8.1f} ms/update "
                  f"(startup {res['startup_s']:.2f} s, total {res['total_s']:.1f} s, load {load})", flush=True)
    med = {k: statistics.median(x["ms_per_update"] for x in v) for k, v in runs.items()}
    return {"episodes": int(episodes.shape[0]), "episode_rows": int(episodes.shape[1]), "collect_env_steps": steps,
            "loss_check": check, "runs": runs, "median_ms_per_update": med,
            "median_startup_s": {k: statistics.median(x["startup_s"] for x in v) for k, v in runs.items()},
            "overhead": med["lightning"] / med["plain"] - 1.0}


# ============================================================================ part 2: whole online run
def run_lightning_online(args, device, spec, seed: int) -> dict:
    import pytorch_lightning as pl

    from data_modules import ReplayDataModule
    from ovmse.collection import EpisodeReplayBuffer
    from ovmse.exploration import LinearSchedule
    from ovmse.training import QMixModule
    from ovmse.training.collection_schedule import CollectionSchedule
    from ovmse.training.loops import OnlineLoop
    from ovmse.training.target_schedule import TargetSchedule
    from ovmse.collection.online import OnlineCollection

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    module = QMixModule(obs_dim=spec.obs_dim, state_dim=spec.state_dim, n_agents=spec.n_agents,
                        n_actions=spec.n_actions, map_name=spec.name, hidden_dim=args.hidden_dim).to(device)
    replay = EpisodeReplayBuffer(capacity=args.buffer_size, device=device)
    data = ReplayDataModule(online=replay, batch_size=args.batch_size, offline_fraction=0.0)
    collection = OnlineCollection(module.agent, spec.name, args.num_envs, replay,
                                  epsilon=LinearSchedule(EPS_START, EPS_END, EPS_ANNEAL),
                                  steps_per_env=args.steps_per_env, seed=seed, device=device)
    schedule = CollectionSchedule(collection, args.env_steps, warmup_episodes=args.batch_size, log_every=10**12,
                                  ratio=UpdateRatio("env_steps", args.num_envs * args.steps_per_env))
    trainer = pl.Trainer(accelerator=_accelerator(device), devices=1, max_epochs=1, max_steps=-1,
                         gradient_clip_val=CLIP, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[OnlineLoop(schedule, TargetSchedule(args.target_update), None)])
    build = time.perf_counter() - t0
    trainer.fit(module, datamodule=data)
    _sync(device)
    total = time.perf_counter() - t0
    # CollectionSchedule._start is set when the warm-up starts: the env-step clock of the real run.
    run_s = time.perf_counter() - schedule._start
    return {"env_steps": module.env_steps, "episodes": module.episodes, "updates": module.updates,
            "build_s": build, "run_s": run_s, "total_s": total,
            "env_steps_per_second": module.env_steps / run_s,
            "env_steps_per_second_incl_build": module.env_steps / total}


class PlainEpisodeBuffer:
    """Pre-allocated ring of padded episodes [capacity, T+1] plus per-env episodes in progress."""

    def __init__(self, capacity: int, num_envs: int, spec, device: torch.device) -> None:
        T1, N, A = spec.episode_limit + 1, spec.n_agents, spec.n_actions
        shapes = {"obs": ((N, spec.obs_dim), torch.float32), "avail": ((N, A), torch.bool),
                  "action": ((N,), torch.int64), "state": ((spec.state_dim,), torch.float32),
                  "reward": ((), torch.float32), "terminated": ((), torch.float32), "filled": ((), torch.bool)}
        self.store = {k: torch.zeros(capacity, T1, *s, dtype=d, device=device) for k, (s, d) in shapes.items()}
        self.cur = {k: torch.zeros(num_envs, T1, *s, dtype=d, device=device) for k, (s, d) in shapes.items()}
        self.t = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self.envs = torch.arange(num_envs, device=device)
        self.capacity, self.size, self.ptr, self.T1 = capacity, 0, 0, T1
        self.rows = torch.arange(T1, device=device)

    def write_step(self, obs, avail, state, action, reward, terminated) -> None:
        e, t = self.envs, self.t
        for k, v in (("obs", obs), ("avail", avail), ("state", state), ("action", action), ("reward", reward),
                     ("terminated", terminated)):
            self.cur[k][e, t] = v
        self.t += 1

    def finish(self, done: torch.Tensor, next_obs, next_avail, next_state) -> int:
        """Close the episodes of envs with ``done`` (final observation row), move them to the ring."""
        idx = done.nonzero().flatten()
        k = int(idx.numel())
        if k == 0:
            return 0
        t = self.t[idx]
        self.cur["obs"][idx, t] = next_obs[idx]
        self.cur["avail"][idx, t] = next_avail[idx]
        self.cur["state"][idx, t] = next_state[idx]
        self.cur["filled"][idx] = self.rows[None, :] <= t[:, None]
        slots = (self.ptr + torch.arange(k, device=idx.device)) % self.capacity
        for key, v in self.cur.items():
            self.store[key][slots] = v[idx]
            v[idx] = 0
        self.t[idx] = 0
        self.ptr = (self.ptr + k) % self.capacity
        self.size = min(self.size + k, self.capacity)
        return k

    def sample(self, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), generator=gen).to(self.rows.device)
        return plain_cut({k: v[idx] for k, v in self.store.items()})


def run_plain_online(args, device, spec, seed: int) -> dict:
    t0 = time.perf_counter()
    learner = PlainQMix(spec, args.hidden_dim, device, seed)
    env = make_env(spec.name, args.num_envs, seed=seed, device=device)
    buf = PlainEpisodeBuffer(args.buffer_size, args.num_envs, spec, device)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    dgen = torch.Generator(device=device).manual_seed(seed + 2)
    E, N = args.num_envs, spec.n_agents
    build = time.perf_counter() - t0
    t_run = time.perf_counter()

    td = env._reset(None)
    obs, avail, state = td.get(("agents", "observation")), td.get(("agents", "action_mask")), td.get("state")
    hidden = torch.zeros(E, N, args.hidden_dim, device=device)
    last = torch.full((E, N), -1, dtype=torch.int64, device=device)
    steps = episodes = updates = last_target = 0

    @torch.no_grad()
    def collect_batch() -> None:
        nonlocal obs, avail, state, hidden, last, steps, episodes
        eps = EPS_START + (EPS_END - EPS_START) * min(steps / EPS_ANNEAL, 1.0)
        for _ in range(args.steps_per_env):
            q, hidden = learner.agent(learner.inputs(obs, last), hidden)
            action = q.masked_fill(~avail, float("-inf")).argmax(-1)
            alive = avail[..., 1:].any(-1)
            explore = (torch.rand(alive.shape, generator=dgen, device=device) < eps) & alive
            rnd = (torch.rand(avail.shape, generator=dgen, device=device) + 1.0).mul_(avail).argmax(-1)
            action = torch.where(explore, rnd, action)
            out = env._step(TensorDict({"agents": TensorDict({"action": action}, [E, N])}, [E], device=device))
            term = out.get("terminated").squeeze(-1)
            done = out.get("done").squeeze(-1)
            buf.write_step(obs, avail, state, action, out.get("reward").squeeze(-1), term.float())
            n_obs, n_avail, n_state = (out.get(("agents", "observation")), out.get(("agents", "action_mask")),
                                       out.get("state"))
            episodes += buf.finish(done, n_obs, n_avail, n_state)
            steps += E
            last = action
            if bool(done.any()):
                td = env._reset(TensorDict({"_reset": done[:, None]}, [E], device=device))
                n_obs, n_avail, n_state = (td.get(("agents", "observation")), td.get(("agents", "action_mask")),
                                           td.get("state"))
                hidden = torch.where(done[:, None, None], torch.zeros_like(hidden), hidden)
                last = torch.where(done[:, None], torch.full_like(last, -1), last)
            obs, avail, state = n_obs, n_avail, n_state

    while buf.size < args.batch_size:  # warm-up (CollectionSchedule.warm_up)
        collect_batch()
    while True:  # one update, then one collector batch (training_step -> on_train_batch_end)
        learner.update(buf.sample(args.batch_size, gen))
        updates += 1
        collect_batch()
        if episodes - last_target >= args.target_update:
            learner.update_targets()
            last_target = episodes
        if steps >= args.env_steps:
            break
    _sync(device)
    run_s = time.perf_counter() - t_run
    total = time.perf_counter() - t0
    return {"env_steps": steps, "episodes": episodes, "updates": updates, "build_s": build, "run_s": run_s,
            "total_s": total, "env_steps_per_second": steps / run_s, "env_steps_per_second_incl_build": steps / total}


def part_online(args, device, spec) -> dict:
    runs = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")
        for path in order:
            load = _load()
            fn = run_lightning_online if path == "lightning" else run_plain_online
            res = fn(args, device, spec, seed=args.seed + r)
            res["load_average_1min"] = load
            runs[path].append(res)
            print(f"[online] repeat {r + 1}/{args.repeats} {path:>9}: {res['env_steps_per_second']:8.0f} env steps/s "
                  f"({res['env_steps']} steps, {res['updates']} updates, {res['episodes']} episodes, "
                  f"{res['run_s']:.1f} s + build {res['build_s']:.1f} s, load {load})", flush=True)
    med = {k: statistics.median(x["env_steps_per_second"] for x in v) for k, v in runs.items()}
    return {"runs": runs, "median_env_steps_per_second": med, "overhead": med["plain"] / med["lightning"] - 1.0}


# ============================================================================ reporting
def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def table(result: dict) -> str:
    lines = ["| measurement | Lightning/TorchRL | plain PyTorch | overhead | target |", "|---|---:|---:|---:|---:|"]
    u = result.get("update")
    if u:
        m = u["median_ms_per_update"]
        lines.append(f"| ms per update (median, steady state) | {m['lightning']:.1f} | {m['plain']:.1f} | "
                     f"{_pct(u['overhead'])} | <= +10% |")
        if "plain_hoisted" in m:
            lines.append(f"| ms per update, plain with fc1/fc2 hoisted out of the time loop (informational) | "
                         f"{m['lightning']:.1f} | {m['plain_hoisted']:.1f} | "
                         f"{_pct(m['lightning'] / m['plain_hoisted'] - 1)} | |")
        s = u["median_startup_s"]
        lines.append(f"| start-up before the first update, s | {s['lightning']:.2f} | {s['plain']:.2f} | | |")
    o = result.get("online")
    if o:
        m = o["median_env_steps_per_second"]
        lines.append(f"| env steps/s, whole online run (median) | {m['lightning']:.0f} | {m['plain']:.0f} | "
                     f"{_pct(o['overhead'])} | <= +10% |")
    return "\n".join(lines)


def verdict(result: dict) -> dict:
    parts = {k: result[k]["overhead"] for k in ("update", "online") if result.get(k)}
    worst = max(parts.values())
    met = worst <= TARGET_OVERHEAD
    detail = ", ".join(f"{k} {_pct(v)}" for k, v in parts.items())
    text = (f"Lightning/TorchRL overhead: {100 * worst:.1f}% (target <= {100 * TARGET_OVERHEAD:.0f}%): "
            f"{'met' if met else 'NOT met'} ({detail})")
    return {"overheads": parts, "worst": worst, "met": met, "text": text}


def plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(k, t, u) for k, t, u in (("update", "ms per QMIX update (lower is better)", "ms_per_update"),
                                         ("online", "env steps/s of an online run (higher is better)",
                                          "env_steps_per_second")) if result.get(k)]
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    for i, (key, title, field) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        runs = result[key]["runs"]
        names = [n for n in ("lightning", "plain", "plain_hoisted") if n in runs]
        for j, (name, color) in enumerate(zip(names, ("tab:blue", "tab:orange", "tab:green"))):
            vals = [r[field] for r in runs[name]]
            ax.bar(j, statistics.median(vals), color=color, alpha=0.7, label=name)
            ax.scatter([j] * len(vals), vals, color="k", s=12, zorder=3)
        labels = {"lightning": "Lightning/TorchRL", "plain": "plain PyTorch", "plain_hoisted": "plain, hoisted\nfc1/fc2"}
        ax.set_xticks(range(len(names)), [labels[n] for n in names])
        ax.set_title(f"{title}\noverhead {_pct(result[key]['overhead'])} (target <= +10%)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    a = result["args"]
    fig.suptitle(f"QMIX training throughput, {a['map']}, batch {a['batch_size']} episodes "
                 f"(bars: median; dots: repeats)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(result: dict, png: Path) -> str:
    a, info, check = result["args"], result["machine"], result["check"]
    out = [
        "# QMIX training throughput: Lightning/TorchRL vs plain PyTorch",
        "",
        f"Generated by `benchmarks/lightning_overhead.py` on {info['date']} ({info['cpu']}, {info['cpu_count']} cores, "
        f"torch {info['torch']}, {info['torch_threads']} threads, device {a['device']}, git {info['git']}). "
        f"Load average (1 min) at start {info.get('load_average_1min_at_start')}, at end "
        f"{result.get('load_average_1min_at_end')}." + (" **--quick: smoke-test settings, not a measurement.**"
                                                         if a["quick"] else ""),
        "",
        f"Map {a['map']}, batch {a['batch_size']} episodes, hidden {a['hidden_dim']}, {a['repeats']} interleaved "
        f"repeats; update part: {a['updates']} updates per path ({a['warmup_updates']} untimed); online part: "
        f"{a['env_steps']} env steps, {a['num_envs']} envs x {a['steps_per_env']} steps per update.",
        "",
        table(result),
        "",
        f"**{check['text']}**",
        "",
    ]
    u = result.get("update")
    if u:
        c = u["loss_check"]
        out += [f"Inline loss vs `QMixTDLoss` on one batch: |Δloss| {c['loss_abs_diff']:.2e}, max |Δgrad| "
                f"{c['grad_max_abs_diff']:.2e} ({'same math' if c['ok'] else 'MISMATCH'}).", ""]
    out += [f"![train throughput]({png.name})", ""]
    return "\n".join(out)


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="2s3z")
    p.add_argument("--batch-size", type=int, default=128, help="episodes per update")
    p.add_argument("--updates", type=int, default=50, help="updates per path and repeat (update part)")
    p.add_argument("--warmup-updates", type=int, default=5, help="first updates left out of the timing")
    p.add_argument("--min-episodes", type=int, default=256, help="random episodes in the update part's buffer")
    p.add_argument("--collect-envs", type=int, default=64, help="battles used to collect those episodes")
    p.add_argument("--env-steps", type=int, default=20_000, help="env-step budget of each online run")
    p.add_argument("--num-envs", type=int, default=8, help="battles collected in parallel (online part)")
    p.add_argument("--steps-per-env", type=int, default=32, help="env steps per battle per update (online part)")
    p.add_argument("--buffer-size", type=int, default=5000, help="replay capacity in episodes (online part)")
    p.add_argument("--target-update", type=int, default=200, help="episodes between hard target updates")
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--no-hoisted", dest="hoisted", action="store_false",
                   help="skip the informational plain path with fc1/fc2 hoisted out of the time loop")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each path (median reported)")
    p.add_argument("--parts", default="update,online", help="comma-separated: update, online")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (numbers not meaningful)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.updates, args.warmup_updates, args.min_episodes = 4, 3, 1, 4
        args.collect_envs, args.env_steps, args.num_envs, args.steps_per_env = 16, 640, 16, 4
        args.buffer_size, args.repeats, args.hidden_dim = 64, 1, 16
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not parts or set(parts) - {"update", "online"}:
        p.error("--parts takes update and/or online")
    if args.repeats < 1 or args.updates < 2 or args.batch_size < 1:
        p.error("--repeats >= 1, --updates >= 2, --batch-size >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = get_map(args.map)
    _quiet_lightning()
    info = machine_info(ROOT, torch.get_num_threads())
    print(f"torch {info['torch']}, {torch.get_num_threads()} threads, {info['cpu_count']} cores, device {device}, "
          f"load {info.get('load_average_1min_at_start')}; map {spec.name}, batch {args.batch_size}", flush=True)
    t0 = time.perf_counter()
    result: dict = {"args": vars(args), "machine": info, "target_overhead": TARGET_OVERHEAD}
    if "update" in parts:
        result["update"] = part_updates(args, device, spec)
    if "online" in parts:
        result["online"] = part_online(args, device, spec)
    result["elapsed_seconds"] = time.perf_counter() - t0
    result["load_average_1min_at_end"] = _load()
    result["check"] = check = verdict(result)

    out = ROOT / args.out_dir if not Path(args.out_dir).is_absolute() else Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out / f"lightning_overhead.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(result, indent=1, default=str))
    plot(result, png_path)
    md_path.write_text(markdown(result, png_path))
    print()
    print(table(result))
    print()
    print(check["text"])
    print(f"\nwrote {json_path}, {md_path}, {png_path}  ({result['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

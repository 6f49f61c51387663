"""OnlineCollection with several collector processes (``num_workers > 1``, TorchRL MultiSyncCollector).

One collection of 2 worker processes x 2 battles of 3m is started once (spawned processes take
~10 s to start on a busy machine) and driven through a fixed script by the ``run`` fixture:

1. 6 batches with ε = 1 (random initial weights);
2. the learner's agent is set *in place* (as an optimiser does) to constant Q-values v1
   (``fc2.weight = 0``, ``fc2.bias = v1``), ε = 0: one batch;
3. ε = 0.5, then ε = 1: one batch each;
4. ``fc2.bias`` is *replaced* by a new Parameter v2 (no storage shared with the workers) and
   one batch is collected with ``update_policy_weights_`` disabled (the workers must still see
   v1: this is what the weight sync is for), then one with it (they must see v2);
5. ``close()``.

Every batch goes through ``collect()`` (the assembler's input is recorded), so the episode
stream stays contiguous and the emitted episodes are checked as in test_collection.py.
"""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector, MultiSyncCollector

from ovmse.action_masks import alive_agents, masked_greedy
from ovmse.collection import EpisodeReplayBuffer, env_with_primers, make_policy
from ovmse.envs import get_map, make_env
from ovmse.exploration import LinearSchedule, make_exploration
from ovmse.nets import RNNAgent
from ovmse.collection.online import OnlineCollection

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

MAP = "3m"
WORKERS, ENVS_PER_WORKER, STEPS = 2, 2, 16
NUM_ENVS = WORKERS * ENVS_PER_WORKER
HIDDEN = 16
EPS_T = 1000  # ε schedule 1 -> 0 over EPS_T env steps: collect(0) uses ε=1, collect(EPS_T) ε=0


def _agent(spec, seed=0):
    torch.manual_seed(seed)
    return RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, HIDDEN)


@pytest.fixture(scope="module")
def run():
    spec = get_map(MAP)
    agent = _agent(spec)
    replay = EpisodeReplayBuffer(capacity=1000)
    c = OnlineCollection(agent, MAP, NUM_ENVS, replay, epsilon=LinearSchedule(1.0, 0.0, EPS_T),
                         steps_per_env=STEPS, seed=7, num_workers=WORKERS)
    rec = {"spec": spec, "batches": [], "episodes": [], "stats": [], "phase": [],
           "procs": list(c.collector.procs)}
    add = c.assembler.add

    def recording_add(batch):
        rec["batches"].append(batch.clone())
        out = add(batch)
        if out is not None:
            rec["episodes"].append(out)
        return out

    c.assembler.add = recording_add

    def collect(phase, env_steps):
        rec["stats"].append(c.collect(env_steps))
        rec["phase"].append(phase)

    v1 = torch.linspace(-1.0, 1.0, spec.n_actions).flip(0)  # prefers low action ids
    v2 = torch.linspace(-1.0, 1.0, spec.n_actions)  # prefers high action ids
    rec["v1"], rec["v2"] = v1, v2
    try:
        for _ in range(6):
            collect("random", 0)
        with torch.no_grad():  # in place, like an optimiser step
            agent.fc2.weight.zero_()
            agent.fc2.bias.copy_(v1)
        collect("v1_eps0", EPS_T)
        collect("v1_eps_half", EPS_T // 2)
        collect("v1_eps1", 0)
        # A new tensor object for the bias: nothing in the workers aliases it any more.
        agent.fc2.bias = torch.nn.Parameter(v2.clone())
        real_update = c.collector.update_policy_weights_
        c.collector.update_policy_weights_ = lambda *a, **k: None  # instance attribute shadows the method
        collect("v2_not_synced", EPS_T)
        del c.collector.update_policy_weights_
        assert c.collector.update_policy_weights_ == real_update
        collect("v2_eps0", EPS_T)
        rec["replay_len"] = len(replay)
        rec["collector_type"] = type(c.collector)
        rec["alive_before_close"] = [p.is_alive() for p in rec["procs"]]
    finally:
        c.close()
    rec["alive_after_close"] = [p.is_alive() for p in rec["procs"]]
    return rec


def _by_phase(run, phase):
    (i,) = [k for k, p in enumerate(run["phase"]) if p == phase]
    return run["batches"][i], run["stats"][i]


def test_uses_multisync_collector_and_stable_layout(run):
    assert run["collector_type"] is MultiSyncCollector
    assert run["alive_before_close"] == [True] * WORKERS
    for b in run["batches"]:
        assert b.batch_size == (NUM_ENVS, STEPS)
    raw = torch.cat(run["batches"], 1)  # [env, time] over all collects
    done = raw["next", "done"].squeeze(-1)
    cont = ~done[:, :-1]
    # Every env index is one contiguous stream across batch boundaries: the next step starts
    # from the previous step's next observation / recurrent state unless the battle ended.
    for key in [("agents", "observation"), "state", ("agents", "hidden"), ("agents", "last_action")]:
        assert torch.equal(raw[key][:, 1:][cont], raw[("next", *((key,) if isinstance(key, str) else key))][:, :-1][cont]), key
    # Different workers are different battles (own env seed and ε generator): at ε=1 their
    # random actions differ.
    first = run["batches"][0]["agents", "action"]
    assert not torch.equal(first[:ENVS_PER_WORKER], first[ENVS_PER_WORKER:])


def test_env_steps_and_stats(run):
    episodes_total = 0
    for phase, s in zip(run["phase"], run["stats"]):
        assert s["env_steps"] == NUM_ENVS * STEPS
        assert s["episodes"] >= 0
        episodes_total += s["episodes"]
        assert 0.0 <= s["collect/explored_fraction"] <= 1.0
        assert s["collect/env_steps_per_second"] > 0
        if s["episodes"]:
            assert 0.0 <= s["collect/win_rate"] <= 1.0
            assert 1 <= s["collect/episode_length"] <= run["spec"].episode_limit
            assert s["collect/return"] == s["collect/return"]  # not NaN
    assert [s["train/epsilon"] for s in run["stats"]][:7] == [1.0] * 6 + [0.0]
    assert episodes_total == run["replay_len"] == sum(e.shape[0] for e in run["episodes"])
    assert episodes_total >= NUM_ENVS  # 3m battles are short: several complete episodes


def test_episodes_complete_and_valid(run):
    spec = run["spec"]
    raw = torch.cat(run["batches"], 1)
    done = raw["next", "done"].squeeze(-1)
    expected = []  # complete episodes of the raw stream, in the assembler's order per batch
    for b in range(NUM_ENVS):
        start = 0
        for end in done[b].nonzero().flatten().tolist():
            expected.append(raw[b, start : end + 1])
            start = end + 1
    episodes = torch.cat(run["episodes"], 0)
    assert len(episodes) == len(expected)
    remaining = list(expected)
    for e in range(len(episodes)):
        ep = episodes[e]
        filled = ep["filled"].squeeze(-1)
        n = int(filled.sum()) - 1
        assert n >= 1 and bool(filled[: n + 1].all()) and not bool(filled[n + 1 :].any())
        match = [i for i, x in enumerate(remaining)
                 if x.shape[0] == n and torch.equal(x["agents", "observation"], ep["agents", "observation"][:n])]
        assert len(match) == 1
        src = remaining.pop(match[0])
        assert torch.equal(ep["agents", "action"][:n], src["agents", "action"])
        assert torch.equal(ep["agents", "observation"][n], src["next", "agents", "observation"][-1])
        # one end per episode: terminated xor truncated at the last transition only
        term, trunc = ep["terminated"].squeeze(-1), ep["truncated"].squeeze(-1)
        assert bool(term[n - 1]) != bool(trunc[n - 1])
        assert not bool((term | trunc)[: n - 1].any()) and not bool((term | trunc)[n:].any())
        if bool(trunc[n - 1]):
            assert n == spec.episode_limit
        act, mask = ep["agents", "action"][:n], ep["agents", "action_mask"][:n]
        assert bool(mask.gather(-1, act.unsqueeze(-1)).all())
    assert not remaining


def test_workers_act_with_latest_weights(run):
    v1, v2 = run["v1"], run["v2"]
    # In-place change of the learner's agent -> the next collect's Q-values are exactly v1.
    b, s = _by_phase(run, "v1_eps0")
    q = b["agents", "action_value"]
    assert torch.equal(q, v1.expand_as(q))
    mask = b["agents", "action_mask"].bool()
    assert torch.equal(b["agents", "action"], masked_greedy(q, mask))  # ε=0: greedy
    assert not bool(b["agents", "explored"].any()) and s["collect/explored_fraction"] == 0.0
    # New Parameter object without update_policy_weights_: the workers still have v1 ...
    b, _ = _by_phase(run, "v2_not_synced")
    q = b["agents", "action_value"]
    assert torch.equal(q, v1.expand_as(q))
    # ... and with it (what collect() does every time) they have v2.
    b, _ = _by_phase(run, "v2_eps0")
    q = b["agents", "action_value"]
    assert torch.equal(q, v2.expand_as(q))
    assert torch.equal(b["agents", "action"], masked_greedy(q, b["agents", "action_mask"].bool()))


def test_epsilon_reaches_workers(run):
    # ε = 0 -> nobody explores (checked above); ε = 1 -> every alive agent explores;
    # ε = 0.5 -> about half of the alive agents.
    b, s = _by_phase(run, "v1_eps1")
    alive = alive_agents(b["agents", "action_mask"].bool())
    assert s["train/epsilon"] == 1.0
    assert torch.equal(b["agents", "explored"], alive)
    b, s = _by_phase(run, "v1_eps_half")
    alive = alive_agents(b["agents", "action_mask"].bool())
    assert s["train/epsilon"] == 0.5
    rate = b["agents", "explored"][alive].float().mean().item()
    n = int(alive.sum())
    assert abs(rate - 0.5) < 5 * (0.25 / n) ** 0.5, (rate, n)


def test_close_terminates_workers(run):
    assert run["alive_after_close"] == [False] * WORKERS


def test_num_envs_must_divide():
    spec = get_map(MAP)
    replay = EpisodeReplayBuffer(capacity=10)
    with pytest.raises(ValueError, match="not divisible"):
        OnlineCollection(_agent(spec), MAP, 5, replay, epsilon=LinearSchedule(1, 0, 1), num_workers=2)
    with pytest.raises(ValueError, match=">= 1"):
        OnlineCollection(_agent(spec), MAP, 4, replay, epsilon=LinearSchedule(1, 0, 1), num_workers=0)


def test_single_worker_is_the_in_process_collector():
    """num_workers=1: the plain TorchRL Collector, same batches as building it by hand."""
    spec = get_map(MAP)
    agent = _agent(spec)
    c = OnlineCollection(agent, MAP, 2, EpisodeReplayBuffer(capacity=10), epsilon=LinearSchedule(0.5, 0.5, 1),
                         steps_per_env=8, seed=3, num_workers=1)
    got = []
    add = c.assembler.add
    c.assembler.add = lambda batch: (got.append(batch.clone()), add(batch))[1]
    try:
        assert type(c.collector) is Collector
        c.collect(0)
        c.collect(16)
    finally:
        c.close()
    env = env_with_primers(make_env(MAP, 2, seed=3), HIDDEN)
    expl = make_exploration("epsilon_greedy", epsilon=0.5, generator=torch.Generator().manual_seed(4))
    ref = Collector(env, make_policy(env, agent, expl), frames_per_batch=16, total_frames=32,
                    auto_register_policy_transforms=False, track_traj_ids=False)
    want = [b.clone() for b in ref]
    ref.shutdown()
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert (g == w).all()


def test_the_in_process_collector_acts_with_our_policy_and_its_epsilon(monkeypatch):
    """Given its device, TorchRL's collector would act with a copy of a policy that has a tensor
    elsewhere (on CUDA: ε's buffer, before it was moved); ε set on ours would then never reach
    it. It acts with ours, ε included, and a collector that copied the policy is refused rather
    than left acting with stale weights and ε."""
    spec = get_map(MAP)
    c = OnlineCollection(_agent(spec), MAP, 2, EpisodeReplayBuffer(capacity=10), epsilon=LinearSchedule(0.5, 0.5, 1),
                         steps_per_env=8, seed=3, num_workers=1)
    try:
        assert c.collector.policy is c.policy and c.collector.get_weights_fn is None
        c.exploration.set_epsilon(0.25)
        assert c.collector.policy.exploration.epsilon == 0.25
    finally:
        c.close()
    import copy

    import ovmse.collection.online as online

    def copying_collector(*args, **kwargs):  # what TorchRL does with a policy off its device
        collector = Collector(*args, **kwargs)
        collector.policy = copy.deepcopy(collector.policy)
        return collector

    monkeypatch.setattr(online, "Collector", copying_collector)
    with pytest.raises(RuntimeError, match="copy of the policy"):
        OnlineCollection(_agent(spec), MAP, 2, EpisodeReplayBuffer(capacity=10), epsilon=LinearSchedule(0.5, 0.5, 1),
                         steps_per_env=8, seed=3, num_workers=1)

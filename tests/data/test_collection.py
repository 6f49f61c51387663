"""Online collection: recurrent policy in a TorchRL Collector, episode assembly, episode replay."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

from ovmse.collection import (
    EpisodeAssembler,
    EpisodeReplayBuffer,
    RecurrentQPolicy,
    env_with_primers,
    make_policy,
)
from ovmse.collection.layout import rows_filled
from ovmse.envs import make_env
from ovmse.exploration import make_exploration
from ovmse.nets import RNNAgent
from simtools import run_collector_through_assembler

B_ENVS = 4
FRAMES_PER_BATCH = 36  # 9 steps per env: shorter than any 3m battle, so batches cut episodes
TOTAL_FRAMES = 504  # 14 batches, 126 steps per env
HIDDEN = 16


@pytest.fixture(scope="module")
def collected():
    torch.manual_seed(0)
    base = make_env("3m", B_ENVS, seed=0)
    spec = base.spec
    env = env_with_primers(base, HIDDEN)
    agent = RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, HIDDEN)
    gen = torch.Generator().manual_seed(0)
    policy = make_policy(env, agent, make_exploration("epsilon_greedy", epsilon=1.0, generator=gen))
    collector = Collector(
        env, policy, frames_per_batch=FRAMES_PER_BATCH, total_frames=TOTAL_FRAMES,
        auto_register_policy_transforms=False,
    )
    assembler = EpisodeAssembler(spec.episode_limit)
    raw, emitted = run_collector_through_assembler(collector, assembler)  # raw: [B, steps], contiguous
    episodes = torch.cat(emitted, dim=0)
    return spec, raw, episodes, assembler


def _expected_episodes(raw):
    """Complete episodes cut from the contiguous raw stream: list of [len] tensordicts."""
    out = []
    done = raw["next", "done"].squeeze(-1)
    for b in range(raw.shape[0]):
        start = 0
        for end in done[b].nonzero().flatten().tolist():
            out.append(raw[b, start : end + 1])
            start = end + 1
    return out


def test_collector_batches_cut_episodes(collected):
    spec, raw, episodes, assembler = collected
    assert raw.shape == (B_ENVS, TOTAL_FRAMES // B_ENVS)
    lengths = episodes["filled"].squeeze(-1).sum(-1) - 1
    assert episodes.shape[1] == spec.episode_limit + 1
    assert len(episodes) >= B_ENVS  # several complete episodes
    assert int(lengths.max()) > FRAMES_PER_BATCH // B_ENVS  # some episode spanned batches
    # Leftover partial episodes are held, not emitted.
    assert sum(assembler.pending_steps.values()) > 0
    assert assembler.episodes_emitted == len(episodes)


def test_emitted_episodes_are_complete_and_unique(collected):
    spec, raw, episodes, _ = collected
    expected = _expected_episodes(raw)
    assert len(episodes) == len(expected)
    used = [False] * len(expected)
    A = spec.n_actions
    for e in range(len(episodes)):
        ep = episodes[e]
        filled = ep["filled"].squeeze(-1)
        n = int(filled.sum()) - 1
        assert n >= 1
        # filled is a prefix of Trues of length len + 1
        assert bool(filled[: n + 1].all()) and not bool(filled[n + 1 :].any())
        # match exactly one raw episode (no duplicates, no cut episodes)
        matches = [
            i
            for i, x in enumerate(expected)
            if not used[i] and x.shape[0] == n and torch.equal(x["agents", "observation"], ep["agents", "observation"][:n])
        ]
        assert len(matches) == 1, f"episode {e}: {len(matches)} matches"
        src = expected[matches[0]]
        used[matches[0]] = True
        # final row = the env's terminal observation / state / mask
        assert torch.equal(ep["agents", "observation"][n], src["next", "agents", "observation"][-1])
        assert torch.equal(ep["state"][n], src["next", "state"][-1])
        assert torch.equal(ep["agents", "action_mask"][n], src["next", "agents", "action_mask"][-1])
        assert torch.equal(ep["state"][:n], src["state"])
        assert torch.equal(ep["agents", "action"][:n], src["agents", "action"])
        assert torch.equal(ep["reward"][:n], src["next", "reward"])
        # final row: action 0, reward 0; padding: zeros / masks False
        assert int(ep["agents", "action"][n].abs().sum()) == 0 and float(ep["reward"][n]) == 0.0
        assert not bool(ep["agents", "action_mask"][n + 1 :].any())
        assert float(ep["agents", "observation"][n + 1 :].abs().sum()) == 0.0
        # rewards
        assert float(ep["reward"].sum()) <= 20 + 1e-4
        # exactly one of terminated / truncated at the last transition, none before
        term, trunc = ep["terminated"].squeeze(-1), ep["truncated"].squeeze(-1)
        assert bool(term[n - 1]) != bool(trunc[n - 1])
        assert not bool(term[: n - 1].any()) and not bool(trunc[: n - 1].any())
        assert not bool(term[n:].any()) and not bool(trunc[n:].any())
        if bool(trunc[n - 1]):
            assert n == spec.episode_limit
        won = ep["info", "battle_won"].squeeze(-1)
        assert not bool(won[: n - 1].any()) and not bool(won[n:].any())
        # every taken action is available under the stored mask
        act = ep["agents", "action"][:n]
        mask = ep["agents", "action_mask"][:n]
        assert bool(((act >= 0) & (act < A)).all())
        assert bool(mask.gather(-1, act.unsqueeze(-1)).all())
    assert all(used)


def test_recurrent_state_resets_at_episode_start(collected):
    _, raw, _, _ = collected
    done = raw["next", "done"].squeeze(-1)  # [B, T]
    first = torch.zeros_like(done)
    first[:, 0] = True
    first[:, 1:] = done[:, :-1]
    last_action = raw["agents", "last_action"]  # [B, T, N]
    hidden = raw["agents", "hidden"]  # [B, T, N, H]
    # -1 / zeros exactly at the first step of every episode
    assert torch.equal((last_action == -1).all(-1), first)
    assert torch.equal((last_action == -1).any(-1), first)
    assert torch.equal(hidden.abs().flatten(-2).sum(-1) == 0, first)
    # otherwise they carry the previous step's action / new hidden state
    cont = ~first[:, 1:]
    assert torch.equal(last_action[:, 1:][cont], raw["agents", "action"][:, :-1][cont])
    assert torch.equal(hidden[:, 1:][cont], raw["next", "agents", "hidden"][:, :-1][cont])
    assert torch.equal(raw["next", "agents", "last_action"], raw["agents", "action"])
    assert raw["agents", "action_value"].shape[-1] == 9


def test_make_policy_requires_primers():
    base = make_env("3m", 2, seed=0)
    s = base.spec
    agent = RNNAgent(s.obs_dim + s.n_actions + s.n_agents, s.n_actions, HIDDEN)
    with pytest.raises(ValueError, match="primers"):
        make_policy(base, agent)
    with pytest.raises(ValueError, match="hidden"):
        make_policy(env_with_primers(make_env("3m", 2, seed=0), HIDDEN + 1), agent)


def test_policy_without_primer_keys_and_is_init():
    """Fallbacks: missing keys -> zeros / -1; is_init resets flagged battles."""
    base = make_env("3m", 2, seed=0)
    s = base.spec
    agent = RNNAgent(s.obs_dim + s.n_actions + s.n_agents, s.n_actions, HIDDEN)
    policy = RecurrentQPolicy(agent, make_exploration("epsilon_greedy", epsilon=0.0))
    td = policy(base.reset())
    assert td["next", "agents", "hidden"].shape == (2, s.n_agents, HIDDEN)
    td2 = td.exclude("next")
    td2.set(("agents", "hidden"), td["next", "agents", "hidden"])
    td2.set(("agents", "last_action"), td["next", "agents", "last_action"])
    td2.set("is_init", torch.tensor([[True], [False]]))
    out = policy(td2.clone())
    # same observation, no state: the fallback zeros / -1
    ref = policy(td2.exclude(("agents", "hidden"), ("agents", "last_action"), "is_init"))
    assert torch.allclose(out["agents", "action_value"][0], ref["agents", "action_value"][0])
    assert not torch.allclose(out["agents", "action_value"][1], ref["agents", "action_value"][1])


@pytest.mark.parametrize("exploration", ["epsilon_greedy", "decentralised_sequential", None])
def test_compiled_policy_acts_as_the_eager_one(exploration):
    """make_policy compiles the policy's step for a compile_step env; with the same weights,
    generator seed and observations it chooses the same actions, explorers and hidden states."""
    torch._dynamo.reset()
    envs = [env_with_primers(make_env("3m", 3, seed=4, substeps=2, compile_step=c), HIDDEN) for c in (False, True)]
    s = envs[0].base_env.spec
    agent = RNNAgent(s.obs_dim + s.n_actions + s.n_agents, s.n_actions, HIDDEN)
    policies = []
    for env in envs:
        explorer = None if exploration is None else make_exploration(
            exploration, epsilon=0.6, generator=torch.Generator().manual_seed(7))
        policies.append(make_policy(env, agent, explorer))
    assert policies[0]._compiled_step is None and policies[1]._compiled_step is not None
    td = envs[0].reset()
    with torch.no_grad():
        for _ in range(8):
            eager, compiled = policies[0](td.clone()), policies[1](td.clone())
            keys = [("agents", "action"), ("next", "agents", "hidden"), ("next", "agents", "last_action")]
            keys += [] if exploration is None else [("agents", "explored")]
            for key in keys:
                torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-5, msg=str(key))
            torch.testing.assert_close(compiled["agents", "action_value"], eager["agents", "action_value"],
                                       rtol=1e-5, atol=1e-5)
            td = envs[0].step_mdp(envs[0].step(eager))
    if exploration is not None:
        assert policies[1].exploration.generator.get_state().equal(policies[0].exploration.generator.get_state())


def test_compiled_policy_refuses_an_exploration_with_other_keys():
    s = make_env("3m", 2, seed=0).spec
    agent = RNNAgent(s.obs_dim + s.n_actions + s.n_agents, s.n_actions, HIDDEN)
    explorer = make_exploration("epsilon_greedy", epsilon=0.1, action_key=("agents", "chosen"))
    with pytest.raises(ValueError, match="exploration module's keys"):
        RecurrentQPolicy(agent, explorer, compile=True)
    RecurrentQPolicy(agent, explorer)  # eager: the exploration module writes its own key


# ----------------------------------------------------------------- synthetic assembler checks
def _fake_stream(lengths_per_env, truncate_limit, obs_dim=2):
    """Contiguous [B, T] stream; observation value = 1000*env + global step + 1."""
    B = len(lengths_per_env)
    T = max(sum(ls) for ls in lengths_per_env)
    N, A = 2, 3
    obs = torch.zeros(B, T, N, obs_dim)
    nobs = torch.zeros(B, T, N, obs_dim)
    done = torch.zeros(B, T, 1, dtype=torch.bool)
    trunc = torch.zeros(B, T, 1, dtype=torch.bool)
    for b, ls in enumerate(lengths_per_env):
        t = 0
        for length in ls:
            for k in range(length):
                obs[b, t] = 1000 * b + t + 1
                nobs[b, t] = 1000 * b + t + 1 + 0.5 if k == length - 1 else 1000 * b + t + 2
                t += 1
            done[b, t - 1] = True
            trunc[b, t - 1] = length == truncate_limit
    mask = torch.ones(B, T, N, A, dtype=torch.bool)
    td = TensorDict(
        {
            ("agents", "observation"): obs,
            ("agents", "action_mask"): mask,
            ("agents", "action"): torch.ones(B, T, N, dtype=torch.int64),
            "state": obs[:, :, 0],
            ("next", "agents", "observation"): nobs,
            ("next", "agents", "action_mask"): mask,
            ("next", "state"): nobs[:, :, 0],
            ("next", "reward"): torch.ones(B, T, 1),
            ("next", "done"): done,
            ("next", "terminated"): done & ~trunc,
            ("next", "truncated"): trunc,
            ("next", "info", "battle_won"): done & ~trunc,
        },
        batch_size=(B, T),
    )
    return td


def test_assembler_synthetic_cuts_and_truncation():
    limit = 5
    td = _fake_stream([[3, 5, 2, 4], [5, 5, 1, 3]], limit)  # both envs: 14 steps
    asm = EpisodeAssembler(limit)
    out = [asm.add(td[:, s : s + 4]) for s in range(0, 14, 4)]  # cuts at 4, 8, 12
    eps = torch.cat([o for o in out if o is not None])
    assert len(eps) == 8
    lengths = sorted((eps["filled"].squeeze(-1).sum(-1) - 1).tolist())
    assert lengths == sorted([3, 5, 2, 4, 5, 5, 1, 3])
    for e in range(len(eps)):
        ep = eps[e]
        n = int(ep["filled"].sum()) - 1
        o = ep["agents", "observation"][:, 0, 0]
        # consecutive steps, then the terminal obs (x.5), then zeros
        assert torch.equal(o[1:n] - o[: n - 1], torch.ones(n - 1))
        assert float(o[n] - o[n - 1]) == 0.5
        assert float(o[n + 1 :].abs().sum()) == 0
        assert float(ep["reward"].sum()) == n
        if n == limit:
            assert bool(ep["truncated"][n - 1]) and not bool(ep["terminated"][n - 1])
        else:
            assert bool(ep["terminated"][n - 1]) and not bool(ep["truncated"][n - 1])
    assert asm.pending_steps == {}
    # a single-env [F] batch works too
    one = EpisodeAssembler(limit).add(td[0, :3])
    assert one.shape == (1, limit + 1)


def test_assembler_rejects_overlong_episode():
    td = _fake_stream([[5]], truncate_limit=99)
    asm = EpisodeAssembler(3)
    with pytest.raises(RuntimeError, match="limit"):
        asm.add(td)


# ----------------------------------------------------------------- replay buffer
def _episodes(ids, T1=6):
    E = len(ids)
    state = torch.tensor(ids, dtype=torch.float32)[:, None, None].expand(E, T1, 4).clone()
    return TensorDict(
        {
            "state": state,
            ("agents", "observation"): torch.zeros(E, T1, 3, 7),
            ("agents", "action"): torch.zeros(E, T1, 3, dtype=torch.int64),
            "reward": torch.zeros(E, T1, 1),
            "filled": torch.ones(E, T1, 1, dtype=torch.bool),
        },
        batch_size=(E, T1),
    )


@pytest.mark.parametrize("memmap", [False, True])
def test_replay_buffer_fifo_and_sample(memmap, tmp_path):
    rb = EpisodeReplayBuffer(5, memmap=memmap, scratch_dir=str(tmp_path) if memmap else None,
                             generator=torch.Generator().manual_seed(0))
    assert len(rb) == 0
    rb.extend(None)
    rb.extend(_episodes([0, 1, 2]))
    assert len(rb) == 3 and rb.episodes_added == 3
    s = rb.sample(7)
    assert s.batch_size == (7, 6)
    assert s["agents", "observation"].shape == (7, 6, 3, 7)
    assert s["filled"].dtype == torch.bool
    assert set(s["state"][:, 0, 0].long().tolist()) <= {0, 1, 2}
    rb.extend(_episodes([3, 4, 5, 6]))  # 7 added, capacity 5: 0 and 1 overwritten
    assert len(rb) == 5 and rb.episodes_added == 7
    stored = sorted(rb.buffer.storage[:]["state"][:, 0, 0].long().tolist())
    assert stored == [2, 3, 4, 5, 6]
    rb.extend(_episodes([7]))  # next overwritten is the oldest remaining (2)
    stored = sorted(rb.buffer.storage[:]["state"][:, 0, 0].long().tolist())
    assert stored == [3, 4, 5, 6, 7]
    big = rb.sample(200)
    assert set(big["state"][:, 0, 0].long().tolist()) == {3, 4, 5, 6, 7}


def test_replay_buffer_stores_assembled_episodes(collected):
    _, _, episodes, _ = collected
    rb = EpisodeReplayBuffer(capacity=5000)
    rb.extend(episodes)
    assert len(rb) == len(episodes)
    s = rb.sample(4)
    assert s.batch_size == (4, episodes.shape[1])
    assert set(s.keys(True, True)) == set(episodes.keys(True, True))


def test_replay_buffer_gathers_only_the_rows_asked_and_draws_as_torchrl_does():
    eps = _episodes([0, 1, 2, 3])
    eps["filled"][0, 2:] = False  # episode 0 fills 2 rows; 2 fills 4 with a gap after row 1
    eps["filled"][2, 1] = False
    eps["filled"][2, 4:] = False
    rb = EpisodeReplayBuffer(8, generator=torch.Generator().manual_seed(5))
    rb.extend(eps)
    assert rb.max_rows == 6
    assert rb.max_rows_filled(torch.tensor([0])) == 2 and rb.max_rows_filled(torch.tensor([0, 2])) == 4
    assert rb.max_rows_filled(torch.tensor([0, 1])) == 6 and rb.max_rows_filled(torch.tensor([], dtype=torch.long)) == 0
    part = rb.get(torch.tensor([2, 0]), rows=3)
    assert part.batch_size == (2, 3)
    assert (part == rb.get(torch.tensor([2, 0]))[:, :3]).all()
    rb.extend(_episodes([9]))  # a later write records its own rows
    assert rb.max_rows_filled(torch.tensor([4])) == 6
    # With replacement the draw is the one TorchRL's own ReplayBuffer.sample makes.
    twin = EpisodeReplayBuffer(8, generator=torch.Generator().manual_seed(6))
    ours = EpisodeReplayBuffer(8, generator=torch.Generator().manual_seed(6))
    for rb_ in (twin, ours):
        rb_.extend(_episodes(list(range(8))))
    for _ in range(3):
        assert torch.equal(twin.buffer.sample(5)["state"], ours.sample(5)["state"])


def test_replay_buffer_rows_follow_overwrites_and_oversized_extends():
    def eps(ids, rows):
        out = _episodes(ids)
        out["filled"][:, rows:] = False
        return out

    rb = EpisodeReplayBuffer(3, generator=torch.Generator().manual_seed(0))
    rb.extend(eps([0, 1, 2], 6))
    rb.extend(eps([3], 2))  # a short episode overwrites the oldest long one
    stored = rb.get(torch.arange(3))
    expect = [int(r) for r in rows_filled(stored)]
    assert [rb.max_rows_filled(torch.tensor([i])) for i in range(3)] == expect
    assert sorted(expect) == [2, 6, 6]
    # More episodes than slots in one extend: each slot's rows are those of the episode it kept.
    rb.extend(torch.cat([eps([4, 5], 3), eps([6, 7, 8], 4)]))
    stored = rb.get(torch.arange(3))
    assert [rb.max_rows_filled(torch.tensor([i])) for i in range(3)] == [int(r) for r in rows_filled(stored)]
    assert len(rb) == 3 and rb.episodes_added == 9

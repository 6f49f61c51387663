"""Partial resets, auto-reset through step_and_maybe_reset, invariants under random play, determinism."""

import pytest
import torch

from ovmse.envs import MAPS, make_env
from ovmse.envs.sim_env import random_valid_actions
from simtools import act, stop_all

STATE_FIELDS = ("x", "y", "health", "shield", "energy", "cooldown", "since_damage", "target", "order",
                "goal_x", "goal_y", "steps", "last_action")


def _snapshot(battle):
    return {k: getattr(battle, k).clone() for k in STATE_FIELDS}


def test_partial_reset_only_touches_masked_battles():
    env = make_env("3m", 4, seed=0)
    td = env.reset()
    for _ in range(6):
        td = env.step(env.rand_action(td))["next"]
    env.battle.steps[1] = 59
    td = env.step(env.rand_action(td))["next"]
    assert td["done"][:, 0].tolist() == [False, True, False, False]
    b = env.battle
    b.health[1, 0] = 3.0  # make sure battle 1 really is restored
    before = _snapshot(b)
    mask = torch.tensor([[False], [True], [False], [False]])
    td.set("_reset", mask)
    out = env.reset(td)
    keep = [0, 2, 3]
    for k, v in _snapshot(b).items():
        assert torch.equal(v[keep], before[k][keep]), f"{k} changed in a battle that was not reset"
    assert torch.equal(b.health[1], b.units.max_health)
    assert torch.equal(b.shield[1], b.units.max_shield)
    assert b.steps[1] == 0
    assert torch.all(b.last_action[1] == -1) and torch.all(b.cooldown[1] == 0)
    assert not out["done"][1, 0]
    # The state's last-action block of the reset battle is empty again; the others keep theirs.
    N, A = 3, env.spec.n_actions
    assert torch.all(out["state"][1, -N * A:] == 0)
    assert torch.all(out["state"][keep, -N * A:].sum(-1) == N)
    # Fresh battle: allies back near (9, 16), enemies near (23, 16) (spawn jitter at most ~1.3).
    assert torch.allclose(b.pos[1, :3].mean(0), torch.tensor([9.0, 16.0]), atol=1.5)
    assert torch.allclose(b.pos[1, 3:].mean(0), torch.tensor([23.0, 16.0]), atol=1.5)
    # The reward memory was reset too: with teams 14 apart nothing is lost in the next step,
    # so battle 1 earns 0 (a stale memory of its old, damaged enemies would pay out here).
    nxt = stop_all(env)
    assert nxt["reward"][1, 0].item() == 0.0


def test_step_and_maybe_reset_restarts_finished_battles():
    B = 8
    env = make_env("3m", B, seed=1)
    td = env.reset()
    finished = 0
    length = torch.zeros(B, dtype=torch.long)
    for _ in range(200):
        out, td = env.step_and_maybe_reset(env.rand_action(td))
        length += 1
        done = out["next", "done"][:, 0]
        assert torch.all(length[done] <= 60)
        if done.any():
            finished += int(done.sum())
            b = env.battle
            assert torch.all(b.steps[done] == 0)
            assert torch.all(b.health[done] == b.units.max_health)
            assert not td["done"][done].any()  # the root of the returned td is the fresh battle
            # A fresh battle's last actions are empty again.
            assert torch.all(td["state"][done, -3 * 9:] == 0)
        length[done] = 0
    assert finished >= B


@pytest.mark.parametrize("name", sorted(MAPS))
def test_invariants_under_random_play(name):
    B, steps = 4, 40
    env = make_env(name, B, seed=5)
    td = env.reset()
    b, ut, N = env.battle, env.battle.units, env.spec.n_agents
    for _ in range(steps):
        out, td = env.step_and_maybe_reset(env.rand_action(td))
        nxt = out["next"]
        alive = b.alive
        assert torch.all((b.health >= 0) & (b.health <= ut.max_health))
        assert torch.all((b.shield >= 0) & (b.shield <= ut.max_shield))
        assert torch.all(b.shield[~alive] == 0)
        assert torch.all((b.energy >= 0) & (b.energy <= 200))
        assert torch.all(b.x[~alive] < -1000) and torch.all(b.y[~alive] < -1000)
        ground = alive & ~ut.is_air
        assert bool(b.walkable_at(b.x, b.y)[ground].all()), "a ground unit left the walkable area"
        air = alive & ut.is_air
        assert torch.all((b.x[air] > 0) & (b.x[air] < 32) & (b.y[air] > 0) & (b.y[air] < 32))
        mask = nxt["agents", "action_mask"]
        # "next" belongs to the battle state before any auto-reset: read who is dead from its state
        # (ally i's block starts with its health fraction).
        dead_agent = nxt["state"][:, : N * env.spec.state_ally_dim : env.spec.state_ally_dim] == 0
        assert torch.all(mask[..., 1] == ~dead_agent)
        assert torch.all(mask[..., 0] == dead_agent)
        assert torch.all(mask[dead_agent][:, 1:] == 0)
        assert torch.all(nxt["agents", "observation"][dead_agent] == 0)
        assert torch.all(nxt["reward"] >= 0)
        assert torch.all(b.steps <= env.spec.episode_limit)
        won = nxt["info", "battle_won"][:, 0]
        assert torch.all(nxt["terminated"][won])
        assert not (nxt["terminated"] & nxt["truncated"]).any()


def _trajectory(seed, name="2s3z", steps=40, B=4, action_seed=7):
    env = make_env(name, B, seed=seed)
    gen = torch.Generator().manual_seed(action_seed)
    td = env.reset()
    obs, states, rewards = [td["agents", "observation"].clone()], [td["state"].clone()], []
    for _ in range(steps):
        td.set(("agents", "action"), random_valid_actions(td["agents", "action_mask"], gen))
        out, td = env.step_and_maybe_reset(td)
        obs.append(out["next", "agents", "observation"].clone())
        states.append(out["next", "state"].clone())
        rewards.append(out["next", "reward"].clone())
    return torch.stack(obs), torch.stack(states), torch.stack(rewards)


def test_same_seed_same_actions_same_trajectory():
    a = _trajectory(11)
    b = _trajectory(11)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a[2].sum() > 0  # something actually happened


def test_different_seeds_give_different_spawns():
    e1 = make_env("3m", 4, seed=1)
    e2 = make_env("3m", 4, seed=2)
    e1.reset()
    e2.reset()
    assert not torch.allclose(e1.battle.pos, e2.battle.pos)
    # ...and the battles within one batch differ from each other too.
    assert not torch.allclose(e1.battle.pos[0], e1.battle.pos[1])


def test_zero_jitter_gives_identical_battles():
    env = make_env("2s3z", 5, seed=3, spawn_jitter=0.0)
    td = env.reset()
    other = make_env("2s3z", 5, seed=4, spawn_jitter=0.0).reset()
    assert torch.equal(td["state"], td["state"][:1].expand_as(td["state"]))
    assert torch.equal(td["agents", "observation"], td["agents", "observation"][:1].expand_as(td["agents", "observation"]))
    assert torch.equal(td["state"], other["state"])  # the seed no longer matters
    # Identical battles stay identical under identical actions.
    for _ in range(10):
        action = random_valid_actions(td["agents", "action_mask"][:1]).expand(5, -1)
        td = act(env, action)
        assert torch.equal(td["state"], td["state"][:1].expand_as(td["state"]))


def test_scripted_allies_ignore_actions():
    """With scripted allies the battle unfolds the same whatever the agents choose (only last actions differ)."""
    def run(action_seed):
        env = make_env("3m", 4, seed=9, scripted_allies=True)
        gen = torch.Generator().manual_seed(action_seed)
        td = env.reset()
        for _ in range(15):
            td = act(env, random_valid_actions(td["agents", "action_mask"], gen))
        return env.battle.pos.clone(), env.battle.health.clone(), env.battle.last_action.clone()

    p1, h1, a1 = run(1)
    p2, h2, a2 = run(2)
    assert torch.equal(p1, p2) and torch.equal(h1, h2)
    assert not torch.equal(a1, a2)
    assert torch.any(h1 < 45)  # the scripted allies did fight

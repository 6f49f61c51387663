"""Reward shaping, win / loss / draw / timeout flags.

3m: max_reward = 3 * 10 + 200 + 3 * 45 = 365, so rewards are divided by 365 / 20 = 18.25.
"""

import pytest
import torch

from ovmse.envs import make_env
from simtools import STOP, act, features_now, freeze, place, scenario_env, stop_all

SCALE_3M = 365 / 20


def _face_off(env, bi=0, gap=5.0, ys=(12.0, 16.0, 20.0)):
    """3m: ally i at (9, y_i), enemy i at (9 + gap, y_i); enemy i's nearest hostile is ally i."""
    b = env.battle
    for i, y in enumerate(ys):
        place(b, bi, i, 9.0, y)
        place(b, bi, 3 + i, 9.0 + gap, y)


def test_perfect_win_returns_exactly_20():
    """Enemies set to 10 health; each ally shoots its own enemy at loops 0 and ~14 (6 + 6 >= 10).

    Step 1: the edit drops 3 * 35 and the shots 3 * 6: (105 + 18) / 18.25, not won.
    Step 2: the last 3 * 4 health, 3 deaths (+10 each) and the win (+200): 242 / 18.25.
    Total (105 + 18 + 242) / 18.25 = 365 / 18.25 = 20.
    """
    env, _ = scenario_env("3m", 1, check_actions=False)
    _face_off(env)
    env.battle.health[0, 3:] = 10.0
    mask, _, _ = features_now(env)
    assert mask[0, [0, 1, 2], [6, 7, 8]].all()
    rewards, won, done = [], [], []
    for _ in range(2):
        nxt = act(env, [6, 7, 8])
        rewards.append(nxt["reward"][0, 0].item())
        won.append(bool(nxt["info", "battle_won"][0, 0]))
        done.append(bool(nxt["done"][0, 0]))
        assert not nxt["truncated"][0, 0]
    assert rewards[0] == pytest.approx(123 / SCALE_3M, abs=1e-4)
    assert rewards[1] == pytest.approx(242 / SCALE_3M, abs=1e-4)
    assert sum(rewards) == pytest.approx(20.0, abs=1e-4)
    assert won == [False, True] and done == [False, True]
    assert bool(nxt["terminated"][0, 0])
    assert torch.all(env.battle.health[0, :3] > 0)


def test_win_on_the_last_allowed_step_is_a_win_not_a_timeout():
    env, _ = scenario_env("3m", 1, check_actions=False)
    _face_off(env)
    env.battle.health[0, 3:] = 1.0
    env.battle.steps[0] = 59  # limit 60
    nxt = act(env, [6, 7, 8])
    assert bool(nxt["info", "battle_won"][0, 0]) and bool(nxt["terminated"][0, 0])
    assert not nxt["truncated"][0, 0]
    # (3 * 44 edited away + 3 * 1 + 30 + 200) / 18.25 = 20
    assert nxt["reward"][0, 0].item() == pytest.approx(20.0, abs=1e-4)


def test_loss():
    """All allies at 1 health, idle; each enemy (AI) shoots its nearest ally at loop 0."""
    env, _ = scenario_env("3m", 1)
    _face_off(env)
    env.battle.health[0, :3] = 1.0
    nxt = stop_all(env)
    assert bool(nxt["terminated"][0, 0]) and bool(nxt["done"][0, 0])
    assert not nxt["info", "battle_won"][0, 0]
    assert not nxt["truncated"][0, 0]
    assert nxt["reward"][0, 0].item() == 0.0  # no enemy lost anything, no bonus for a defeat
    assert torch.all(nxt["agents", "action_mask"][0, :, 0])


def test_both_teams_wiped_out_ends_without_a_win():
    env, _ = scenario_env("3m", 1, check_actions=False)
    _face_off(env)
    env.battle.health[0, :] = 1.0
    nxt = act(env, [6, 7, 8])
    assert torch.all(env.battle.health[0] == 0)
    assert bool(nxt["terminated"][0, 0])
    assert not nxt["info", "battle_won"][0, 0]
    # The enemies' 3 * 44 edited health + their last 3 * 1 + 3 deaths * 10, no win bonus.
    assert nxt["reward"][0, 0].item() == pytest.approx((132 + 3 + 30) / SCALE_3M, abs=1e-4)


def _mmm_lines(env):
    """MMM: combat ally k at (6, 9 + 1.6k) facing enemy k at (10, 9 + 1.6k), k = 0..8; medivacs apart."""
    b = env.battle
    for k in range(9):
        place(b, 0, k, 6.0, 9.0 + 1.6 * k)
        place(b, 0, 10 + k, 10.0, 9.0 + 1.6 * k)
    place(b, 0, 9, 2.0, 16.0)  # allied medivac
    freeze(b, 0, 19, 28.0, 23.0)  # enemy medivac: > 9 from every ally


def test_mmm_lone_enemy_medivac_is_a_win():
    env, _ = scenario_env("MMM", 1, check_actions=False)
    _mmm_lines(env)
    env.battle.health[0, 10:19] = 1.0
    nxt = act(env, list(range(6, 15)) + [STOP])
    assert torch.all(env.battle.health[0, 10:19] == 0)
    assert env.battle.health[0, 19] > 0  # the enemy medivac survives
    assert bool(nxt["info", "battle_won"][0, 0]) and bool(nxt["terminated"][0, 0])
    # It is not a perfect win: the medivac's 150 health and its death value are missing.
    assert nxt["reward"][0, 0].item() == pytest.approx(20.0 * (1015 - 160) / 1015, abs=1e-3)


def test_mmm_lone_allied_medivac_is_a_loss():
    env, _ = scenario_env("MMM", 1)
    _mmm_lines(env)
    env.battle.health[0, :9] = 1.0
    nxt = stop_all(env)
    assert torch.all(env.battle.health[0, :9] == 0) and env.battle.health[0, 9] > 0
    assert bool(nxt["terminated"][0, 0])
    assert not nxt["info", "battle_won"][0, 0]
    mask = nxt["agents", "action_mask"][0]
    assert mask[9, 1] and not mask[9, 0]  # the medivac agent itself is still alive and acting


def test_episode_limit_truncates():
    """Teams kept apart and idle: nothing happens until step 60 of 3m, which is truncated, not terminated."""
    env, _ = scenario_env("3m", 1)
    b = env.battle
    for i in range(3):
        place(b, 0, i, 3.0, 12.0 + 4 * i)
        freeze(b, 0, 3 + i, 28.0, 12.0 + 4 * i)
    for step in range(1, 61):
        nxt = stop_all(env)
        if step < 60:
            assert not nxt["done"][0, 0], step
    assert bool(nxt["truncated"][0, 0]) and bool(nxt["done"][0, 0])
    assert not nxt["terminated"][0, 0]
    assert not nxt["info", "battle_won"][0, 0]
    assert nxt["reward"][0, 0].item() == 0.0


def test_episode_limit_per_battle():
    env, _ = scenario_env("3m", 3)
    env.battle.steps[:] = torch.tensor([59, 58, 0])
    nxt = stop_all(env)
    assert nxt["truncated"][:, 0].tolist() == [True, False, False]
    assert nxt["done"][:, 0].tolist() == [True, False, False]
    assert not nxt["terminated"].any() and not nxt["info", "battle_won"].any()
    assert env.battle.steps.tolist() == [60, 59, 1]


def test_random_play_rewards_are_bounded():
    """Random play over whole 3m episodes (no shields, so no regeneration quirk below): every step's
    reward is >= 0 and no episode returns more than 20."""
    env = make_env("3m", 8, seed=3)
    td = env.reset()
    ret = torch.zeros(8)
    finished = 0
    for _ in range(150):
        out, td = env.step_and_maybe_reset(env.rand_action(td))
        r = out["next", "reward"][:, 0]
        assert torch.all(r >= 0)
        ret += r
        done = out["next", "done"][:, 0]
        assert torch.all(ret[done] <= 20.0 + 1e-4)
        finished += int(done.sum())
        ret[done] = 0
    assert finished > 0


def test_reward_is_absolute_value_so_enemy_shield_regeneration_pays():
    """SMAC takes abs() of the summed enemy loss: an enemy zealot regenerating 2 * 0.5 = 1 shield in a
    step where nothing else happens gives +1 / (1020 / 20) (2s3z max_reward 1020)."""
    env, _ = scenario_env("2s3z", 1)
    b = env.battle
    for i in range(5):
        place(b, 0, i, 3.0, 9.0 + 3 * i)
        freeze(b, 0, 5 + i, 28.0, 9.0 + 3 * i)
    b.shield[0, 7] = 20.0
    b.since_damage[0, 7] = 100.0  # long undamaged: regenerating
    stop_all(env)  # the edit itself is rewarded in this step (30 shield "lost")
    assert b.shield[0, 7].item() == pytest.approx(21.0)
    nxt = stop_all(env)
    assert b.shield[0, 7].item() == pytest.approx(22.0)
    assert nxt["reward"][0, 0].item() == pytest.approx(1.0 / (1020 / 20), abs=1e-6)

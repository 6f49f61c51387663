"""Observation and state layout spot checks on 2s3z (facts sheet, "Observation" and "State").

2s3z: N = M = 5, Protoss (shield field), 2 unit-type bits.
Obs: 4 move flags | 5 enemies x [attackable, dist, dx, dy, health, shield, onehot(2)] (8 each, at 4..43)
     | 4 other allies x [visible, dist, dx, dy, health, shield, onehot(2)] (8 each, at 44..75)
     | own [health, shield, onehot(2)] (at 76..79)  -> 80.
State: 5 allies x [health, cooldown, x, y, shield, onehot(2)] (7 each, 0..34)
       | 5 enemies x [health, x, y, shield, onehot(2)] (6 each, 35..64) | 5 x 11 last actions (65..119).
Unit-type one-hot: allies stalker = 0, zealot = 1; enemies swapped (zealot = 0, stalker = 1).
Units: allies 0-1 stalkers, 2-4 zealots; enemies (units 5-9) 0-1 stalkers, 2-4 zealots.
"""

import pytest
import torch

from simtools import EAST, NORTH, SOUTH, STOP, WEST, act, features_now, place, scenario_env

ENEMY0, ALLY0, OWN = 4, 44, 76


def _layout():
    env, _ = scenario_env("2s3z")
    b = env.battle
    place(b, 0, 0, 10.0, 16.0)  # agent 0 (stalker)
    place(b, 0, 1, 10.0, 18.0)  # stalker
    for k, u in enumerate(range(2, 5)):
        place(b, 0, u, 8.0, 14.0 + 2.0 * k)  # zealots
    for j in range(5):
        place(b, 0, 5 + j, 14.0, 12.0 + 2.0 * j)  # enemy j at (14, 12 + 2j): 4 .. 5.66 from agent 0
    b.health[0, 0], b.shield[0, 0] = 40.0, 20.0  # 40/80, 20/80
    b.health[0, 3], b.shield[0, 3] = 25.0, 10.0  # zealot: 25/100, 10/50
    b.health[0, 6], b.shield[0, 6] = 40.0, 60.0  # enemy stalker 1: 40/80, 60/80
    b.health[0, 8], b.shield[0, 8] = 50.0, 25.0  # enemy zealot 3: 50/100, 25/50
    return env, b


def test_own_features():
    env, _ = _layout()
    _, obs, _ = features_now(env)
    assert obs.shape[-1] == 80
    assert obs[0, 0, OWN:].tolist() == pytest.approx([0.5, 0.25, 1.0, 0.0])  # stalker
    assert obs[0, 3, OWN:].tolist() == pytest.approx([0.25, 0.2, 0.0, 1.0])  # zealot
    assert obs[0, 2, OWN:].tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0])


def test_enemy_blocks_and_swapped_one_hot():
    env, _ = _layout()
    _, obs, _ = features_now(env)
    o = obs[0, 0]
    for j in range(5):
        blk = o[ENEMY0 + 8 * j: ENEMY0 + 8 * (j + 1)]
        dx, dy = 4.0, 12.0 + 2.0 * j - 16.0
        assert blk[0] == 1.0  # within 6: attackable
        assert blk[1].item() == pytest.approx((dx * dx + dy * dy) ** 0.5 / 9, abs=1e-6)
        assert blk[2].item() == pytest.approx(dx / 9, abs=1e-6)  # target minus self
        assert blk[3].item() == pytest.approx(dy / 9, abs=1e-6)
        # Enemy stalkers (j = 0, 1) carry one-hot [0, 1], enemy zealots [1, 0].
        assert blk[6:].tolist() == ([0.0, 1.0] if j < 2 else [1.0, 0.0])
    assert o[ENEMY0 + 8 + 4: ENEMY0 + 8 + 6].tolist() == pytest.approx([0.5, 0.75])  # enemy 1 health, shield
    assert o[ENEMY0 + 24 + 4: ENEMY0 + 24 + 6].tolist() == pytest.approx([0.5, 0.5])  # enemy 3
    assert o[ENEMY0 + 4: ENEMY0 + 6].tolist() == pytest.approx([1.0, 1.0])  # enemy 0 untouched


def test_ally_blocks_skip_self_in_ascending_order():
    env, _ = _layout()
    _, obs, _ = features_now(env)
    # Agent 0 sees allies 1, 2, 3, 4; ally stalkers carry [1, 0], zealots [0, 1] (not swapped).
    o = obs[0, 0]
    blk = o[ALLY0: ALLY0 + 8]  # ally 1 (stalker) at (10, 18)
    assert blk.tolist() == pytest.approx([1.0, 2 / 9, 0.0, 2 / 9, 1.0, 1.0, 1.0, 0.0], abs=1e-6)
    blk = o[ALLY0 + 16: ALLY0 + 24]  # ally 3 (zealot) at (8, 16)
    assert blk.tolist() == pytest.approx([1.0, 2 / 9, -2 / 9, 0.0, 0.25, 0.2, 0.0, 1.0], abs=1e-6)
    # Agent 3 sees allies 0, 1, 2, 4: its first block is ally 0 (health 0.5, shield 0.25).
    o3 = obs[0, 3]
    assert o3[ALLY0 + 4: ALLY0 + 8].tolist() == pytest.approx([0.5, 0.25, 1.0, 0.0])
    assert o3[ALLY0 + 24 + 6: ALLY0 + 32].tolist() == [0.0, 1.0]  # ally 4, a zealot


def test_sight_range_is_strict():
    env, b = _layout()
    place(b, 0, 9, 19.0, 16.0)  # enemy 4 exactly 9 from agent 0: not visible
    place(b, 0, 8, 18.9, 16.0)  # enemy 3 at 8.9: visible, not attackable
    _, obs, _ = features_now(env)
    o = obs[0, 0]
    assert torch.all(o[ENEMY0 + 32: ENEMY0 + 40] == 0)
    blk = o[ENEMY0 + 24: ENEMY0 + 32]
    assert blk[0] == 0.0 and blk[1].item() == pytest.approx(8.9 / 9, abs=1e-6)
    assert blk[6:].tolist() == [1.0, 0.0]


def test_state_layout():
    env, _ = _layout()
    _, _, state = features_now(env)
    s = state[0]
    assert s.shape[-1] == 120
    # Ally 0: [health, cooldown, (x - 16) / 16, (y - 16) / 16, shield, stalker one-hot].
    assert s[0:7].tolist() == pytest.approx([0.5, 0.0, -6 / 16, 0.0, 0.25, 1.0, 0.0])
    assert s[21:28].tolist() == pytest.approx([0.25, 0.0, -0.5, 0.0, 0.2, 0.0, 1.0])  # ally 3 (zealot)
    # Enemy 1 (stalker) at (14, 14): [health, x, y, shield, one-hot [0, 1]].
    assert s[35 + 6: 35 + 12].tolist() == pytest.approx([0.5, -2 / 16, -2 / 16, 0.75, 0.0, 1.0])
    assert s[35 + 18: 35 + 24].tolist() == pytest.approx([0.5, -2 / 16, 2 / 16, 0.5, 1.0, 0.0])  # enemy 3
    assert torch.all(s[65:] == 0)


def test_last_action_one_hot_in_state():
    env, td = scenario_env("2s3z", 2)
    assert torch.all(td["state"][:, 65:] == 0)  # nothing taken yet
    actions = torch.tensor([[STOP, NORTH, SOUTH, EAST, WEST], [WEST, EAST, SOUTH, NORTH, STOP]])
    nxt = act(env, actions)
    last = nxt["state"][:, 65:].reshape(2, 5, 11)
    assert torch.equal(last, torch.nn.functional.one_hot(actions, 11).float())
    # The observation's move flags match the returned mask (obs is recomputed after the step).
    assert torch.equal(nxt["agents", "observation"][..., :4], nxt["agents", "action_mask"][..., 2:6].float())


def test_env_observations_are_recomputed_each_step():
    env, td = scenario_env("2s3z", 2)
    for _ in range(3):
        td = env.step(env.rand_action(td))["next"]
        mask, obs, state = features_now(env)
        assert torch.equal(td["agents", "observation"], obs)
        assert torch.equal(td["agents", "action_mask"], mask)
        assert torch.equal(td["state"], state)


def test_mmm_state_medivac_energy_and_one_hots():
    """MMM state ally block: [health, cooldown / max (medivac: energy / 200), x, y, one-hot(3)] (7 each);
    one-hot ids marauder 0, marine 1, medivac 2 for both teams (no swap in MMM)."""
    env, td = scenario_env("MMM")
    s = td["state"][0]
    ally = s[: 10 * 7].reshape(10, 7)
    assert ally[9, 1].item() == pytest.approx(50 / 200)  # the medivac starts with 50 energy
    assert torch.all(ally[:9, 1] == 0)  # weapons ready
    assert ally[:, 4:].argmax(-1).tolist() == [0, 0] + [1] * 7 + [2]
    enemy = s[70: 70 + 10 * 6].reshape(10, 6)  # [health, x, y, one-hot(3)]
    assert enemy[:, 3:].argmax(-1).tolist() == [0, 0] + [1] * 7 + [2]
    own = td["agents", "observation"][0, :, -4:]  # own [health, one-hot(3)]
    assert own[:, 0].tolist() == [1.0] * 10
    assert own[:, 1:].argmax(-1).tolist() == [0, 0] + [1] * 7 + [2]

"""The built-in opponent: attack-move to the allies' spawn, acquire the nearest hostile within 9,
keep a target while it is alive and within range, prefer units that can attack."""

import pytest
import torch

from simtools import freeze, place, scenario_env, stop_all

MARINE_STEP = 2.25 * 0.5  # speed * 0.5 s


def test_enemies_attack_move_towards_the_ally_spawn():
    """3m without jitter: enemies start around (23, 16) and walk to (9, 16) at 1.125 per step
    while no hostile is within 9 (allies parked at the far west end of the strip)."""
    env, _ = scenario_env("3m")
    b = env.battle
    for i in range(3):
        place(b, 0, i, 0.5, 12.0 + 4 * i)  # far west: no enemy gets within 9 in these 3 steps
    goal = torch.tensor([9.0, 16.0])
    d0 = (b.pos[0, 3:] - goal).norm(dim=-1)
    for k in range(1, 4):
        stop_all(env)
        d = (b.pos[0, 3:] - goal).norm(dim=-1)
        assert torch.allclose(d0 - d, torch.full((3,), k * MARINE_STEP), atol=1e-4)
    assert torch.all(b.target[0, 3:] == -1)


def _duel_setup():
    env, _ = scenario_env("3m")
    b = env.battle
    place(b, 0, 0, 9.0, 16.0)
    place(b, 0, 1, 3.0, 10.0)
    place(b, 0, 2, 3.0, 22.0)
    place(b, 0, 3, 16.0, 16.0)  # enemy 0: 7 from agent 0 (within 9), beyond its reach 5.75
    freeze(b, 0, 4, 28.0, 9.0)
    freeze(b, 0, 5, 28.0, 23.0)
    return env, b


def test_enemy_acquires_nearest_hostile_within_9_and_closes_to_range():
    env, b = _duel_setup()
    stop_all(env)
    assert b.target[0, 3] == 0
    # It walks 7 - 5.75 = 1.25 > 1.125 in the first step (no shot yet), then reaches range and fires.
    assert b.x[0, 3].item() == pytest.approx(16.0 - MARINE_STEP, abs=1e-4)
    assert b.health[0, 0] == 45.0
    stop_all(env)
    assert (b.pos[0, 3] - b.pos[0, 0]).norm().item() == pytest.approx(5.75, abs=1e-3)
    assert b.health[0, 0] == 39.0


def test_enemy_keeps_its_target_while_valid_then_switches():
    env, b = _duel_setup()
    stop_all(env)
    stop_all(env)
    assert b.target[0, 3] == 0
    # Agent 1 walks up closer than agent 0: the enemy keeps shooting agent 0.
    place(b, 0, 1, b.x[0, 3].item() - 2.0, 16.0 + 1.5)
    stop_all(env)
    assert b.target[0, 3] == 0
    # Agent 0 leaves the acquisition range: the enemy switches to the hostile still near it.
    place(b, 0, 0, 0.5, 8.5)
    stop_all(env)
    assert b.target[0, 3] == 1


def test_enemy_switches_when_its_target_dies():
    env, b = _duel_setup()
    stop_all(env)
    stop_all(env)
    place(b, 0, 1, 9.0, 18.0)
    b.health[0, 0] = 1.0
    b.cooldown[0, 3] = 0.0
    stop_all(env)
    assert b.health[0, 0] == 0
    assert b.target[0, 3] == 1


def test_enemy_prefers_units_that_can_shoot_back():
    """MMM: an enemy marine with the allied medivac 3 away and an allied marine 5 away shoots the marine."""
    env, _ = scenario_env("MMM")
    b = env.battle
    for u in range(9):
        place(b, 0, u, 2.0, 9.0 + 1.6 * u)
    place(b, 0, 9, 13.0, 16.0)  # medivac
    place(b, 0, 4, 10.0, 12.0)  # marine agent 4
    place(b, 0, 12, 14.0, 13.0)  # enemy marine 0: 3.16 from the medivac, 4.12 from agent 4
    for e in [10, 11] + list(range(13, 20)):
        freeze(b, 0, e, 28.0, 9.0 + 0.8 * (e - 10))
    stop_all(env)
    assert b.target[0, 12] == 4
    assert b.health[0, 9] == 150.0

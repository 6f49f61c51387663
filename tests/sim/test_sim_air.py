"""Ground-only weapons cannot hit the medivac (an air unit)."""

import torch

from ovmse.envs import make_env
from ovmse.envs.features import compute_features


def _freeze_enemies(battle, n_agents):
    battle.order[:, n_agents:] = 0  # IDLE
    battle.ai[n_agents:] = False  # stop the built-in opponent from acquiring targets


def test_marauder_order_on_medivac_is_offered_but_refused():
    env = make_env("MMM", 1, seed=0, spawn_jitter=0.0, check_actions=False)
    b, N = env.battle, env.spec.n_agents
    _freeze_enemies(b, N)
    # Everyone far away except marauder 0 and the enemy medivac (unit N + 9), 3 apart.
    b.x[:] = torch.linspace(1, 31, b.n_units)
    b.y[:] = 23.0
    b.x[0, 0], b.y[0, 0] = 9.0, 16.0
    b.x[0, N + 9], b.y[0, N + 9] = 12.0, 16.0
    mask = compute_features(b, env.tables)[0]  # the mask for the new layout
    assert bool(mask[0, 0, 6 + 9])  # SMAC offers the attack
    actions = torch.ones(1, N, dtype=torch.long)  # everyone stops
    actions[0, 0] = 6 + 9
    health = b.health[0, N + 9].item()
    for _ in range(4):
        b.apply_actions(actions)
        b.advance()
    assert b.health[0, N + 9].item() == health  # a ground-only weapon never hurts it
    assert int(b.target[0, 0]) == -1  # the order was refused


def test_marine_hits_medivac():
    env = make_env("MMM", 1, seed=0, spawn_jitter=0.0, check_actions=False)
    b, N = env.battle, env.spec.n_agents
    _freeze_enemies(b, N)
    b.x[:] = torch.linspace(1, 31, b.n_units)
    b.y[:] = 23.0
    b.x[0, 2], b.y[0, 2] = 9.0, 16.0  # marine 2
    b.x[0, N + 9], b.y[0, N + 9] = 12.0, 16.0
    actions = torch.ones(1, N, dtype=torch.long)
    actions[0, 2] = 6 + 9
    b.apply_actions(actions)
    b.advance()
    assert b.health[0, N + 9].item() == 150 - (6 - 1)  # 6 damage minus 1 armor


def test_ai_marauders_ignore_medivacs():
    env = make_env("MMM", 1, seed=0, spawn_jitter=0.0)
    ut = env.battle.units
    N = env.spec.n_agents
    # Enemy marauders (N, N+1) may not target the allied medivac (9); enemy marines may.
    assert not bool(ut.can_target[N, 9]) and not bool(ut.can_target[N + 1, 9])
    assert bool(ut.can_target[N + 2, 9])
    assert bool(ut.order_target[0, N + 9])

"""Map tables, dimensions and TorchRL specs of the embedded simulator, for every SMAC map.

Expected numbers are copied literally from /work/shared/spec/smac-facts.md.
"""

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from ovmse.envs import MAPS, get_map, make_env
from ovmse.envs.units import UNIT_TYPES

# map: (n_agents, n_enemies, episode_limit, unit-type bits, obs, state, n_actions, max_reward)
FACTS = {
    "3m": (3, 3, 60, 0, 30, 48, 9, 365),
    "8m": (8, 8, 120, 0, 80, 168, 14, 640),
    "2s3z": (5, 5, 120, 2, 80, 120, 11, 1020),
    "3s5z": (8, 8, 150, 2, 128, 216, 14, 1510),
    "5m_vs_6m": (5, 6, 70, 0, 55, 98, 12, 530),
    "6h_vs_8z": (6, 8, 150, 0, 78, 140, 14, 1480),
    "3s_vs_5z": (3, 5, 250, 0, 48, 68, 11, 1000),
    "MMM": (10, 10, 150, 3, 160, 290, 16, 1015),
    "10m_vs_11m": (10, 11, 150, 0, 105, 243, 17, 805),
}

# Rosters from the facts sheet, in SMAC agent-id order (stalkers first; MMM: marauders, marines, medivac).
ROSTERS = {
    "3m": (["marine"] * 3, ["marine"] * 3),
    "8m": (["marine"] * 8, ["marine"] * 8),
    "2s3z": (["stalker"] * 2 + ["zealot"] * 3,) * 2,
    "3s5z": (["stalker"] * 3 + ["zealot"] * 5,) * 2,
    "5m_vs_6m": (["marine"] * 5, ["marine"] * 6),
    "6h_vs_8z": (["hydralisk"] * 6, ["zealot"] * 8),
    "3s_vs_5z": (["stalker"] * 3, ["zealot"] * 5),
    "MMM": ((["marauder"] * 2 + ["marine"] * 7 + ["medivac"]),) * 2,
    "10m_vs_11m": (["marine"] * 10, ["marine"] * 11),
}

# Unit table of the facts sheet: health, shield, armor, damage, cooldown, range, speed, radius.
UNIT_FACTS = {
    "marine": (45, 0, 0, 6, 0.861, 5, 2.25, 0.375),
    "marauder": (125, 0, 1, 10, 1.5, 6, 2.25, 0.5625),
    "stalker": (80, 80, 1, 13, 1.87, 6, 2.953, 0.625),
    "zealot": (100, 50, 1, 8, 1.2, 0.1, 2.25, 0.5),
    "colossus": (200, 150, 1, 10, 1.5, 7, 2.25, 1.0),
    "hydralisk": (80, 0, 0, 12, 0.825, 5, 2.25, 0.625),
    "zergling": (35, 0, 0, 5, 0.696, 0.1, 2.953, 0.375),
}

SPAWNS = {"6h_vs_8z": ((14.6, 9.5), (14.4, 16.8))}  # others: allies (9, 16), enemies (23, 16)


def test_exactly_the_nine_smac_maps():
    assert set(MAPS) == set(FACTS)


def test_unknown_map_and_backend_are_rejected():
    with pytest.raises(ValueError, match="3m"):  # the message lists the known maps
        get_map("4m")
    with pytest.raises(ValueError):
        make_env("3m", 1, backend="sc2")


@pytest.mark.parametrize("name", sorted(FACTS))
def test_map_table(name):
    n_agents, n_enemies, limit, bits, obs, state, n_actions, max_reward = FACTS[name]
    spec = get_map(name)
    assert spec.n_agents == n_agents
    assert spec.n_enemies == n_enemies
    assert spec.episode_limit == limit
    assert spec.unit_type_bits == bits
    assert spec.obs_dim == obs
    assert spec.state_dim == state
    assert spec.n_actions == n_actions == 6 + n_enemies
    # max_reward = n_enemies * 10 + 200 + sum(health_max + shield_max); e.g. 3m: 30 + 200 + 3 * 45 = 365,
    # 2s3z: 50 + 200 + 2 * 160 + 3 * 150 = 1020, MMM: 100 + 200 + 2 * 125 + 7 * 45 + 150 = 1015.
    assert spec.max_reward == pytest.approx(max_reward)
    allies, enemies = ROSTERS[name]
    assert list(spec.allies) == allies
    assert list(spec.enemies) == enemies


@pytest.mark.parametrize("name", sorted(UNIT_FACTS))
def test_unit_stats(name):
    u = UNIT_TYPES[name]
    health, shield, armor, damage, cooldown, rng, speed, radius = UNIT_FACTS[name]
    assert (u.health, u.shield, u.armor, u.damage) == (health, shield, armor, damage)
    assert u.cooldown == pytest.approx(cooldown)
    assert u.weapon_range == pytest.approx(rng)
    assert u.speed == pytest.approx(speed)
    assert u.radius == pytest.approx(radius)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_env_specs_and_shapes(name):
    n_agents, n_enemies, _, _, obs, state, n_actions, _ = FACTS[name]
    B = 2
    env = make_env(name, B, seed=1)
    check_env_specs(env, seed=1)
    td = env.reset()
    assert td["agents", "observation"].shape == (B, n_agents, obs)
    assert td["agents", "observation"].dtype == torch.float32
    assert td["agents", "action_mask"].shape == (B, n_agents, n_actions)
    assert td["agents", "action_mask"].dtype == torch.bool
    assert td["state"].shape == (B, state)
    out = env.step(env.rand_action(td))["next"]
    assert out["agents", "observation"].shape == (B, n_agents, obs)
    assert out["state"].shape == (B, state)
    for key in ("reward", "done", "terminated", "truncated", ("info", "battle_won")):
        assert out[key].shape == (B, 1), key
    for key in ("done", "terminated", "truncated", ("info", "battle_won")):
        assert out[key].dtype == torch.bool, key
    assert env.action_spec["agents", "action"].shape == (B, n_agents)
    assert env.action_spec["agents", "action"].space.n == n_actions


@pytest.mark.parametrize("name", sorted(FACTS))
def test_initial_state(name):
    """Fresh battles: full health and shields, medivac energy 50, teams at their spawns, no overlaps."""
    env = make_env(name, 3, seed=2, spawn_jitter=0.0)
    env.reset()
    b = env.battle
    N = env.spec.n_agents
    allies, enemies = ROSTERS[name]
    names = allies + enemies
    hp = torch.tensor([UNIT_FACTS.get(n, (150, 0))[0] for n in names], dtype=torch.float32)
    sh = torch.tensor([UNIT_FACTS.get(n, (150, 0))[1] for n in names], dtype=torch.float32)
    assert torch.equal(b.health, hp.expand_as(b.health))
    assert torch.equal(b.shield, sh.expand_as(b.shield))
    medivac = torch.tensor([n == "medivac" for n in names])
    assert torch.all(b.energy[:, medivac] == 50.0)
    assert torch.all(b.steps == 0)
    ally_spawn, enemy_spawn = SPAWNS.get(name, ((9.0, 16.0), (23.0, 16.0)))
    pos = b.pos
    assert torch.allclose(pos[:, :N].mean(1), torch.tensor(ally_spawn).expand(3, 2), atol=1.5)
    assert torch.allclose(pos[:, N:].mean(1), torch.tensor(enemy_spawn).expand(3, 2), atol=1.5)
    assert bool(b.walkable_at(b.x, b.y).all())
    radius = torch.tensor([UNIT_FACTS[n][7] if n in UNIT_FACTS else 0.75 for n in names])
    d = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
    ground = ~medivac
    pair = ground[:, None] & ground[None, :] & ~torch.eye(len(names), dtype=torch.bool)
    assert bool((d >= (radius[:, None] + radius[None, :]) - 1e-4)[:, pair].all()), "units overlap at spawn"

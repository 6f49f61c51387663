"""Action rules: availability masks, attack range, walkable edges, invalid actions, move orders."""

import math

import pytest
import torch

from ovmse.envs.terrain import walkable_grid
from simtools import EAST, NORTH, SOUTH, STOP, WEST, act, features_now, freeze, place, scenario_env, stop_all

PARKED = -1000.0  # dead units are parked far below this


def test_masks_after_reset_every_map_rule():
    """Alive agents: stop available, no-op not; teams spawn 14 apart (> range 6) so no attack is available."""
    env, td = scenario_env("3m", 2)
    mask = td["agents", "action_mask"]
    assert mask[..., 1].all() and not mask[..., 0].any()
    assert not mask[..., 6:].any()
    # At (9, 16) on the y in [8, 24] strip every direction is free.
    assert mask[..., 2:6].all()
    # The observation's first four entries are the N, S, E, W move flags.
    assert torch.equal(td["agents", "observation"][..., :4], mask[..., 2:6].float())


@pytest.mark.parametrize(
    "offset, available",
    [((5.9, 0.0), True), ((6.1, 0.0), False), ((0.0, -5.99), True), ((0.0, 6.01), False),
     ((4.2, 4.2), True),  # |d| = 5.94
     ((4.3, 4.3), False)],  # |d| = 6.08
)
def test_attack_range_is_centre_distance_6(offset, available):
    env, _ = scenario_env("3m")
    b = env.battle
    place(b, 0, 0, 10.0, 16.0)
    place(b, 0, 3, 10.0 + offset[0], 16.0 + offset[1])  # enemy 0
    mask, obs, _ = features_now(env)
    assert bool(mask[0, 0, 6]) is available
    # Enemy 0's block starts at 4: [attackable, dist/9, dx/9, dy/9, health]; it is visible (< 9) either way.
    assert obs[0, 0, 4] == float(available)
    dist = math.hypot(*offset)
    assert obs[0, 0, 5].item() == pytest.approx(dist / 9, abs=1e-5)
    assert obs[0, 0, 6].item() == pytest.approx(offset[0] / 9, abs=1e-5)
    assert obs[0, 0, 7].item() == pytest.approx(offset[1] / 9, abs=1e-5)
    assert obs[0, 0, 8].item() == pytest.approx(1.0)


def test_dead_enemy_is_not_attackable_even_in_range():
    env, _ = scenario_env("3m")
    b = env.battle
    place(b, 0, 0, 10.0, 16.0)
    place(b, 0, 3, 13.0, 16.0)
    place(b, 0, 4, 13.0, 17.0)
    b.health[0, 3] = 0.0  # enemy 0 dead (left on the map on purpose)
    mask, obs, _ = features_now(env)
    assert not mask[0, 0, 6]
    assert mask[0, 0, 7]
    assert torch.all(obs[0, 0, 4:9] == 0)  # a dead enemy is invisible: all zeros
    assert obs[0, 0, 9] == 1.0  # enemy 1 still attackable


def test_dead_agent_mask_obs_and_noop_rules():
    """An agent killed during a step gets mask [1, 0, ...], a zero observation, and only the no-op."""
    env, _ = scenario_env("3m")
    b = env.battle
    place(b, 0, 0, 9.0, 12.0)
    place(b, 0, 1, 9.0, 16.0)
    place(b, 0, 2, 9.0, 20.0)
    b.health[0, 0] = 1.0
    place(b, 0, 3, 12.0, 12.0)  # enemy 0: 3 from agent 0 (the nearest hostile) -> fires at loop 0
    nxt = stop_all(env)
    mask = nxt["agents", "action_mask"][0]
    expected_dead = torch.zeros(env.spec.n_actions, dtype=torch.bool)
    expected_dead[0] = True
    assert torch.equal(mask[0], expected_dead)
    assert torch.all(nxt["agents", "observation"][0, 0] == 0)
    assert mask[1, 1] and not mask[1, 0]
    # State: dead ally block [health, cooldown, x, y] is zero; the dead unit is parked off the map.
    assert torch.all(nxt["state"][0, 0:4] == 0)
    assert b.x[0, 0] < PARKED and b.y[0, 0] < PARKED
    # Agents 1, 2 still see agent 0 as invisible (visible flag 0) in their ally blocks.
    assert nxt["agents", "observation"][0, 1, 4 + 3 * 5] == 0

    with pytest.raises(ValueError, match=r"agent 0"):
        act(env, [STOP, STOP, STOP])  # dead agent may only no-op
    with pytest.raises(ValueError, match=r"agent 1"):
        act(env, [0, 0, STOP])  # alive agent may not no-op
    act(env, [0, STOP, STOP])  # accepted


def test_unavailable_action_raises_and_leaves_state_untouched():
    env, _ = scenario_env("3m", 2)
    b = env.battle
    before = (b.x.clone(), b.health.clone(), b.steps.clone())
    actions = torch.full((2, 3), STOP)
    actions[1, 2] = 6  # attack enemy 0, 14 away: not available
    with pytest.raises(ValueError, match=r"battle 1, agent 2") as err:
        act(env, actions)
    assert "6" in str(err.value)
    assert torch.equal(b.x, before[0]) and torch.equal(b.health, before[1]) and torch.equal(b.steps, before[2])
    with pytest.raises(ValueError):
        act(env, torch.full((2, 3), env.spec.n_actions))  # out of the action space
    with pytest.raises(ValueError):
        act(env, torch.full((2, 3), -1))


def test_check_actions_false_accepts_unavailable_actions():
    env, _ = scenario_env("3m", 1, check_actions=False)
    x0 = env.battle.x[0, :3].clone()
    act(env, [6, 7, 8])  # attacks on enemies 14 away: not available, but no error either
    # The orders are executed as given: the marines walk east towards their targets (no shot yet).
    assert torch.all(env.battle.x[0, :3] > x0)
    assert torch.all(env.battle.health[0, 3:] == 45.0)


def _spread_allies(env, b_idx, keep):
    """Move every ally but ``keep`` out of the way (x = 3, y spaced 2 apart, on the strip)."""
    k = 0
    for u in range(env.spec.n_agents):
        if u != keep:
            place(env.battle, b_idx, u, 3.0, 10.0 + 2.0 * k)
            k += 1


@pytest.mark.parametrize("map_name, agent, speed", [("3m", 1, 2.25), ("2s3z", 0, 2.953), ("2s3z", 3, 2.25)])
def test_move_order_distance_per_step(map_name, agent, speed):
    """A move order goes 2 cells; in one 0.5 s step the unit covers speed * 0.5 (marine 1.125, stalker 1.4765)."""
    env, _ = scenario_env(map_name, 4, check_actions=False)
    b = env.battle
    N = env.spec.n_agents
    directions = [NORTH, SOUTH, EAST, WEST]
    expected = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]], dtype=torch.float32) * speed * 0.5
    for bi in range(4):
        _spread_allies(env, bi, agent)
        place(b, bi, agent, 9.0, 16.0)
    mask, _, _ = features_now(env)
    assert mask[:, agent, 2:6].all()
    start = b.pos[:, agent].clone()
    actions = torch.full((4, N), STOP)
    for bi, d in enumerate(directions):
        actions[bi, agent] = d
    act(env, actions)
    assert torch.allclose(b.pos[:, agent] - start, expected, atol=1e-4)
    # A second identical order: again speed * 0.5 (the new order's point is 2 further on).
    act(env, actions)
    assert torch.allclose(b.pos[:, agent] - start, 2 * expected, atol=1e-4)
    # Stopped allies did not move.
    others = [u for u in range(N) if u != agent]
    assert torch.allclose(b.pos[:, others], torch.stack([torch.full((N - 1,), 3.0), 10.0 + 2.0 * torch.arange(N - 1.0)], -1).expand(4, -1, -1))


def test_strip_edges_block_moves():
    """Strip maps are walkable for y in [8, 24): near y = 8 no south, near y = 24 no north."""
    env, _ = scenario_env("3m", 1, check_actions=False)
    b = env.battle
    place(b, 0, 0, 9.0, 8.5)
    place(b, 0, 1, 9.0, 23.5)
    place(b, 0, 2, 9.0, 16.0)
    mask, obs, _ = features_now(env)
    n, s, e, w = mask[0, 0, 2:6].tolist()
    assert (n, s, e, w) == (True, False, True, True)
    n, s, e, w = mask[0, 1, 2:6].tolist()
    assert (n, s, e, w) == (False, True, True, True)
    assert obs[0, 0, :4].tolist() == [1.0, 0.0, 1.0, 1.0]
    # Forcing the blocked order does not take the unit off the walkable strip.
    for _ in range(3):
        act(env, [SOUTH, NORTH, STOP])
        assert 8.0 <= b.y[0, 0] < 9.0
        assert 23.0 <= b.y[0, 1] < 24.0
    assert bool(b.walkable_at(b.x, b.y)[0, :3].all())


def test_open_map_has_no_strip_edge():
    """3s_vs_5z is fully open: at y = 8.5 a stalker may still move south."""
    env, _ = scenario_env("3s_vs_5z", 1)
    place(env.battle, 0, 0, 9.0, 8.5)
    place(env.battle, 0, 1, 9.0, 4.5)
    mask, _, _ = features_now(env)
    assert mask[0, 0, 2:6].all() and mask[0, 1, 2:6].all()


def test_octagon_shape():
    """6h_vs_8z is an octagonal plateau: each row's walkable cells are one run, and the runs narrow
    toward the top and bottom (cut corners), unlike the full-width strip."""
    g = walkable_grid("octagon")
    rows = [g[:, j].nonzero().flatten() for j in range(32)]
    widths = [len(r) for r in rows]
    for r in rows:
        if len(r):
            assert r[-1] - r[0] + 1 == len(r)  # contiguous run
    filled = [j for j in range(32) if widths[j]]
    top, bottom, mid = filled[-1], filled[0], filled[len(filled) // 2]
    assert widths[top] < widths[mid] and widths[bottom] < widths[mid]
    assert widths[mid] < 32  # cliffs on the left and right too
    # Both spawns are on the plateau.
    assert g[14, 9] and g[14, 16]
    strip = walkable_grid("strip")
    assert len(set(int(w) for w in strip.sum(0).tolist()) - {0}) == 1  # the strip's rows all have the same width


def test_octagon_edges_block_moves():
    env, _ = scenario_env("6h_vs_8z", 1, check_actions=False)
    b = env.battle
    N = env.spec.n_agents
    g = walkable_grid("octagon")
    # Bottom edge: the lowest walkable cell in the spawn column.
    col = 14
    j_min = int(g[col].nonzero().min())
    # A diagonal edge: the row above the widest band whose right end is shorter than the widest row's.
    right = [int(g[:, j].nonzero().max()) if g[:, j].any() else -1 for j in range(32)]
    widest = max(right)
    j_diag = max(j for j in range(32) if right[j] == widest) + 2
    i_diag = right[j_diag]
    assert i_diag < widest  # a cut corner: this row ends before the widest rows do
    for u in range(N):
        place(b, 0, u, 12.0 + u, 14.0)
    for e in range(env.spec.n_enemies):
        freeze(b, 0, N + e, 10.0 + e, 21.5)  # more than 9 from every hydralisk below
    place(b, 0, 0, col + 0.5, j_min + 0.5)
    place(b, 0, 1, i_diag + 0.5, j_diag + 0.5)
    mask, _, _ = features_now(env)
    n, s, e, w = mask[0, 0, 2:6].tolist()
    assert (n, s, e, w) == (True, False, True, True)
    n, s, e, w = mask[0, 1, 2:6].tolist()
    assert not e and w and s
    assert n == bool(g[i_diag, j_diag + 1])
    # Forced orders into the cliff do not leave the plateau.
    for _ in range(3):
        act(env, [SOUTH, EAST] + [STOP] * (N - 2))
        assert bool(b.walkable_at(b.x[:, :2], b.y[:, :2]).all())
    assert b.y[0, 0] >= j_min and b.x[0, 1] < i_diag + 1


def test_idle_ally_never_shoots_by_itself():
    """Allies never pick targets: a stopped marine next to an enemy does not fire, the enemy AI does."""
    env, _ = scenario_env("3m")
    b = env.battle
    place(b, 0, 0, 9.0, 12.0)
    place(b, 0, 1, 9.0, 16.0)
    place(b, 0, 2, 9.0, 20.0)
    place(b, 0, 3, 12.0, 12.0)
    freeze(b, 0, 4, 28.0, 9.0)
    freeze(b, 0, 5, 28.0, 23.0)
    for _ in range(4):
        stop_all(env)
    assert b.health[0, 3] == 45.0
    assert b.health[0, 0] < 45.0


def test_ordered_attack_walks_into_range_and_fires():
    """Attack is available at centre distance 5.9 but a marine reaches 5 + 0.375 * 2 = 5.75: it closes in, then fires."""
    env, _ = scenario_env("3m", 1, check_actions=False)
    b = env.battle
    place(b, 0, 0, 9.0, 12.0)
    place(b, 0, 1, 3.0, 16.0)
    place(b, 0, 2, 3.0, 20.0)
    place(b, 0, 3, 14.9, 12.0)
    freeze(b, 0, 3, 14.9, 12.0)  # the enemy stands still (it still acquires agent 0 within 9 and approaches)
    freeze(b, 0, 4, 28.0, 9.0)
    freeze(b, 0, 5, 28.0, 23.0)
    mask, _, _ = features_now(env)
    assert mask[0, 0, 6]
    act(env, [6, STOP, STOP])
    assert b.health[0, 3] == pytest.approx(45.0 - 6.0)
    d = (b.pos[0, 0] - b.pos[0, 3]).norm()
    assert d <= 5.75 + 1e-3


def test_melee_attack_order_chases_into_contact():
    """2s3z: allied zealot 2 ordered to attack enemy zealot 2 (unit 7) 5 away. Zealot reach edge to edge
    is 0.1 + 0.5 + 0.5 = 1.1; both walk 1.125 per step towards each other (the enemy acquires the
    zealot within 9), so they meet during step 2, and 2 hits of 8 hit the 50 shield at once."""
    env, _ = scenario_env("2s3z", 1, check_actions=False)
    b = env.battle
    for u in (0, 1, 3, 4):
        place(b, 0, u, 3.0, 9.0 + 1.5 * u)
    place(b, 0, 2, 9.0, 16.0)
    place(b, 0, 7, 14.0, 16.0)
    for u in (5, 6, 8, 9):
        freeze(b, 0, u, 28.0, 9.0 + 1.5 * u - 7.0)
    mask, _, _ = features_now(env)
    assert mask[0, 2, 6 + 2]
    acts = [STOP, STOP, 6 + 2, STOP, STOP]
    act(env, acts)
    assert b.shield[0, 7] == 50.0 and b.shield[0, 2] == 50.0  # still 5 - 2.25 = 2.75 apart
    act(env, acts)
    d = (b.pos[0, 2] - b.pos[0, 7]).norm().item()
    # In melee reach (1.1), and not overlapping (radii 0.5 + 0.5).
    assert 1.0 - 1e-3 <= d <= 1.1 + 1e-3
    assert b.shield[0, 7].item() == pytest.approx(50.0 - 16.0)
    assert b.shield[0, 2].item() == pytest.approx(50.0 - 16.0)


def test_stalker_fires_at_once_at_centre_distance_6():
    """Stalker on stalker reaches 6 + 0.625 * 2 = 7.25 edge to edge: at centre distance 6 it fires without moving."""
    env, _ = scenario_env("2s3z", 1, check_actions=False)
    b = env.battle
    place(b, 0, 0, 9.0, 16.0)
    for u in range(1, 5):
        place(b, 0, u, 3.0, 9.0 + 3.0 * u)
    place(b, 0, 5, 15.0, 16.0)
    freeze(b, 0, 5, 15.0, 16.0)
    for u in range(6, 10):
        freeze(b, 0, u, 28.0, 9.0 + 3.0 * (u - 5))
    mask, _, _ = features_now(env)
    assert mask[0, 0, 6]
    act(env, [6, STOP, STOP, STOP, STOP])
    assert b.x[0, 0].item() == pytest.approx(9.0) and b.y[0, 0].item() == pytest.approx(16.0)
    assert b.shield[0, 5].item() == pytest.approx(80.0 - 18.0)


def test_ordered_unit_goes_idle_when_its_target_dies():
    """After its target dies an agent-controlled unit has no target and no order (it stands idle)."""
    env, _ = scenario_env("3m", 1, check_actions=False)
    b = env.battle
    place(b, 0, 0, 9.0, 16.0)
    place(b, 0, 1, 3.0, 10.0)
    place(b, 0, 2, 3.0, 22.0)
    place(b, 0, 3, 13.0, 16.0)
    place(b, 0, 4, 13.0, 17.0)  # another enemy just as close
    freeze(b, 0, 5, 28.0, 23.0)
    b.health[0, 3] = 1.0
    act(env, [6, STOP, STOP])
    assert b.health[0, 3] == 0
    assert b.target[0, 0] == -1 and b.order[0, 0] == 0

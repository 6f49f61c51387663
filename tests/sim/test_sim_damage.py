"""Damage math (shields, armor, bonus damage, double hits, minimum damage), rate of fire through
real env steps, shield regeneration and medivac healing.

Expected values are worked out by hand from the facts sheet's unit table.
"""

import pytest
import torch

from simtools import STOP, act, features_now, freeze, place, scenario_env, shots_fired_by_step, stop_all

# 2s3z unit indices: allies 0-1 stalkers, 2-4 zealots; enemies 5-6 stalkers, 7-9 zealots.
# MMM unit indices: allies 0-1 marauders, 2-8 marines, 9 medivac; enemies 10-11 marauders, 12-18 marines, 19 medivac.


def damage(env, shots, shield=None):
    """(shield_loss, health_loss) [U] of battle 0 when each (attacker, target) in ``shots`` fires once."""
    b = env.battle
    U = b.n_units
    fire = torch.zeros(1, U, dtype=torch.bool)
    t_idx = torch.zeros(1, U, dtype=torch.long)
    for attacker, target in shots:
        fire[0, attacker] = True
        t_idx[0, attacker] = target
    if shield is not None:
        for u, s in shield.items():
            b.shield[0, u] = s
    s_loss, h_loss = b._damage(fire, t_idx)
    return s_loss[0], h_loss[0]


@pytest.mark.parametrize(
    "shots, shield, target, exp_shield, exp_health",
    [
        # Stalker on stalker: 13 + 5 (armored) = 18. Shield 5 absorbs 5; the remaining 13 - 1 armor = 12.
        ([(0, 5)], 5.0, 5, 5.0, 12.0),
        # Full shield 80 absorbs the whole 18; armor never applies to shields.
        ([(0, 5)], 80.0, 5, 18.0, 0.0),
        # Stalker on zealot (light: no bonus), no shield: 13 - 1 = 12.
        ([(0, 7)], 0.0, 7, 0.0, 12.0),
        # Zealot on stalker, no shield: two hits of 8, armor per hit: 2 * (8 - 1) = 14.
        ([(2, 5)], 0.0, 5, 0.0, 14.0),
        # Zealot on zealot with shield 10: hit 1 -> shield 2; hit 2 -> 2 to shield, 6 - 1 = 5 to health.
        ([(2, 7)], 10.0, 7, 10.0, 5.0),
        # Zealot on full-shield zealot: 16 to shield only.
        ([(2, 7)], 50.0, 7, 16.0, 0.0),
        # Two stalkers on one stalker with shield 20 in the same sub-step: hit 1 (18) -> shield 2;
        # hit 2: 2 to shield, 16 - 1 = 15 to health.
        ([(0, 5), (1, 5)], 20.0, 5, 20.0, 15.0),
        # Three zealots (6 hits of 8) on a 0-shield stalker: 6 * 7 = 42.
        ([(2, 5), (3, 5), (4, 5)], 0.0, 5, 0.0, 42.0),
    ],
)
def test_damage_protoss(shots, shield, target, exp_shield, exp_health):
    env, _ = scenario_env("2s3z")
    s_loss, h_loss = damage(env, shots, {target: shield})
    assert s_loss[target].item() == pytest.approx(exp_shield)
    assert h_loss[target].item() == pytest.approx(exp_health)
    others = [u for u in range(env.battle.n_units) if u != target]
    assert torch.all(s_loss[others] == 0) and torch.all(h_loss[others] == 0)


@pytest.mark.parametrize(
    "attacker, target, exp_health",
    [
        (0, 10, 19.0),  # marauder on marauder (armored, armor 1): 10 + 10 - 1 = 19
        (0, 12, 10.0),  # marauder on marine (light, armor 0): 10
        (2, 10, 5.0),  # marine on marauder: 6 - 1 = 5
        (2, 12, 6.0),  # marine on marine: 6
    ],
)
def test_damage_bonus_vs_armored(attacker, target, exp_health):
    env, _ = scenario_env("MMM")
    s_loss, h_loss = damage(env, [(attacker, target)])
    assert h_loss[target].item() == pytest.approx(exp_health)
    assert s_loss[target].item() == 0.0


def test_hydralisk_on_zealot():
    env, _ = scenario_env("6h_vs_8z")  # hydralisks 0-5, zealots 6-13
    s_loss, h_loss = damage(env, [(0, 6)], {6: 4.0})
    # 12 damage: 4 to the shield, 8 - 1 armor = 7 to health.
    assert (s_loss[6].item(), h_loss[6].item()) == pytest.approx((4.0, 7.0))


def test_minimum_health_damage_is_half():
    """However high the armor, each hit on health deals at least 0.5."""
    env, _ = scenario_env("2s3z")
    env.battle.units.armor[5] = 20.0  # give enemy stalker 5 absurd armor
    _, h_loss = damage(env, [(0, 5)], {5: 0.0})
    assert h_loss[5].item() == pytest.approx(0.5)
    _, h_loss = damage(env, [(2, 5)], {5: 0.0})  # zealot: two hits -> 2 * 0.5
    assert h_loss[5].item() == pytest.approx(1.0)


def _marine_duel(substeps=8):
    """3m: agent 0 and enemy 0 five apart (inside both reaches 5.75); everyone else out of the way.

    The state is edited after reset, so the env's action check (which uses the mask it last
    returned) is off; the attack's availability is asserted from the current state instead.
    """
    env, _ = scenario_env("3m", 1, check_actions=False, substeps=substeps)
    b = env.battle
    place(b, 0, 0, 9.0, 16.0)
    place(b, 0, 1, 3.0, 10.0)
    place(b, 0, 2, 3.0, 22.0)
    place(b, 0, 3, 14.0, 16.0)
    freeze(b, 0, 4, 28.0, 9.0)
    freeze(b, 0, 5, 28.0, 23.0)
    mask, _, _ = features_now(env)
    assert mask[0, 0, 6]
    return env, b


def test_marine_duel_rate_of_fire_and_reward():
    """6 damage per shot, first shot at once, then every 0.861 s: 6 shots in 10 steps (5 s).

    Shot n is due at (n - 1) * 0.861 s = (n - 1) * 13.776 loops: loops 0, 13.8, 27.6, 41.3, 55.1,
    68.9 (the 7th, 82.7, is after the 80 loops of 10 steps). Env step k covers loops 8(k-1)..8k-1,
    so rounding a due shot to the loop before or after it bounds the count after each step.
    The enemy marine (AI) acquires agent 0 at once and fires back on the same schedule.
    Reward per step = damage dealt / (max_reward / 20) = damage / 18.25.
    """
    import math

    env, b = _marine_duel()
    due = [n * 0.861 * 16 for n in range(10)]
    lo = [sum(math.ceil(t) <= 8 * k - 1 for t in due) for k in range(1, 11)]
    hi = [sum(math.floor(t) <= 8 * k - 1 for t in due) for k in range(1, 11)]
    assert lo == shots_fired_by_step(0.861, 10) == [1, 2, 2, 3, 3, 4, 4, 5, 6, 6]
    assert hi == [1, 2, 2, 3, 3, 4, 5, 5, 6, 6]
    prev_health = 45.0
    for k in range(10):
        nxt = act(env, [6, STOP, STOP])
        health = b.health[0, 3].item()
        shots = (45.0 - health) / 6.0
        assert shots == pytest.approx(round(shots)), "damage comes in whole shots of 6"
        assert lo[k] <= round(shots) <= hi[k], f"step {k + 1}: {shots} shots"
        assert b.health[0, 0].item() == pytest.approx(health), "the enemy fires back at the same rate"
        assert nxt["reward"][0, 0].item() == pytest.approx((prev_health - health) / (365 / 20), abs=1e-5)
        assert not nxt["done"][0, 0]
        prev_health = health
    assert b.health[0, 3].item() == pytest.approx(45.0 - 6 * 6)


@pytest.mark.parametrize("substeps", [1, 2, 16])
def test_rate_of_fire_does_not_depend_on_substeps(substeps):
    """Cooldowns carry their remainder: 6 shots in 10 steps however finely a step is divided."""
    env, b = _marine_duel(substeps)
    for _ in range(10):
        act(env, [6, STOP, STOP])
    assert b.health[0, 3].item() == pytest.approx(45.0 - 36.0)
    assert b.health[0, 0].item() == pytest.approx(45.0 - 36.0)


def test_cooldown_state_feature_after_a_shot():
    """After firing at loop 0, 0.861 - 0.5 = 0.361 s remain = 5.776 loops; the state shows 5.776 / 15."""
    env, b = _marine_duel()
    nxt = act(env, [6, STOP, STOP])
    # 3m state ally block: [health, cooldown / max_cooldown, (x - 16) / 16, (y - 16) / 16].
    assert nxt["state"][0, 1].item() == pytest.approx(0.361 * 16 / 15, abs=1e-4)
    assert nxt["state"][0, 0].item() == pytest.approx(39 / 45, abs=1e-5)
    assert nxt["state"][0, 2].item() == pytest.approx((9 - 16) / 16, abs=1e-5)
    assert nxt["state"][0, 3].item() == pytest.approx(0.0, abs=1e-5)
    # Agent 1 never fired: cooldown 0.
    assert nxt["state"][0, 5].item() == 0.0


def test_shield_regeneration_waits_10_seconds():
    """An enemy stalker hits allied stalker 0 at loop 0 (18 to the shield: 80 -> 62), then leaves.

    Shields regenerate 2 per second once 10 s have passed without damage: from loop 160 (= 10 s)
    on, which is step 21 (loops 160-167). So the shield is exactly 62 after 20 steps, then grows
    by 2 * 0.5 = 1 per step, and health never regenerates.
    """
    env, _ = scenario_env("2s3z", 1)
    b = env.battle
    place(b, 0, 0, 9.0, 16.0)
    for k, u in enumerate(range(1, 5)):
        place(b, 0, u, 3.0, 10.0 + 4.0 * k)  # > 9 from the enemy stalker
    b.health[0, 0] = 50.0
    place(b, 0, 5, 14.0, 16.0)  # enemy stalker 5 away: within 6 + 0.625 * 2
    for k, u in enumerate(range(6, 10)):
        freeze(b, 0, u, 28.0, 9.0 + 4.0 * k)
    stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(62.0)
    freeze(b, 0, 5, 28.0, 23.5)  # the attacker leaves
    for _ in range(19):
        stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(62.0)  # 20 steps: no regeneration yet
    stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(63.0, abs=0.13)  # step 21: regeneration
    for _ in range(4):
        stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(67.0, abs=0.13)  # 2 per second
    assert b.health[0, 0].item() == 50.0
    # Shields never exceed their maximum (80).
    for _ in range(14):
        stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(80.0)


def test_damage_restarts_the_regeneration_delay():
    env, _ = scenario_env("2s3z", 1)
    b = env.battle
    b.shield[0, 0] = 30.0
    b.since_damage[0, 0] = 100.0  # long undamaged: regenerating
    place(b, 0, 0, 9.0, 16.0)
    for k, u in enumerate(range(1, 5)):
        place(b, 0, u, 3.0, 10.0 + 4.0 * k)
    for k, u in enumerate(range(5, 10)):
        freeze(b, 0, u, 28.0, 9.0 + 3.0 * k)
    stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(31.0)  # 2 per second for 0.5 s
    place(b, 0, 5, 14.0, 16.0)  # enemy stalker comes back and fires at loop 0 of the next step
    stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(31.0 - 18.0)  # no regeneration after the hit
    freeze(b, 0, 5, 28.0, 23.5)
    stop_all(env)
    assert b.shield[0, 0].item() == pytest.approx(13.0)


def _mmm_heal_setup(marine_health):
    """MMM, two battles: medivac (agent 9) one cell from marine agent 2 (health set), enemies far away."""
    env, _ = scenario_env("MMM", 2, check_actions=False)
    b = env.battle
    for bi in range(2):
        for e in range(10):
            freeze(b, bi, 10 + e, 28.0, 9.0 + 1.5 * e)
        b.health[bi, 2] = marine_health
        place(b, bi, 9, b.x[bi, 2].item() + 1.0, b.y[bi, 2].item())
    return env, b


def test_medivac_heals_9_per_second_and_spends_energy():
    """Battle 0: the medivac heals marine agent 2 (action 6 + 2); battle 1: it stops.

    9 hp per game-second = 4.5 per step; 1 energy per 3 hp, so battle 0's medivac ends with
    4.5 / 3 = 1.5 energy less per step than battle 1's (both regenerate the same way).
    """
    env, b = _mmm_heal_setup(20.0)
    mask, _, _ = features_now(env)
    assert mask[0, 9, 8]  # heal ally 2 is available
    actions = torch.full((2, 10), STOP)
    actions[0, 9] = 6 + 2
    for k in range(1, 4):
        act(env, actions)
        assert b.health[0, 2].item() == pytest.approx(20.0 + 4.5 * k)
        assert b.health[1, 2].item() == pytest.approx(20.0)
        assert (b.energy[1, 9] - b.energy[0, 9]).item() == pytest.approx(1.5 * k, abs=1e-4)
    assert b.energy[1, 9].item() >= 50.0  # an idle medivac does not lose energy
    assert b.energy[0, 9].item() == pytest.approx(b.energy[1, 9].item() - 4.5, abs=1e-4)
    assert torch.all(b.health[:, [0, 1]] == 125.0)  # nobody else changed


def test_medivac_heal_stops_at_full_health():
    env, b = _mmm_heal_setup(43.0)
    actions = torch.full((2, 10), STOP)
    actions[0, 9] = 6 + 2
    act(env, actions)
    assert b.health[0, 2].item() == pytest.approx(45.0)  # capped: only 2 healed
    assert (b.energy[1, 9] - b.energy[0, 9]).item() == pytest.approx(2.0 / 3.0, abs=1e-4)


def test_medivac_actions_name_allies_not_enemies():
    """The medivac's action 6 + j heals ally j: it ignores enemy j's distance, and never targets itself."""
    env, _ = scenario_env("MMM", 1)
    b = env.battle
    place(b, 0, 9, 9.0, 16.0)
    place(b, 0, 0, 20.0, 10.0)  # ally 0 (marauder) 11 away from the medivac
    place(b, 0, 10, 10.0, 16.0)  # enemy 0 one cell from the medivac
    b.health[0, 1] = 60.0
    mask, _, _ = features_now(env)
    assert not mask[0, 9, 6]  # ally 0 is too far even though enemy 0 is adjacent
    assert not mask[0, 9, 6 + 9]  # not itself
    # Allies within 6 are all valid heal targets (injured or not).
    d = (b.pos[0, :9] - b.pos[0, 9]).norm(dim=-1)
    assert torch.equal(mask[0, 9, 6:15], d <= 6.0)
    # A marine's action 6 names enemy 0, which is within its range from the spawn? only if <= 6.
    d_enemy0 = (b.pos[0, 2] - b.pos[0, 10]).norm()
    assert bool(mask[0, 2, 6]) == bool(d_enemy0 <= 6.0)

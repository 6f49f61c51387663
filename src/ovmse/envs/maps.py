"""SMAC v1 map definitions: rosters, episode limits, type one-hots, spawns, terrain.

Ally order is the SMAC agent-id order (allies sorted by unit type, stalkers
first; in MMM marauders 0-1, marines 2-8, medivac 9). Unit-type ids are the
indices SMAC writes into the observation one-hot; in stalker+zealot maps the
enemy ids are swapped relative to the allies' (a quirk SMAC has and we keep).
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import UNIT_TYPES, UnitType

MAP_SIZE = 32.0
SIGHT_RANGE = 9.0
SHOOT_RANGE = 6.0
MOVE_AMOUNT = 2.0
N_NO_ATTACK_ACTIONS = 6
REWARD_DEATH_VALUE = 10.0
REWARD_WIN = 200.0
REWARD_SCALE_RATE = 20.0


@dataclass(frozen=True)
class MapSpec:
    """Everything the simulator needs to know about one SMAC map."""

    name: str
    allies: tuple[str, ...]
    enemies: tuple[str, ...]
    episode_limit: int
    unit_type_bits: int
    ally_type_ids: dict[str, int]
    enemy_type_ids: dict[str, int]
    ally_spawn: tuple[float, float] = (9.0, 16.0)
    enemy_spawn: tuple[float, float] = (23.0, 16.0)
    terrain: str = "strip"  # "strip" (y in [8, 24]), "open", or "octagon"
    medivac_map: bool = False

    @property
    def n_agents(self) -> int:
        return len(self.allies)

    @property
    def n_enemies(self) -> int:
        return len(self.enemies)

    @property
    def n_actions(self) -> int:
        return N_NO_ATTACK_ACTIONS + self.n_enemies

    @property
    def ally_units(self) -> list[UnitType]:
        return [UNIT_TYPES[n] for n in self.allies]

    @property
    def enemy_units(self) -> list[UnitType]:
        return [UNIT_TYPES[n] for n in self.enemies]

    @property
    def shield_bits_ally(self) -> int:
        return int(any(u.race == "protoss" for u in self.ally_units))

    @property
    def shield_bits_enemy(self) -> int:
        return int(any(u.race == "protoss" for u in self.enemy_units))

    @property
    def enemy_feature_dim(self) -> int:
        return 4 + 1 + self.shield_bits_enemy + self.unit_type_bits

    @property
    def ally_feature_dim(self) -> int:
        return 4 + 1 + self.shield_bits_ally + self.unit_type_bits

    @property
    def own_feature_dim(self) -> int:
        return 1 + self.shield_bits_ally + self.unit_type_bits

    @property
    def obs_dim(self) -> int:
        return (
            4
            + self.n_enemies * self.enemy_feature_dim
            + (self.n_agents - 1) * self.ally_feature_dim
            + self.own_feature_dim
        )

    @property
    def state_ally_dim(self) -> int:
        return 4 + self.shield_bits_ally + self.unit_type_bits

    @property
    def state_enemy_dim(self) -> int:
        return 3 + self.shield_bits_enemy + self.unit_type_bits

    @property
    def state_dim(self) -> int:
        return (
            self.n_agents * self.state_ally_dim
            + self.n_enemies * self.state_enemy_dim
            + self.n_agents * self.n_actions
        )

    @property
    def max_reward(self) -> float:
        """SMAC's reward normaliser: the un-scaled return of a perfect win."""
        return (
            self.n_enemies * REWARD_DEATH_VALUE
            + REWARD_WIN
            + sum(u.health + u.shield for u in self.enemy_units)
        )


_SZ_ALLY = {"stalker": 0, "zealot": 1}
_SZ_ENEMY = {"zealot": 0, "stalker": 1}
_MMM = {"marauder": 0, "marine": 1, "medivac": 2}
_NONE: dict[str, int] = {}


def _n(name: str, k: int) -> tuple[str, ...]:
    return (name,) * k


MAPS: dict[str, MapSpec] = {
    m.name: m
    for m in (
        MapSpec("3m", _n("marine", 3), _n("marine", 3), 60, 0, _NONE, _NONE),
        MapSpec("8m", _n("marine", 8), _n("marine", 8), 120, 0, _NONE, _NONE),
        MapSpec(
            "2s3z",
            _n("stalker", 2) + _n("zealot", 3),
            _n("stalker", 2) + _n("zealot", 3),
            120, 2, _SZ_ALLY, _SZ_ENEMY,
        ),
        MapSpec(
            "3s5z",
            _n("stalker", 3) + _n("zealot", 5),
            _n("stalker", 3) + _n("zealot", 5),
            150, 2, _SZ_ALLY, _SZ_ENEMY,
        ),
        MapSpec("5m_vs_6m", _n("marine", 5), _n("marine", 6), 70, 0, _NONE, _NONE),
        MapSpec(
            "6h_vs_8z", _n("hydralisk", 6), _n("zealot", 8), 150, 0, _NONE, _NONE,
            ally_spawn=(14.6, 9.5), enemy_spawn=(14.4, 16.8), terrain="octagon",
        ),
        MapSpec(
            "3s_vs_5z", _n("stalker", 3), _n("zealot", 5), 250, 0, _NONE, _NONE, terrain="open",
        ),
        MapSpec("10m_vs_11m", _n("marine", 10), _n("marine", 11), 150, 0, _NONE, _NONE),
        MapSpec(
            "MMM",
            _n("marauder", 2) + _n("marine", 7) + ("medivac",),
            _n("marauder", 2) + _n("marine", 7) + ("medivac",),
            150, 3, _MMM, _MMM, medivac_map=True,
        ),
    )
}


def get_map(name: str) -> MapSpec:
    """Return the map spec, or fail with the list of known maps."""
    try:
        return MAPS[name]
    except KeyError:
        raise ValueError(
            f"Unknown map {name!r}. The embedded simulator knows: {', '.join(MAPS)}."
        ) from None

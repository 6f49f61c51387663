"""Stock StarCraft II unit data used by the simulator (SMAC v1 facts).

All times are in game-seconds (16 game loops per game-second; one SMAC env step
is 8 loops = 0.5 game-seconds). Distances are in map cells.
"""

from __future__ import annotations

from dataclasses import dataclass

LIGHT = 0
ARMORED = 1


@dataclass(frozen=True)
class UnitType:
    """Static stats of one SC2 unit type.

    ``bonus_vs`` is the attribute (LIGHT/ARMORED) that earns ``bonus_damage``;
    ``hits`` is the number of hits per attack (zealot and colossus hit twice).
    ``max_cooldown_loops`` is SMAC's normaliser for the weapon cooldown state
    feature (for the medivac it normalises energy instead). ``hits_air`` is
    False for ground-only weapons (marauder, zealot, colossus, zergling).
    """

    name: str
    health: float
    shield: float
    armor: float
    damage: float
    bonus_damage: float
    bonus_vs: int
    hits: int
    cooldown: float
    weapon_range: float
    speed: float
    radius: float
    attribute: int
    max_cooldown_loops: float
    race: str
    is_medivac: bool = False
    is_air: bool = False
    hits_air: bool = True


MEDIVAC_HEAL_PER_SECOND = 9.0
MEDIVAC_HP_PER_ENERGY = 3.0
MEDIVAC_START_ENERGY = 50.0
MEDIVAC_MAX_ENERGY = 200.0
# SC2 energy regeneration: 0.7875 per real second at "faster" = 0.5625 per game-second.
ENERGY_REGEN_PER_SECOND = 0.5625
SHIELD_REGEN_DELAY = 10.0
SHIELD_REGEN_PER_SECOND = 2.0
# SC2 never deals less than 0.5 damage to health with a hit, however high the armor.
MIN_HEALTH_DAMAGE = 0.5

UNIT_TYPES: dict[str, UnitType] = {
    u.name: u
    for u in (
        UnitType("marine", 45, 0, 0, 6, 0, LIGHT, 1, 0.861, 5, 2.25, 0.375, LIGHT, 15, "terran"),
        UnitType("marauder", 125, 0, 1, 10, 10, ARMORED, 1, 1.5, 6, 2.25, 0.5625, ARMORED, 25, "terran", hits_air=False),
        UnitType(
            "medivac", 150, 0, 1, 0, 0, LIGHT, 0, 1.0, 4, 2.5, 0.75, ARMORED, MEDIVAC_MAX_ENERGY, "terran",
            is_medivac=True, is_air=True,
        ),
        UnitType("stalker", 80, 80, 1, 13, 5, ARMORED, 1, 1.87, 6, 2.953, 0.625, ARMORED, 35, "protoss"),
        UnitType("zealot", 100, 50, 1, 8, 0, LIGHT, 2, 1.2, 0.1, 2.25, 0.5, LIGHT, 22, "protoss", hits_air=False),
        UnitType("colossus", 200, 150, 1, 10, 5, LIGHT, 2, 1.5, 7, 2.25, 1.0, ARMORED, 24, "protoss", hits_air=False),
        # SMAC's 6h_vs_8z map sets hydralisk health to 80 (stock is 90).
        UnitType("hydralisk", 80, 0, 0, 12, 0, LIGHT, 1, 0.825, 5, 2.25, 0.625, ARMORED, 10, "zerg"),
        UnitType("zergling", 35, 0, 0, 5, 0, LIGHT, 1, 0.696, 0.1, 2.953, 0.375, LIGHT, 11, "zerg", hits_air=False),
    )
}

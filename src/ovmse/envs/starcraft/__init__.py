"""Real SMAC (StarCraft II, oxwhirl/smac) as a second env backend, behind the simulator's interface.

* :mod:`.install`: :func:`check_starcraft_available` (oxwhirl's ``smac``, StarCraft II, the
  SMAC maps; each missing piece gets its own message with install steps) and
  :func:`default_game`;
* :mod:`.adapter`: :class:`StarCraftSMACEnv`, one battle as a TorchRL env with the
  simulator's keys, episode-end semantics and lost episodes;
* :mod:`.game`: :class:`~.game.StarCraftGame`, that battle's game process: reads checked
  against the map, crash restarts;
* :mod:`.batched`: :func:`make_starcraft_env`, ``B`` battles in a ``ParallelEnv`` (one game
  process each) or ``SerialEnv``.

Install and use: docs/starcraft.md.
"""

from .adapter import DEFAULT_MAX_RESTARTS, StarCraftSMACEnv
from .batched import SIM_ONLY_OPTIONS, StarCraftParallelEnv, StarCraftSerialEnv, make_starcraft_env
from .errors import StarCraftBackendError, StarCraftCrashError, StarCraftDimensionError, StarCraftUnavailableError
from .install import DOCS, check_starcraft_available, default_game, default_sc2_path, sc2_path

__all__ = [
    "DEFAULT_MAX_RESTARTS",
    "DOCS",
    "SIM_ONLY_OPTIONS",
    "StarCraftBackendError",
    "StarCraftCrashError",
    "StarCraftDimensionError",
    "StarCraftParallelEnv",
    "StarCraftSMACEnv",
    "StarCraftSerialEnv",
    "StarCraftUnavailableError",
    "check_starcraft_available",
    "default_game",
    "default_sc2_path",
    "make_starcraft_env",
    "sc2_path",
]

"""The StarCraft II game behind one battle of :class:`~.adapter.StarCraftSMACEnv`, and its crash restarts.

The game process can die at any call (``protocol.ConnectionError``, ``ProtocolError``,
websocket errors, ``OSError``, ...). :class:`StarCraftGame` keeps that away from the env's
episode logic: every read is checked against the map's :class:`MapSpec` (the simulator and
the game must agree on every dimension), and a crash closes the game, builds a new one with
the factory (at most ``max_restarts`` attempts, then :class:`StarCraftCrashError` chained to
the original error) and resets it. ``AssertionError`` (SMAC's "Agent i cannot perform action
a") and our own backend errors are usage errors, not crashes, and are re-raised.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from ..maps import MapSpec
from .errors import StarCraftBackendError, StarCraftCrashError, StarCraftDimensionError

log = logging.getLogger(__name__)

# Errors that must propagate as they are instead of triggering a restart.
NOT_A_CRASH = (StarCraftBackendError, AssertionError)

# One read of the game, checked: observation float32 [N, obs_dim], state float32 [state_dim],
# action mask bool [N, n_actions]. NumPy, so that the env puts them on its device of the moment.
Frame = tuple[np.ndarray, np.ndarray, np.ndarray]


class StarCraftGame:
    """The ``StarCraft2Env``-like object of one battle, rebuilt by ``factory`` after a crash.

    Args:
        spec: the map's :class:`MapSpec`, which every game must match.
        factory: ``() -> StarCraft2Env``-like object.
        max_restarts: attempts to rebuild a crashed game before raising.

    Attributes:
        game: the wrapped object (None before :meth:`start` and after a failed restart).
        restarts: how many times the game was restarted after a crash.
    """

    def __init__(self, spec: MapSpec, factory: Callable[[], Any], *, max_restarts: int) -> None:
        self.spec = spec
        self.factory = factory
        self.max_restarts = int(max_restarts)
        self.restarts = 0
        self.game: Any = None

    def start(self) -> None:
        """Build the first game and check its dimensions (it is kept even if the check fails,
        so that closing the env closes it)."""
        self.game = self.factory()
        self.check_dims(self.game)

    def check_dims(self, game: Any) -> None:
        info = game.get_env_info()
        fields = (("n_agents", "n_agents"), ("n_actions", "n_actions"), ("obs_shape", "obs_dim"),
                  ("state_shape", "state_dim"), ("episode_limit", "episode_limit"))
        for smac_key, ours in fields:
            if smac_key not in info:
                raise StarCraftDimensionError(f"map {self.spec.name!r}: get_env_info() has no {smac_key!r}")
            got, expected = info[smac_key], getattr(self.spec, ours)
            if int(np.prod(got)) != expected:
                raise StarCraftDimensionError(
                    f"map {self.spec.name!r}: the game reports {smac_key}={got} but the simulator's MapSpec has "
                    f"{ours}={expected}. Both backends must agree; StarCraft2Env options that change the layout "
                    "(obs_last_action, obs_pathing_grid, obs_terrain_height, obs_timestep_number, "
                    "obs_instead_of_state, state_last_action=False, state_timestep_number, ...) are not "
                    "supported: the simulator follows SMAC's defaults."
                )

    def read(self, obs: Any = None, state: Any = None) -> Frame:
        """Observation ``[N, obs]``, state ``[S]`` and mask ``[N, A]`` of the game, checked
        (``obs`` / ``state``: what ``reset`` returned, else asked from the game)."""
        N, A = self.spec.n_agents, self.spec.n_actions
        game = self.game
        obs = np.asarray(game.get_obs() if obs is None else obs, dtype=np.float32)
        state = np.asarray(game.get_state() if state is None else state, dtype=np.float32)
        avail = np.asarray(game.get_avail_actions())
        for name, arr, shape in (("observation", obs, (N, self.spec.obs_dim)),
                                 ("state", state, (self.spec.state_dim,)), ("avail_actions", avail, (N, A))):
            if arr.shape != shape:
                raise StarCraftDimensionError(
                    f"map {self.spec.name!r}: the game returned {name} of shape {arr.shape}, expected {shape}"
                )
        return obs, state, avail != 0

    def reset(self) -> Frame:
        obs, state = self.game.reset()
        return self.read(obs, state)

    def close(self) -> None:
        game, self.game = self.game, None
        if game is not None:
            try:
                game.close()
            except Exception:  # noqa: BLE001 - a dead game may fail to close; it is dropped anyway
                pass

    def restart(self, err: BaseException) -> Frame:
        """Replace a crashed game by a fresh one from the factory and reset it."""
        last: BaseException = err
        for attempt in range(1, self.max_restarts + 1):
            self.close()
            try:
                self.game = self.factory()
                self.check_dims(self.game)
                out = self.reset()
            except NOT_A_CRASH:
                raise
            except Exception as new_err:  # noqa: BLE001
                log.warning("%s: restart attempt %d/%d of the StarCraft II game failed: %r",
                            self.spec.name, attempt, self.max_restarts, new_err)
                last = new_err
                continue
            self.restarts += 1
            log.warning("%s: the StarCraft II game crashed (%r) and was restarted (%d restart(s) so far)",
                        self.spec.name, err, self.restarts)
            return out
        self.close()
        raise StarCraftCrashError(
            f"{self.spec.name}: the StarCraft II game crashed ({err!r}) and {self.max_restarts} restart "
            f"attempt(s) failed (last error: {last!r})"
        ) from err

    def guarded_reset(self) -> Frame:
        """:meth:`reset`, restarting the game if it crashed (or is gone)."""
        if self.game is None:
            return self.restart(StarCraftCrashError("no running game"))
        try:
            return self.reset()
        except NOT_A_CRASH:
            raise
        except Exception as err:  # noqa: BLE001
            return self.restart(err)

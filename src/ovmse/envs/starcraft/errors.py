"""Errors of the real-SMAC backend."""

from __future__ import annotations


class StarCraftUnavailableError(RuntimeError):
    """The real-SMAC backend cannot run here: smac, StarCraft II or the SMAC maps are missing."""


class StarCraftBackendError(RuntimeError):
    """Base class of the adapter's own errors (never mistaken for a game crash)."""


class StarCraftCrashError(StarCraftBackendError):
    """The game crashed and could not be restarted within ``max_restarts`` attempts."""


class StarCraftDimensionError(StarCraftBackendError, ValueError):
    """The game's dimensions differ from our :class:`~ovmse.envs.maps.MapSpec` for the map."""

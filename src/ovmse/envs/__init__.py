"""SMAC environments: the embedded batched simulator (default backend) and real SMAC on StarCraft II."""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase

from .maps import MAPS, MapSpec, get_map
from .sim_env import SimSMACEnv, random_valid_actions
from .starcraft import (
    SIM_ONLY_OPTIONS,
    StarCraftSMACEnv,
    StarCraftUnavailableError,
    check_starcraft_available,
    make_starcraft_env,
)

BACKENDS = ("sim", "starcraft")


def make_env(
    map_name: str,
    num_envs: int = 1,
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    backend: str = "sim",
    **options,
) -> EnvBase:
    """Build ``num_envs`` SMAC battles of ``map_name`` as one TorchRL env.

    Both backends give the same keys, dtypes and ``[num_envs, ...]`` shapes.

    * ``backend="sim"``: the embedded PyTorch simulator; its options are ``substeps``,
      ``spawn_jitter``, ``scripted_allies``, ``check_actions`` and ``compile_step`` (see
      :class:`SimSMACEnv`).
    * ``backend="starcraft"``: real SMAC, one StarCraft II process per battle (battle ``i``
      seeded ``seed + i``). First checks that oxwhirl's ``smac``, StarCraft II and the map are
      installed (:func:`check_starcraft_available`, raises :class:`StarCraftUnavailableError`).
      Options: ``parallel`` (default True: ``ParallelEnv``; False: ``SerialEnv``),
      ``check_actions``, ``max_restarts``, and ``StarCraft2Env`` keyword arguments. The
      simulator-only ``substeps`` / ``spawn_jitter`` / ``compile_step`` of the env configs are ignored;
      ``scripted_allies=True`` is rejected. See docs/starcraft.md.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown env backend {backend!r}; available: {', '.join(BACKENDS)}.")
    if backend == "starcraft":
        check_starcraft_available(map_name)
        for key in SIM_ONLY_OPTIONS:
            options.pop(key, None)
        if options.pop("scripted_allies", False):
            raise ValueError("scripted_allies is a simulator option; the starcraft backend cannot script the allies")
        return make_starcraft_env(map_name, num_envs, seed=seed, device=device, **options)
    spec = get_map(map_name)
    return SimSMACEnv(spec, num_envs, device=device, seed=seed, **options)


__all__ = [
    "BACKENDS",
    "MAPS",
    "MapSpec",
    "SimSMACEnv",
    "StarCraftSMACEnv",
    "StarCraftUnavailableError",
    "check_starcraft_available",
    "get_map",
    "make_env",
    "make_starcraft_env",
    "random_valid_actions",
]

"""SMAC environments: the embedded batched simulator (default backend)."""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase

from .maps import MAPS, MapSpec, get_map
from .sim_env import SimSMACEnv, random_valid_actions

BACKENDS = ("sim",)


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

    ``backend="sim"`` is the embedded PyTorch simulator; its options are
    ``substeps``, ``spawn_jitter``, ``scripted_allies`` and ``check_actions``
    (see :class:`SimSMACEnv`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown env backend {backend!r}; available: {', '.join(BACKENDS)}.")
    spec = get_map(map_name)
    return SimSMACEnv(spec, num_envs, device=device, seed=seed, **options)


__all__ = ["MAPS", "MapSpec", "SimSMACEnv", "get_map", "make_env", "random_valid_actions"]

"""``B`` real-SMAC battles as one batched env with the simulator's ``[B, ...]`` layout."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import ParallelEnv, SerialEnv

from ...action_masks import random_valid_actions
from ..maps import MapSpec, get_map
from .adapter import DEFAULT_MAX_RESTARTS, StarCraftSMACEnv
from .install import default_game

# Simulator-only options that env configs carry (configs/env/*.yaml). The starcraft backend drops
# them: the game's own physics has no sub-steps to choose (SMAC's step_mul=8 game loops is the
# simulator's substeps=8) and spawns come from the map file.
SIM_ONLY_OPTIONS = ("substeps", "spawn_jitter", "compile_step")


class _StarCraftBatched:
    """What the simulator's batched env offers beyond TorchRL's: ``spec`` and a masked ``rand_action``."""

    spec: MapSpec

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """Uniformly random available actions ``[B, N]`` under the tensordict's current action mask."""
        if tensordict is None or ("agents", "action_mask") not in tensordict.keys(True):
            raise ValueError(
                "rand_action of a batched StarCraft env needs the tensordict holding the current "
                "('agents', 'action_mask') (e.g. env.rand_action(env.reset())): SMAC rejects unavailable actions"
            )
        generator = self.__dict__.get("_rand_generator")
        if generator is None:  # built directly rather than by make_starcraft_env
            generator = self.__dict__["_rand_generator"] = torch.Generator()
            generator.seed()
        mask = tensordict.get(("agents", "action_mask")).bool()
        tensordict.set(("agents", "action"), random_valid_actions(mask.cpu(), generator).to(mask.device))
        return tensordict


class StarCraftSerialEnv(_StarCraftBatched, SerialEnv):
    """``B`` :class:`StarCraftSMACEnv` battles stepped one after another in this process."""


class StarCraftParallelEnv(_StarCraftBatched, ParallelEnv):
    """``B`` :class:`StarCraftSMACEnv` battles, one worker process (and game) each.

    Unlike TorchRL's default, this process's torch thread count is left alone: when the
    workers start (``num_threads`` is set to the current count) and when they are shut down.
    """

    def close(self, *, raise_if_closed: bool = True) -> None:
        threads = torch.get_num_threads()
        super().close(raise_if_closed=raise_if_closed)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _worker_env(map_name: str, seed: int | None = None, *, game_factory: Callable[..., Any] | None,
                device: str, check_actions: bool, max_restarts: int, smac_kwargs: dict[str, Any]) -> StarCraftSMACEnv:
    """Module-level (picklable) constructor of one battle, run inside the worker."""
    factory = functools.partial(game_factory or default_game, map_name=map_name, seed=seed, **smac_kwargs)
    return StarCraftSMACEnv(map_name, seed=seed, env_factory=factory, device=device,
                            check_actions=check_actions, max_restarts=max_restarts)


def make_starcraft_env(
    map_name: str,
    num_envs: int = 1,
    *,
    seed: int | None = None,
    parallel: bool = True,
    device: str | torch.device = "cpu",
    game_factory: Callable[..., Any] | None = None,
    check_actions: bool = True,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    mp_start_method: str | None = None,
    **smac_kwargs: Any,
) -> StarCraftParallelEnv | StarCraftSerialEnv:
    """``num_envs`` real SMAC battles as one batched TorchRL env with the simulator's ``[B, ...]`` keys.

    Battle ``i`` is its own game seeded ``seed + i``. ``parallel=True``: ``ParallelEnv`` (one
    worker process per battle); ``parallel=False``: ``SerialEnv`` (all in this process, for
    debugging). ``game_factory(map_name=..., seed=..., **smac_kwargs)`` builds a game object
    (default: ``smac.env.StarCraft2Env``; must be picklable for ``parallel=True``). No install
    check is made here: :func:`ovmse.envs.make_env` makes it. ``mp_start_method`` goes to
    ``ParallelEnv`` (TorchRL's default is ``"spawn"``).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    spec = get_map(map_name)
    create = functools.partial(
        _worker_env, spec.name, game_factory=game_factory, device="cpu", check_actions=check_actions,
        max_restarts=max_restarts, smac_kwargs=dict(smac_kwargs),
    )
    kwargs = [{"seed": None if seed is None else seed + i} for i in range(num_envs)]
    if parallel:
        env = StarCraftParallelEnv(num_envs, create, create_env_kwargs=kwargs, device=torch.device(device),
                                   mp_start_method=mp_start_method, num_threads=torch.get_num_threads())
    else:
        env = StarCraftSerialEnv(num_envs, create, create_env_kwargs=kwargs, device=torch.device(device))
    env.spec = spec
    env._rand_generator = torch.Generator()
    env._rand_generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)
    return env

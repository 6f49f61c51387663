"""Real SMAC (StarCraft II, oxwhirl/smac) as a second env backend, behind the simulator's interface.

:class:`StarCraftSMACEnv` wraps ONE ``smac.env.StarCraft2Env`` battle (one StarCraft II process)
as a TorchRL env with ``batch_size=[]`` and exactly the keys, dtypes and semantics of
:class:`~ovmse.envs.sim_env.SimSMACEnv` for one battle:

    ("agents", "observation")  float32 [N, obs_dim]
    ("agents", "action_mask")  bool    [N, n_actions]
    ("agents", "action")       int64   [N]               (input; categorical, not one-hot)
    "state"                    float32 [state_dim]
    "reward"                   float32 [1]               (SMAC's reward, already scaled to max 20)
    "done", "terminated", "truncated"  bool [1]          (truncated = episode limit)
    ("info", "battle_won")     bool    [1]
    ("info", "episode_lost")   bool    [1]               (the game crashed: drop this episode)

:func:`~.batched.make_starcraft_env` stacks ``B`` of them into the simulator's ``[B, ...]``
layout; :func:`ovmse.envs.make_env` checks the install first (see docs/starcraft.md).

Episode ends (SMAC's ``step`` returns ``reward, terminated, info``):

* battle decided (win, loss, or both sides wiped out) -> ``terminated=True``;
  ``battle_won = info["battle_won"]``;
* episode limit -> ``truncated=True, terminated=False``. Detected from ``info["episode_limit"]``
  when present (``continuing_episode=True``), else from the game's ``timeouts`` counter
  increasing during the step (SMAC's default ``continuing_episode=False`` reports a timeout as
  plain ``terminated=True``), else from ``steps >= episode_limit`` with neither side wiped out;
* never both.

Crashes: a game that fails is rebuilt and reset by :class:`~.game.StarCraftGame` (what counts
as a crash, the restart attempts). The episode in progress then ends with ``done=truncated=True,
("info", "episode_lost")=True`` whose next observation is the fresh game's first one.
SMAC itself catches protocol errors inside ``step``, restarts the game and returns
``(0, True, {})``; an ``info`` without ``"battle_won"`` is read as that and handled the same
way. :class:`~ovmse.collection.EpisodeAssembler` drops lost episodes.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from ...action_masks import random_valid_actions
from ..maps import MapSpec, get_map
from .errors import StarCraftCrashError
from .game import NOT_A_CRASH, Frame, StarCraftGame
from .install import default_game

log = logging.getLogger(__name__)

DEFAULT_MAX_RESTARTS = 3


class StarCraftSMACEnv(EnvBase):
    """One real SMAC battle as a TorchRL env (``batch_size=[]``) with the simulator's keys.

    Args:
        map_name: one of our maps (:data:`~ovmse.envs.maps.MAPS`); the game's ``get_env_info()``
            must agree with its :class:`MapSpec` (else :class:`StarCraftDimensionError`).
        seed: the game's seed (SMAC seeds the game at construction) and the seed of
            :meth:`rand_action`'s generator.
        env_factory: ``() -> StarCraft2Env``-like object; called again after a crash. Default:
            ``smac.env.StarCraft2Env(map_name=map_name, seed=seed, **smac_kwargs)``.
        device: where the output tensors live.
        check_actions: raise ``ValueError`` on an action the mask forbids before sending it to
            the game (like the simulator's option; SMAC would fail with an ``AssertionError``).
        max_restarts: attempts to rebuild a crashed game before raising.
        **smac_kwargs: ``StarCraft2Env`` options for the default factory (options that change the
            observation/state layout make the dimension check fail: we follow SMAC's defaults).

    Attributes:
        spec: the map's :class:`MapSpec` (as on :class:`SimSMACEnv`).
        restarts: how many times the game was restarted after a crash.
        episodes_lost: episodes ended by a crash.
    """

    def __init__(
        self,
        map_name: str,
        *,
        seed: int | None = None,
        env_factory: Callable[[], Any] | None = None,
        device: str | torch.device = "cpu",
        check_actions: bool = True,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        **smac_kwargs: Any,
    ) -> None:
        if max_restarts < 1:
            raise ValueError(f"max_restarts must be >= 1, got {max_restarts}")
        if env_factory is not None and smac_kwargs:
            raise ValueError(
                f"smac options {sorted(smac_kwargs)} only apply to the default factory; "
                "bind them into env_factory instead"
            )
        super().__init__(device=device, batch_size=torch.Size([]))
        self.spec: MapSpec = get_map(map_name)
        self.map_name = self.spec.name
        self.check_actions = check_actions
        env_factory = env_factory or functools.partial(default_game, map_name=self.spec.name, seed=seed, **smac_kwargs)
        self._sc2 = StarCraftGame(self.spec, env_factory, max_restarts=max_restarts)
        self._generator = torch.Generator()
        self._generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)
        self.episodes_lost = 0
        self._steps = 0
        self._fresh: TensorDict | None = None  # reset output of a game at an episode start
        self._current: TensorDict | None = None  # latest observation (without reward)
        self._mask = torch.zeros(self.spec.n_agents, self.spec.n_actions, dtype=torch.bool)
        self._mask[:, 0] = True
        self._sc2.start()
        self._make_specs()

    # ----------------------------------------------------------------- specs
    def _make_specs(self) -> None:
        N, A, dev = self.spec.n_agents, self.spec.n_actions, self.device
        flag = lambda: Categorical(2, shape=(1,), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            agents=Composite(
                observation=Unbounded((N, self.spec.obs_dim), device=dev),
                action_mask=Categorical(2, shape=(N, A), dtype=torch.bool, device=dev),
                shape=(N,),
            ),
            state=Unbounded((self.spec.state_dim,), device=dev),
            info=Composite(battle_won=flag(), episode_lost=flag(), shape=()),
            shape=(),
        )
        self.action_spec = Composite(
            agents=Composite(action=Categorical(A, shape=(N,), dtype=torch.int64, device=dev), shape=(N,)),
            shape=(),
        )
        self.reward_spec = Unbounded((1,), device=dev)
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=())

    # ---------------------------------------------------------------- TorchRL
    def _set_seed(self, seed: int | None) -> None:
        # SMAC seeds the game when it is built; only rand_action's generator can be re-seeded.
        if seed is not None:
            self._generator.manual_seed(seed)

    def _output(self, frame: Frame, *, reward: float | None = None, terminated: bool = False,
                truncated: bool = False, won: bool = False, lost: bool = False) -> TensorDict:
        dev = self.device
        obs, state, mask = (torch.as_tensor(a, device=dev) for a in frame)
        flag = lambda v: torch.tensor([bool(v)], dtype=torch.bool, device=dev)  # noqa: E731
        out = TensorDict(
            {
                "agents": TensorDict({"observation": obs, "action_mask": mask}, batch_size=(self.spec.n_agents,),
                                     device=dev),
                "state": state,
                "info": TensorDict({"battle_won": flag(won), "episode_lost": flag(lost)}, batch_size=(), device=dev),
                "done": flag(terminated or truncated),
                "terminated": flag(terminated),
                "truncated": flag(truncated),
            },
            batch_size=(),
            device=dev,
        )
        self._mask = mask
        self._current = out
        if reward is not None:
            out = out.clone(False)
            out.set("reward", torch.tensor([float(reward)], dtype=torch.float32, device=dev))
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if (tensordict is not None and "_reset" in tensordict.keys() and self._current is not None
                and not bool(tensordict.get("_reset").any())):
            return self._current.clone()  # this battle is not to be reset: its current observation
        if self._fresh is None:  # a game right after a restart is already at an episode start
            self._steps = 0
            self._fresh = self._output(self._sc2.guarded_reset())
        return self._fresh.clone()

    def _lost(self, fresh: Frame) -> TensorDict:
        """Step output that ends the episode in progress after a crash; ``fresh`` is the new game's start."""
        self.episodes_lost += 1
        self._steps = 0
        self._fresh = self._output(fresh)
        return self._output(fresh, reward=0.0, truncated=True, lost=True)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(("agents", "action"))
        if self.check_actions:
            self._validate(action)
        actions = [int(a) for a in action.reshape(self.spec.n_agents).tolist()]
        self._fresh = None
        game = self._sc2.game
        if game is None:  # a previous restart failed and raised; try again
            return self._lost(self._sc2.restart(StarCraftCrashError("no running game")))
        timeouts = getattr(game, "timeouts", None)
        try:
            reward, terminated, info = game.step(actions)
            info = dict(info or {})
            if "battle_won" not in info:
                # SMAC caught a protocol error itself, relaunched the game and returned (0, True, {}).
                log.warning("%s: SMAC restarted the StarCraft II game inside step(); the episode is lost",
                            self.spec.name)
                self._sc2.restarts += 1
                return self._lost(self._sc2.guarded_reset())
            frame = self._sc2.read()
        except NOT_A_CRASH:
            raise
        except Exception as err:  # noqa: BLE001 - any game failure is a crash
            return self._lost(self._sc2.restart(err))
        self._steps += 1
        terminated = bool(terminated)
        won = bool(info.get("battle_won", False))
        truncated = False
        if terminated and not won:
            if "episode_limit" in info:
                truncated = bool(info["episode_limit"])
            elif timeouts is not None and getattr(game, "timeouts", timeouts) > timeouts:
                truncated = True
            elif self._steps >= self.spec.episode_limit:
                decided = (int(info.get("dead_allies", 0)) >= self.spec.n_agents
                           or int(info.get("dead_enemies", 0)) >= self.spec.n_enemies)
                truncated = not decided
        return self._output(frame, reward=float(reward), terminated=terminated and not truncated,
                            truncated=truncated, won=won)

    def _validate(self, action: torch.Tensor) -> None:
        N, A = self.spec.n_agents, self.spec.n_actions
        if action.shape != (N,):
            raise ValueError(f"('agents', 'action') must have shape {(N,)}, got {tuple(action.shape)}")
        mask = self._mask.to(action.device)
        in_range = (action >= 0) & (action < A)
        ok = in_range & mask.gather(-1, action.clamp(0, A - 1)[..., None]).squeeze(-1)
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            allowed = mask[i].nonzero().flatten().tolist()
            raise ValueError(
                f"{self.spec.name}: agent {i} took action {int(action[i])}, which is not available "
                f"(available: {allowed}; a dead agent can only take the no-op 0). Sample actions under "
                "('agents', 'action_mask'), or build the env with check_actions=False."
            )

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """Uniformly random *available* actions ``[N]`` (respects the last action mask)."""
        action = random_valid_actions(self._mask, self._generator).to(self.device)
        if tensordict is None:
            tensordict = TensorDict({}, batch_size=self.batch_size, device=self.device)
        tensordict.set(("agents", "action"), action)
        return tensordict

    @property
    def game(self) -> Any:
        """The wrapped ``StarCraft2Env``-like object (None after a failed restart)."""
        return self._sc2.game

    @property
    def restarts(self) -> int:
        """How many times the game was restarted after a crash."""
        return self._sc2.restarts

    @property
    def max_restarts(self) -> int:
        """Attempts to rebuild a crashed game before raising."""
        return self._sc2.max_restarts

    def close(self, *, raise_if_closed: bool = True) -> None:
        self._sc2.close()
        super().close(raise_if_closed=raise_if_closed)

"""TorchRL environment around the batched SMAC simulator.

Keys (TorchRL multi-agent convention, ``B = num_envs``):
    ("agents", "observation")  float32 [B, N, obs_dim]
    ("agents", "action_mask")  bool    [B, N, n_actions]
    ("agents", "action")       int64   [B, N]            (input)
    "state"                    float32 [B, state_dim]
    "reward"                   float32 [B, 1]
    "done", "terminated", "truncated"  bool [B, 1]      (truncated = episode limit)
    ("info", "battle_won")     bool    [B, 1]
    ("info", "episode_lost")   bool    [B, 1]            (always False here; True on the
                                                        starcraft backend when a game crashed)
Battles reset independently through TorchRL's ``"_reset"`` mask, so a collector
can step the env forever.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from ..action_masks import random_valid_actions
from .battle import Battle
from .features import FeatureTables, compute_features
from .maps import MapSpec
from .rules import RewardTracker


class SimSMACEnv(EnvBase):
    """``num_envs`` SMAC battles of one map, simulated together as tensors.

    Args:
        spec: the map.
        num_envs: number of independent battles stepped together.
        device: where the battles live ("cpu" or a CUDA device).
        seed: seeds the env's own generator (spawn jitter).
        substeps: physics sub-steps per 0.5 game-second env step (8 = SC2 game loops).
        spawn_jitter: size of the random spawn displacement (0 = identical battles).
        scripted_allies: allies follow the built-in opponent's rule and ignore actions.
        check_actions: raise on actions the mask forbids (costs one sync per step).
        compile_step: run each env step's math (the agents' orders, ``substeps`` physics
            sub-steps of a few hundred tiny tensor ops, the reward rule and the observation
            features) as one ``torch.compile`` graph, and the features after a reset as
            another: on a CPU a step call of 8 battles, policy included, is several times
            faster (benchmarks/results/train_throughput.md), after a one-off compilation per
            batch size (cached on disk by inductor for later runs). A policy built for this
            env by :func:`ovmse.collection.make_policy` (the in-process collector's, greedy
            evaluation's) compiles its own step too; multi-process collector workers act eager.
    """

    def __init__(
        self,
        spec: MapSpec,
        num_envs: int = 1,
        *,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        substeps: int = 8,
        spawn_jitter: float = 1.0,
        scripted_allies: bool = False,
        check_actions: bool = True,
        compile_step: bool = False,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.spec = spec
        self.num_envs = num_envs
        self.check_actions = check_actions
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)
        self.battle = Battle(
            spec, num_envs, device=self.device, substeps=substeps, spawn_jitter=spawn_jitter,
            scripted_allies=scripted_allies, generator=self._generator,
        )
        # (Not named `compile`: TorchRL's EnvBase takes that keyword for itself.)
        self.compile_step = bool(compile_step)
        # dynamic=False: one graph per batch size, the fastest code for it. The step's math is
        # one graph, not one per part: each compiled call pays guard checks and a wrapper, and
        # the orders and the reward rule are a few dozen tiny ops that run faster fused than eager.
        self._features = torch.compile(compute_features, dynamic=False) if compile_step else compute_features
        if compile_step:
            self._step_math = torch.compile(self._step_math, dynamic=False)
        self.tables = FeatureTables(spec, self.battle.units)
        self.rewards = RewardTracker(self.battle)
        self._mask = compute_features(self.battle, self.tables)[0]
        self._make_specs()

    # ----------------------------------------------------------------- specs
    def _make_specs(self) -> None:
        B, N, A = self.num_envs, self.spec.n_agents, self.spec.n_actions
        dev = self.device
        flag = lambda: Categorical(2, shape=(B, 1), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            agents=Composite(
                observation=Unbounded((B, N, self.spec.obs_dim), device=dev),
                action_mask=Categorical(2, shape=(B, N, A), dtype=torch.bool, device=dev),
                shape=(B, N),
            ),
            state=Unbounded((B, self.spec.state_dim), device=dev),
            info=Composite(battle_won=flag(), episode_lost=flag(), shape=(B,)),
            shape=(B,),
        )
        self.action_spec = Composite(
            agents=Composite(action=Categorical(A, shape=(B, N), dtype=torch.int64, device=dev), shape=(B, N)),
            shape=(B,),
        )
        self.reward_spec = Unbounded((B, 1), device=dev)
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=(B,))

    # ---------------------------------------------------------------- TorchRL
    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._generator.manual_seed(seed)

    def _observe(self, won: torch.Tensor, done: dict[str, torch.Tensor],
                 features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> TensorDict:
        """The step's output TensorDict; ``features`` (mask, observations, state) when the
        caller computed them already, else computed here."""
        B, N = self.num_envs, self.spec.n_agents
        self._mask, obs, state = self._features(self.battle, self.tables) if features is None else features
        agents = TensorDict({"observation": obs, "action_mask": self._mask}, batch_size=(B, N), device=self.device)
        out = {"agents": agents, "state": state,
               "info": TensorDict({"battle_won": won[:, None], "episode_lost": torch.zeros_like(won[:, None])},
                                  batch_size=(B,), device=self.device)}
        out.update({k: v[:, None] for k, v in done.items()})
        return TensorDict(out, batch_size=(B,), device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        B = self.num_envs
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(B).to(self.device)
        else:
            mask = torch.ones(B, dtype=torch.bool, device=self.device)
        self.battle.reset(mask)
        self.rewards.reset(mask)
        false = torch.zeros(B, dtype=torch.bool, device=self.device)
        return self._observe(false, {"done": false, "terminated": false, "truncated": false})

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(("agents", "action"))
        if self.check_actions:
            self._validate(action)
        res, *features = self._step_math(action)
        out = self._observe(
            res.battle_won,
            {"done": res.terminated | res.truncated, "terminated": res.terminated, "truncated": res.truncated},
            features,
        )
        out.set("reward", res.reward[:, None])
        return out

    def _step_math(self, action: torch.Tensor):
        """Orders, physics, reward rule and features of one step: ``(StepOutcome, mask, obs,
        state)``. Compiled as one graph with ``compile_step``."""
        self.battle.apply_actions(action)
        self.battle.advance()
        return (self.rewards.outcome(), *compute_features(self.battle, self.tables))

    def _validate(self, action: torch.Tensor) -> None:
        A = self.spec.n_actions
        if action.shape != (self.num_envs, self.spec.n_agents):
            raise ValueError(f"('agents', 'action') must have shape {(self.num_envs, self.spec.n_agents)}, got {tuple(action.shape)}")
        in_range = (action >= 0) & (action < A)
        ok = in_range & self._mask.gather(-1, action.clamp(0, A - 1)[..., None]).squeeze(-1)
        if not bool(ok.all()):
            b, i = (~ok).nonzero()[0].tolist()
            allowed = self._mask[b, i].nonzero().flatten().tolist()
            raise ValueError(
                f"{self.spec.name}: battle {b}, agent {i} took action {int(action[b, i])}, "
                f"which is not available (available: {allowed}). Sample actions under "
                f"('agents', 'action_mask'), or build the env with check_actions=False."
            )

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """Uniformly random *available* actions ``[B, N]`` (respects the action mask)."""
        action = random_valid_actions(self._mask, self._generator)
        if tensordict is None:
            tensordict = TensorDict({}, batch_size=self.batch_size, device=self.device)
        tensordict.set(("agents", "action"), action)
        return tensordict


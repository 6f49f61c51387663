"""Exploration strategies that turn per-agent Q-values into joint actions.

All three read ``("agents", "action_value")`` float ``[B, N, A]`` and
``("agents", "action_mask")`` bool ``[B, N, A]`` and write ``("agents", "action")`` int64
``[B, N]`` plus ``("agents", "explored")`` bool ``[B, N]`` (True where an *alive* agent took
the random branch, so the collector can log exploration statistics; note the random action
may coincide with the greedy one). Any number of leading batch dims works: ``[..., N, A]``.

Conventions shared with the simulator: action 0 is the no-op and is the only available
action of a dead agent; "alive" = some action other than 0 is available. Random actions are
uniform over the available ones, so a dead agent always gets the no-op and never counts as
explored.

Reproducibility: pass a ``torch.Generator`` on the same device as the Q-values.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from ovmse.action_masks import alive_agents, masked_greedy, random_valid_actions

NestedKey = str | tuple[str, ...]


class _QExploration(TensorDictModuleBase):
    """Shared plumbing: keys, ε handling, greedy/random mixing. Subclasses decide who explores."""

    def __init__(
        self,
        epsilon: float = 0.0,
        *,
        action_value_key: NestedKey = ("agents", "action_value"),
        action_mask_key: NestedKey = ("agents", "action_mask"),
        action_key: NestedKey = ("agents", "action"),
        explored_key: NestedKey = ("agents", "explored"),
        generator: torch.Generator | None = None,
        explore: bool = True,
    ) -> None:
        super().__init__()
        self.in_keys = [action_value_key, action_mask_key]
        self.out_keys = [action_key, explored_key]
        self.action_value_key = action_value_key
        self.action_mask_key = action_mask_key
        self.action_key = action_key
        self.explored_key = explored_key
        self.generator = generator
        # Plain bool, not a buffer: evaluation code flips it to get a greedy policy.
        self.explore = bool(explore)
        # ε lives in a (non-persistent, float64) buffer, not a Python float, so that it is part
        # of ``TensorDict.from_module(policy)``: multi-process collectors copy it to their
        # workers together with the network weights (``update_policy_weights_``). float64
        # keeps the Python value exact; non-persistent keeps it out of state_dicts.
        self.register_buffer("epsilon_buffer", torch.zeros((), dtype=torch.float64), persistent=False)
        self.set_epsilon(epsilon)

    @property
    def epsilon(self) -> float:
        """The current ε as a Python float (read from ``epsilon_buffer``)."""
        return float(self.epsilon_buffer.item())

    @epsilon.setter
    def epsilon(self, value: float) -> None:
        self.set_epsilon(value)

    def set_epsilon(self, epsilon: float) -> None:
        """Set the current ε (e.g. from a :class:`~ovmse.exploration.LinearSchedule`).

        Written in place into ``epsilon_buffer``, so any shared / synced copy of the buffer
        sees the new value.
        """
        eps = float(epsilon)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.epsilon_buffer.fill_(eps)

    def _explore_mask(self, alive: torch.Tensor, epsilon: float) -> torch.Tensor:
        """bool ``[..., N]``: which agents take the random branch (before the alive filter)."""
        raise NotImplementedError

    def _rand(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=device)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        q = tensordict.get(self.action_value_key)  # [..., N, A]
        mask = tensordict.get(self.action_mask_key).bool()  # [..., N, A]
        action, explored = self.perturb(masked_greedy(q, mask), alive_agents(mask), mask)
        tensordict.set(self.action_key, action)
        tensordict.set(self.explored_key, explored)
        return tensordict

    @torch.no_grad()
    def perturb(self, greedy: torch.Tensor, alive: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exploratory part of :meth:`forward`, on tensors: the greedy actions ``[..., N]``
        with the explorers' replaced by random available ones; returns ``(action, explored)``.

        Args:
            greedy: int64 ``[..., N]``, the masked argmax of the Q-values.
            alive: bool ``[..., N]`` (:func:`~ovmse.action_masks.alive_agents` of ``mask``).
            mask: bool ``[..., N, A]``, the available actions.
        """
        epsilon = self.epsilon  # read the buffer once per call
        if self.explore and epsilon > 0.0:
            explored = self._explore_mask(alive, epsilon) & alive
            return torch.where(explored, random_valid_actions(mask, self.generator), greedy), explored
        # Skip the RNG entirely: greedy evaluation must not perturb the generator stream.
        return greedy, torch.zeros_like(alive)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, explore={self.explore}"


class EpsilonGreedy(_QExploration):
    """Independent ε-greedy: each agent takes a random available action with probability ε."""

    def _explore_mask(self, alive: torch.Tensor, epsilon: float) -> torch.Tensor:
        return self._rand(alive.shape, alive.device) < epsilon


class CentralisedSequentialExploration(_QExploration):
    """Sequential exploration (OVMSE §4, centralised form).

    With probability ε per battle (leading index), exactly one uniformly chosen *alive*
    agent takes a uniformly random available action; every other agent acts greedily. Only
    alive agents are candidates, so a battle that explores always perturbs someone who can
    actually act; a battle with no alive agent stays fully greedy (all no-op).
    """

    def _explore_mask(self, alive: torch.Tensor, epsilon: float) -> torch.Tensor:
        team = self._rand(alive.shape[:-1], alive.device) < epsilon  # [...]
        # Uniform over alive agents with the same noise+1 trick as random actions.
        pick = (self._rand(alive.shape, alive.device) + 1.0).mul_(alive).argmax(-1)  # [...]
        chosen = torch.nn.functional.one_hot(pick, alive.shape[-1]).bool()  # [..., N]
        # & alive: with no alive agent argmax returns 0, which must not count as exploring.
        return chosen & team.unsqueeze(-1)


class DecentralisedSequentialExploration(_QExploration):
    """Decentralised sequential exploration (OVMSE Algorithm 2, the variant used in the paper).

    Each agent independently explores with probability ε / N, N = number of agents (the
    agent axis size, dead agents included). While all agents are alive a team deviates in
    ε agents per step in expectation (ε·alive/N once some die); unlike the centralised form
    this needs no coordination, so "exactly one" is only true on average.
    """

    def _explore_mask(self, alive: torch.Tensor, epsilon: float) -> torch.Tensor:
        return self._rand(alive.shape, alive.device) < epsilon / alive.shape[-1]


_REGISTRY: dict[str, type[_QExploration]] = {
    "epsilon_greedy": EpsilonGreedy,
    "sequential": CentralisedSequentialExploration,
    "decentralised_sequential": DecentralisedSequentialExploration,
}
EXPLORATION_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_exploration(name: str, **kwargs) -> _QExploration:
    """Build an exploration module by name; ``kwargs`` go to its constructor (``epsilon``,
    keys, ``generator``, ``explore``).

    Names: ``"epsilon_greedy"``, ``"sequential"`` (centralised SE),
    ``"decentralised_sequential"``.
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown exploration {name!r}; valid names: {', '.join(EXPLORATION_NAMES)}"
        ) from None
    return cls(**kwargs)

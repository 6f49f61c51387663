"""Recurrent Q-policy for TorchRL collectors (one GRU step per env step, agent axis kept).

TorchRL's ``GRUModule`` cannot carry an agent axis, so the recurrent state is handled here:

* the env is wrapped by :func:`env_with_primers`, a ``TransformedEnv`` with a
  ``TensorDictPrimer`` declaring ``("agents", "hidden")`` float ``[B, N, H]`` (default 0)
  and ``("agents", "last_action")`` int64 ``[B, N]`` (default -1);
* :class:`RecurrentQPolicy` reads both, runs :class:`~ovmse.nets.RNNAgent` one step and
  writes the new values under ``("next", "agents", "hidden")`` and
  ``("next", "agents", "last_action")`` -- the same "next" convention as ``GRUModule``.

How the values travel (TorchRL 0.14, checked in ``EnvBase.step``/``TransformedEnv._step``):
``env.step`` keeps a ``"next"`` sub-tensordict the policy already wrote ("next_preset") and
merges the entries the env itself did not produce into the step output *before* the
transforms' ``_step`` run, so ``TensorDictPrimer._step`` (which only copies the previous
value when the key is missing from "next") does not overwrite the policy's values.
``step_mdp`` then moves them to the root for the next step. When battles end,
``step_and_maybe_reset`` calls ``env.reset`` with a ``"_reset"`` mask and
``TensorDictPrimer._reset`` does ``torch.where(_reset, default, previous)`` per leaf, so only
the battles that reset get zeros / -1 and the others keep their state. This works with
``torchrl.collectors.Collector`` (and ``MultiSyncCollector``: each worker has its own env
and primer).

If the policy is called on data without the primer keys (e.g. a bare env), it falls back to
zeros / -1, and an ``"is_init"`` entry (from ``InitTracker``), when present, also resets the
state of the flagged battles -- the same safety net as TorchRL's recurrent modules.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase, TensorDictPrimer, TransformedEnv

from ovmse.action_masks import alive_agents, masked_greedy
from ovmse.nets import RNNAgent, agent_inputs

NestedKey = str | tuple[str, ...]

HIDDEN_KEY: tuple[str, str] = ("agents", "hidden")
LAST_ACTION_KEY: tuple[str, str] = ("agents", "last_action")


def _next(key: NestedKey) -> tuple[str, ...]:
    return ("next", *((key,) if isinstance(key, str) else key))


def _env_dims(env: EnvBase) -> tuple[torch.Size, int, int]:
    """(batch_size, n_agents, n_actions) read from the env's specs."""
    obs_spec = env.observation_spec[("agents", "observation")]
    mask_spec = env.observation_spec[("agents", "action_mask")]
    batch = env.batch_size
    n_agents = obs_spec.shape[len(batch)]
    n_actions = mask_spec.shape[-1]
    return batch, n_agents, n_actions


def make_primer(env: EnvBase, hidden_dim: int) -> TensorDictPrimer:
    """``TensorDictPrimer`` for ``("agents", "hidden")`` (zeros) and ``("agents", "last_action")`` (-1)."""
    batch, n_agents, _ = _env_dims(env)
    dev = env.device
    spec = Composite(
        agents=Composite(
            hidden=Unbounded((*batch, n_agents, hidden_dim), dtype=torch.float32, device=dev),
            last_action=Unbounded((*batch, n_agents), dtype=torch.int64, device=dev),
            shape=(*batch, n_agents),
            device=dev,
        ),
        shape=batch,
        device=dev,
    )
    return TensorDictPrimer(
        spec, default_value={HIDDEN_KEY: 0.0, LAST_ACTION_KEY: -1}, reset_key="_reset", expand_specs=False
    )


def env_with_primers(env: EnvBase, hidden_dim: int) -> TransformedEnv:
    """Wrap ``env`` so that resets (full or partial, ``"_reset"`` mask) set the hidden state to
    zeros and the last action to -1 for the battles that reset.

    The returned env's observation spec includes the two keys, so collectors allocate them.
    """
    primer = make_primer(env if not isinstance(env, TransformedEnv) else env.base_env, hidden_dim)
    if isinstance(env, TransformedEnv):
        env.append_transform(primer)
        return env
    return TransformedEnv(env, primer)


class RecurrentQPolicy(TensorDictModuleBase):
    """obs + last action + hidden → ``RNNAgent`` step → Q-values → exploration → action.

    Reads ``("agents", "observation")`` ``[B, N, obs]``, ``("agents", "action_mask")``,
    ``("agents", "hidden")`` ``[B, N, H]`` and ``("agents", "last_action")`` ``[B, N]``
    (-1 = none). Writes ``("agents", "action_value")`` ``[B, N, A]``, the exploration
    module's ``("agents", "action")`` / ``("agents", "explored")``, and
    ``("next", "agents", "hidden")`` / ``("next", "agents", "last_action")`` (= the action
    just chosen).

    Args:
        agent: the shared per-agent network.
        exploration: module reading action values + mask and writing the action
            (``ovmse.exploration.make_exploration(...)``); ``None`` = greedy only (writes
            action values and the masked argmax).
        compile: run the step's tensor math (agent inputs, the agent's step, the masked
            argmax and the alive flags) as one ``torch.compile`` graph per batch size; the
            random draws of the exploration stay eager, on its generator, so the actions are
            those of the eager policy. At 8 battles a step is a few dozen tiny ops, whose
            per-op cost a graph saves. The compiled step does not check that every agent has
            an available action (a host sync per step): the env refuses an unavailable one.
            :func:`make_policy` turns it on for an env built with ``compile_step``.
    """

    def __init__(
        self,
        agent: RNNAgent,
        exploration: TensorDictModuleBase | None = None,
        *,
        observation_key: NestedKey = ("agents", "observation"),
        action_mask_key: NestedKey = ("agents", "action_mask"),
        action_value_key: NestedKey = ("agents", "action_value"),
        action_key: NestedKey = ("agents", "action"),
        hidden_key: NestedKey = HIDDEN_KEY,
        last_action_key: NestedKey = LAST_ACTION_KEY,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.agent = agent
        self.exploration = exploration
        self.observation_key = observation_key
        self.action_mask_key = action_mask_key
        self.action_value_key = action_value_key
        self.action_key = action_key
        self.hidden_key = hidden_key
        self.last_action_key = last_action_key
        self.in_keys = [observation_key, action_mask_key, hidden_key, last_action_key]
        out = [action_value_key, action_key]
        if exploration is not None:
            out += [k for k in exploration.out_keys if k not in out]
        self.out_keys = out + [_next(hidden_key), _next(last_action_key)]
        if compile and exploration is not None:
            # The compiled step reads and writes the policy's keys and calls the exploration's
            # perturb, not its forward: both must agree on the keys.
            theirs = (exploration.action_value_key, exploration.action_mask_key, exploration.action_key)
            if theirs != (action_value_key, action_mask_key, action_key):
                raise ValueError(f"compile=True needs the exploration module's keys {theirs} to be the policy's "
                                 f"{(action_value_key, action_mask_key, action_key)}")
        # dynamic=False: one graph per batch size (collection, evaluation), the fastest code for it.
        self._compiled_step = torch.compile(self._greedy_step, dynamic=False) if compile else None

    def _greedy_step(self, obs: torch.Tensor, mask: torch.Tensor, last_action: torch.Tensor,
                     hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(q [..., N, A], new hidden [..., N, H], greedy action [..., N], alive [..., N])``."""
        q, new_hidden = self.agent(agent_inputs(obs, last_action, self.agent.n_actions), hidden)
        return q, new_hidden, masked_greedy(q, mask, strict=False), alive_agents(mask)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.observation_key)
        lead = obs.shape[:-1]  # [..., N]
        hidden = tensordict.get(self.hidden_key, None)
        if hidden is None:
            hidden = self.agent.initial_hidden(lead, device=obs.device)
        last_action = tensordict.get(self.last_action_key, None)
        if last_action is None:
            last_action = torch.full(lead, -1, dtype=torch.int64, device=obs.device)
        is_init = tensordict.get("is_init", None)
        if is_init is not None:
            # is_init [..., 1] -> [..., N]: reset battles flagged as first step.
            first = is_init.reshape(*lead[:-1], 1).expand(lead)
            hidden = torch.where(first[..., None], torch.zeros_like(hidden), hidden)
            last_action = torch.where(first, torch.full_like(last_action, -1), last_action)
        if self._compiled_step is not None:
            mask = tensordict.get(self.action_mask_key).bool()
            q, new_hidden, greedy, alive = self._compiled_step(obs, mask, last_action, hidden)
            tensordict.set(self.action_value_key, q)
            if self.exploration is not None:
                action, explored = self.exploration.perturb(greedy, alive, mask)
                tensordict.set(self.exploration.explored_key, explored)
            else:
                action = greedy
            tensordict.set(self.action_key, action)
        else:
            q, new_hidden = self.agent(agent_inputs(obs, last_action, self.agent.n_actions), hidden)
            tensordict.set(self.action_value_key, q)
            if self.exploration is not None:
                tensordict = self.exploration(tensordict)
            else:
                tensordict.set(self.action_key, masked_greedy(q.detach(), tensordict.get(self.action_mask_key).bool()))
            action = tensordict.get(self.action_key)
        tensordict.set(_next(self.hidden_key), new_hidden)
        tensordict.set(_next(self.last_action_key), action.clone())
        return tensordict


def make_policy(env: EnvBase, agent: RNNAgent, exploration: TensorDictModuleBase | None = None) -> RecurrentQPolicy:
    """Build a :class:`RecurrentQPolicy` after checking ``agent`` fits ``env``'s specs; its step
    is compiled when the env's is (a simulator env built with ``compile_step``).

    ``env`` should come from :func:`env_with_primers` (with ``hidden_dim = agent.hidden_dim``)
    so that the recurrent state is reset per battle; a ``ValueError`` is raised otherwise.
    """
    _, n_agents, n_actions = _env_dims(env)
    obs_dim = env.observation_spec[("agents", "observation")].shape[-1]
    expected = obs_dim + n_actions + n_agents
    if agent.input_dim != expected or agent.n_actions != n_actions:
        raise ValueError(
            f"agent (input_dim={agent.input_dim}, n_actions={agent.n_actions}) does not fit the env "
            f"(expects input_dim={expected}, n_actions={n_actions})"
        )
    keys = env.observation_spec.keys(True, True)
    if HIDDEN_KEY not in keys or LAST_ACTION_KEY not in keys:
        raise ValueError("env has no recurrent-state primers; wrap it with env_with_primers(env, agent.hidden_dim)")
    hspec = env.observation_spec[HIDDEN_KEY]
    if hspec.shape[-1] != agent.hidden_dim:
        raise ValueError(f"primer hidden size {hspec.shape[-1]} != agent.hidden_dim {agent.hidden_dim}")
    base = env.base_env if isinstance(env, TransformedEnv) else env
    return RecurrentQPolicy(agent, exploration, compile=bool(getattr(base, "compile_step", False)))

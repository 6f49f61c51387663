"""QMIX TD(λ) loss with double Q-learning (PyMARL2 ``NQLearner`` semantics), one loss per file.

Documented batch keys (an *episode* batch in the PyMARL layout, batch dims ``[B, T+1]``;
row t holds what was observed at step t and the transition taken from it; row T only ever
holds a final observation)::

    ("agents", "observation")  float [B, T+1, N, obs]   o_t
    ("agents", "action_mask")  bool  [B, T+1, N, A]     available actions at t
    ("agents", "action")       int64 [B, T+1, N]        a_t (final row: 0, unused)
    "state"                    float [B, T+1, S]        s_t
    "reward"                   float [B, T+1, 1]        r_t of the transition taken at t
    "terminated"               [B, T+1, 1]              game over at t's transition (NOT the time limit)
    "truncated"                [B, T+1, 1]              episode limit reached at t (informational, not read)
    "filled"                   bool  [B, T+1, 1]        rows 0..len: len transitions + the final obs row

Output keys of :meth:`QMixTDLoss.forward` (a :class:`tensordict.TensorDict` with batch size ``[]``)::

    "loss"               scalar, differentiable: loss_scale · masked mean of (Q_tot − y^λ)²
    "td_error_abs_mean"  detached, mean |Q_tot − y^λ| over valid transitions
    "q_taken_mean"       detached, mean Q_tot(s_t, a_t) over valid transitions
    "target_mean"        detached, mean y^λ over valid transitions
    "mask_fraction"      detached, valid transitions / (B·T) of the batch as given (the training
                         batches are cut to their longest episode, ``ovmse.collection.layout.trim_to_filled``)

Conventions (shared with :mod:`ovmse.losses.td_lambda`):

* Transition mask (PyMARL2 ``mask[:, 1:] *= 1 - terminated[:, :-1]``): a transition at t
  exists iff row t+1 is filled (``filled[:, 1:]``), times ``1 - (any terminated strictly
  before t)``. PyMARL2 writes ``filled[:, :-1]``; that relies on every short episode being
  terminated (the row after the last transition is filled too and only the terminated
  product removes it). ``filled[:, 1:]`` gives the same mask there and stays right for
  non-terminal ends.
* Last action: the agent input at t uses ``a_{t-1}`` (``-1`` → zero one-hot at t = 0),
  exactly PyMARL2's ``actions_onehot`` shifted by one.
* Double Q: ``a*_t = argmax_{a avail at t} Q_online(τ_t, a)`` for every row t = 0..T
  (rows with an all-False mask, i.e. padding, give action 0 via ``strict=False``), evaluated
  with the target agent and mixed with the target mixer on ``state[:, t]`` (all T+1 rows).
  Target values of unfilled rows are set to 0 before use so padding garbage cannot leak.
* Truncation (time limit): the dataset must store ``terminated = 0`` at the limit step
  (SMAC runners store ``terminated = done and not episode_limit``); then the transition is
  valid and y bootstraps from ``Q̄_tot`` of row t+1 (the final observation row, which is
  filled). When that limit step is the last column (T-1, the PyMARL2 case), the
  ``td_lambda_targets`` recursion bootstraps from ``target_qs[:, T]`` directly. When a
  non-terminal episode ends *earlier* than column T-1 (e.g. buffers longer than the
  episode limit), the plain recursion would only give weight (1-λ)γ to the bootstrap value,
  so this module adds the missing λγ·Q̄_tot(t+1) to the reward at that last step, which
  makes y^λ_t = r_t + γ·Q̄_tot(t+1) there, as in the last-column case. (λ = 0: no change.)
* Loss: PyMARL2 uses ``0.5 · (masked td²).sum() / mask.sum()``; ``loss_scale`` defaults
  to that 0.5 (it matters for gradient-norm clipping, not for Adam's step direction).

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from ovmse.nets import QMixer, RNNAgent
    >>> B, T, N, A, O, S = 4, 6, 3, 9, 30, 48                # 4 episodes of 6 transitions, 3m's sizes
    >>> batch = TensorDict({
    ...     "agents": {"observation": torch.randn(B, T + 1, N, O), "action": torch.randint(A, (B, T + 1, N)),
    ...                "action_mask": torch.ones(B, T + 1, N, A, dtype=torch.bool)},
    ...     "state": torch.randn(B, T + 1, S), "reward": torch.rand(B, T + 1, 1),
    ...     "terminated": torch.zeros(B, T + 1, 1, dtype=torch.bool),
    ...     "filled": torch.ones(B, T + 1, 1, dtype=torch.bool)}, batch_size=[B, T + 1])
    >>> loss = QMixTDLoss.from_online(RNNAgent(O + A + N, A, 16), QMixer(S, N, 8, 16))
    >>> out = loss(batch)
    >>> float(out["mask_fraction"])                           # every transition is valid here
    1.0
    >>> out["loss"].backward()
    >>> loss.hard_update_targets()                            # the caller's job, every K episodes
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import nn

from ovmse.losses.qmix_values import (DEFAULT_KEYS, QMixKeys, make_target, pack_agent_inputs, q_tot_taken,
                                      target_values, transition_mask, unroll_agent_q)
from ovmse.losses.td_lambda import td_lambda_targets
from ovmse.nets.agent import PackedRows, RNNAgent
from ovmse.nets.mixer import QMixer

__all__ = ["QMixTDLoss"]


class QMixTDLoss(nn.Module):
    """QMIX loss: masked (squared) TD(λ) error of the online Q_tot with double-Q targets.

    Args:
        agent, mixer: online networks (trained).
        target_agent, target_mixer: target networks (owned by the caller; see
            :meth:`make_targets` and :meth:`hard_update_targets`).
        gamma: discount (PyMARL2 0.99).
        td_lambda: λ (PyMARL2 0.6; 0.3 for 6h_vs_8z).
        double_q: PyMARL2 default True.
        loss_scale: factor on the masked mean of squared TD errors (PyMARL2: 0.5).
        keys: batch keys (:class:`QMixKeys`).

    Gradient clipping (PyMARL2 10) is the optimiser step's job, not the loss's.
    """

    def __init__(
        self,
        agent: RNNAgent,
        mixer: QMixer,
        target_agent: RNNAgent,
        target_mixer: QMixer,
        gamma: float = 0.99,
        td_lambda: float = 0.6,
        double_q: bool = True,
        loss_scale: float = 0.5,
        keys: QMixKeys = DEFAULT_KEYS,
    ) -> None:
        super().__init__()
        self.agent = agent
        self.mixer = mixer
        self.target_agent = target_agent
        self.target_mixer = target_mixer
        self.gamma = float(gamma)
        self.td_lambda = float(td_lambda)
        self.double_q = bool(double_q)
        self.loss_scale = float(loss_scale)
        self.keys = keys

    @staticmethod
    def make_targets(agent: nn.Module, mixer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Frozen deep copies ``(target_agent, target_mixer)`` of the online networks."""
        return make_target(agent), make_target(mixer)

    @classmethod
    def from_online(cls, agent: RNNAgent, mixer: QMixer, **kwargs) -> "QMixTDLoss":
        """Build the loss with fresh target copies of ``agent`` and ``mixer``."""
        target_agent, target_mixer = cls.make_targets(agent, mixer)
        return cls(agent, mixer, target_agent, target_mixer, **kwargs)

    @torch.no_grad()
    def hard_update_targets(self) -> None:
        """Copy online parameters (and buffers) into the target networks."""
        for online, target in ((self.agent, self.target_agent), (self.mixer, self.target_mixer)):
            target.load_state_dict(online.state_dict())
            for p in target.parameters():
                p.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters to optimise (agent then mixer), for the optimiser and grad clipping."""
        return list(self.agent.parameters()) + list(self.mixer.parameters())

    def targets(self, batch, agent_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y^λ [B, T, 1], mask [B, T, 1])``; y is detached and 0 where mask is 0."""
        mask, term = transition_mask(batch, self.keys)
        return self._targets(batch, agent_q, mask, term), mask

    def _targets(self, batch, agent_q: torch.Tensor, mask: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        return self._targets_and_one_step(batch, agent_q, mask, term)[0]

    def _targets_and_one_step(self, batch, agent_q: torch.Tensor, mask: torch.Tensor, term: torch.Tensor,
                              packed: tuple[torch.Tensor, PackedRows] | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y^λ, y^1)``, both ``[B, T, 1]``, detached, 0 where mask is 0; ``y^1 = r_t + γ (1 −
        terminated_t) Q̄_tot(τ_{t+1}, a*)`` is the one-step target (a time-limit end bootstraps
        from the final row, as TD(λ) does). ``packed``: the batch's
        :func:`~ovmse.losses.qmix_values.pack_agent_inputs`, if already built."""
        k = self.keys
        T = mask.shape[1]
        q_next = target_values(agent_q, self.target_agent, self.target_mixer, batch, self.double_q, k,
                               packed=packed)
        rewards = batch[k.reward][:, :T].to(q_next.dtype)
        rewards = torch.where(mask > 0, rewards, torch.zeros_like(rewards))
        one_step = torch.where(mask > 0, rewards + self.gamma * (1.0 - term) * q_next[:, 1:],
                               torch.zeros_like(rewards)).detach()
        # Non-terminal end before the last column: restore the full γ·Q̄(t+1) bootstrap
        # (see "Truncation" in the module docstring).
        if self.td_lambda > 0.0 and T > 1:
            next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
            early_end = mask * (1.0 - next_mask) * (1.0 - term)
            early_end[:, -1] = 0.0  # the last column is bootstrapped by the recursion itself
            rewards = rewards + early_end * (self.td_lambda * self.gamma) * q_next[:, 1:]
        y = td_lambda_targets(rewards, term, mask, q_next, self.gamma, self.td_lambda)
        return y.detach(), one_step

    def compute(self, batch) -> tuple[TensorDict, dict[str, torch.Tensor]]:
        """The loss output of :meth:`forward` plus the intermediates other losses reuse:
        ``agent_q [B, T+1, N, A]`` (online, grad), ``q_taken [B, T, 1]`` (grad), ``y [B, T, 1]``
        (TD(λ)), ``y_one_step [B, T, 1]`` (r + γ Q̄_tot(τ', a*), the paper's Eq. 4 target), ``mask``
        and ``terminated`` ``[B, T, 1]`` (detached, from :func:`transition_mask`), and ``packed``
        (the agent inputs of the computed rows, :func:`pack_agent_inputs`, for further unrolls)."""
        packed = pack_agent_inputs(batch, self.agent.n_actions, self.keys)
        agent_q = unroll_agent_q(self.agent, batch, self.keys, packed)  # [B, T+1, N, A]
        q_taken = q_tot_taken(self.agent, self.mixer, batch, agent_q=agent_q, keys=self.keys)  # [B, T, 1]
        mask, term = transition_mask(batch, self.keys)
        y, y_one_step = self._targets_and_one_step(batch, agent_q, mask, term, packed)
        valid = mask > 0
        td = torch.where(valid, q_taken - y, torch.zeros_like(q_taken))
        n_valid = mask.sum().clamp(min=1.0)
        loss = self.loss_scale * td.pow(2).sum() / n_valid
        with torch.no_grad():
            q_d = torch.where(valid, q_taken, torch.zeros_like(q_taken)).detach()
            out = TensorDict(
                {
                    "loss": loss,
                    "td_error_abs_mean": td.detach().abs().sum() / n_valid,
                    "q_taken_mean": q_d.sum() / n_valid,
                    "target_mean": y.sum() / n_valid,
                    "mask_fraction": mask.mean(),
                },
                batch_size=[],
            )
        return out, {"agent_q": agent_q, "q_taken": q_taken, "y": y, "y_one_step": y_one_step, "mask": mask,
                     "terminated": term, "packed": packed}

    def forward(self, batch) -> TensorDict:
        return self.compute(batch)[0]

"""CFCQL: counterfactual CQL regulariser (CFCQL repo ``cq_learner``, ``raw_cql: False``).

Shapes (the T *transitions* of an episode batch, rows ``0..T-1``)::

    agent_q          float [B, T, N, A]  online per-agent Q of every action (gradient flows)
    avail            bool  [B, T, N, A]  available actions
    state            float [B, T, S]     s_t
    actions          int64 [B, T, N]     dataset actions a^D_t
    q_taken          float [B, T, 1]     online Q_tot(s_t, a^D_t) (gradient flows)
    mask             [B, T, 1]           > 0 for valid transitions
    behaviour_probs  float [B, T, N, A]  β_i(·|τ_i), a behaviour-cloning policy's probabilities
                                         (detached here; required when temperature > 0)

Counterfactual values: for agent i and action j, the dataset joint action with only agent
i's action replaced by j, mixed on s_t (all N·A of them per state in one
:meth:`QMixer.forward_samples` call with K = N·A)::

    cf_q[i, j] = Q_tot(s_t, (a^D_1, .., a^D_{i-1}, j, a^D_{i+1}, .., a^D_N))
    cf_q[i, j] = −1e10 where j is unavailable to agent i
    c_i        = logsumexp_j cf_q[i, j]
    μ_i        = softmax_j cf_q[i, ·]                               (detached)
    KL_i       = Σ_{j available} μ_ij (log μ_ij − log β_ij)        (logs clamped at 1e-8)
    λ          = softmax_i(temperature · KL_i)                      (detached; temperature 0:
                                                                      exactly 1/N; inf: one-hot argmax)
    L_CQL      = mean over valid t of ( Σ_i λ_i c_i − Q_tot(s_t, a^D_t) )

The agent that is furthest from the behaviour policy gets the largest weight (the one whose
counterfactual actions are most out of distribution). The CFCQL repo's ``softmax_temp: 100``
special case (hard argmax) is ``temperature=float("inf")`` here.

An agent with no available action at a *valid* transition would make ``c_i ≈ −1e10``; SMAC
never produces that (dead agents have the no-op), so it is not guarded.

Output keys of :meth:`CFCQLLoss.forward` (a :class:`tensordict.TensorDict`, batch size ``[]``)::

    "loss"                   scalar, differentiable: L_CQL (multiply by α outside)
    "gap_mean"               detached copy of "loss"
    "lse_mean"               detached, mean Σ_i λ_i c_i over valid transitions
    "q_data_mean"            detached, mean Q_tot(s_t, a^D_t) over valid transitions
    "agent_weight_max_mean"  detached, mean max_i λ_i over valid transitions (1/N: uniform)
    "kl_mean"                detached, mean over valid transitions and agents of KL_i
                             (0.0 when behaviour_probs is None)
    with return_details=True also (all detached):
    "cf_q"           [B, T, N, A]  counterfactual Q_tot (unavailable: −1e10)
    "agent_lse"      [B, T, N]     c_i
    "agent_weights"  [B, T, N]     λ_i
    "kl"             [B, T, N]     KL_i (zeros when behaviour_probs is None)
    with lower_bound also:
    "calibrated_fraction"          share of available counterfactual values raised to the bound

Cal-QL (MACal-QL): with ``lower_bound`` ``[B, T, 1]`` (the Monte-Carlo return-to-go G_t), every
available counterfactual value in the log-sum-exp becomes ``max(cf_q[i, j], G_t)``; the data
term and the agent weights (computed from the unclamped values) are unchanged.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import nn

from ovmse.losses.returns import calibrate
from ovmse.nets.mixer import QMixer

__all__ = ["CFCQLLoss", "UNAVAILABLE_Q", "KL_EPS"]

UNAVAILABLE_Q = -1e10
KL_EPS = 1e-8


class CFCQLLoss(nn.Module):
    """Counterfactual CQL term (see the module docstring).

    Args:
        mixer: the online mixer (anything with ``forward_samples(agent_qs [..., K, N],
            state [..., S]) -> [..., K, 1]``).
        temperature: softmax temperature on the per-agent KL (CFCQL ``softmax_temp``);
            0 gives uniform weights 1/N, ``inf`` a one-hot on the largest KL. Must be >= 0.
    """

    def __init__(self, mixer: QMixer, temperature: float = 1.0) -> None:
        super().__init__()
        temperature = float(temperature)
        if not temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.mixer = mixer
        self.temperature = temperature

    def counterfactual_q(
        self, agent_q: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """``cf_q [B, T, N, A]`` before masking: Q_tot with agent i's dataset action replaced by j."""
        B, T, N, A = agent_q.shape
        q_data = agent_q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [B, T, N]
        eye = torch.eye(N, dtype=torch.bool, device=agent_q.device).view(1, 1, N, 1, N)
        # joint[b, t, i, j, k] = agent_q[b, t, i, j] if k == i else q_data[b, t, k]
        joint = torch.where(eye, agent_q.unsqueeze(-1), q_data.view(B, T, 1, 1, N))  # [B, T, N, A, N]
        return self.mixer.forward_samples(joint.reshape(B, T, N * A, N), state).view(B, T, N, A)

    def forward(
        self,
        agent_q: torch.Tensor,
        avail: torch.Tensor,
        state: torch.Tensor,
        actions: torch.Tensor,
        q_taken: torch.Tensor,
        mask: torch.Tensor,
        behaviour_probs: torch.Tensor | None = None,
        return_details: bool = False,
        lower_bound: torch.Tensor | None = None,
    ) -> TensorDict:
        if self.temperature > 0.0 and behaviour_probs is None:
            raise ValueError("CFCQLLoss with temperature > 0 needs behaviour_probs [B, T, N, A]")
        B, T, N, A = agent_q.shape
        device = agent_q.device
        trans = mask > 0  # [B, T, 1]
        # Padding rows may hold any action value; they are excluded, but gather must not fail.
        acts = torch.where(trans, actions, torch.zeros_like(actions)).clamp(0, A - 1)
        avail = avail.bool()

        cf_q = self.counterfactual_q(agent_q, state, acts)
        cf_raw = cf_q.detach().masked_fill(~avail, UNAVAILABLE_Q)  # the agent weights' input
        cf_q, raised = calibrate(cf_q, lower_bound)  # Cal-QL: see the module docstring
        calibrated = None if raised is None else raised & avail & trans.unsqueeze(-1)
        cf_q = cf_q.masked_fill(~avail, UNAVAILABLE_Q)
        agent_lse = cf_q.logsumexp(-1)  # [B, T, N]

        with torch.no_grad():
            if behaviour_probs is not None:
                mu = torch.softmax(cf_raw, dim=-1)
                beta = behaviour_probs.detach().to(mu.dtype)
                terms = mu * (mu.clamp_min(KL_EPS).log() - beta.clamp_min(KL_EPS).log())
                kl = torch.where(avail, terms, torch.zeros_like(terms)).sum(-1)  # [B, T, N]
            else:
                kl = torch.zeros_like(agent_lse)
            if self.temperature == 0.0:
                weights = torch.full_like(agent_lse, 1.0 / N)
            elif math.isinf(self.temperature):
                weights = torch.nn.functional.one_hot(kl.argmax(-1), N).to(agent_lse.dtype)
            else:
                weights = torch.softmax(self.temperature * kl, dim=-1)

        lse = (weights * agent_lse).sum(-1, keepdim=True)  # [B, T, 1]
        n = trans.sum().clamp(min=1).to(agent_q.dtype)
        zero = torch.zeros((), dtype=lse.dtype, device=device)
        loss = torch.where(trans, lse - q_taken, zero).sum() / n

        with torch.no_grad():
            out = {
                "loss": loss,
                "gap_mean": loss.detach(),
                "lse_mean": torch.where(trans, lse, zero).sum().detach() / n,
                "q_data_mean": torch.where(trans, q_taken, zero).sum().detach() / n,
                "agent_weight_max_mean": torch.where(trans, weights.amax(-1, keepdim=True), zero).sum() / n,
                "kl_mean": torch.where(trans, kl.mean(-1, keepdim=True), zero).sum() / n,
            }
            if calibrated is not None:
                n_avail = (avail & trans.unsqueeze(-1)).sum().clamp(min=1).to(agent_q.dtype)
                out["calibrated_fraction"] = calibrated.sum().to(agent_q.dtype) / n_avail
            if return_details:
                out.update(
                    cf_q=cf_q.detach(), agent_lse=agent_lse.detach(), agent_weights=weights, kl=kl
                )
        return TensorDict(out, batch_size=[])

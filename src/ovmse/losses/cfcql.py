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
    with return_details=True also (all detached; padding rows hold 0):
    "cf_q"           [B, T, N, A]  counterfactual Q_tot (unavailable: −1e10)
    "agent_lse"      [B, T, N]     c_i
    "agent_weights"  [B, T, N]     λ_i
    "kl"             [B, T, N]     KL_i (zeros when behaviour_probs is None)
    with lower_bound also:
    "calibrated_fraction"          share of available counterfactual values raised to the bound

Cal-QL (MACal-QL): with ``lower_bound`` ``[B, T, 1]`` (the Monte-Carlo return-to-go G_t), every
available counterfactual value in the log-sum-exp becomes ``max(cf_q[i, j], G_t)``; the data
term and the agent weights (computed from the unclamped values) are unchanged.

Examples:
    >>> import torch
    >>> from ovmse.nets import QMixer
    >>> B, T, N, A, S = 2, 4, 3, 5, 8
    >>> cql = CFCQLLoss(QMixer(S, N), temperature=0.0)        # uniform agent weights: no β needed
    >>> agent_q = torch.randn(B, T, N, A, requires_grad=True)
    >>> avail = torch.ones(B, T, N, A, dtype=torch.bool)
    >>> actions = torch.randint(A, (B, T, N))
    >>> q_taken = cql.mixer(agent_q.gather(-1, actions.unsqueeze(-1)).squeeze(-1), torch.zeros(B, T, S))
    >>> out = cql(agent_q, avail, torch.zeros(B, T, S), actions, q_taken, torch.ones(B, T, 1))
    >>> bool(out["loss"] >= 0)                                # logsumexp over A actions >= the data's value
    True
    >>> out["loss"].backward()
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import nn

from ovmse.losses.returns import calibrate
from ovmse.losses.rows import put_rows, take_rows, valid_rows
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
        # The term runs on the M valid transitions only, as [M, 1, ...] (ovmse/losses/rows.py):
        # padding costs no mixing and, since it may hold any action or value, stays out of the graph.
        rows = valid_rows(mask)
        q, av, s, acts, q_data = (take_rows(x, rows) for x in (agent_q, avail.bool(), state, actions, q_taken))
        bound = None if lower_bound is None else take_rows(lower_bound, rows)

        cf_q = self.counterfactual_q(q, s, acts)  # [M, 1, N, A]
        cf_raw = cf_q.detach().masked_fill(~av, UNAVAILABLE_Q)  # the agent weights' input
        cf_q, raised = calibrate(cf_q, bound)  # Cal-QL: see the module docstring
        calibrated = None if raised is None else raised & av
        cf_q = cf_q.masked_fill(~av, UNAVAILABLE_Q)
        agent_lse = cf_q.logsumexp(-1)  # [M, 1, N]

        with torch.no_grad():
            if behaviour_probs is not None:
                mu = torch.softmax(cf_raw, dim=-1)
                beta = take_rows(behaviour_probs.detach(), rows).to(mu.dtype)
                terms = mu * (mu.clamp_min(KL_EPS).log() - beta.clamp_min(KL_EPS).log())
                kl = torch.where(av, terms, torch.zeros_like(terms)).sum(-1)  # [M, 1, N]
            else:
                kl = torch.zeros_like(agent_lse)
            if self.temperature == 0.0:
                weights = torch.full_like(agent_lse, 1.0 / N)
            elif math.isinf(self.temperature):
                weights = torch.nn.functional.one_hot(kl.argmax(-1), N).to(agent_lse.dtype)
            else:
                weights = torch.softmax(self.temperature * kl, dim=-1)

        lse = (weights * agent_lse).sum(-1, keepdim=True)  # [M, 1, 1]
        n = torch.tensor(max(rows.numel(), 1), dtype=agent_q.dtype, device=agent_q.device)
        loss = (lse - q_data).sum() / n

        with torch.no_grad():
            out = {
                "loss": loss,
                "gap_mean": loss.detach(),
                "lse_mean": lse.sum().detach() / n,
                "q_data_mean": q_data.sum().detach() / n,
                "agent_weight_max_mean": weights.amax(-1).sum() / n,
                "kl_mean": kl.mean(-1).sum() / n,
            }
            if calibrated is not None:
                out["calibrated_fraction"] = calibrated.sum().to(agent_q.dtype) / av.sum().clamp(min=1).to(agent_q.dtype)
            if return_details:  # back to [B, T, ...]; padding rows hold 0
                out.update({k: put_rows(v.detach(), rows, (B, T)) for k, v in
                            (("cf_q", cf_q), ("agent_lse", agent_lse), ("agent_weights", weights), ("kl", kl))})
        return TensorDict(out, batch_size=[])

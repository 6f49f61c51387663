"""MACQL: joint-action CQL regulariser with uniformly sampled joint actions (CFCQL ``raw_cql``).

Shapes (the T *transitions* of an episode batch, rows ``0..T-1``)::

    agent_q   float [B, T, N, A]   online per-agent Q of every action (gradient flows)
    avail     bool  [B, T, N, A]   available actions
    state     float [B, T, S]      s_t
    q_taken   float [B, T, 1]      online Q_tot(s_t, a^D_t) of the dataset joint action (gradient flows)
    mask      [B, T, 1]            > 0 for valid transitions (:func:`ovmse.losses.qmix_values.transition_mask`)
    samples   int64 [B, T, K, N]   optional explicit joint actions (or [K, N], shared by every (b, t))

Per transition, K = ``n_samples`` joint actions ``a^k`` are drawn, every agent independently,
by ``sampling``:

* ``"available"`` (default): each agent's action uniform over its *available* actions (a dead
  agent's only action is no-op), so every sample is a valid joint action and all K enter the
  sum: a uniform draw from the valid joint actions, i.e. the CQL term's ``a ~ μ = Uniform``
  over the joint actions the environment allows.
* ``"all"``: each agent's action uniform over ALL A actions, as the CFCQL repo draws them;
  invalid samples (some agent's action unavailable) are left out of the sum (masked with
  −inf; the gradient stays finite). On 2s3z only 4-6% of such samples are valid and 46-47%
  of transitions get none, whose CQL term is then 0: α then weighs a different, much
  smaller term than the paper's (our behaviour before issue 16).

Why not CFCQL's own rule for invalid samples: its ``raw_cql`` multiplies an invalid sample's
Q_tot by 0, so each adds ``exp(0)`` to the sum (and it leaves out the dataset action): with
94% invalid samples the term is then set mostly by where 0 lies on the Q scale, not by the
values of actions the agents could take. Drawing valid samples measures what CQL means.
A sample is *valid* iff every agent's action is available; the share is logged
(``valid_sample_fraction``: 1.0 with ``"available"`` on every transition with an action).
Every sample is mixed on the
transition's own state with :meth:`QMixer.forward_samples` (one hypernetwork pass per state).
The dataset joint action ``a^D`` (always valid) is one more term of the sum, as it is of the
exact CQL sum over all joint actions::

    lse_t  = log( exp Q_tot(s_t, a^D_t) + Σ_{k valid} exp Q_tot(s_t, a^k) )
    L_CQL  = mean over valid transitions of ( lse_t − Q_tot(s_t, a^D_t) )   (>= 0)

Keeping ``a^D`` in the sum bounds the term below by 0. Without it the sampled term is
unbounded below (the mixer can push every sampled action towards −inf while Q_data stays on
its TD target), and it diverged on our data. A transition without a valid sample (possible
only with ``"all"``) contributes 0; its share is reported as ``no_valid_sample_fraction``.

Output keys of :meth:`MACQLLoss.forward` (a :class:`tensordict.TensorDict`, batch size ``[]``)::

    "loss"                      scalar, differentiable: L_CQL (multiply by α outside)
    "logsumexp_mean"            detached, mean lse_t over valid transitions
    "q_data_mean"               detached, mean Q_tot(s_t, a^D_t) over valid transitions
    "gap_mean"                  detached copy of "loss"
    "valid_sample_fraction"     detached, valid samples / (K · #valid transitions)
    "no_valid_sample_fraction"  detached, #(valid transitions without a valid sample) / #valid transitions
    "calibrated_fraction"       detached, only with ``lower_bound``: share of valid samples raised to it

Cal-QL (MACal-QL): with ``lower_bound`` ``[B, T, 1]`` (the Monte-Carlo return-to-go G_t of
:func:`ovmse.losses.return_to_go`), every *sampled* joint action's value in the log-sum-exp is
``max(Q_tot(s_t, a^k), G_t)``: the push-down stops at the return the behaviour actually got,
so values are conservative but calibrated. The data term ``Q_tot(s_t, a^D_t)`` is unchanged.
    "samples"                   int64 [B, T, K, N], only with ``return_samples=True``
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import nn

from ovmse.losses.returns import calibrate
from ovmse.losses.rows import put_rows, take_rows, valid_rows
from ovmse.nets.mixer import QMixer

__all__ = ["MACQLLoss", "SAMPLINGS", "available_ranks", "gather_joint", "sample_available_joint_actions"]

SAMPLINGS = ("available", "all")


def gather_joint(values: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
    """Per-agent entries of K joint actions: ``values [..., N, A]``, ``joint`` int64
    ``[..., K, N]`` -> ``[..., K, N]`` with ``out[..., k, i] = values[..., i, joint[..., k, i]]``.

    One ``gather`` on the flattened ``[..., N·A]`` view, so the backward is a scatter-add into
    ``[..., N·A]`` (no ``[..., K, N, A]`` expansion is materialised).
    """
    *lead, N, A = values.shape
    K = joint.shape[-2]
    offsets = torch.arange(N, device=joint.device, dtype=joint.dtype) * A
    flat = (joint + offsets).reshape(*lead, K * N)
    return values.reshape(*lead, N * A).gather(-1, flat).view(*lead, K, N)


def available_ranks(avail: torch.Tensor, n_samples: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K draws per agent, uniform over the agent's available actions, as ranks into a table of
    them: ``avail`` bool ``[..., N, A]`` -> ``(ranked [..., N, A], rank [..., K, N])``, both int64.

    ``ranked[..., i, :c_i]`` are agent i's c_i available actions (in index order) and
    ``rank[..., k, i]`` is uniform on ``0..c_i-1``, so agent i's k-th action is
    ``ranked[..., i, rank[..., k, i]]`` (:func:`gather_joint`). ``floor(u · c)`` with
    ``u ~ U[0, 1)`` in float32 is always below c (u <= 1 - 2^-24, and c·2^-24 is more than half
    a float spacing below c), so no clamp is needed. A row without an available action
    (padding) gets rank 0, i.e. action 0, which is unavailable there.
    """
    *lead, N, A = avail.shape
    device = generator.device if generator is not None else avail.device
    av = avail.to(device=device, dtype=torch.bool)
    index = torch.arange(A, device=device)
    ranked = torch.where(av, index, index + A).argsort(-1)  # available actions first  [..., N, A]
    n_avail = av.sum(-1).unsqueeze(-2)  # [..., 1, N]
    u = torch.rand((*lead, n_samples, N), generator=generator, device=device)
    rank = u.mul_(n_avail).long()  # [..., K, N]
    return ranked.to(avail.device), rank.to(avail.device)


def sample_available_joint_actions(avail: torch.Tensor, n_samples: int,
                                   generator: torch.Generator | None = None) -> torch.Tensor:
    """K joint actions per transition, each agent's action uniform over its available ones:
    ``avail`` bool ``[..., N, A]`` -> int64 ``[..., K, N]`` (see :func:`available_ranks`)."""
    ranked, rank = available_ranks(avail, n_samples, generator)
    return gather_joint(ranked, rank)


class MACQLLoss(nn.Module):
    """Sampled joint-action CQL term (see the module docstring).

    Args:
        mixer: the online mixer (anything with ``forward_samples(agent_qs [..., K, N],
            state [..., S]) -> [..., K, 1]``).
        n_samples: K, joint actions per transition (CFCQL ``raw_sample_actions`` 100).
        sampling: ``"available"`` (valid joint actions) or ``"all"`` (CFCQL's draw over all
            actions, invalid ones left out); see the module docstring.
        generator: optional ``torch.Generator`` for the samples (its device is used for
            drawing; the samples are then moved to ``agent_q``'s device).

    Examples:
        >>> import torch
        >>> from ovmse.nets.mixer import QMixer
        >>> mixer = QMixer(n_agents=3, state_dim=8)
        >>> cql = MACQLLoss(mixer, n_samples=16)
        >>> B, T, N, A = 2, 5, 3, 6
        >>> avail = torch.rand(B, T, N, A) < 0.5
        >>> avail[..., 0] = True
        >>> q = torch.randn(B, T, N, A, requires_grad=True)
        >>> q_taken = torch.randn(B, T, 1)
        >>> out = cql(q, avail, torch.randn(B, T, 8), q_taken, torch.ones(B, T, 1))
        >>> float(out["valid_sample_fraction"])
        1.0
        >>> out["loss"].backward()
    """

    def __init__(self, mixer: QMixer, n_samples: int = 100, generator: torch.Generator | None = None,
                 sampling: str = "available") -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"MACQL sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.mixer = mixer
        self.n_samples = int(n_samples)
        self.sampling = sampling
        self.generator = generator

    def sample_joint_actions(self, batch_shape, n_agents: int, n_actions: int, device) -> torch.Tensor:
        """int64 ``[*batch_shape, K, N]``, each entry uniform over ``0..A-1`` (``sampling="all"``)."""
        gen = self.generator
        draw_device = gen.device if gen is not None else device
        samples = torch.randint(
            0, n_actions, (*batch_shape, self.n_samples, n_agents), generator=gen, device=draw_device
        )
        return samples.to(device)

    def forward(
        self,
        agent_q: torch.Tensor,
        avail: torch.Tensor,
        state: torch.Tensor,
        q_taken: torch.Tensor,
        mask: torch.Tensor,
        samples: torch.Tensor | None = None,
        return_samples: bool = False,
        lower_bound: torch.Tensor | None = None,
    ) -> TensorDict:
        B, T, N, A = agent_q.shape
        device = agent_q.device
        if samples is not None:
            samples = samples.to(device=device, dtype=torch.long)
            if samples.dim() == 2:
                samples = samples.expand(B, T, *samples.shape)
            if samples.dim() != 4 or samples.shape[:2] != (B, T) or samples.shape[3] != N:
                raise ValueError(f"samples must be [B, T, K, N] or [K, N], got {tuple(samples.shape)}")
            if samples.numel() and (int(samples.min()) < 0 or int(samples.max()) >= A):
                raise ValueError(f"samples must lie in [0, {A}), got range [{int(samples.min())}, {int(samples.max())}]")

        # The term runs on the M valid transitions only, as [M, 1, ...] (ovmse/losses/rows.py):
        # padding costs no samples or mixing and, since it may hold anything, stays out of the graph.
        rows = valid_rows(mask)
        q, av, s, q_data = (take_rows(x, rows) for x in (agent_q, avail.bool(), state, q_taken))
        bound = None if lower_bound is None else take_rows(lower_bound, rows)
        if samples is not None:
            samples = take_rows(samples, rows)  # [M, 1, K, N]
            q_samples = gather_joint(q, samples)
            sample_ok = gather_joint(av, samples).all(-1)  # [M, 1, K]
        elif self.sampling == "available":
            ranked, rank = available_ranks(av, self.n_samples, self.generator)
            q_samples = gather_joint(q.gather(-1, ranked), rank)  # [M, 1, K, N]
            # Every draw is available unless some agent has no available action at all.
            sample_ok = av.any(-1).all(-1, keepdim=True).expand(*rank.shape[:-1])
            if return_samples:
                samples = gather_joint(ranked, rank)
        else:
            samples = self.sample_joint_actions(q.shape[:2], N, A, device)
            q_samples = gather_joint(q, samples)
            sample_ok = gather_joint(av, samples).all(-1)
        K = q_samples.shape[2]
        q_tot = self.mixer.forward_samples(q_samples, s).squeeze(-1)  # [M, 1, K]
        q_tot, calibrated = calibrate(q_tot, bound)  # Cal-QL (module docstring)

        # The dataset joint action is always a valid joint action, and the exact CQL sum over
        # all joint actions contains it: putting it into the log-sum-exp keeps lse >= Q_data
        # (L_CQL >= 0). Without it the sampled term is unbounded below -- the mixer can push
        # every sampled action towards −inf while Q_data stays on its TD target -- and on our
        # 2s3z medium set Q_tot diverged to ~2.6e4 within 2000 updates (docs/results.md).
        candidates = torch.cat([q_data, q_tot.masked_fill(~sample_ok, float("-inf"))], dim=-1)  # [M, 1, 1+K]
        lse = candidates.logsumexp(-1, keepdim=True)  # [M, 1, 1], finite: q_data is finite
        n_used = torch.tensor(max(rows.numel(), 1), dtype=agent_q.dtype, device=device)
        loss = (lse - q_data).sum() / n_used

        with torch.no_grad():
            out = {
                "loss": loss,
                "logsumexp_mean": lse.sum().detach() / n_used,
                "q_data_mean": q_data.sum().detach() / n_used,
                "gap_mean": loss.detach(),
                "valid_sample_fraction": sample_ok.sum().to(agent_q.dtype) / (n_used * K),
                "no_valid_sample_fraction": (~sample_ok.any(-1)).sum().to(agent_q.dtype) / n_used,
            }
            if calibrated is not None:
                out["calibrated_fraction"] = ((calibrated & sample_ok).sum().to(agent_q.dtype)
                                              / sample_ok.sum().clamp(min=1).to(agent_q.dtype))
        if return_samples:
            out["samples"] = put_rows(samples, rows, (B, T), fill=0)  # padding rows: action 0
        return TensorDict(out, batch_size=[])

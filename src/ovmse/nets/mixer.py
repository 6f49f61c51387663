"""QMIX monotonic mixing network (PyMARL2 ``QMixer`` with two-layer hypernetworks)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .sample_mixing import mix_samples


class QMixer(nn.Module):
    """Mix per-agent Q-values into Q_tot, monotone in every agent's Q.

    Monotonicity (∂Q_tot/∂Q_i >= 0) is what makes the decentralised argmax of each agent
    consistent with the argmax of Q_tot; it is enforced by taking ``abs()`` of the
    hypernetwork-generated weights (PyMARL2 ``abs: True``). ELU is monotone increasing, so
    the composition stays monotone. Biases and V(s) are unconstrained: they do not depend on
    the agent Q-values.

    Args:
        state_dim: S.
        n_agents: N.
        embed_dim: mixing embedding (PyMARL2 ``mixing_embed_dim`` 32).
        hypernet_embed: hidden width of the weight hypernetworks (PyMARL2 64).
    """

    def __init__(self, state_dim: int, n_agents: int, embed_dim: int = 32, hypernet_embed: int = 64) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.n_agents = n_agents
        self.embed_dim = embed_dim
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed_dim * n_agents)
        )
        self.hyper_w_final = nn.Sequential(
            nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed_dim)
        )
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.V = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def _mixing_params(self, state: torch.Tensor):
        """Hypernetwork outputs for flat states ``[M, S]``: ``(w1 [M, N, E], b1 [M, 1, E],
        w_final [M, E, 1], v [M, 1, 1])`` with the weights already made non-negative."""
        w1 = self.hyper_w1(state).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b1(state).view(-1, 1, self.embed_dim)
        w_final = self.hyper_w_final(state).abs().view(-1, self.embed_dim, 1)
        v = self.V(state).view(-1, 1, 1)
        return w1, b1, w_final, v

    def _mix(self, qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``qs [M, K, N]``, ``state [M, S]`` -> ``[M, K, 1]`` (one hypernetwork pass per state)."""
        w1, b1, w_final, v = self._mixing_params(state)
        hidden = F.elu(torch.bmm(qs, w1) + b1)  # [M, K, E]
        return torch.bmm(hidden, w_final) + v  # [M, K, 1]

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Args:
            agent_qs: ``[..., N]`` chosen-action Q of each agent (e.g. ``[B, T, N]``).
            state: ``[..., S]`` with the same leading dims.

        Returns:
            q_tot: ``[..., 1]``.
        """
        lead = agent_qs.shape[:-1]
        if state.shape[:-1] != lead:
            raise ValueError(f"leading dims differ: agent_qs {tuple(agent_qs.shape)} vs state {tuple(state.shape)}")
        qs = agent_qs.reshape(-1, 1, self.n_agents)  # [M, 1, N]
        s = state.reshape(-1, self.state_dim)  # [M, S]
        return self._mix(qs, s).view(*lead, 1)

    def forward_rows(self, agent_qs: torch.Tensor, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on the rows where ``rows`` is True only, 0 elsewhere: the padding after
        the episodes' ends costs no hypernetwork pass.

        Args:
            agent_qs: ``[B, T, N]``; state: ``[B, T, S]``; rows: bool ``[B, T]``.

        Returns:
            q_tot: ``[B, T, 1]``.
        """
        out = agent_qs.new_zeros(*rows.shape, 1)
        return out.index_put((rows,), self.forward(agent_qs[rows], state[rows]))

    def forward_samples(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Mix K joint samples per state, computing the hypernetwork weights once per state.

        Equal to ``forward(agent_qs, state.unsqueeze(-2).expand(..., K, S))`` but the
        hypernetworks run on ``[..., S]`` only and the K samples share them
        (:func:`~ovmse.nets.sample_mixing.mix_samples`; used by the CQL regularisers,
        K = 100 or N·A).

        Args:
            agent_qs: ``[..., K, N]`` per-agent Q of K joint actions.
            state: ``[..., S]``, leading dims equal to ``agent_qs.shape[:-2]``.

        Returns:
            q_tot: ``[..., K, 1]``.
        """
        if agent_qs.dim() < 2 or state.shape[:-1] != agent_qs.shape[:-2]:
            raise ValueError(
                f"expected agent_qs [..., K, N] and state [..., S] with equal leading dims, got "
                f"{tuple(agent_qs.shape)} and {tuple(state.shape)}"
            )
        k = agent_qs.shape[-2]
        lead = agent_qs.shape[:-2]
        qs = agent_qs.reshape(-1, k, self.n_agents)  # [M, K, N]
        s = state.reshape(-1, self.state_dim)  # [M, S]
        # The [M, K, E] hidden layer is made block by block in cache (sample_mixing.py).
        return mix_samples(qs, *self._mixing_params(s)).view(*lead, k, 1)

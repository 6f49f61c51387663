"""Per-agent recurrent Q-network shared by all agents (PyMARL2 ``rnn`` agent).

Parameters are shared across agents, so the agent-id one-hot in the input is what lets the
network specialise per agent; the last-action one-hot gives the GRU the agent's own recent
behaviour, which SMAC observations do not contain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .packed_gru import packed_gru


@dataclass(frozen=True)
class PackedRows:
    """Which rows of a batch of episodes ``[B, T]`` an unroll computes, in the GRU's packed order
    (time-major, longest episode first): made by :func:`pack_rows`, read by
    :meth:`RNNAgent.unroll_packed`. The same for every network unrolled over the batch, so the
    online, target and frozen unrolls of one update share one (and one gather of inputs).

    Attributes:
        rows: int64 ``[R]``, the packed rows' places in ``[B·T]``.
        order: int64 ``[B]``, the episodes longest first (stable).
        episodes_per_step: episodes still running at each step, non-increasing, all > 0.
        batch: B.
        steps: T.
    """

    rows: torch.Tensor
    order: torch.Tensor
    episodes_per_step: tuple[int, ...]
    batch: int
    steps: int


def pack_rows(lengths: torch.Tensor, steps: int) -> PackedRows:
    """The first ``lengths[b]`` of ``steps`` rows of each episode b, packed (``lengths`` int64 ``[B]``;
    on a GPU two host syncs: the step counts and the rows' ``nonzero``)."""
    B = lengths.shape[0]
    device = lengths.device
    order = torch.argsort(lengths, descending=True, stable=True)
    running = lengths.clamp(max=steps).index_select(0, order).unsqueeze(0) > torch.arange(
        steps, device=device).unsqueeze(1)  # [T, B], episodes sorted
    episodes_per_step = tuple(n for n in running.sum(1).tolist() if n > 0)  # non-increasing
    step, rank = running.nonzero(as_tuple=True)  # time-major, longest episode first
    return PackedRows(order.index_select(0, rank) * steps + step, order, episodes_per_step, B, steps)


def agent_inputs(obs: torch.Tensor, last_action: torch.Tensor, n_actions: int) -> torch.Tensor:
    """Build the agent network input ``obs ‖ one_hot(last_action) ‖ one_hot(agent_id)``.

    Args:
        obs: float ``[..., N, obs_dim]``.
        last_action: int64 ``[..., N]``; ``-1`` means "no previous action" (first step of an
            episode) and encodes as an all-zero one-hot, as PyMARL2 does with its zero-filled
            ``actions_onehot`` at t = 0.
        n_actions: A.

    Returns:
        float ``[..., N, obs_dim + A + N]``.
    """
    n_agents = obs.shape[-2]
    if last_action.shape != obs.shape[:-1]:
        raise ValueError(
            f"last_action shape {tuple(last_action.shape)} must equal obs shape without the "
            f"feature axis {tuple(obs.shape[:-1])}"
        )
    # clamp(min=0) keeps one_hot valid for -1; the "none" rows are zeroed right after.
    act_oh = F.one_hot(last_action.clamp(min=0), n_actions).to(obs.dtype)
    act_oh = act_oh * (last_action >= 0).unsqueeze(-1).to(obs.dtype)
    ids = torch.eye(n_agents, dtype=obs.dtype, device=obs.device).expand(*obs.shape[:-1], n_agents)
    return torch.cat([obs, act_oh, ids], dim=-1)


class RNNAgent(nn.Module):
    """fc(D→H) → ReLU → GRUCell(H) → fc(H→A); one set of weights for every agent.

    Args:
        input_dim: D = obs_dim + n_actions + n_agents (see :func:`agent_inputs`).
        n_actions: A.
        hidden_dim: H (PyMARL2 default 64).
    """

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.n_actions = n_actions
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRUCell(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def initial_hidden(self, batch_shape: tuple[int, ...] | torch.Size, device=None) -> torch.Tensor:
        """Zeros ``[*batch_shape, H]``, e.g. ``batch_shape=(B, N)``."""
        if device is None:
            device = self.fc1.weight.device
        return torch.zeros(*batch_shape, self.hidden_dim, device=device, dtype=self.fc1.weight.dtype)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step.

        Args:
            inputs: ``[B, N, D]`` (any leading dims work; they are flattened).
            hidden: ``[B, N, H]``.

        Returns:
            ``(q [B, N, A], hidden [B, N, H])``.
        """
        lead = inputs.shape[:-1]
        # GRUCell only accepts [batch, features]; agents are independent samples of one network.
        x = F.relu(self.fc1(inputs.reshape(-1, self.input_dim)))
        h = self.rnn(x, hidden.reshape(-1, self.hidden_dim))
        q = self.fc2(h)
        return q.view(*lead, self.n_actions), h.view(*lead, self.hidden_dim)

    def unroll(
        self, inputs: torch.Tensor, hidden0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run whole sequences, carrying the hidden state over time.

        Only the first ``lengths[b]`` rows of episode b are computed (see :meth:`unroll_packed`);
        the values of the computed rows equal :meth:`forward` applied step by step, to float
        rounding.

        Args:
            inputs: ``[B, T, N, D]``.
            hidden0: ``[B, N, H]`` or ``None`` for zeros.
            lengths: int64 ``[B]``, rows to compute per episode (``None``: all T).

        Returns:
            q: ``[B, T, N, A]``; 0 on the rows that were not computed.
        """
        B, T, N, _ = inputs.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=inputs.device)
        elif lengths.shape != (B,):
            raise ValueError(f"lengths must be [B] = [{B}], got {tuple(lengths.shape)}")
        packing = pack_rows(lengths, T)
        return self.unroll_packed(inputs.reshape(B * T, N, -1).index_select(0, packing.rows), packing, hidden0)

    def unroll_packed(self, x: torch.Tensor, packing: PackedRows, hidden0: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`unroll` on inputs already gathered to ``packing``'s rows.

        The episodes run through :func:`~ovmse.nets.packed_gru.packed_gru` (one matmul per step
        forward and one backward; the input and output layers are one matmul over all rows), so
        padding after an episode's end costs nothing.

        Args:
            x: ``[R, N, D]``, the inputs of ``packing.rows`` in that order.
            packing: from :func:`pack_rows`.
            hidden0: ``[B, N, H]`` or ``None`` for zeros.

        Returns:
            q: ``[B, T, N, A]``; 0 on the rows that were not computed.
        """
        B, T, N = packing.batch, packing.steps, x.shape[1]
        if x.shape[0] != packing.rows.shape[0]:
            raise ValueError(f"x holds {x.shape[0]} rows, the packing {packing.rows.shape[0]}")
        q = x.new_zeros(B * T, N, self.n_actions)
        if not packing.episodes_per_step:
            return q.view(B, T, N, self.n_actions)
        n0 = packing.episodes_per_step[0]
        if hidden0 is None:
            h0 = self.initial_hidden((n0 * N,), device=x.device)
        else:
            h0 = hidden0.index_select(0, packing.order).reshape(B * N, self.hidden_dim)[: n0 * N]
        e = F.relu(self.fc1(x.reshape(-1, self.input_dim)), inplace=True)  # fc1's fresh output: nothing else reads it
        h = packed_gru(e, self.rnn, h0, [n * N for n in packing.episodes_per_step])
        q = q.index_copy(0, packing.rows, self.fc2(h).view(-1, N, self.n_actions))
        return q.view(B, T, N, self.n_actions)

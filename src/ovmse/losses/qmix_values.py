"""What the QMIX losses read from a batch of episodes ``[B, T+1]`` (layout:
:mod:`ovmse.collection.layout`; the semantics of masks, truncation and targets:
:mod:`ovmse.losses.qmix_td`): the batch keys, the per-agent Q unroll, the transition mask,
Q_tot of the taken actions and the double-Q target values. Shared by the TD(λ), OVM, CQL and
diagnostic code, so each computes them the same way.

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from ovmse.losses.qmix_values import q_tot_taken, transition_mask, unroll_agent_q
    >>> from ovmse.nets import QMixer, RNNAgent
    >>> B, T, N, A, O, S = 2, 3, 2, 4, 5, 6
    >>> batch = TensorDict({
    ...     ("agents", "observation"): torch.randn(B, T + 1, N, O),
    ...     ("agents", "action_mask"): torch.ones(B, T + 1, N, A, dtype=torch.bool),
    ...     ("agents", "action"): torch.randint(0, A, (B, T + 1, N)),
    ...     "state": torch.randn(B, T + 1, S),
    ...     "reward": torch.randn(B, T + 1, 1),
    ...     "terminated": torch.zeros(B, T + 1, 1, dtype=torch.bool),
    ...     "filled": torch.ones(B, T + 1, 1, dtype=torch.bool)}, batch_size=[B, T + 1])
    >>> agent = RNNAgent(O + A + N, A, 16)
    >>> unroll_agent_q(agent, batch).shape                    # [B, T+1, N, A]
    torch.Size([2, 4, 2, 4])
    >>> mask, terminated = transition_mask(batch)             # [B, T, 1] each
    >>> float(mask.sum())
    6.0
    >>> q_tot_taken(agent, QMixer(S, N, 8, 16), batch).shape  # Q_tot(τ_t, a_t): [B, T, 1]
    torch.Size([2, 3, 1])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ovmse.action_masks import masked_greedy
from ovmse.collection import layout
from ovmse.nets.agent import PackedRows, RNNAgent, agent_inputs, pack_rows
from ovmse.nets.mixer import QMixer

__all__ = [
    "DEFAULT_KEYS",
    "QMixKeys",
    "make_target",
    "pack_agent_inputs",
    "unroll_agent_q",
    "q_tot_taken",
    "taken_actions",
    "target_values",
    "transition_mask",
]


@dataclass(frozen=True)
class QMixKeys:
    """Batch keys read by this module: the episode layout's (:mod:`ovmse.collection.layout`);
    override to adapt another layout."""

    observation: tuple = layout.OBSERVATION
    action_mask: tuple = layout.ACTION_MASK
    action: tuple = layout.ACTION
    state: str = layout.STATE
    reward: str = layout.REWARD
    terminated: str = layout.TERMINATED
    truncated: str = layout.TRUNCATED  # documented; not read (see the module docstring)
    filled: str = layout.FILLED


DEFAULT_KEYS = QMixKeys()


def make_target(module: nn.Module) -> nn.Module:
    """``copy.deepcopy(module)`` with every parameter ``requires_grad=False``."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def _filled(batch, keys: QMixKeys) -> torch.Tensor:
    """bool ``[B, T+1]``."""
    return batch[keys.filled].reshape(batch[keys.filled].shape[:2]).bool()


def pack_agent_inputs(batch, n_actions: int, keys: QMixKeys = DEFAULT_KEYS) -> tuple[torch.Tensor, PackedRows]:
    """The agent inputs of the rows an unroll computes, gathered and packed: ``(x [R, N, D],
    packing)`` for :meth:`RNNAgent.unroll_packed`. Built once per batch and shared by every
    network unrolled over it (online, target, frozen, behaviour): the rows and the inputs are the
    same for all of them.

    Input at t: ``obs_t ‖ one_hot(a_{t-1}) ‖ one_hot(agent id)``; ``a_{-1} = -1`` (zeros).
    Actions of unfilled rows are replaced by 0 so padding values can never break ``one_hot``.
    The rows: up to each episode's last filled row (not the count of filled rows, so a gap could
    never shift rows); the RNN is causal, so the rows after could never affect them.
    """
    obs = batch[keys.observation]
    B, T, N = obs.shape[:3]
    actions = batch[keys.action]
    filled = _filled(batch, keys)
    actions = torch.where(filled.unsqueeze(-1), actions, torch.zeros_like(actions))
    packing = pack_rows(layout.filled_lengths(filled), T)
    rows = packing.rows
    # Row (b, t) reads the action of (b, t-1); a first row reads "none" (-1).
    last = actions.reshape(B * T, N).index_select(0, (rows - 1).clamp(min=0))
    last = torch.where((rows % T == 0).unsqueeze(-1), torch.full_like(last, -1), last)
    x = agent_inputs(obs.reshape(B * T, N, -1).index_select(0, rows), last, n_actions)
    return x, packing


def unroll_agent_q(agent: RNNAgent, batch, keys: QMixKeys = DEFAULT_KEYS,
                   packed: tuple[torch.Tensor, PackedRows] | None = None) -> torch.Tensor:
    """Per-agent Q for every row: ``[B, T+1, N, A]``; rows after an episode's last filled row are
    not computed and hold 0 (the RNN is causal, so they could never affect filled rows).

    ``packed``: :func:`pack_agent_inputs` of this batch, when another unroll already built it.
    """
    x, packing = pack_agent_inputs(batch, agent.n_actions, keys) if packed is None else packed
    return agent.unroll_packed(x, packing)


def transition_mask(batch, keys: QMixKeys = DEFAULT_KEYS) -> tuple[torch.Tensor, torch.Tensor]:
    """Validity mask and cleaned terminated flags of the T transitions.

    Returns:
        ``(mask, terminated)``, both float ``[B, T, 1]``: ``mask[:, t] = filled[:, t+1] ·
        (1 - any(terminated[:, :t]))``; ``terminated`` is zeroed where ``mask`` is 0.
    """
    filled = batch[keys.filled]
    dtype = batch[keys.state].dtype
    next_filled = filled[:, 1:].to(dtype)
    term = batch[keys.terminated][:, :-1].to(dtype) * next_filled
    ended_before = torch.cat([torch.zeros_like(term[:, :1]), term[:, :-1].cumsum(dim=1)], dim=1)
    mask = next_filled * (ended_before == 0).to(dtype)
    return mask, term * mask


def taken_actions(batch, T: int, keys: QMixKeys = DEFAULT_KEYS) -> torch.Tensor:
    """Dataset actions of the first ``T`` rows ``[B, T, N]``, 0 where the row is not filled
    (padding may hold anything)."""
    actions = batch[keys.action][:, :T]
    filled = _filled(batch, keys)[:, :T].unsqueeze(-1)
    return torch.where(filled, actions, torch.zeros_like(actions))


def q_tot_taken(
    agent: RNNAgent,
    mixer: QMixer,
    batch,
    agent_q: torch.Tensor | None = None,
    keys: QMixKeys = DEFAULT_KEYS,
) -> torch.Tensor:
    """Online ``Q_tot(s_t, a_t)`` of the dataset actions for the T transitions: ``[B, T, 1]``.

    Args:
        agent, mixer: online networks (gradients flow into both).
        batch: episode batch (see module docstring).
        agent_q: optional precomputed ``unroll_agent_q(agent, batch)`` ``[B, T+1, N, A]`` to
            avoid a second unroll (the loss reuses it for the double-Q argmax).

    Transitions whose next row is not filled are not mixed and hold 0; the rest of the invalid
    ones (after a termination) are finite but meaningless: multiply by :func:`transition_mask`
    (or use ``torch.where``) before reducing.
    """
    if agent_q is None:
        agent_q = unroll_agent_q(agent, batch, keys)
    T = agent_q.shape[1] - 1
    actions = taken_actions(batch, T, keys).clamp(0, agent_q.shape[-1] - 1)
    chosen = agent_q[:, :T].gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [B, T, N]
    # A transition is valid only if the row after it is filled (transition_mask): mix those.
    return mixer.forward_rows(chosen, batch[keys.state][:, :T], _filled(batch, keys)[:, 1 : T + 1])


@torch.no_grad()
def target_values(
    online_agent_q: torch.Tensor | None,
    target_agent: RNNAgent,
    target_mixer: QMixer,
    batch,
    double_q: bool = True,
    keys: QMixKeys = DEFAULT_KEYS,
    return_actions: bool = False,
    packed: tuple[torch.Tensor, PackedRows] | None = None,
):
    """Target ``Q̄_tot(s_t, a*_t)`` for every row t = 0..T: ``[B, T+1, 1]`` (no grad).

    Args:
        online_agent_q: ``[B, T+1, N, A]`` from the ONLINE agent (detached here); used for the
            double-Q argmax. May be ``None`` when ``double_q=False``.
        target_agent, target_mixer: target networks.
        double_q: ``a* = argmax`` over available actions of the online Q (PyMARL2 default);
            ``False``: argmax of the target Q itself (plain max).
        return_actions: also return ``a*`` int64 ``[B, T+1, N]``.
        packed: :func:`pack_agent_inputs` of this batch, if the online unroll built it.

    Rows with ``filled`` False get value 0 (and a* = 0 where the action mask is all False).
    """
    avail = batch[keys.action_mask].bool()
    filled = _filled(batch, keys)
    target_q = unroll_agent_q(target_agent, batch, keys, packed)  # [B, T+1, N, A]
    select_from = online_agent_q.detach() if double_q else target_q
    a_star = masked_greedy(select_from, avail, strict=False)  # [B, T+1, N]
    q_star = target_q.gather(-1, a_star.unsqueeze(-1)).squeeze(-1)
    q_tot = target_mixer.forward_rows(q_star, batch[keys.state], filled)  # [B, T+1, 1]
    return (q_tot, a_star) if return_actions else q_tot

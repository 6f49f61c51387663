"""How a learner values given episodes: Q_tot of the taken and of its greedy actions against
the episodes' Monte-Carlo return-to-go (offline overestimation, the unlearning probe)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from ovmse.action_masks import masked_greedy
from ovmse.collection.layout import trim_to_filled
from ovmse.losses import q_tot_taken, return_to_go, transition_mask, unroll_agent_q


@torch.no_grad()
def value_sums(module, episodes: TensorDictBase) -> dict[str, float]:
    """Sums over the valid transitions of ``episodes`` ``[E, T+1]`` of ``q_data`` (Q_tot of the
    actions taken), ``q_greedy`` (Q_tot of the learner's greedy actions) and ``mc_return``
    (discounted return-to-go, γ of the module), and ``n``, the number of those transitions
    (sums, so that chunks of a large set add up; divide by ``n`` for means); ``agree``, the
    agent decisions whose greedy action equals the action taken, out of ``decisions``, those
    with a choice (more than one available action: a dead agent's no-op is not counted).
    The episodes are cut to the longest one first (:func:`~ovmse.collection.layout.trim_to_filled`)."""
    episodes = trim_to_filled(episodes)
    agent_q = unroll_agent_q(module.agent, episodes)  # [E, T+1, N, A]
    mask, term = transition_mask(episodes)
    T = mask.shape[1]
    q_data = q_tot_taken(module.agent, module.mixer, episodes, agent_q=agent_q)
    avail = episodes["agents", "action_mask"][:, :T].bool()
    greedy = masked_greedy(agent_q[:, :T], avail, strict=False)  # [E, T, N]
    q_greedy = module.mixer(agent_q[:, :T].gather(-1, greedy.unsqueeze(-1)).squeeze(-1), episodes["state"][:, :T])
    mc = return_to_go(episodes["reward"][:, :T].to(mask.dtype), term, mask, module.settings.td.gamma)
    choice = (avail.sum(-1) > 1) & (mask > 0)  # [E, T, N]
    agree = (greedy == episodes["agents", "action"][:, :T]) & choice
    return {"q_data": float((q_data * mask).sum()), "q_greedy": float((q_greedy * mask).sum()),
            "mc_return": float((mc * mask).sum()), "n": float(mask.sum()),
            "agree": float(agree.sum()), "decisions": float(choice.sum())}

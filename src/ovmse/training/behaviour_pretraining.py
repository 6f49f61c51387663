"""CFCQL's behaviour net, trained alone on the dataset before the Q networks, then frozen.

The CFCQL repo (``discrete/src/run/run.py`` and ``learners/cq_learner.py``, ``train_behaviour``)
trains its behaviour-cloning policy on dataset batches before any CQL update, with its own Adam
at the Q networks' learning rate and gradient clip, until its loss has not improved on its
lowest value for more than 20 updates in a row; CQL then reads the frozen policy's action
probabilities for its per-agent KL weights. :func:`pretrain_behaviour` does the same on one
:class:`~ovmse.losses.objective.QMixObjective` whose CQL settings say
``behaviour_training="before"``, and marks it trained (saved with the module, so that a
checkpoint carries its behaviour net into fine-tuning).

Batch layout: episode batches ``[B, T+1]`` of :mod:`ovmse.collection.layout` (the data
module's ``sample()``).

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from ovmse.losses.objective import CQLSettings, ObjectiveSettings, QMixObjective
    >>> from ovmse.nets import QMixer, RNNAgent
    >>> B, T, N, A, O, S = 4, 6, 3, 9, 30, 48
    >>> batch = TensorDict({
    ...     "agents": {"observation": torch.randn(B, T + 1, N, O), "action": torch.randint(A, (B, T + 1, N)),
    ...                "action_mask": torch.ones(B, T + 1, N, A, dtype=torch.bool)},
    ...     "state": torch.randn(B, T + 1, S), "reward": torch.rand(B, T + 1, 1),
    ...     "terminated": torch.zeros(B, T + 1, 1, dtype=torch.bool),
    ...     "filled": torch.ones(B, T + 1, 1, dtype=torch.bool)}, batch_size=[B, T + 1])
    >>> objective = QMixObjective(RNNAgent(O + A + N, A, 16), QMixer(S, N, 8, 16),
    ...                           ObjectiveSettings(cql=CQLSettings("cfcql", alpha=1.0)))
    >>> objective.needs_behaviour_pretraining
    True
    >>> info = pretrain_behaviour(objective, lambda: batch, lr=1e-3, patience=5, max_updates=200)
    >>> objective.needs_behaviour_pretraining, info["updates"] >= 6
    (False, True)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tensordict import TensorDictBase

from ovmse.losses.objective import QMixObjective
from ovmse.losses.qmix_values import transition_mask

__all__ = ["pretrain_behaviour", "CFCQL_PATIENCE"]

# The CFCQL repo's rule: done once the loss has not improved for more than 20 updates in a row.
CFCQL_PATIENCE = 20


def pretrain_behaviour(objective: QMixObjective, sample: Callable[[], TensorDictBase], lr: float,
                       grad_clip: float | None = 10.0, patience: int = CFCQL_PATIENCE, max_updates: int = 20_000,
                       log: Callable[[int, float, float], None] | None = None) -> dict:
    """Train ``objective.behaviour`` on batches from ``sample()`` until its loss has not
    improved on its lowest value for more than ``patience`` updates (or ``max_updates``), then
    mark it trained; its parameters are not trained afterwards.

    Returns:
        ``{"updates", "best_loss", "last_loss", "last_accuracy", "stopped_by"}`` with
        ``stopped_by`` ``"patience"`` or ``"max_updates"``.
    """
    if not objective.needs_behaviour_pretraining:
        raise ValueError("pretrain_behaviour: this objective has no behaviour net waiting to be trained (CFCQL with "
                         "temperature > 0 and behaviour_training='before', not trained yet)")
    if patience < 1 or max_updates < 1:
        raise ValueError(f"behaviour pretraining needs patience >= 1 and max_updates >= 1, got {patience}, {max_updates}")
    net, keys = objective.behaviour, objective.td.keys
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    best, since_best, updates = math.inf, 0, 0
    loss = accuracy = torch.tensor(float("nan"))
    stopped_by = "max_updates"
    net.train()
    while updates < max_updates:
        batch = sample()
        _, loss, accuracy = objective.behaviour_cloning(batch, transition_mask(batch, keys)[0])
        optimiser.zero_grad()
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(grad_clip))
        optimiser.step()
        updates += 1
        value = float(loss.detach())
        if log is not None:
            log(updates, value, float(accuracy))
        if value < best:
            best, since_best = value, 0
        else:
            since_best += 1
            if since_best > patience:
                stopped_by = "patience"
                break
    for p in net.parameters():
        p.requires_grad_(False)
        p.grad = None
    objective.behaviour_pretrained.fill_(True)
    return {"updates": updates, "best_loss": best, "last_loss": float(loss), "last_accuracy": float(accuracy),
            "stopped_by": stopped_by}

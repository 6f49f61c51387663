"""Target construction for value-based MARL losses."""

from ovmse.losses.behaviour_cloning import behaviour_cloning_loss, behaviour_probs
from ovmse.losses.cfcql import CFCQLLoss
from ovmse.losses.macql import MACQLLoss
from ovmse.losses.ovm import ovm_loss
from ovmse.losses.qmix_td import QMixTDLoss
from ovmse.losses.qmix_values import (
    q_tot_taken,
    taken_actions,
    target_values,
    transition_mask,
    unroll_agent_q,
)
from ovmse.losses.returns import return_to_go
from ovmse.losses.td_lambda import td_lambda_targets

__all__ = [
    "QMixTDLoss",
    "q_tot_taken",
    "taken_actions",
    "target_values",
    "td_lambda_targets",
    "transition_mask",
    "unroll_agent_q",
    "CFCQLLoss",
    "MACQLLoss",
    "ovm_loss",
    "behaviour_cloning_loss",
    "behaviour_probs",
    "return_to_go",
]

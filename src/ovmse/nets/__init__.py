"""Q-networks for value-decomposition MARL: per-agent RNN, QMIX mixer, masked greedy helpers."""

from ovmse.nets.agent import RNNAgent, agent_inputs
from ovmse.action_masks import masked_greedy, masked_max
from ovmse.nets.mixer import QMixer

__all__ = ["RNNAgent", "agent_inputs", "QMixer", "masked_greedy", "masked_max"]

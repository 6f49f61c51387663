"""Exploration: linear annealing schedules and (sequential) epsilon-greedy action selection."""

from ovmse.exploration.policies import (
    EXPLORATION_NAMES,
    CentralisedSequentialExploration,
    DecentralisedSequentialExploration,
    EpsilonGreedy,
    make_exploration,
)
from ovmse.exploration.schedules import LinearSchedule

__all__ = [
    "LinearSchedule",
    "EpsilonGreedy",
    "CentralisedSequentialExploration",
    "DecentralisedSequentialExploration",
    "make_exploration",
    "EXPLORATION_NAMES",
]

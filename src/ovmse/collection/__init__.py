"""Online data collection: recurrent Q-policy for TorchRL collectors, episode assembly, replay."""

from ovmse.collection.episodes import EpisodeAssembler
from ovmse.collection.policy import (
    HIDDEN_KEY,
    LAST_ACTION_KEY,
    RecurrentQPolicy,
    env_with_primers,
    make_policy,
    make_primer,
)
from ovmse.collection.replay import EpisodeReplayBuffer

__all__ = [
    "EpisodeAssembler",
    "EpisodeReplayBuffer",
    "HIDDEN_KEY",
    "LAST_ACTION_KEY",
    "RecurrentQPolicy",
    "env_with_primers",
    "make_policy",
    "make_primer",
]

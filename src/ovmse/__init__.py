"""OVMSE: offline-to-online multi-agent RL with a batched SMAC simulator."""

__version__ = "0.1.0"

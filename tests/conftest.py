"""Shared pytest configuration for the test suite."""

import sys
from pathlib import Path

import torch

# The simulator tests are many tiny tensor ops: one thread is faster than several on 2 cores.
torch.set_num_threads(1)

# Make simtools.py (scenario helpers next to this file) importable from every test module.
sys.path.insert(0, str(Path(__file__).parent))

"""Shared pytest configuration for the test suite."""

import sys
from pathlib import Path

import pytest
import torch

# The simulator tests are many tiny tensor ops: one thread is faster than several on 2 cores.
torch.set_num_threads(1)

# Make simtools.py and runs.py (helpers next to this file) importable from every test module.
sys.path.insert(0, str(Path(__file__).parent))

import runs  # noqa: E402  (needs the path above)


@pytest.fixture(scope="session")
def run_train():
    """``run_train(*args, timeout=600, env=None, launcher=())``: runs ``python train.py args...`` in
    the repository root to the end and returns the CompletedProcess (stdout, stderr as text).
    ``env``: variables to set in the child's environment (None removes one); ``launcher``:
    interpreter arguments before train.py (``["-m", "torch.distributed.run", ...]``). For a run
    the test manages itself (Popen), ``runs.train_command`` builds the same command line.
    Add ``debug=tiny`` (with ``env=3m``) for a minute-scale run of any phase."""
    return runs.run_train


@pytest.fixture(scope="session")
def compose_cfg():
    """``compose_cfg(*overrides, config_name="train")``: the config ``train.py`` (or, with
    ``config_name="evaluate"``, evaluate.py) would run with, composed by Hydra's compose API."""
    return runs.compose_cfg

"""Running ``python train.py ...`` and composing its Hydra config, shared by the tests.

Tests take these through the fixtures ``run_train`` and ``compose_cfg`` (tests/conftest.py).
:func:`train_command` is for a test that manages the process itself (``subprocess.Popen``: a run
killed midway, two runs side by side). ``debug=tiny`` (configs/debug/tiny.yaml) is the shared
minute-scale run: pass it with ``env=3m`` and only the values a test needs on top.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def train_command(*args: str, launcher: Sequence[str] = ()) -> list[str]:
    """``python [launcher...] train.py args...``; ``launcher``: e.g. ``["-m", "torch.distributed.run", ...]``."""
    return [sys.executable, *launcher, "train.py", *args]


def train_env(env: Mapping[str, str | None] | None = None) -> dict[str, str] | None:
    """This process's environment with ``env`` applied (a value of None removes the variable);
    None (inherit it unchanged) when there is nothing to apply."""
    if not env:
        return None
    merged = dict(os.environ)
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def run_train(*args: str, timeout: float = 600, env: Mapping[str, str | None] | None = None,
              launcher: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run ``python train.py args...`` in the repository root to the end (killed after ``timeout``
    seconds: subprocess.TimeoutExpired) and return it with its stdout and stderr as text."""
    return subprocess.run(train_command(*args, launcher=launcher), cwd=ROOT, env=train_env(env),
                          capture_output=True, text=True, timeout=timeout)


def compose_cfg(*overrides: str, config_name: str = "train") -> DictConfig:
    """``configs/<config_name>.yaml`` composed with ``overrides`` as ``train.py`` (or evaluate.py:
    ``config_name="evaluate"``) would compose it, through Hydra's compose API. Hydra's global state
    is initialised for this call and cleared when it returns; a state some earlier code left
    initialised is cleared first (initialising over it would raise)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))

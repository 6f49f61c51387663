"""train.py runs the code of its own checkout, not whatever copy of the package is installed:
a sweep started from a git worktree (a pinned commit) must use and record that commit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_train_py_imports_its_checkouts_src_before_an_installed_copy(tmp_path):
    shadow = tmp_path / "installed" / "ovmse"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("the installed ovmse was imported")\n')
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}  # what an installed copy elsewhere would be
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "phase=rollout", "env=3m", "n_battles=4",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "rollout_stats.json").is_file()

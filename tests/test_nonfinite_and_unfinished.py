"""Issue 19 A and D: a diverged run never leaves a checkpoint that loads and looks normal, and
fine-tuning refuses the checkpoint of an offline run that did not finish."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovmse.envs import get_map
from ovmse.phases.fine_tuning import load_checkpoint_for_map
from ovmse.training.checkpointing import count_nonfinite
from ovmse.training.qmix_module import load_qmix_checkpoint
from simtools import random_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["env=3m", "algo=macql", "algo.offline.batch_size=8", "algo.offline.samples=8", "steps=12",
        "log_every_updates=4", "eval.interval_updates=4", "eval.episodes=8", "eval.num_envs=8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return random_dataset(tmp_path_factory.mktemp("data") / "3m" / "medium")


def offline(run_dir, dataset, *extra):
    return subprocess.run([sys.executable, "train.py", "phase=offline", *TINY, f"dataset={dataset}",
                           f"hydra.run.dir={run_dir}", *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_diverging_offline_run_stops_with_exit_2_and_writes_no_nonfinite_checkpoint(tmp_path, dataset):
    proc = offline(tmp_path, dataset, "algo.lr=1e6")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "non-finite" in proc.stderr or "NaN or infinite" in proc.stderr
    assert "update" in proc.stderr
    assert not (tmp_path / "offline_summary.json").exists()  # no normal summary of a diverged run
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        raw = torch.load(ckpt, weights_only=True)
        assert count_nonfinite(raw["state_dict"].values()) == (0, 0), ckpt.name
    assert not list((tmp_path / "checkpoints").glob("*.partial-*"))


def test_loading_a_checkpoint_with_nonfinite_weights_is_refused(tmp_path, dataset):
    proc = offline(tmp_path, dataset)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    name = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][name].view(-1)[:3] = float("nan")
    torch.save(raw, tmp_path / "poisoned.ckpt")
    with pytest.raises(ValueError, match=r"3 weight values in 1 tensors are NaN or infinite"):
        load_qmix_checkpoint(str(tmp_path / "poisoned.ckpt"))
    ev = subprocess.run([sys.executable, "evaluate.py", f"ckpt={tmp_path / 'poisoned.ckpt'}", "episodes=4"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode != 0 and "NaN or infinite" in ev.stderr


def test_fine_tuning_refuses_an_unfinished_offline_checkpoint(tmp_path, dataset):
    spec = get_map("3m")
    proc = offline(tmp_path, dataset)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = load_checkpoint_for_map(str(tmp_path / "checkpoints" / "last.ckpt"), spec)
    assert done.offline_run == {"planned_updates": 12, "finished": True, "updates": 12}
    # best.ckpt was written at an evaluation; its run finished (last.ckpt beside it says so): fine
    best = load_checkpoint_for_map(str(tmp_path / "checkpoints" / "best.ckpt"), spec)
    assert best.offline_run["finished"] is False
    # the same snapshot on its own (a killed run leaves no finished last.ckpt) is refused
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "best.ckpt").write_bytes((tmp_path / "checkpoints" / "best.ckpt").read_bytes())
    with pytest.raises(ValueError, match=r"did not finish \(\d+ of 12 updates\)"):
        load_checkpoint_for_map(str(tmp_path / "alone" / "best.ckpt"), spec)
    # a checkpoint from before the record: an offline run's checkpoint without the frozen target
    raw = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    raw.pop("offline_run")
    torch.save(raw, tmp_path / "alone" / "old.ckpt")
    with pytest.raises(ValueError, match="no frozen offline target"):
        load_checkpoint_for_map(str(tmp_path / "alone" / "old.ckpt"), spec)
    raw = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    raw.pop("offline_run")
    torch.save(raw, tmp_path / "alone" / "old_finished.ckpt")
    assert load_checkpoint_for_map(str(tmp_path / "alone" / "old_finished.ckpt"), spec).offline_run is None


def test_killed_offline_run_cannot_be_fine_tuned(tmp_path, dataset):
    """The checkpoint a killed offline run leaves (its last evaluation's) is refused by phase=online."""
    proc = offline(tmp_path / "off", dataset)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = torch.load(tmp_path / "off" / "checkpoints" / "best.ckpt", weights_only=True)
    torch.save(raw, tmp_path / "killed.ckpt")  # as a killed run leaves it: no finished last.ckpt beside it
    online = subprocess.run([sys.executable, "train.py", "phase=online", "env=3m", "algo=macql",
                             f"ckpt={tmp_path / 'killed.ckpt'}", f"hydra.run.dir={tmp_path / 'on'}", "env_steps=64"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert online.returncode == 2, online.stderr[-2000:]
    assert "did not finish" in online.stderr

"""Bad input and faults: each gets one clear error naming the problem and the fix, a non-zero
exit, and no partial output that could pass for valid; checkpoints and datasets load without
executing code; NaN losses stop training with the last good state saved."""

import errno
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from ovmse.datasets import DatasetError, EpisodeDatasetWriter, load_dataset, resolve_dataset
from ovmse.datasets.writer import check_writable_dir
from ovmse.envs import get_map
from ovmse.training.guards import NonFiniteLossError
from ovmse.training.qmix_module import load_qmix_checkpoint
from simtools import random_dataset

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]
# debug=tiny (configs/debug/tiny.yaml), a shorter run with smaller evaluations and no final test.
TINY = ["env=3m", "debug=tiny", "env_steps=512", "algo.buffer_size=32", "eval.interval_env_steps=256",
        "eval.episodes=4", "eval.num_envs=4", "final_eval.episodes=0", "logger.tensorboard=false"]


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- names


def test_unknown_algo_lists_the_algorithms(run_train):
    proc = run_train("phase=online", "env=3m", "algo=ovmse2")
    assert proc.returncode != 0
    msg = proc.stdout + proc.stderr
    assert "Available options in 'algo'" in msg
    for name in ("qmix", "ovmse", "macql", "macalql", "switch_cql", "ovm_only", "se_only"):
        assert name in msg


def test_unknown_experiment_lists_the_tasks(run_train):
    proc = run_train("phase=online", "experiment=2s3z_easy", "algo=qmix")
    assert proc.returncode != 0 and "2s3z_medium_replay" in proc.stdout + proc.stderr


def test_unknown_dataset_quality_lists_the_qualities(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset quality 'hard'; expected one of medium, medium_replay"):
        resolve_dataset("hard", tmp_path, "3m")


def test_missing_dataset_lists_what_exists_and_how_to_make_it(tmp_path):
    random_dataset(tmp_path / "3m" / "medium")
    with pytest.raises(FileNotFoundError, match=r"no dataset at .*3m/expert; datasets for 3m under .*: medium\. "
                                                r"Make it with python train.py phase=collect env=3m"):
        resolve_dataset("expert", tmp_path, "3m")
    assert resolve_dataset("medium", tmp_path, "3m") == tmp_path / "3m" / "medium"


def test_offline_cli_with_a_missing_dataset_is_one_line(tmp_path, run_train):
    proc = run_train("phase=offline", "env=3m", "algo=ovmse", "dataset=expert", f"data_root={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: dataset='expert': no dataset at")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- checkpoints


def test_not_a_checkpoint_is_refused(tmp_path, run_train):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(ValueError, match="not a loadable torch checkpoint"):
        load_qmix_checkpoint(str(bogus))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a QMIX checkpoint"):
        load_qmix_checkpoint(str(tmp_path / "other.ckpt"))
    proc = run_train("phase=online", "algo=switch_cql", f"ckpt={bogus}", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "not a loadable torch checkpoint" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tampered_checkpoint_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": Payload(marker)}, f)
    with pytest.raises(ValueError, match="not a loadable torch checkpoint"):
        load_qmix_checkpoint(str(evil))
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt={evil}", "episodes=4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert any(line.startswith("error: ") and "not a loadable torch checkpoint" in line
               for line in proc.stderr.splitlines())
    assert not marker.exists()


def test_tampered_dataset_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = random_dataset(tmp_path / "3m" / "medium", episodes=8)
    # add a pickled entry to the episode storage: TensorDict would unpickle it on load
    store = path / "episodes"
    td = TensorDict.load_memmap(store)
    td.set_non_tensor("note", Payload(marker))
    td.memmap_(store, existsok=True)
    assert list(store.rglob("*.pickle")) or list(store.rglob("*.pkl")), "the tampering did not add a pickle"
    with pytest.raises(DatasetError, match="cannot read the episode storage"):
        load_dataset(path, map_name="3m")
    assert not marker.exists()


# ----------------------------------------------------------------------------- disks


def test_data_root_that_is_not_writable_is_refused_before_training(tmp_path, run_train):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=r"data_root='.*a_file/data' is not writable .*pass data_root="):
        check_writable_dir(blocker / "data")
    proc = run_train("phase=collect", "env=3m", f"data_root={blocker / 'data'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "is not writable" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_full_disk_while_making_a_dataset_leaves_nothing_behind(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    target = tmp_path / "3m" / "medium"
    with pytest.raises(OSError, match=r"not enough disk space for dataset .*3m/medium: it needs .* GiB") as err:
        EpisodeDatasetWriter(target, get_map("3m"), 500, quality="medium")
    assert err.value.errno == errno.ENOSPC
    assert not target.exists() and list((tmp_path / "3m").iterdir()) == []


def test_failure_while_writing_episodes_removes_the_partial_dataset(tmp_path):
    target = tmp_path / "3m" / "medium"
    with pytest.raises(RuntimeError, match="generation died"):
        with EpisodeDatasetWriter(target, get_map("3m"), 10, quality="medium"):
            raise RuntimeError("generation died")
    assert not target.exists() and list((tmp_path / "3m").iterdir()) == []


def test_dataset_that_fails_validation_stops_the_offline_phase(tmp_path, run_train):
    path = random_dataset(tmp_path / "3m" / "medium", episodes=8)
    reward = next((path / "episodes").rglob("reward.memmap"))
    data = bytearray(reward.read_bytes())
    data[:4] = bytes.fromhex("0000c07f")  # a NaN reward in the first episode
    reward.write_bytes(bytes(data))
    proc = run_train("phase=offline", "env=3m", "algo=ovmse", f"dataset={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "error: dataset" in proc.stderr and "reward" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- NaN


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch, compose_cfg):
    from ovmse.losses import QMixTDLoss
    from ovmse.phases.online import build_online_run

    original = QMixTDLoss.compute
    calls = {"n": 0}

    def compute(self, batch):
        td, parts = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:  # the third update goes bad
            td["loss"] = td["loss"] * float("nan")
        return td, parts

    monkeypatch.setattr(QMixTDLoss, "compute", compute)
    run = build_online_run(compose_cfg("phase=online", *TINY, f"paths.output_dir={tmp_path}"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite training values \(.*train/loss.*\) at update 3, env step"):
        run.trainer.fit(run.module, datamodule=run.data)
    saved = load_qmix_checkpoint(str(tmp_path / "checkpoints" / "last_good.ckpt"))
    assert saved.updates == 3
    for a, b in zip(saved.agent.parameters(), run.module.agent.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)  # the bad update was never applied


def test_a_base_config_cannot_be_chosen_as_the_algorithm(run_train):
    """Issue 19 F: configs/algo/o2o.yaml is shared by the O2O algorithms, not one of them."""
    proc = run_train("phase=online", "env=3m", "algo=o2o", "env_steps=64")
    assert proc.returncode == 2
    assert "not an algorithm" in proc.stderr
    for name in ("qmix", "ovmse", "macql", "macalql", "switch_cql", "ovm_only", "se_only"):
        assert name in proc.stderr
    assert "o2o," not in proc.stderr


# ----------------------------------------------------------------------------- settings (issue 19 G)


@pytest.mark.parametrize("override, message", [
    ("device=tpu", "device='tpu' is not a torch device"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("eval.interval_env_steps=0", "eval.interval_env_steps must be an integer >= 1"),
    ("eval.episodes=-5", "eval.episodes must be an integer >= 1"),
    ("log_every_env_steps=1.5", "log_every_env_steps must be an integer >= 1"),
    ("checkpoint.every_env_steps=-1", "checkpoint.every_env_steps must be an integer >= 0"),
    ("algo.hidden_dim=0", "algo.hidden_dim must be an integer >= 1"),
])
def test_wrong_settings_are_refused_up_front_naming_the_key(tmp_path, run_train, override, message):
    proc = run_train("phase=online", *TINY, override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.csv").exists()


@pytest.mark.parametrize("overrides, message", [
    (["algo=qmix", "algo.steps_per_env=0"], "algo.steps_per_env must be an integer >= 1"),
    (["algo=qmix", "algo.batch_size=0"], "algo.batch_size must be an integer >= 1"),
    (["algo=qmix", "algo.gamma=1.5"], "algo.gamma must be a number in [0.0, 1.0], got 1.5"),
    (["algo=ovmse", "algo.target_update_interval.default=0"], "algo.target_update_interval.default must be an integer"),
    (["algo=ovmse", "algo.offline.samples=0"], "algo.offline.samples must be an integer >= 1"),
])
def test_algorithm_settings_are_checked_up_front_naming_the_key(compose_cfg, overrides, message):
    """Issue 19 G: the algorithm's counts and ranges too (steps_per_env=0 was a torchrl traceback)."""
    from ovmse.phases.checks import check_settings

    cfg = compose_cfg("phase=online", *overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_settings(cfg)
    check_settings(compose_cfg("phase=online", overrides[0]))  # the defaults pass


def test_cuda_on_a_machine_without_it_is_one_line():
    from ovmse.phases.checks import check_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="sees no CUDA GPU: use device=cpu or device=auto"):
        check_device("cuda")
    assert check_device("auto").type == "cpu" and check_device("cpu").type == "cpu"


@pytest.mark.parametrize("args, message", [
    ([], "pass the checkpoint to evaluate"),
    (["ckpt=x.ckpt", "episodes=0"], "episodes must be an integer >= 1 (episodes to play or record), got 0"),
    (["ckpt=x.ckpt", "num_threads=0"], "num_threads must be null"),
])
def test_evaluate_settings_are_one_line_errors(args, message):
    proc = subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("phase", ["offline", "online", "collect"])
def test_a_budget_outside_the_pipeline_is_refused_not_ignored(compose_cfg, phase):
    """budget= only sets phase=pipeline's stages: on another phase it would run at full scale."""
    from ovmse.phases import run_phase

    cfg = compose_cfg(f"phase={phase}", "env=3m", "algo=ovmse" if phase == "offline" else "algo=qmix", "budget=smoke")
    with pytest.raises(ValueError, match=f"budget= sets the stage budgets of phase=pipeline; phase={phase}.*debug=tiny"):
        run_phase(cfg)


def test_a_refused_run_leaves_no_directory(tmp_path, run_train):
    """Bad input found after Hydra made the run directory: nothing of the run is left behind."""
    proc = run_train("phase=online", "env=3m", "env_steps=-1", f"paths.log_dir={tmp_path}", timeout=300)
    assert proc.returncode == 2 and "env_steps must be an integer >= 1" in proc.stderr
    # Nor the folders Hydra made for it; the log directory itself stays.
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []

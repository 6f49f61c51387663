"""Learner data parallelism: ``python train.py phase=online trainer=ddp`` (Lightning DDP, gloo, CPU).

What is tested: ONE machine, 2 CPU processes, gloo backend, started two ways: by Lightning's
launcher (it re-runs train.py for rank 1 into the same Hydra run directory) and by
``torchrun --standalone`` (the launcher one uses on a cluster, with TorchElastic's rank
variables). NOT tested: several nodes, SLURM (only the rank arithmetic is checked, below),
GPUs / NCCL.
"""

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ovmse.phases.common import trainer_settings
from ovmse.training.ddp import (RANK_SEED_STRIDE, TrainerSettings, expected_global_rank, rank_device, rank_seed,
                                trainer_kwargs)

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

# tests/training/test_online_e2e.py's tiny run: debug=tiny with 768 env steps, 128 per update in calls of 32 steps per battle.
TINY = ["env=3m", "debug=tiny", "env_steps=768", "algo.steps_per_env=32", "algo.env_steps_per_update=128",
        "algo.target_update_interval=8", "eval.interval_env_steps=384", "log_every_env_steps=128"]
RANK_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
# Each rank dumps its parameters; an outer launcher's rank variables are removed (None).
ENV = {"OVMSE_DEBUG_DUMP_PARAMS": "1", **dict.fromkeys(RANK_VARS)}


@pytest.fixture(scope="module")
def ddp_train(run_train):
    """``ddp_train(launcher, run_dir, *extra)``: the tiny online run with trainer=ddp, which must succeed."""
    def ddp_train(launcher: list[str], run_dir: Path, *extra: str):
        proc = run_train("phase=online", "trainer=ddp", *TINY, f"hydra.run.dir={run_dir}", *extra, timeout=240,
                         env=ENV, launcher=launcher)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    return ddp_train


def _dumps(run_dir: Path) -> tuple[dict, dict]:
    return torch.load(run_dir / "debug_params" / "rank0.pt"), torch.load(run_dir / "debug_params" / "rank1.pt")


def _assert_replicas_equal(r0: dict, r1: dict) -> None:
    assert r0["state_dict"].keys() == r1["state_dict"].keys()
    for name, value in r0["state_dict"].items():  # online nets, targets and buffers
        assert torch.equal(value, r1["state_dict"][name]), name
    assert r0["env_steps"] == r1["env_steps"] >= 768  # env steps are per rank and in lockstep
    assert r0["updates"] == r1["updates"] >= 1


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, ddp_train):
    """Lightning's launcher: rank 0 is the command, it starts rank 1."""
    run_dir = tmp_path_factory.mktemp("ddp")
    return run_dir, ddp_train([], run_dir)


def test_two_ranks_ran_in_one_run_directory(ddp_run):
    run_dir, proc = ddp_run
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr + proc.stdout
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1's Hydra log, next to rank 0's
    assert (run_dir / ".hydra" / "config.yaml").exists() and not list(run_dir.glob("*/.hydra"))
    assert sorted(p.name for p in (run_dir / "debug_params").iterdir()) == ["rank0.pt", "rank1.pt"]


def test_checkpoints_written_once(ddp_run):
    run_dir, _ = ddp_run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_replicas_identical_and_in_lockstep(ddp_run):
    run_dir, _ = ddp_run
    r0, r1 = _dumps(run_dir)
    _assert_replicas_equal(r0, r1)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    for name, value in r0["state_dict"].items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    assert ckpt["progress"]["env_steps"] == r0["env_steps"]


def test_metrics_from_rank_zero_only(ddp_run):
    run_dir, _ = ddp_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len({tuple(r.items()) for r in rows}) == len(rows)
    collect_steps = [float(r["env_steps"]) for r in rows if r.get("train/loss")]
    assert collect_steps and collect_steps == sorted(set(collect_steps))  # one writer: no repeated step
    eval_rows = [r for r in rows if r.get("eval/win_rate")]
    assert len(eval_rows) >= 2
    # Each rank plays ceil(8 / 2) -> one round of its 8 eval envs; the row holds both ranks' battles.
    assert all(float(r["eval/episodes"]) == 16.0 for r in eval_rows)


def test_torchrun_launch(tmp_path, ddp_train):
    """torchrun starts both ranks itself (TorchElastic environment); each rank's Hydra log gets
    its own name through ``hydra.job.name=train_rank${oc.env:RANK}``."""
    ddp_train(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], tmp_path,
              "hydra.job.name=train_rank${oc.env:RANK}")
    assert (tmp_path / "train_rank0.log").exists() and (tmp_path / "train_rank1.log").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    _assert_replicas_equal(*_dumps(tmp_path))


def test_rank_and_seed_arithmetic(monkeypatch):
    ddp = TrainerSettings(strategy="ddp", accelerator="cpu", devices=2, num_nodes=2, process_group_backend="gloo")
    single = TrainerSettings(accelerator="cpu", devices=1)
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert expected_global_rank(single) == 0 and expected_global_rank(ddp) == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    assert expected_global_rank(ddp) == 3  # node 1, local rank 1, 2 processes per node
    assert expected_global_rank(single) == 0
    cuda = torch.device("cuda")
    assert rank_device(cuda, ddp) == torch.device("cuda", 1)  # each local rank on its own GPU
    assert rank_device(cuda, replace(ddp, devices=(2, 3))) == torch.device("cuda", 3)
    assert rank_device(cuda, single) == cuda and rank_device(torch.device("cpu"), ddp) == torch.device("cpu")
    assert rank_seed(7, 0) == 7 and rank_seed(7, 3) == 7 + 3 * RANK_SEED_STRIDE
    assert rank_seed(7, 1, num_workers=4) == 7 + 4 * RANK_SEED_STRIDE  # past rank 0's 4 workers
    assert trainer_kwargs(single)["strategy"] == "auto"
    assert type(trainer_kwargs(ddp)["strategy"]).__name__ == "DDPStrategy"
    with pytest.raises(ValueError, match="ddp_spawn"):
        trainer_settings(OmegaConf.create({"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 2}))
    assert trainer_settings(OmegaConf.create({"strategy": "ddp", "devices": [0, 1]})).devices == (0, 1)

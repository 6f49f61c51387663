"""Resume after a kill: replay chunks on disk, atomic checkpoints, and a real training process
killed with SIGKILL and resumed (counters, schedules and buffer contents continue exactly)."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from ovmse.collection import EpisodeReplayBuffer
from ovmse.exploration import LinearSchedule
from ovmse.phases.resume import check_resume_config, resume_checkpoint
from ovmse.training.checkpointing import ReplayChunks, atomic_save_checkpoint, replay_digest
from runs import train_command
from simtools import random_dataset

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]


def episodes(first_id: int, n: int, T: int = 4) -> TensorDict:
    """``n`` fake episodes whose reward field carries their id (to check order and identity)."""
    ids = torch.arange(first_id, first_id + n, dtype=torch.float32)
    return TensorDict({"reward": ids[:, None, None].expand(n, T, 1).clone(),
                       "filled": torch.ones(n, T, 1, dtype=torch.bool)}, batch_size=[n, T])


def held_ids(replay: EpisodeReplayBuffer) -> list[int]:
    return replay.get(replay.oldest_first_indices())["reward"][:, 0, 0].long().tolist()


def test_replay_chunks_round_trip_through_wraparound(tmp_path):
    replay = EpisodeReplayBuffer(capacity=5)
    chunks = ReplayChunks(tmp_path / "replay", replay)
    next_id = 0
    manifest = None
    for n in (3, 1, 4, 6, 2):  # wraps around the ring more than once
        replay.extend(episodes(next_id, n))
        next_id += n
        manifest = chunks.write()
        chunks.prune(manifest)
    assert held_ids(replay) == list(range(next_id - 5, next_id))
    # only chunks holding current episodes stay on disk
    on_disk = sorted(p.name for p in (tmp_path / "replay").iterdir())
    assert on_disk == sorted(manifest["chunks"]) and len(on_disk) <= 3
    fresh = EpisodeReplayBuffer(capacity=5)
    restored = ReplayChunks(tmp_path / "replay", fresh)
    restored.restore(manifest)
    assert held_ids(fresh) == held_ids(replay)
    assert replay_digest(fresh) == replay_digest(replay)
    # new episodes after the restore get the ids that follow, in a new chunk
    fresh.extend(episodes(next_id, 2))
    m2 = restored.write()
    assert m2["total"] == next_id + 2 and m2["chunks"][-1] == f"chunk-{next_id}-{next_id + 2}"


def test_a_killed_chunk_write_is_ignored_and_cleaned(tmp_path):
    replay = EpisodeReplayBuffer(capacity=8)
    chunks = ReplayChunks(tmp_path / "replay", replay)
    replay.extend(episodes(0, 3))
    manifest = chunks.write()
    (tmp_path / "replay" / "chunk-3-7.partial-999").mkdir()  # what a kill mid-write leaves
    fresh = EpisodeReplayBuffer(capacity=8)
    ReplayChunks(tmp_path / "replay", fresh).restore(manifest)
    assert held_ids(fresh) == [0, 1, 2]
    replay.extend(episodes(3, 1))
    chunks.write()
    assert not list((tmp_path / "replay").glob("*.partial-*"))


def test_restore_names_a_missing_chunk(tmp_path):
    replay = EpisodeReplayBuffer(capacity=8)
    chunks = ReplayChunks(tmp_path / "replay", replay)
    replay.extend(episodes(0, 3))
    manifest = chunks.write()
    for p in (tmp_path / "replay").iterdir():
        import shutil

        shutil.rmtree(p)
    with pytest.raises(FileNotFoundError, match="chunk-0-3"):
        ReplayChunks(tmp_path / "replay", EpisodeReplayBuffer(capacity=8)).restore(manifest)


def test_atomic_save_keeps_the_old_checkpoint_when_the_write_dies(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old complete checkpoint")

    def dying_save(path, weights_only=None):
        Path(path).write_bytes(b"half a checkp")
        raise KeyboardInterrupt  # stands in for the process dying mid-write

    trainer = SimpleNamespace(save_checkpoint=dying_save, is_global_zero=True,
                              strategy=SimpleNamespace(barrier=lambda name: None))
    with pytest.raises(KeyboardInterrupt):
        atomic_save_checkpoint(trainer, target)
    assert target.read_bytes() == b"old complete checkpoint"

    def good_save(path, weights_only=None):
        Path(path).write_bytes(b"new")

    trainer.save_checkpoint = good_save
    atomic_save_checkpoint(trainer, target)
    assert target.read_bytes() == b"new"


def test_resume_refuses_other_settings_and_names_them(compose_cfg):
    cfg = compose_cfg("phase=online", "env=3m", "seed=1", "paths.output_dir=/tmp/x")
    from omegaconf import OmegaConf

    stored = OmegaConf.to_container(cfg, resolve=True)
    check_resume_config(stored, cfg)  # the same command: fine
    longer = compose_cfg("phase=online", "env=3m", "seed=1", "env_steps=999999", "device=cpu",
                         "paths.output_dir=/tmp/y")
    other = compose_cfg("phase=online", "env=3m", "seed=2", "algo.lr=0.01", "paths.output_dir=/tmp/x")
    check_resume_config(stored, longer)  # a longer budget is allowed
    del stored["malloc_keep_freed"]  # a run made before the setting existed
    check_resume_config(stored, compose_cfg("phase=online", "env=3m", "seed=1", "malloc_keep_freed=false",
                                            "paths.output_dir=/tmp/x"))
    with pytest.raises(ValueError, match=r"algo.lr: run 0.001, now 0.01; seed: run 1, now 2"):
        check_resume_config(stored, other)


def test_a_fine_tuning_run_resumes_across_offline_only_keys(compose_cfg):
    """A fine-tuning run's objective comes from its checkpoint: keys of ``algo.offline`` added
    after the run was made (CFCQL's behaviour_* in the sixth session) do not stop it resuming;
    the online settings are still compared."""
    from omegaconf import OmegaConf

    command = ("phase=online", "env=3m", "seed=1", "algo=macql", "ckpt=/runs/offline/last.ckpt", "paths.output_dir=/tmp/x")
    cfg = compose_cfg(*command)
    stored = OmegaConf.to_container(cfg, resolve=True)
    for key in ("behaviour_training", "behaviour_patience", "behaviour_max_updates"):
        del stored["algo"]["offline"][key]
    check_resume_config(stored, cfg)
    with pytest.raises(ValueError, match=r"algo.online.mixing_ratio: run .*, now 0.7"):
        check_resume_config(stored, compose_cfg(*command, "algo.online.mixing_ratio=0.7"))
    # From scratch (no ckpt) every key is still compared.
    scratch = OmegaConf.to_container(compose_cfg("phase=online", "env=3m", "seed=1", "algo=macql",
                                                 "paths.output_dir=/tmp/x"), resolve=True)
    del scratch["algo"]["offline"]["behaviour_training"]
    with pytest.raises(ValueError, match=r"algo.offline.behaviour_training: run '<unset>', now 'before'"):
        check_resume_config(scratch, compose_cfg("phase=online", "env=3m", "seed=1", "algo=macql",
                                                 "paths.output_dir=/tmp/x"))


def test_resume_of_a_run_without_checkpoint_says_why(tmp_path):
    cfg = SimpleNamespace(get=lambda k, d=None: str(tmp_path) if k == "resume" else d)
    with pytest.raises(FileNotFoundError, match="before its first resume point"):
        resume_checkpoint(cfg)
    cfg = SimpleNamespace(get=lambda k, d=None: str(tmp_path / "nope") if k == "resume" else d)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        resume_checkpoint(cfg)
    best = tmp_path / "checkpoints" / "best.ckpt"
    best.parent.mkdir()
    best.write_bytes(b"x")
    cfg = SimpleNamespace(get=lambda k, d=None: str(best) if k == "resume" else d)
    with pytest.raises(ValueError, match="best.ckpt is not one"):
        resume_checkpoint(cfg)


# ----------------------------------------------------------------------------- a real kill


@pytest.fixture(scope="module")
def offline_ckpt(tmp_path_factory, run_train):
    path = random_dataset(tmp_path_factory.mktemp("data") / "3m" / "medium")
    run_dir = tmp_path_factory.mktemp("offline")
    proc = run_train("phase=offline", "env=3m", "algo=ovmse", f"dataset={path}", "debug=tiny", "steps=4",
                     "eval.interval_updates=4", "eval.episodes=4", "eval.num_envs=4", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


ANNEAL = 4000  # ε and λ_memory anneal over this many env steps: both still moving at the kill


def _overrides(run_dir, ckpt, *extra):
    """The run that is killed and resumed: debug=tiny's collection and updates
    (configs/debug/tiny/online.yaml) over 3000 env steps, a resume point every 256, an evaluation
    every 1000, ε and λ_memory still annealing, the unlearning probe at its phase defaults."""
    return ["phase=online", "env=3m", "algo=ovmse", f"ckpt={ckpt}", "debug=tiny", "env_steps=3000",
            "algo.buffer_size=40", f"algo.epsilon_anneal_steps={ANNEAL}", "algo.online.lambda_memory_end=0.2",
            f"algo.online.lambda_memory_anneal_steps={ANNEAL}", "eval.interval_env_steps=1000", "eval.episodes=4",
            "eval.num_envs=4", "final_eval.episodes=8", "final_eval.num_envs=8", "checkpoint.every_env_steps=256",
            "unlearning_probe.episodes=32", "unlearning_probe.every_env_steps=5000", "logger.tensorboard=false",
            f"hydra.run.dir={run_dir}", *extra]


def _wait_for_checkpoint(run_dir: Path, proc, min_env_steps: int, timeout: float = 300) -> None:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=True)["progress"]["env_steps"] >= min_env_steps:
                    return
            except Exception:  # noqa: BLE001 - being replaced right now; the rename is atomic
                pass
        time.sleep(0.5)
    raise AssertionError("no checkpoint in time")


def test_sigterm_is_a_failed_run_not_a_finished_one(tmp_path, offline_ckpt):
    """Lightning stops at a SIGTERM by raising a SystemExit without a code (exit 0): a sweep
    would take the run for finished. train.py exits 143 and says how to continue."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_command(*_overrides(run_dir, offline_ckpt)), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(run_dir, proc, min_env_steps=512)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and f"resume={run_dir}" in err
    assert not (run_dir / "online_summary.json").exists()


def test_a_stage_that_exits_0_without_its_summary_failed(tmp_path):
    from ovmse.sweeps import StageError
    from ovmse.sweeps.stages import run_stage

    with pytest.raises(StageError, match="did not write .*online_summary.json: it was stopped"):
        run_stage("online", [sys.executable, "-c", "pass"], tmp_path, leaves=tmp_path / "online_summary.json")
    (tmp_path / "online_summary.json").write_text("{}")
    assert run_stage("online", [sys.executable, "-c", "pass"], tmp_path, leaves=tmp_path / "online_summary.json") >= 0


def test_sigkill_then_resume_continues_exactly(tmp_path, offline_ckpt, run_train):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_command(*_overrides(run_dir, offline_ckpt)), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(run_dir, proc, min_env_steps=1024)
        time.sleep(1.0)  # let it run on past the checkpoint: those steps must be superseded
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    x = saved["progress"]["env_steps"]
    manifest = saved["resume"]["replay"]
    buffer = EpisodeReplayBuffer(capacity=40)
    ReplayChunks(run_dir / "checkpoints" / "replay", buffer).restore(manifest)
    expected_digest = replay_digest(buffer)
    killed_rows = list(csv.DictReader((run_dir / "metrics.csv").open()))

    proc = run_train(*_overrides(run_dir, offline_ckpt, f"resume={run_dir}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert len(resumed) == 1
    r = resumed[0]
    assert r["env_steps"] == x and r["updates"] == saved["progress"]["updates"]
    assert r["episodes"] == saved["progress"]["episodes"]
    assert r["replay_episodes"] == len(buffer) and r["replay_digest"] == expected_digest

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    before = [row for row in rows if float(row["env_steps"]) <= x]
    after = [row for row in rows if float(row["env_steps"]) > x]
    # the rows up to the resume point are kept as they were; later rows of the killed run moved aside
    assert [row["env_steps"] for row in before] == [row["env_steps"] for row in killed_rows
                                                    if float(row["env_steps"]) <= x]
    superseded = run_dir / f"metrics.before-resume-{x}.csv"
    if any(float(row["env_steps"]) > x for row in killed_rows):
        assert superseded.is_file()
    # schedules continue from the resume point: ε and λ of the first updates after it are the
    # schedule's values there, not its start values
    epsilon = LinearSchedule(1.0, 0.05, ANNEAL)
    lam = LinearSchedule(1.0, 0.2, ANNEAL)
    train_after = [row for row in after if row.get("train/epsilon")]
    assert train_after
    first = train_after[0]
    steps = int(float(first["env_steps"]))
    per_collect = 4 * 16
    assert float(first["train/epsilon"]) == pytest.approx(epsilon(steps - per_collect))
    assert float(first["train/lambda_memory"]) <= lam(x) + 1e-6
    assert float(first["train/lambda_memory"]) == pytest.approx(lam(steps - per_collect), abs=1e-5)
    assert float(first["train/epsilon"]) < 1.0 and float(first["train/lambda_memory"]) < 1.0
    summary = json.loads((run_dir / "online_summary.json").read_text())
    assert summary["env_steps"] >= 3000 and summary["updates"] > saved["progress"]["updates"]

    # Issue 19 B/C: resuming the finished run is refused and changes nothing in it.
    record = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
              if p.is_file() and p.suffix in (".json", ".csv", ".yaml", ".jsonl")}
    again = run_train(*_overrides(run_dir, offline_ckpt, f"resume={run_dir}"))
    assert again.returncode == 2 and "the run is finished" in again.stderr and "larger env_steps" in again.stderr
    after_refusal = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".csv", ".yaml", ".jsonl")}
    changed = {str(k) for k in set(record) | set(after_refusal) if record.get(k) != after_refusal.get(k)}
    assert all(k.startswith(".hydra-resume/") for k in changed), changed  # the refused command's own record
    assert (run_dir / ".hydra" / "overrides.yaml").read_bytes() == record[Path(".hydra/overrides.yaml")]

    # Killed after its budget but before its final test (no summary yet): the resume makes no
    # further update and runs the final test.
    final = json.loads((run_dir / "online_summary.json").read_text())
    (run_dir / "online_summary.json").unlink()
    at_budget = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["progress"]
    assert at_budget["env_steps"] >= 3000
    proc = run_train(*_overrides(run_dir, offline_ckpt, f"resume={run_dir}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    redone = json.loads((run_dir / "online_summary.json").read_text())
    assert redone["updates"] == at_budget["updates"] == final["updates"]
    assert redone["env_steps"] == at_budget["env_steps"] and "eval/final_win_rate" in redone


def test_resume_of_a_missing_directory_creates_nothing(tmp_path, run_train):
    missing = tmp_path / "no_such_run"
    proc = run_train("phase=online", "env=3m", f"resume={missing}", timeout=300)
    assert proc.returncode != 0 and "no such run directory" in proc.stderr
    assert not missing.exists()


@pytest.mark.parametrize("overrides, message", [
    (["phase=offline", "env=3m", "algo=ovmse"], "phase=offline cannot resume"),
    (["phase=online", "env=3m", "env_steps=-1"], "env_steps must be an integer >= 1"),
])
def test_refused_before_anything_runs(tmp_path, run_train, overrides, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    extra = [f"+resume={run_dir}"] if overrides[0] == "phase=offline" else [f"hydra.run.dir={run_dir}"]
    proc = run_train(*overrides, *extra, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (run_dir / "checkpoints").exists()


def test_extending_a_finished_run_sets_its_old_summary_aside(tmp_path):
    """resume= with a larger env_steps makes a finished run unfinished again: a kill during the
    extension must not leave the old final test as the run's summary (issue 19)."""
    from types import SimpleNamespace

    from ovmse.phases.resume import set_aside_summary

    (tmp_path / "online_summary.json").write_text('{"eval/final_win_rate": 0.5}')
    kept = set_aside_summary(SimpleNamespace(env_steps=3072), tmp_path)
    assert kept == tmp_path / "online_summary.at-3072.json" and kept.read_text() == '{"eval/final_win_rate": 0.5}'
    assert not (tmp_path / "online_summary.json").exists()
    assert set_aside_summary(SimpleNamespace(env_steps=3072), tmp_path) is None  # nothing to move


def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_anything_is_written(tmp_path):
    """Issue 19 C: no resume point, or its replay chunks gone (keep_replay=false deletes them when
    a run finishes): refused by the check before the run directory is touched, not at fit start."""
    from ovmse.phases.resume import check_resume_point

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {}}, ckpt)
    with pytest.raises(ValueError, match="is not a resume point"):
        check_resume_point(ckpt)
    manifest = {"chunks": ["chunk-0-8", "chunk-8-16"], "first": 0, "total": 16}
    torch.save({"state_dict": {}, "hyper_parameters": {}, "resume": {"replay": manifest}}, ckpt)
    (ckpt.parent / "replay" / "chunk-0-8").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="1 of the 2 replay chunks it names are missing"):
        check_resume_point(ckpt)
    (ckpt.parent / "replay" / "chunk-8-16").mkdir()
    check_resume_point(ckpt)


def test_a_ddp_run_is_not_resumed_as_a_single_process_one():
    """Issue 19: the ranks of a trainer=ddp run each held a replay buffer; resuming it with
    trainer=default used to fail at fit start, after the run directory was written to."""
    from omegaconf import OmegaConf

    from ovmse.phases.resume import check_resume_config

    cfg = OmegaConf.create({"trainer": {"strategy": "auto"}, "seed": 0})
    with pytest.raises(ValueError, match="trained with trainer=ddp"):
        check_resume_config({"trainer": {"strategy": "ddp"}, "seed": 0}, cfg)
    with pytest.raises(ValueError, match="distributed env workers"):
        check_resume_config({"trainer": {"strategy": "auto"}, "collector": {"distributed": {"enabled": True}},
                             "seed": 0}, cfg)
    check_resume_config({"trainer": {"strategy": "auto"}, "seed": 0}, cfg)

"""phase=pipeline: a grid cell end to end (datasets -> shared offline pretraining -> online
fine-tuning), finished stages skipped, a killed run resumed, locks between sweep processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovmse.phases.pipeline import make_cell
from ovmse.sweeps import StageLock, forwarded_overrides, merge_overrides, variant_of
from ovmse.sweeps.cells import config_hash, offline_identity

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)


@pytest.fixture(scope="module")
def sweep(run_train):
    """``sweep(tmp, *overrides, dataset="medium")``: a phase=pipeline multirun on 3m with budget=smoke
    (the pipeline's minute-scale budget) under ``tmp``."""
    def sweep(tmp: Path, *overrides: str, dataset: str = "medium") -> subprocess.CompletedProcess:
        return run_train("-m", "phase=pipeline", "env=3m", f"dataset={dataset}", "seed=0", "budget=smoke",
                         f"pipeline.root={tmp / 'sweep'}", f"data_root={tmp / 'data'}",
                         f"hydra.sweep.dir={tmp / 'jobs'}", *overrides, timeout=900)

    return sweep


def fresh_jobs(tmp: Path) -> None:
    """Move the last sweep's job directories aside, so that job_records reads the next one's."""
    jobs = tmp / "jobs"
    if jobs.exists():
        jobs.rename(tmp / f"jobs.{len(list(tmp.glob('jobs.*')))}")


def job_records(tmp: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "jobs").glob("*/pipeline.json"))]


def statuses(record: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in record["stages"]}


# ----------------------------------------------------------------------------- cells


def test_variant_is_the_learning_overrides_only():
    overrides = ["experiment=2s3z_medium", "algo=ovmse", "seed=1", "device=cpu", "eval.episodes=8",
                 "+algo.online.mixing_ratio=0.3", "algo.lr=0.0005"]
    assert variant_of(overrides) == "algo.lr=0.0005,algo.online.mixing_ratio=0.3"
    assert variant_of(["experiment=2s3z_medium", "algo=qmix", "seed=0", "num_threads=1", "malloc_keep_freed=false"]) == ""


def test_pipeline_keys_are_not_forwarded_and_later_overrides_win():
    assert forwarded_overrides(["phase=pipeline", "grid=table1", "budget=short", "pipeline.name=x", "algo=ovmse",
                                "hydra.sweep.dir=/x", "seed=2"]) == ["algo=ovmse", "seed=2"]
    assert merge_overrides(["seed=0", "env_steps=5"], ["seed=3"], ["+env_steps=7"]) == ["seed=3", "+env_steps=7"]


def test_fine_tuning_algorithms_share_one_offline_pretraining(compose_cfg):
    cells = {algo: make_cell(compose_cfg("phase=pipeline", "experiment=3s5z_medium", f"algo={algo}"), [])
             for algo in ("ovmse", "macql", "switch_cql")}
    assert len({c.offline_dir for c in cells.values()}) == 1
    # MACal-QL pretrains calibrated (Cal-QL), so on its own; uncalibrated it shares the others'.
    calibrated = make_cell(compose_cfg("phase=pipeline", "experiment=3s5z_medium", "algo=macalql"), [])
    plain = make_cell(compose_cfg("phase=pipeline", "experiment=3s5z_medium", "algo=macalql",
                                  "algo.offline.calibrated=false"), ["algo.offline.calibrated=false"])
    assert calibrated.offline_dir != cells["ovmse"].offline_dir and plain.offline_dir == cells["ovmse"].offline_dir
    assert plain.online_dir != calibrated.online_dir
    # Online settings do not change it; offline ones and the seed do.
    same = make_cell(compose_cfg("phase=pipeline", "experiment=3s5z_medium", "algo=ovmse",
                                 "algo.online.mixing_ratio=0.3"), ["algo.online.mixing_ratio=0.3"])
    assert same.offline_dir == cells["ovmse"].offline_dir
    assert same.online_dir != cells["ovmse"].online_dir
    other = make_cell(compose_cfg("phase=pipeline", "experiment=3s5z_medium", "algo=ovmse", "algo.offline.alpha=0.5"),
                      [])
    assert other.offline_dir != cells["ovmse"].offline_dir
    reseeded = make_cell(compose_cfg("phase=pipeline", "experiment=3s5z_medium", "algo=ovmse", "seed=4"), [])
    assert reseeded.offline_dir != cells["ovmse"].offline_dir
    # The offline identity ignores how many battles run at once.
    a = offline_identity({"lr": 1e-3}, {"map_name": "3m", "num_envs": 2}, "medium", 0, [])
    b = offline_identity({"lr": 1e-3}, {"map_name": "3m", "num_envs": 8}, "medium", 0, [])
    assert config_hash(a) == config_hash(b)


def test_qmix_from_scratch_is_one_run_per_map(compose_cfg):
    medium = make_cell(compose_cfg("phase=pipeline", "experiment=5m_vs_6m_medium", "algo=qmix"), [])
    replay = make_cell(compose_cfg("phase=pipeline", "experiment=5m_vs_6m_medium_replay", "algo=qmix"), [])
    assert medium.online_dir == replay.online_dir
    assert medium.online_dir.parts[-3:] == ("5m_vs_6m", "qmix", "seed0")


def test_stage_lock_is_exclusive_and_takes_over_a_dead_holder(tmp_path):
    first, second = StageLock(tmp_path / "x.lock"), StageLock(tmp_path / "x.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()
    # A lock left by a process that is gone (same host) is stale.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "x.lock").write_text(f"{os.uname().nodename} {dead.stdout.strip()}")
    assert StageLock(tmp_path / "x.lock").try_acquire()
    # Another machine's lock is trusted.
    (tmp_path / "y.lock").write_text("some-other-host 1")
    assert not StageLock(tmp_path / "y.lock").try_acquire()
    # Two takers of one stale lock: the slower one read the stale text before the faster one
    # replaced it; it must not remove the fresh lock (issue 19).
    stale = f"{os.uname().nodename} {dead.stdout.strip()}"
    (tmp_path / "z.lock").write_text(stale)
    fast, slow = StageLock(tmp_path / "z.lock"), StageLock(tmp_path / "z.lock")
    assert fast.try_acquire()
    fresh = (tmp_path / "z.lock").read_text()
    assert not slow._take_stale(stale)
    assert (tmp_path / "z.lock").read_text() == fresh and not list(tmp_path.glob("z.lock.taking-*"))
    assert not slow.try_acquire()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def swept(tmp_path_factory, sweep):
    tmp = tmp_path_factory.mktemp("pipeline")
    proc = sweep(tmp, "algo=ovmse,macql,qmix")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc


def test_a_sweep_runs_every_stage_once(swept):
    tmp, proc = swept
    root = tmp / "sweep"
    assert (tmp / "data" / "3m" / "medium" / "dataset.json").is_file()
    assert (tmp / "data" / "3m" / "medium_replay" / "dataset.json").is_file()
    offline = list((root / "offline" / "3m_medium").glob("seed0-*/offline_summary.json"))
    assert len(offline) == 1, "ovmse and macql share one offline pretraining"
    for run in ("3m_medium/ovmse", "3m_medium/macql", "3m/qmix"):
        summary = json.loads((root / "online" / run / "seed0" / "online_summary.json").read_text())
        assert summary["eval/final_episodes"] == 16
    ovmse, macql, qmix = job_records(tmp)
    assert statuses(ovmse) == {"collect": "ran", "offline": "ran", "online": "ran"}
    assert statuses(macql) == {"dataset": "present", "offline": "done before", "online": "ran"}
    assert statuses(qmix) == {"online": "ran"}
    # The sweep root pinned the set its fine-tuning cells read.
    pinned = json.loads((root / "datasets" / "3m" / "medium.json").read_text())
    made = json.loads((tmp / "data" / "3m" / "medium" / "dataset.json").read_text())
    assert (pinned["transitions"], pinned["created"]) == (made["transitions"], made["created"])
    assert pinned["content_sha256"] == made["content_sha256"] and len(made["content_sha256"]) == 64
    # The fine-tuning run starts from the shared checkpoint.
    ckpt = json.loads((root / "online" / "3m_medium" / "macql" / "seed0" / "online_summary.json").read_text())["ckpt"]
    assert Path(ckpt).parent.parent == offline[0].parent
    # Each job ends with what its cell reached, each win rate with its number of battles, and where
    # its files are.
    assert "3m_medium ovmse seed 0: final win rate" in proc.stdout and "over 16 battles" in proc.stdout
    assert "offline policy (last evaluation of the pretraining): win rate" in proc.stdout
    assert "over 8 battles" in proc.stdout and f"tensorboard --logdir {root}" in proc.stdout


def test_a_second_sweep_skips_what_is_done_and_resumes_a_killed_run(swept, tmp_path, sweep):
    tmp, _ = swept
    root = tmp / "sweep"
    run = root / "online" / "3m_medium" / "ovmse" / "seed0"
    before = {p: p.stat().st_mtime_ns for p in root.glob("online/*/*/seed0/online_summary.json")}
    # A run killed after its last resume point: no summary, a last.ckpt.
    (run / "online_summary.json").unlink()
    fresh_jobs(tmp)
    proc = sweep(tmp, "algo=ovmse,macql,qmix")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ovmse, macql, qmix = job_records(tmp)
    assert statuses(ovmse) == {"dataset": "present", "offline": "done before", "online": "resumed"}
    assert statuses(macql) == {"online": "done before"}
    assert statuses(qmix) == {"online": "done before"}
    # QMIX from scratch of the map's other task is the same run.
    fresh_jobs(tmp)
    proc = sweep(tmp, "algo=qmix", dataset="medium_replay")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (other_task,) = job_records(tmp)
    assert other_task["task"] == "3m_medium_replay" and statuses(other_task) == {"online": "done before"}
    assert (run / "online_summary.json").is_file() and (run / "resumes.jsonl").is_file()
    for path, mtime in before.items():
        if path.parent != run:
            assert path.stat().st_mtime_ns == mtime, f"{path} was redone"


def test_a_busy_shared_stage_skips_the_cell_and_a_failed_stage_names_its_log(swept, sweep, compose_cfg):
    tmp, _ = swept
    # Another offline setting: a pretraining of its own, not made yet.
    cfg = compose_cfg("phase=pipeline", "env=3m", "dataset=medium", "algo=switch_cql", "budget=smoke",
                      "algo.offline.alpha=0.5", f"pipeline.root={tmp / 'sweep'}")
    cell = make_cell(cfg, ["algo.offline.alpha=0.5"])
    lock = StageLock(cell.lock_path(cell.offline_dir))
    # Held by this (living) test process: another sweep process is pretraining it.
    assert lock.try_acquire()
    try:
        fresh_jobs(tmp)
        proc = sweep(tmp, "algo=switch_cql", "algo.offline.alpha=0.5", "pipeline.wait_for_shared=false")
        assert proc.returncode == 0, proc.stderr[-3000:]
        (record,) = job_records(tmp)
        assert "cell skipped for now" in statuses(record)["offline"]
        assert not cell.online_dir.exists()
    finally:
        lock.release()
    fresh_jobs(tmp)
    proc = sweep(tmp, "algo=switch_cql", "pipeline.offline.overrides=['no_such_key=1']")
    assert proc.returncode == 2
    assert "pipeline stage offline failed" in proc.stderr and "stage.log" in proc.stderr
    (record,) = job_records(tmp)
    assert "error" in record


def test_a_finished_run_of_other_settings_is_not_taken_as_done(swept, sweep):
    tmp, _ = swept
    fresh_jobs(tmp)
    summary = tmp / "sweep" / "online" / "3m" / "qmix" / "seed0" / "online_summary.json"
    before = summary.read_text()
    # The same sweep name with another online budget: the run directory is the same cell's.
    proc = sweep(tmp, "algo=qmix", "pipeline.online.overrides=['env_steps=1280']")
    assert proc.returncode == 2
    assert "finished run of other settings" in proc.stderr and "env_steps=1280" in proc.stderr
    assert summary.read_text() == before


def test_a_variant_runs_in_a_directory_of_its_own(swept, sweep):
    tmp, _ = swept
    fresh_jobs(tmp)
    # The variant's directory name holds '=': it reaches Hydra quoted.
    proc = sweep(tmp, "algo=ovmse", "algo.online.mixing_ratio=0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp / "sweep" / "online" / "3m_medium" / "ovmse+algo.online.mixing_ratio=0.5" / "seed0"
    summary = json.loads((run / "online_summary.json").read_text())
    assert summary["settings"]["mixing_ratio"] == 0.5
    (record,) = job_records(tmp)
    assert statuses(record) == {"dataset": "present", "offline": "done before", "online": "ran"}


def test_a_cells_own_budget_wins_over_the_budget_configs(swept, sweep):
    tmp, _ = swept
    fresh_jobs(tmp)
    # budget=smoke trains 640 env steps online; this cell asks for 320: a variant of its own.
    proc = sweep(tmp, "algo=qmix", "++env_steps=320")  # ++: phase=pipeline has no env_steps of its own
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp / "sweep" / "online" / "3m" / "qmix+env_steps=320" / "seed0"
    summary = json.loads((run / "online_summary.json").read_text())
    assert 320 <= summary["env_steps"] < 640


def test_a_sweep_root_refuses_another_set_than_the_one_it_pinned(swept, tmp_path, sweep):
    """The data collected again (a new machine, a lost data_root) is another "medium" set: the
    sweep root's runs must not be continued on it, and nothing of theirs is touched."""
    import shutil

    tmp, _ = swept
    shutil.copytree(tmp / "sweep", tmp_path / "sweep")
    shutil.copytree(tmp / "data", tmp_path / "data")
    meta_file = tmp_path / "data" / "3m" / "medium" / "dataset.json"
    meta = json.loads(meta_file.read_text())
    meta["content_sha256"] = "0" * 64  # collected again (another device, say): same protocol, other episodes
    meta_file.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    proc = sweep(tmp_path, "algo=macql", "algo.online.mixing_ratio=0.5")  # a cell not made yet
    assert proc.returncode != 0
    assert "is another set than 3m/medium recorded (content_sha256" in proc.stderr
    assert "sweep root's runs used the set pinned in" in proc.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file() and ".lock" not in p.name}
    assert after == before  # (the cell's lock may leave its empty directory)
    # A root that pinned the new set (the data collected again before its first pin) still has
    # pretrainings of the old one: they do not serve its cells.
    pin = tmp_path / "sweep" / "datasets" / "3m" / "medium.json"
    pin.write_text(json.dumps({**json.loads(pin.read_text()), "content_sha256": meta["content_sha256"]}))
    proc = sweep(tmp_path, "algo=macql", "algo.online.mixing_ratio=0.5")
    assert proc.returncode != 0
    assert "The pretraining" in proc.stderr and "read the set its hparams.yaml records" in proc.stderr


def test_cells_finished_in_another_root_are_passed_over(tmp_path, sweep):
    """pipeline.skip_cells_file lists runs finished in a sweep root whose outputs are gone: their
    cells are passed over (nothing made, not even the dataset); the others run; a missing list
    is an error naming it."""
    listed = tmp_path / "recorded_cells.txt"
    listed.write_text("# finished elsewhere\n3m_medium/macql/seed0   # a comment\n3m_medium/ovmse/seed0\n")
    proc = sweep(tmp_path, "algo=macql,ovmse,qmix", f"pipeline.skip_cells_file={listed}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [statuses(r) for r in job_records(tmp_path)] == [
        {"online": f"finished in another sweep root (listed in {listed}): skipped"}] * 2 + [{"online": "ran"}]
    assert not (tmp_path / "data").exists()  # the listed fine-tuning cells made no dataset
    assert [p.parent.parent.name for p in (tmp_path / "sweep" / "online").glob("*/*/seed0/online_summary.json")] == [
        "qmix"]
    fresh_jobs(tmp_path)
    proc = sweep(tmp_path, "algo=qmix", f"pipeline.skip_cells_file={tmp_path / 'none.txt'}")
    assert proc.returncode != 0
    assert f"pipeline.skip_cells_file='{tmp_path / 'none.txt'}': no such file" in proc.stderr


def test_a_killed_collection_is_completed_from_its_own_policy(swept, tmp_path, sweep):
    """A collection killed between writing medium_replay and medium: the next sweep keeps
    medium_replay and records medium with the policy that made it, not a new one."""
    import shutil

    tmp, _ = swept
    shutil.copytree(tmp / "data", tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "3m" / "medium")
    proc = sweep(tmp_path, "algo=macql")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    replay = json.loads((tmp_path / "data" / "3m" / "medium_replay" / "dataset.json").read_text())
    medium = json.loads((tmp_path / "data" / "3m" / "medium" / "dataset.json").read_text())
    assert replay == json.loads((tmp / "data" / "3m" / "medium_replay" / "dataset.json").read_text())  # kept
    assert medium["behaviour"]["checkpoint"] == replay["behaviour"]["checkpoint"]
    (record,) = job_records(tmp_path)
    assert statuses(record)["collect"] == "ran"


def test_the_collect_stage_gets_the_map_not_the_experiment_preset():
    """A dataset belongs to its map: the task preset (its evaluation interval and update ratio)
    must not change how the behaviour policy is trained (docs/datasets.md's protocol)."""
    from ovmse.phases.pipeline import _COLLECT_FORWARD, _OFFLINE_FORWARD, _only

    overrides = ["experiment=2s3z_medium", "env=2s3z", "num_threads=1", "malloc_keep_freed=false", "algo=ovmse",
                 "dataset=medium"]
    assert _only(overrides, _COLLECT_FORWARD) == ["env=2s3z", "num_threads=1", "malloc_keep_freed=false"]
    assert _only(overrides, _OFFLINE_FORWARD) == overrides


def test_hydras_joblib_launcher_runs_cells_in_parallel_sharing_one_pretraining(swept, sweep):
    """``hydra/launcher=joblib``: two cells of a new seed at once, in two processes; the offline
    pretraining they share is made once (the other waits on its lock), each stage gets
    ``num_threads`` = cores / 2."""
    import os

    tmp, _ = swept
    fresh_jobs(tmp)
    proc = sweep(tmp, "seed=7", "algo=ovmse,macql", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = job_records(tmp)
    assert len(records) == 2 and len({r["pid"] for r in records}) == 2
    offline = sorted(statuses(r)["offline"] for r in records)
    assert offline.count("ran") == 1 and offline[1 - offline.index("ran")] in ("made by another process", "done before")
    assert len(list((tmp / "sweep" / "offline" / "3m_medium").glob("seed7-*/offline_summary.json"))) == 1
    threads = f"num_threads={max(1, (os.cpu_count() or 1) // 2)}"
    for algo, record in zip(("ovmse", "macql"), records):
        assert threads in record["overrides"]
        assert (tmp / "sweep" / "online" / "3m_medium" / algo / "seed7" / "online_summary.json").is_file()

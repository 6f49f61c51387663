"""The main job: `python train.py phase=rollout ...` as a user runs it."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runs import train_command

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]
MAPS = ["10m_vs_11m", "2s3z", "3m", "3s5z", "3s_vs_5z", "5m_vs_6m", "6h_vs_8z", "8m", "MMM"]


@pytest.fixture(scope="module")
def rollout_run(tmp_path_factory, run_train):
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_train("phase=rollout", "env=3m", "n_battles=16", "seed=3", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir, proc


def test_rollout_writes_sane_stats(rollout_run):
    run_dir, _ = rollout_run
    stats = json.loads((run_dir / "rollout_stats.json").read_text())
    assert stats["phase"] == "rollout"
    assert stats["map_name"] == "3m"
    assert stats["policy"] == "random"
    assert stats["seed"] == 3
    assert stats["num_envs"] == 16  # capped at n_battles
    m = stats["metrics"]
    assert all(k.startswith("rollout/") for k in m)
    assert m["rollout/battles"] == 16
    assert 0.0 <= m["rollout/win_rate"] <= 1.0
    assert 0.0 <= m["rollout/return_min"] <= m["rollout/return_mean"] <= m["rollout/return_max"] <= 20.0 + 1e-4
    assert m["rollout/return_std"] >= 0.0
    assert 1.0 <= m["rollout/episode_length_mean"] <= 60.0  # 3m's episode limit
    assert m["rollout/env_steps"] >= 16 * 1
    assert math.isfinite(m["rollout/env_steps_per_second"]) and m["rollout/env_steps_per_second"] > 0


def test_rollout_run_dir_has_config_log_and_tensorboard(rollout_run):
    run_dir, proc = rollout_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "map_name: 3m" in resolved and "n_battles: 16" in resolved and "${" not in resolved
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # the printed table
    for label in ("win rate", "return mean", "episode length mean", "env steps / s"):
        assert label in proc.stdout


def test_unknown_env_lists_the_maps(run_train):
    proc = run_train("phase=rollout", "env=4m", timeout=120)
    assert proc.returncode != 0
    msg = proc.stdout + proc.stderr
    assert "Available options in 'env'" in msg
    for name in MAPS:
        assert re.search(rf"^\s+{re.escape(name)}$", msg, re.M), name


def test_unknown_phase_lists_the_phases(run_train):
    proc = run_train("phase=no_such_phase", timeout=120)
    assert proc.returncode != 0
    assert "Available options in 'phase'" in proc.stdout + proc.stderr
    assert "rollout" in proc.stdout + proc.stderr


def test_every_map_has_an_env_config():
    from ovmse.envs import MAPS as SIM_MAPS

    configs = sorted(p.stem for p in (ROOT / "configs" / "env").glob("*.yaml"))
    assert configs == sorted(SIM_MAPS) == sorted(MAPS)


def test_ci_runs_the_readme_test_command():
    ci_cmd = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in ln]
    assert len(ci_cmd) == 1
    assert ci_cmd[0].strip() in (ROOT / "README.md").read_text()


def test_run_directory_in_use_is_refused_with_the_holders_pid(tmp_path, run_train):
    """Issue 19 E: a second run into a directory that a live run holds is refused."""
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".run.lock").write_text(f"{socket.gethostname()} {holder.pid}")
        proc = run_train("phase=rollout", "env=3m", "n_battles=2", f"hydra.run.dir={run_dir}")
        assert proc.returncode == 2 and f"in use by another run ({socket.gethostname()} {holder.pid}" in proc.stderr
        assert not (run_dir / "config_resolved.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; the run releases it at the end
    proc = run_train("phase=rollout", "env=3m", "n_battles=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (run_dir / ".run.lock").exists()


def test_a_new_run_into_a_directory_that_holds_one_is_refused_before_hydra(rollout_run, run_train):
    """Issue 19: a second run (not resume=) into a run's directory would replace its .hydra record
    and mix its files (checkpoints, replay chunks, probe) with the first run's."""
    run_dir, _ = rollout_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_train("phase=rollout", "env=3m", "n_battles=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and "holds a run already (.hydra/config.yaml)" in proc.stderr
    assert "Traceback" not in proc.stderr and f"resume={run_dir}" in proc.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_default_run_directories_of_one_second_do_not_collide(tmp_path):
    """Two runs started together get their own default directories (time and pid)."""
    cmd = train_command("phase=rollout", "env=3m", "n_battles=2", f"paths.log_dir={tmp_path}")
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "rollout" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "config_resolved.yaml").is_file() for r in runs)
    assert all(r.name.startswith("3m_random_s0_") for r in runs), runs  # <map>_<policy>_s<seed>_<time>_<pid>
    # ... and so do two multiruns (-m), which used to share job directories
    procs = [subprocess.Popen(cmd[:2] + ["-m"] + cmd[2:], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    sweeps = sorted((tmp_path / "rollout" / "multiruns").iterdir())
    assert len(sweeps) == 2 and all((s / "0" / "config_resolved.yaml").is_file() for s in sweeps)


@pytest.mark.parametrize("override, message", [
    ("hydra.run.dir=/proc/ovmse_cannot_be_here", "cannot be created"),
    ("resume=/nonexistent/ovmse_run", "no such run directory or checkpoint"),
])
def test_bad_run_paths_are_one_line_before_hydra(run_train, override, message):
    """Issue 19: Hydra makes the run directory before main(); bad paths are refused before it."""
    proc = run_train("phase=online", "env=3m", override, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not Path("/nonexistent/ovmse_run").exists()


def test_quoted_run_paths_are_read_as_hydra_reads_them(tmp_path, run_train):
    """A sweep variant's run directory holds ``=`` and ``,``, so the pipeline quotes it
    (``resume='.../macql+algo.online.mixing_ratio=0.0,env_steps=100000/seed2'``). The checks
    before Hydra read the value with its quotes until 2026-12-05: every resume of such a run
    was refused as missing, and a quoted ``hydra.run.dir`` made a directory named ``'`` in the
    working directory."""
    variant = tmp_path / "online" / "macql+algo.online.mixing_ratio=0.0,env_steps=100000" / "seed2"
    variant.mkdir(parents=True)  # a run stopped before its first resume point
    proc = run_train("phase=online", "env=3m", f"resume='{variant}'", timeout=120)
    assert proc.returncode != 0 and "no such run directory" not in proc.stderr
    assert "stopped before its first resume point" in proc.stderr, proc.stderr[-2000:]
    run_dir = tmp_path / "runs" / "a=b,c"
    proc = run_train("phase=rollout", "env=3m", "n_battles=2", f"hydra.run.dir='{run_dir}'", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "rollout_stats.json").is_file() and not (ROOT / "'").exists()


def test_debug_tiny_is_a_minute_scale_run_of_the_chosen_phase(compose_cfg):
    """Issue 18: debug=tiny (configs/debug/) overrides the groups' values, the command line overrides it, and
    each phase gets its own values only (no algo.offline for QMIX, no online keys offline)."""
    assert compose_cfg("phase=online", "algo=ovmse", "debug=tiny").algo.batch_size == 8
    assert compose_cfg("phase=online", "algo=ovmse", "debug=tiny", "algo.batch_size=4").algo.batch_size == 4
    assert compose_cfg("phase=online", "algo=ovmse").algo.batch_size == 128  # only when chosen
    task = compose_cfg("phase=online", "experiment=2s3z_medium", "algo=ovmse", "debug=tiny")
    assert (task.env.map_name, task.eval.episodes, task.env_steps) == ("2s3z", 8, 640)  # wins over the experiment
    offline = compose_cfg("phase=offline", "env=3m", "algo=ovmse", "debug=tiny")
    assert (offline.steps, offline.algo.offline.batch_size, offline.eval.interval_updates) == (6, 8, 6)
    assert "env_steps" not in offline and "interval_env_steps" not in offline.eval
    collect = compose_cfg("phase=collect", "env=3m", "debug=tiny")
    assert (collect.env_steps, collect.episodes, collect.algo.buffer_size) == (1536, 24, 48)
    assert collect.level.min_eval_episodes == 8
    assert "offline" not in collect.algo and "final_eval" not in collect
    assert compose_cfg("phase=rollout", "debug=tiny").n_battles == 16
    # phase=pipeline has no part of its own (its minute-scale budget is budget=smoke)
    assert compose_cfg("phase=pipeline", "debug=tiny").trainer.progress_refresh_rate == 0


def test_run_directory_names_say_what_the_run_is():
    sys.path.insert(0, str(ROOT))
    from train import _run_name

    assert _run_name("offline", "2s3z", "ovmse", "medium", 1) == "2s3z_ovmse_medium_s1"
    assert _run_name("offline", "3m", "macql", "/data/3m/medium_replay", 0) == "3m_macql_medium_replay_s0"
    assert _run_name("online", "2s3z", "ovmse", "medium", 2) == "2s3z_ovmse_s2"  # the checkpoint's dataset
    assert _run_name("rollout", "3m", "qmix", None, 0, "scripted") == "3m_scripted_s0"

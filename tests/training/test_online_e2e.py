"""A short real online QMIX run through train.py, then evaluate.py on its checkpoint."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]


def _run(args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory, run_train):
    run_dir = tmp_path_factory.mktemp("online")
    # debug=tiny (configs/debug/tiny/online.yaml) with 768 env steps, 128 per update in calls of 32 steps per battle.
    proc = run_train("phase=online", "env=3m", "debug=tiny", "env_steps=768", "algo.steps_per_env=32",
                     "algo.env_steps_per_update=128", "algo.target_update_interval=8", "eval.interval_env_steps=384",
                     "log_every_env_steps=128", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_run_directory_contents(online_run):
    run_dir, proc = online_run
    assert "will be deleted" not in proc.stdout + proc.stderr  # no false alarm about a new run's directory
    assert "over 8 battles" in proc.stdout  # a printed win rate names its battles
    assert (run_dir / "config_resolved.yaml").exists()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    summary = json.loads((run_dir / "online_summary.json").read_text())
    assert summary["env_steps"] >= 768 and summary["updates"] >= 1


def test_metrics_csv_uses_env_steps(online_run):
    run_dir, _ = online_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    eval_rows = [r for r in rows if r.get("eval/win_rate")]
    assert len(eval_rows) >= 2  # periodic + final evaluation
    steps = [float(r["env_steps"]) for r in eval_rows]
    assert steps == sorted(steps) and steps[-1] >= 768
    assert all(0.0 <= float(r["eval/win_rate"]) <= 1.0 for r in eval_rows)
    train_rows = [r for r in rows if r.get("train/loss")]
    assert train_rows and all(float(r["train/epsilon"]) <= 1.0 for r in train_rows)


def test_evaluate_loads_checkpoint(online_run, tmp_path):
    run_dir, _ = online_run
    proc = _run([str(ROOT / "evaluate.py"), f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "episodes=16",
                 "num_envs=8"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.iterdir()), "evaluate.py wrote into the current directory"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 16 and result["map"] == "3m"
    assert 0.0 <= result["win_rate"] <= 1.0 and result["episode_length_mean"] > 0
    assert result["env_steps_trained"] >= 384


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(online_run):
    run_dir, _ = online_run
    proc = _run(["evaluate.py", f"ckpt={run_dir / 'metrics.csv'}", "episodes=4"])
    assert proc.returncode != 0
    assert "not a loadable torch checkpoint" in proc.stderr + proc.stdout

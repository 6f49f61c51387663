"""phase=offline end to end on a tiny dataset: CQL losses in training, diagnostics, greedy
evaluation by updates, and the checkpoint with the frozen offline target."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from objectives import settings
from ovmse.envs import get_map
from ovmse.phases.fine_tuning import load_checkpoint_for_map
from ovmse.training.checkpointing import count_nonfinite
from ovmse.training.qmix_module import QMixModule, load_qmix_checkpoint
from simtools import random_dataset

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]
# Updates of 8 episodes (8 sampled joint actions for CQL), 8-battle evaluations every 6 updates
# (configs/debug/tiny/offline.yaml); 12 updates, metrics every 4.
TINY = ["env=3m", "algo=ovmse", "debug=tiny", "steps=12", "log_every_updates=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return random_dataset(tmp_path_factory.mktemp("data") / "3m" / "medium")


@pytest.fixture(scope="module")
def train_offline(run_train):
    """``train_offline(run_dir, dataset, *extra)``: a tiny phase=offline run."""
    def train_offline(run_dir, dataset, *extra):
        return run_train("phase=offline", *TINY, f"dataset={dataset}", f"hydra.run.dir={run_dir}", *extra)

    return train_offline


@pytest.fixture(scope="module")
def macql_run(tmp_path_factory, dataset, train_offline):
    run_dir = tmp_path_factory.mktemp("offline_macql")
    proc = train_offline(run_dir, dataset)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_checkpoint_carries_frozen_offline_target_and_identity(macql_run, dataset):
    module = load_qmix_checkpoint(str(macql_run / "checkpoints" / "last.ckpt"))
    assert module.settings.cql.variant == "macql" and module.settings.cql.alpha == pytest.approx(1.0)  # 3m: default
    assert module.updates == 12 and module.settings.keeps_offline_target
    for frozen, target in ((module.objective.frozen_agent, module.objective.td.target_agent),
                           (module.objective.frozen_mixer, module.objective.td.target_mixer)):
        for (n1, p1), (n2, p2) in zip(frozen.state_dict().items(), target.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2)
        assert not any(p.requires_grad for p in frozen.parameters())
    assert module.hparams.dataset["name"] == "3m/medium" and module.hparams.dataset["episodes"] == 24
    assert Path(module.hparams.dataset["path"]) == dataset.resolve()
    assert module.run_config["task_name"] == "offline" and module.run_config["steps"] == 12
    raw = torch.load(macql_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "optimizer_states" in raw and raw["optimizer_states"]  # the optimiser travels too


def test_frozen_target_is_independent_of_later_updates(macql_run):
    module = load_qmix_checkpoint(str(macql_run / "checkpoints" / "last.ckpt"))
    before = [p.clone() for p in module.objective.frozen_agent.parameters()]
    module.update_targets()
    with torch.no_grad():
        for p in module.agent.parameters():
            p.add_(1.0)
    module.update_targets()
    assert all(torch.equal(a, b) for a, b in zip(before, module.objective.frozen_agent.parameters()))


def test_metrics_use_updates_and_log_diagnostics(macql_run):
    rows = list(csv.DictReader((macql_run / "metrics.csv").open()))
    train = [r for r in rows if r.get("train/loss")]
    assert train, "no train/ rows"
    for key in ("train/td_loss", "train/cql_loss", "train/cql_gap_mean", "train/mc_return_mean",
                "train/q_minus_mc_return", "train/q_taken_mean", "train/td_error_abs_mean"):
        assert train[-1].get(key) not in (None, ""), key
    evals = [r for r in rows if r.get("eval/win_rate")]
    assert [int(float(r["updates"])) for r in evals] == [1, 6, 12]
    assert all(float(r["env_steps"]) == 0 for r in evals)  # offline: no env interaction counted
    summary = json.loads((macql_run / "offline_summary.json").read_text())
    assert summary["updates"] == 12 and summary["cql"] == "macql"


def test_cfcql_and_no_cql_variants_run(tmp_path, dataset, train_offline):
    proc = train_offline(tmp_path / "cf", dataset, "algo.offline.cql=cfcql", "algo.offline.alpha=2.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    module = load_qmix_checkpoint(str(tmp_path / "cf" / "checkpoints" / "last.ckpt"))
    assert module.settings.cql.variant == "cfcql" and module.objective.behaviour is not None
    rows = [r for r in csv.DictReader((tmp_path / "cf" / "metrics.csv").open()) if r.get("train/bc_loss")]
    assert rows and 0.0 <= float(rows[-1]["train/bc_accuracy"]) <= 1.0
    # CFCQL's behaviour net was trained before the Q networks (its own stopping rule) and is
    # saved as trained, so fine-tuning reads it frozen.
    pretraining = json.loads((tmp_path / "cf" / "offline_summary.json").read_text())["behaviour_pretraining"]
    assert pretraining["updates"] >= 22 and pretraining["stopped_by"] in ("patience", "max_updates")
    assert module.settings.cql.behaviour_training == "before" and not module.objective.needs_behaviour_pretraining
    assert "behaviour cloning (CFCQL, before the Q networks)" in proc.stdout
    proc = train_offline(tmp_path / "none", dataset, "algo.offline.cql=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    module = load_qmix_checkpoint(str(tmp_path / "none" / "checkpoints" / "last.ckpt"))
    assert module.settings.cql is None


def test_offline_needs_an_o2o_algo_and_a_valid_dataset(tmp_path, dataset, run_train, train_offline):
    proc = run_train("phase=offline", "env=3m", "algo=qmix", f"dataset={dataset}", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode != 0 and "has no offline settings" in proc.stderr
    proc = train_offline(tmp_path / "b", tmp_path / "nowhere")
    assert proc.returncode != 0 and "no such dataset directory" in proc.stderr


def test_per_map_cql_settings_follow_the_paper():
    from omegaconf import OmegaConf

    from ovmse.phases.settings import offline_settings

    algo = OmegaConf.load(ROOT / "configs" / "algo" / "o2o.yaml")
    cfg = OmegaConf.create({"algo": {"name": "ovmse", "offline": algo.offline, "sample_with_replacement": False}})
    expect = {"2s3z": ("macql", 0.05, 7), "3s5z": ("macql", 0.25, 7), "5m_vs_6m": ("cfcql", 50.0, 25),
              "6h_vs_8z": ("cfcql", 20.0, 25)}
    for map_name, (cql, alpha, interval) in expect.items():
        s = offline_settings(cfg, map_name)
        assert (s["cql"], s["cql_alpha"], s["target_update_updates"]) == (cql, alpha, interval)


def test_training_loss_is_td_plus_alpha_times_cql(dataset):
    from ovmse.datasets import load_dataset

    batch = load_dataset(dataset).sample(6)
    spec = get_map("3m")
    torch.manual_seed(0)
    m = QMixModule(spec.obs_dim, spec.state_dim, spec.n_agents, spec.n_actions,
                   objective=settings(cql="macql", cql_alpha=0.7, cql_samples=16))
    loss = m.training_step(batch, 0)
    metrics = m.latest_train_metrics
    expected = metrics["train/td_loss"] + 0.7 * metrics["train/cql_loss"]
    assert torch.allclose(loss.detach(), expected)
    assert float(metrics["train/cql_loss"]) != 0.0
    td_only = m.objective.td(batch)["loss"]
    assert torch.allclose(metrics["train/td_loss"], td_only.detach())
    with pytest.raises(ValueError, match="cql='bogus'"):
        QMixModule(spec.obs_dim, spec.state_dim, spec.n_agents, spec.n_actions, objective=settings(cql="bogus"))


@pytest.mark.parametrize("every", [3, 5])
def test_offline_target_refreshes_exactly_every_k_updates(tmp_path, dataset, monkeypatch, compose_cfg, every):
    """The offline target is copied after updates K, 2K, ... and at no other update, whatever
    the batch size (before issue 16 the counter advanced by the batch size: every update)."""
    from ovmse.phases import offline

    refreshed, changed = [], []
    original = QMixModule.update_targets

    def recording(module):
        before = [p.clone() for p in module.objective.td.target_agent.parameters()]
        original(module)
        refreshed.append(module.updates)
        after = list(module.objective.td.target_agent.parameters())
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, after)))

    monkeypatch.setattr(QMixModule, "update_targets", recording)
    cfg = compose_cfg("phase=offline", *TINY, "steps=16", "eval.interval_updates=100",
                      f"algo.offline.target_update_updates={every}", f"dataset={dataset}",
                      f"paths.output_dir={tmp_path}", "logger.tensorboard=false")
    result = offline.run(cfg)
    assert result["updates"] == 16
    # Every K updates, and once more at the end (16 is no multiple of 3 or 5) so that the
    # frozen offline memory is the final offline Q.
    assert refreshed == [*range(every, 17, every), 16]
    assert all(changed)  # each refresh copied a network that had moved
    module = load_qmix_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    for frozen, online in ((module.objective.frozen_agent, module.agent), (module.objective.frozen_mixer, module.mixer)):
        for a, b in zip(frozen.parameters(), online.parameters()):
            assert torch.equal(a, b)


def test_target_update_interval_and_unit_are_checked():
    from ovmse.training.target_schedule import TargetSchedule

    with pytest.raises(ValueError, match="target update interval must be >= 1 update"):
        TargetSchedule(0, unit="updates")
    with pytest.raises(ValueError, match="unit must be one of"):
        TargetSchedule(5, unit="env_steps")


def test_dataset_timesteps_replaces_steps(tmp_path, dataset, train_offline):
    """``dataset_timesteps`` (CFCQL's budget) sets the number of updates from the dataset's
    episode lengths: 2.5 batches of filled rows -> 3 updates, whatever ``steps`` says."""
    meta = json.loads((dataset / "dataset.json").read_text())
    rows_per_batch = 8 * (meta["transitions"] / meta["episodes"] + 1)
    proc = train_offline(tmp_path, dataset, f"dataset_timesteps={int(2.5 * rows_per_batch)}",
                         "eval.interval_updates=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "offline_summary.json").read_text())
    assert summary["updates"] == summary["planned_updates"] == 3
    assert "= 3 updates of 8 episodes (dataset_timesteps replaces steps=12)" in proc.stdout


# ----------------------------------------------------------------------------- issue 19: diverged and unfinished runs
# A diverged run never leaves a checkpoint that loads and looks normal, and fine-tuning refuses
# the checkpoint of an offline run that did not finish.


def test_diverging_offline_run_stops_with_exit_2_and_writes_no_nonfinite_checkpoint(tmp_path, dataset, train_offline):
    proc = train_offline(tmp_path, dataset, "algo.lr=1e6")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "non-finite" in proc.stderr or "NaN or infinite" in proc.stderr
    assert "update" in proc.stderr
    assert not (tmp_path / "offline_summary.json").exists()  # no normal summary of a diverged run
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        raw = torch.load(ckpt, weights_only=True)
        assert count_nonfinite(raw["state_dict"].values()) == (0, 0), ckpt.name
    assert not list((tmp_path / "checkpoints").glob("*.partial-*"))


def test_loading_a_checkpoint_with_nonfinite_weights_is_refused(tmp_path, dataset, train_offline):
    proc = train_offline(tmp_path, dataset)
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


def test_fine_tuning_refuses_an_unfinished_offline_checkpoint(tmp_path, dataset, train_offline):
    spec = get_map("3m")
    proc = train_offline(tmp_path, dataset)
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


def test_killed_offline_run_cannot_be_fine_tuned(tmp_path, dataset, run_train, train_offline):
    """The checkpoint a killed offline run leaves (its last evaluation's) is refused by phase=online."""
    proc = train_offline(tmp_path / "off", dataset)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = torch.load(tmp_path / "off" / "checkpoints" / "best.ckpt", weights_only=True)
    torch.save(raw, tmp_path / "killed.ckpt")  # as a killed run leaves it: no finished last.ckpt beside it
    online = run_train("phase=online", "env=3m", "algo=macql", f"ckpt={tmp_path / 'killed.ckpt'}",
                       f"hydra.run.dir={tmp_path / 'on'}", "env_steps=64", timeout=300)
    assert online.returncode == 2, online.stderr[-2000:]
    assert "did not finish" in online.stderr
    # evaluate.py still evaluates it, and says what it is
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt={tmp_path / 'killed.ckpt'}", "episodes=2", "num_envs=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is from an offline run that did not finish" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["offline_run_finished"] is False


def test_an_algorithm_without_offline_settings_is_named_even_with_the_tiny_preset(compose_cfg):
    """debug=tiny gives every algorithm's offline block a batch size; QMIX still has no offline phase."""
    from ovmse.phases.settings import offline_settings

    cfg = compose_cfg("phase=offline", "env=3m", "algo=qmix", "debug=tiny")
    with pytest.raises(ValueError, match="algo='qmix' has no offline settings"):
        offline_settings(cfg, "3m")

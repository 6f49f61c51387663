"""phase=online fine-tuning from an offline checkpoint: the per-task tables of every algorithm,
a real OVMSE and MACal-QL run through train.py, exploration only online, and clear errors."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ovmse.exploration import (
    CentralisedSequentialExploration,
    DecentralisedSequentialExploration,
    EpsilonGreedy,
)
from ovmse.phases.fine_tuning import online_settings
from ovmse.training.qmix_module import load_qmix_checkpoint
from simtools import random_dataset

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]
# 640 env steps, 8-battle evaluations every 320, a 16-battle final test, the unlearning probe every 320
# (configs/debug/tiny/online.yaml).
TINY_ONLINE = ["env=3m", "debug=tiny"]


# ----------------------------------------------------------------------------- paper tables

TASKS = ["2s3z_medium", "2s3z_medium_replay", "3s5z_medium", "3s5z_medium_replay", "5m_vs_6m_medium",
         "5m_vs_6m_medium_replay", "6h_vs_8z_medium", "6h_vs_8z_medium_replay"]
# Paper Table 4 (Switch-CQL on 2s3z: not run in the paper; ours is its 3s5z setting, 0.5).
MIXING = {
    "ovmse": [0.0, 0.0, 0.1, 0.1, 0.1, 0.0, 0.1, 0.0],
    "switch_cql": [0.5, 0.5, 0.5, 0.5, 0.1, 0.3, 0.1, 0.1],
    "macalql": [0.5, 0.3, 0.5, 0.3, 0.5, 0.5, 0.5, 0.5],
    "macql": [0.3, 0.3, 0.3, 0.3, 0.5, 0.5, 0.5, 0.5],
}
# Paper Tables 6-7: (start, end, anneal steps) of OVMSE's λ_memory.
LAMBDA = [(1.0, 1.0, 0), (1.0, 1.0, 0), (1.0, 1.0, 0), (1.0, 1.0, 0), (1.0, 0.1, 200_000), (1.0, 0.05, 200_000),
          (1.0, 0.05, 100_000), (1.0, 0.05, 100_000)]
TABLE3 = {"2s3z": (2, 50, 1.0, 1_000_000), "3s5z": (2, 50, 0.5, 1_000_000), "5m_vs_6m": (8, 200, 10.0, 3_000_000),
          "6h_vs_8z": (8, 200, 10.0, 3_000_000)}


@pytest.mark.parametrize("algo", ["ovmse", "switch_cql", "macalql", "macql", "ovm_only", "se_only"])
def test_online_settings_follow_the_paper_tables(compose_cfg, algo):
    for i, task in enumerate(TASKS):
        cfg = compose_cfg("phase=online", f"experiment={task}", f"algo={algo}")
        map_name, dataset = cfg.env.map_name, cfg.dataset
        assert task == f"{map_name}_{dataset}"
        s = online_settings(cfg, map_name, dataset)
        table_algo = "ovmse" if algo in ("ovm_only", "se_only") else algo
        assert s["mixing_ratio"] == MIXING[table_algo][i], (algo, task)
        runs, interval, clip, budget = TABLE3[map_name]
        assert s["update_ratio"] == {"unit": "episodes", "every": runs}, (algo, task)  # batch_size_run
        assert (s["target_update_interval"], s["grad_norm_clip"], cfg.env_steps) == \
            (interval, clip, budget), (algo, task)
        assert (s["epsilon_start"], s["epsilon_end"], s["epsilon_anneal_steps"]) == (1.0, 0.05, 100_000)
        if table_algo == "ovmse":
            assert s["cql_alpha"] == (0.05 if map_name == "2s3z" else 0.0)  # Table 5
            assert (s["lambda_memory_start"], s["lambda_memory_end"], s["lambda_memory_anneal_steps"]) == LAMBDA[i]
        elif algo == "switch_cql":
            assert s["cql_alpha"] == 0.0
        else:
            assert s["cql_alpha"] == "offline"  # the checkpoint's own weight (Table 5)
        assert s["ovm"] == (algo in ("ovmse", "ovm_only"))
        assert s["cql_calibrated"] == (algo == "macalql")
        expected_exploration = "decentralised_sequential" if algo in ("ovmse", "se_only") else "epsilon_greedy"
        assert s["exploration"] == expected_exploration


def test_qmix_from_scratch_keeps_pymarl2_settings_but_the_tasks_first_two_rows(compose_cfg):
    s = online_settings(compose_cfg("phase=online", "experiment=3s5z_medium", "algo=qmix"), "3s5z", None)
    assert (s["target_update_interval"], s["grad_norm_clip"], s["mixing_ratio"]) == (50, 10.0, 0.0)
    assert s["update_ratio"] == {"unit": "episodes", "every": 2}  # Table 3 batch_size_run
    plain = online_settings(compose_cfg("phase=online", "env=3s5z", "algo=qmix"), "3s5z", None)
    assert plain["update_ratio"] == {"unit": "episodes", "every": 8}  # PyMARL2
    steps = online_settings(compose_cfg("phase=online", "env=3s5z", "algo=qmix", "algo.env_steps_per_update=256"), "3s5z",
                            None)
    assert steps["update_ratio"] == {"unit": "env_steps", "every": 256}
    s = online_settings(compose_cfg("phase=online", "experiment=6h_vs_8z_medium", "algo=qmix"), "6h_vs_8z", None)
    assert (s["epsilon_anneal_steps"], s["target_update_interval"]) == (500_000, 200)
    assert "ovm" not in s


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def offline_ckpt(tmp_path_factory, run_train):
    path = random_dataset(tmp_path_factory.mktemp("data") / "3m" / "medium")
    run_dir = tmp_path_factory.mktemp("offline")
    # 6 updates of 8 episodes, evaluated on 8 battles after the 6th (configs/debug/tiny/offline.yaml).
    proc = run_train("phase=offline", "env=3m", "algo=ovmse", f"dataset={path}", "debug=tiny",
                     f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ovmse_run(tmp_path_factory, offline_ckpt, run_train):
    run_dir = tmp_path_factory.mktemp("ovmse")
    proc = run_train("phase=online", "algo=ovmse", f"ckpt={offline_ckpt}", *TINY_ONLINE, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_ovmse_run_keeps_the_offline_memory_bit_identical(ovmse_run, offline_ckpt):
    offline = load_qmix_checkpoint(str(offline_ckpt))
    online = load_qmix_checkpoint(str(ovmse_run / "checkpoints" / "last.ckpt"))
    assert online.updates >= 3 and online.env_steps >= 640
    for a, b in ((offline.objective.frozen_agent, online.objective.frozen_agent), (offline.objective.frozen_mixer, online.objective.frozen_mixer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(p, q) for p, q in zip(offline.agent.parameters(), online.agent.parameters()))
    s = online.settings
    assert s.ovm is not None and s.cql.alpha == 0.0 and s.ovm.lambda_end == 1.0  # 3m: the tables' defaults
    assert online.hparams.offline_progress == {"updates": 6, "episodes": 48}


def test_ovmse_run_logs_the_online_metrics(ovmse_run):
    rows = list(csv.DictReader((ovmse_run / "metrics.csv").open()))
    train_rows = [r for r in rows if r.get("train/loss")]
    assert train_rows
    for key in ("train/lambda_memory", "train/epsilon", "train/ovm_active_fraction", "train/ovm_td_part",
                "train/ovm_memory_part", "train/td_loss", "train/offline_fraction", "collect/explored_fraction"):
        assert all(r.get(key) not in (None, "") for r in train_rows), key
    assert all(float(r["train/lambda_memory"]) == 1.0 for r in train_rows)
    assert all(0.0 <= float(r["train/ovm_active_fraction"]) <= 1.0 for r in train_rows)
    assert all(float(r["train/offline_fraction"]) == 0.0 for r in train_rows)  # 3m default mixing ratio 0
    assert float(train_rows[0]["train/epsilon"]) > float(train_rows[-1]["train/epsilon"])
    summary = json.loads((ovmse_run / "online_summary.json").read_text())
    assert summary["algo"] == "ovmse" and summary["settings"]["exploration"] == "decentralised_sequential"
    assert summary["eval/final_episodes"] == 16 and 0.0 <= summary["eval/final_win_rate"] <= 1.0
    assert [r for r in rows if r.get("eval/final_win_rate")]


def test_unlearning_probe_tracks_the_offline_policys_trajectories(ovmse_run, offline_ckpt):
    from tensordict import TensorDict

    from ovmse.training.unlearning import probe_values

    rows = [r for r in csv.DictReader((ovmse_run / "metrics.csv").open()) if r.get("eval/probe_q_tot")]
    assert len(rows) >= 2
    assert float(rows[0]["updates"]) == 0.0  # measured before the first online update
    probe = TensorDict.load_memmap(str(ovmse_run / "checkpoints" / "probe"), allow_pickle=False)
    assert probe.shape[0] == 8
    offline = probe_values(load_qmix_checkpoint(str(offline_ckpt)), probe)
    assert float(rows[0]["eval/probe_q_tot"]) == pytest.approx(offline["eval/probe_q_tot"], rel=1e-5)
    final = probe_values(load_qmix_checkpoint(str(ovmse_run / "checkpoints" / "last.ckpt")), probe)
    assert final["eval/probe_q_tot"] != pytest.approx(offline["eval/probe_q_tot"])  # the learner moved
    assert all(float(r["eval/probe_mc_return"]) == pytest.approx(offline["eval/probe_mc_return"]) for r in rows)


def test_macalql_mixes_offline_data_and_calibrates(tmp_path, offline_ckpt, run_train):
    proc = run_train("phase=online", "algo=macalql", f"ckpt={offline_ckpt}", *TINY_ONLINE, "final_eval.episodes=0",
                     f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in csv.DictReader((tmp_path / "metrics.csv").open()) if r.get("train/loss")]
    assert rows and all(float(r["train/offline_fraction"]) == 0.5 for r in rows)  # 4 of 8 episodes
    assert all(r.get("train/cql_calibrated_fraction") not in (None, "") for r in rows)
    summary = json.loads((tmp_path / "online_summary.json").read_text())
    assert summary["settings"]["cql_alpha"] == pytest.approx(1.0)  # "offline": the checkpoint's weight on 3m
    assert "eval/final_win_rate" not in summary


# ----------------------------------------------------------------------------- exploration


@pytest.fixture(scope="module")
def build(compose_cfg):
    """``build(out_dir, *overrides)``: the tiny online run (not fitted) writing to ``out_dir``, its
    collector closed."""
    from ovmse.phases.online import build_online_run

    def build(out_dir, *overrides):
        run = build_online_run(compose_cfg("phase=online", *TINY_ONLINE, f"paths.output_dir={out_dir}", *overrides))
        run.collection.collection.close()
        return run

    return build


@pytest.mark.parametrize("algo, extra, expected", [
    ("ovmse", (), DecentralisedSequentialExploration),
    ("se_only", (), DecentralisedSequentialExploration),
    ("ovm_only", (), EpsilonGreedy),
    ("switch_cql", (), EpsilonGreedy),
    ("ovmse", ("algo.exploration=sequential",), CentralisedSequentialExploration),
])
def test_exploration_of_each_algorithm_acts_online_only(tmp_path, offline_ckpt, build, algo, extra, expected):
    run = build(tmp_path, f"algo={algo}", f"ckpt={offline_ckpt}", *extra)
    assert type(run.collection.collection.exploration) is expected
    assert run.collection.collection.exploration.epsilon == 1.0
    assert run.evaluation.evaluator.policy.exploration is None  # greedy evaluation never explores


def test_offline_phase_builds_no_exploration(tmp_path, offline_ckpt, monkeypatch, compose_cfg):
    from ovmse.exploration import policies
    from ovmse.phases import offline

    def refuse(*args, **kwargs):
        raise AssertionError("the offline phase must not explore")

    monkeypatch.setattr(policies._QExploration, "__init__", refuse)
    dataset = load_qmix_checkpoint(str(offline_ckpt)).hparams.dataset["path"]
    cfg = compose_cfg("phase=offline", "env=3m", "algo=ovmse", f"dataset={dataset}", "debug=tiny", "steps=2",
                      "eval.interval_updates=2", "eval.episodes=4", "eval.num_envs=4", "logger.tensorboard=false",
                      f"paths.output_dir={tmp_path}")
    result = offline.run(cfg)
    assert result["updates"] == 2


# ----------------------------------------------------------------------------- bad input


def test_o2o_algorithm_without_checkpoint_is_refused(tmp_path, build):
    with pytest.raises(ValueError, match=r"algo=ovmse fine-tunes an offline checkpoint: pass ckpt="):
        build(tmp_path, "algo=ovmse")


def test_qmix_with_a_checkpoint_is_refused(tmp_path, offline_ckpt, build):
    with pytest.raises(ValueError, match="trains from scratch"):
        build(tmp_path, "algo=qmix", f"ckpt={offline_ckpt}")


def test_mixing_another_set_than_the_pretraining_read_is_refused(tmp_path, offline_ckpt, build):
    """Two collections of one protocol make two "medium" sets: fine-tuning must mix in the one its
    checkpoint was pretrained on (the 2s3z sweep once pooled seeds pretrained on two sets)."""
    other = random_dataset(tmp_path / "data" / "3m" / "medium", seed=11)  # same size, other battles
    with pytest.raises(ValueError, match=r"offline data to mix in .* is another set than 3m/medium recorded "
                                          r"\(transitions \d+ vs \d+.*Point data_root"):
        build(tmp_path / "run", "algo=macalql", f"ckpt={offline_ckpt}", f"dataset={other}")


def test_check_same_set_compares_the_fields_both_records_hold():
    from ovmse.phases.fine_tuning import check_same_set

    recorded = {"name": "2s3z/medium", "episodes": 5000, "transitions": 284872}  # a record from before `created`
    check_same_set(recorded, {**recorded, "created": "2026-12-04T10:20:16"}, what="x")
    with pytest.raises(ValueError, match=r"x is another set than 2s3z/medium recorded \(transitions 284872 vs 305838"):
        check_same_set(recorded, {**recorded, "transitions": 305838}, what="x")
    # The same commit collected it again (a new machine): the same set, whenever it was made.
    made = {**recorded, "transitions": 305838, "git_commit": "8a418d0", "created": "2026-12-04T10:20:16"}
    check_same_set(made, {**made, "created": "2026-12-05T06:57:01", "content_sha256": "ab" * 32}, what="x")
    with pytest.raises(ValueError, match=r"\(git_commit '8a418d0' vs 'dcd8715'; recorded vs found\)"):
        check_same_set(made, {**made, "git_commit": "dcd8715"}, what="x")
    with pytest.raises(ValueError, match=r"\(content_sha256 'abab.*' vs 'cdcd.*'; recorded vs found\)"):
        check_same_set({**made, "content_sha256": "ab" * 32}, {**made, "content_sha256": "cd" * 32}, what="x")


def test_checkpoint_of_another_map_is_refused(tmp_path, offline_ckpt, build):
    with pytest.raises(ValueError, match=r"does not fit env=8m .*map_name: checkpoint '3m', env '8m'"):
        build(tmp_path, "algo=ovmse", f"ckpt={offline_ckpt}", "env=8m")


def test_missing_checkpoint_file_is_named(tmp_path, build):
    with pytest.raises(FileNotFoundError, match="no_such.ckpt"):
        build(tmp_path, "algo=switch_cql", f"ckpt={tmp_path / 'no_such.ckpt'}")


def test_dataset_other_than_the_pretraining_one_is_refused(tmp_path, offline_ckpt, build):
    with pytest.raises(ValueError, match="pretrained on '3m/medium'"):
        build(tmp_path, "algo=macql", f"ckpt={offline_ckpt}", "dataset=expert")


def test_ovm_from_a_checkpoint_without_frozen_target_is_refused(tmp_path, offline_ckpt, build):
    best = offline_ckpt.parent / "best.ckpt"  # evaluation snapshot: no frozen offline target
    with pytest.raises(ValueError, match="frozen offline target"):
        build(tmp_path, "algo=ovmse", f"ckpt={best}")
    run = build(tmp_path, "algo=switch_cql", f"ckpt={best}")  # no OVM: fine
    assert run.module.settings.ovm is None


def test_cli_error_is_one_clear_line(tmp_path, run_train):
    proc = run_train("phase=online", "env=3m", "algo=macql", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "algo=macql fine-tunes an offline checkpoint" in proc.stderr


def test_online_td_lambda_replaces_the_pretrained_one_alone(tmp_path, offline_ckpt, build):
    """algo.online.td_lambda changes the online TD(λ) target only (grid=o2o_2s3z_no_memory: one-step
    targets over the pretraining the other algorithms share); unset, the checkpoint's λ stays."""
    pretrained = load_qmix_checkpoint(str(offline_ckpt)).settings.td
    assert pretrained.td_lambda == 0.6
    kept = build(tmp_path / "a", "algo=macql", f"ckpt={offline_ckpt}")
    assert kept.module.settings.td == pretrained and kept.module.objective.td.td_lambda == 0.6
    one_step = build(tmp_path / "b", "algo=macql", f"ckpt={offline_ckpt}", "algo.online.td_lambda=0.0")
    assert one_step.module.settings.td == replace(pretrained, td_lambda=0.0)
    assert one_step.module.objective.td.td_lambda == 0.0  # the loss computes one-step targets
    assert one_step.settings["td_lambda"] == 0.0


def test_online_td_lambda_out_of_range_is_named(compose_cfg):
    from ovmse.phases.checks import check_settings

    with pytest.raises(ValueError, match=r"algo.online.td_lambda must be a number in \[0.0, 1.0\], got 1.5"):
        check_settings(compose_cfg("phase=online", "algo=macql", "algo.online.td_lambda=1.5"))


def test_the_online_objective_keeps_gamma_and_double_q(offline_ckpt):
    module = load_qmix_checkpoint(str(offline_ckpt))
    with pytest.raises(ValueError, match="differ from the pretrained .* in more than td_lambda"):
        module.objective.reconfigure(replace(module.settings, td=replace(module.settings.td, gamma=0.9)))


# ----------------------------------------------------------------------------- optimiser at the switch


def test_online_phase_restores_the_offline_optimiser_by_default(tmp_path, offline_ckpt, build):
    from types import SimpleNamespace

    from ovmse.training.optimizer_restore import restore_optimizer

    run = build(tmp_path / "a", "algo=ovmse", f"ckpt={offline_ckpt}")
    assert Path(str(run.loop.optimizer_from)) == Path(str(offline_ckpt))
    assert run.settings["restore_optimizer"] is True
    off = build(tmp_path / "b", "algo=ovmse", f"ckpt={offline_ckpt}", "algo.online.restore_optimizer=false")
    assert off.loop.optimizer_from is None

    # What it does when fitting starts: Adam's moments and step counts are the offline run's,
    # the learning rate the online run's.
    module = load_qmix_checkpoint(str(offline_ckpt))
    module.hparams.lr = 5e-4
    optimizer = module.configure_optimizers()
    restore_optimizer(SimpleNamespace(optimizers=[optimizer]), offline_ckpt)
    saved = torch.load(offline_ckpt, weights_only=True)["optimizer_states"][0]
    state = optimizer.state_dict()
    assert state["state"] and set(state["state"]) == set(saved["state"])
    for k in saved["state"]:
        torch.testing.assert_close(state["state"][k]["exp_avg"], saved["state"][k]["exp_avg"])
        assert float(state["state"][k]["step"]) == float(saved["state"][k]["step"]) > 0
    assert all(g["lr"] == 5e-4 for g in optimizer.param_groups)


def test_optimiser_restore_names_a_checkpoint_without_optimiser_state(tmp_path, offline_ckpt):
    from types import SimpleNamespace

    from ovmse.training.optimizer_restore import restore_optimizer

    raw = torch.load(offline_ckpt, weights_only=True)
    raw.pop("optimizer_states")
    torch.save(raw, tmp_path / "no_optim.ckpt")
    module = load_qmix_checkpoint(str(offline_ckpt))
    with pytest.raises(ValueError, match="no_optim.ckpt: holds 0 optimiser state.*restore_optimizer=false"):
        restore_optimizer(SimpleNamespace(optimizers=[module.configure_optimizers()]), tmp_path / "no_optim.ckpt")


@pytest.mark.parametrize("task", TASKS)
def test_experiment_presets_evaluate_on_at_least_128_battles(compose_cfg, task):
    cfg = compose_cfg("phase=online", f"experiment={task}")
    assert cfg.eval.episodes >= 128 and cfg.final_eval.episodes == 640


def test_short_budget_evaluates_on_at_least_128_battles():
    from omegaconf import OmegaConf

    budget = OmegaConf.load(ROOT / "configs" / "budget" / "short.yaml").pipeline
    for stage in ("offline", "online"):
        episodes = [int(o.split("=", 1)[1]) for o in budget[stage].overrides if o.startswith("eval.episodes=")]
        assert episodes and min(episodes) >= 128, stage


# ----------------------------------------------------------------------------- an online QMIX policy as the start


def test_an_online_qmix_checkpoint_becomes_an_o2o_start(tmp_path, offline_ckpt, build, run_train):
    """The issue-17 diagnosis fine-tunes a policy QMIX learnt online: o2o_start_checkpoint adds
    the frozen target (= its target networks), MACQL and the dataset, and every O2O algorithm
    then trains from it."""
    from ovmse.training.o2o_start import o2o_start_checkpoint

    # A QMIX checkpoint as phase=online algo=qmix writes it: no CQL, no frozen target, no dataset.
    raw = torch.load(offline_ckpt.parent / "best.ckpt", weights_only=True)
    raw["state_dict"] = {k: v for k, v in raw["state_dict"].items() if not k.startswith("objective.cql.")}
    raw["hyper_parameters"]["objective"]["cql"] = None
    raw["hyper_parameters"]["dataset"] = None
    raw.pop("offline_run")  # an online run's checkpoint has no offline-run record
    raw["config"]["task_name"] = "online"
    for k, v in raw["state_dict"].items():  # targets that differ from the online networks
        if k.startswith("objective.td.target_"):
            raw["state_dict"][k] = v + 0.5
    qmix = tmp_path / "qmix.ckpt"
    torch.save(raw, qmix)
    with pytest.raises(ValueError, match="frozen offline target"):
        build(tmp_path / "refused", "algo=ovmse", f"ckpt={qmix}")

    dataset = Path(load_qmix_checkpoint(str(offline_ckpt)).hparams.dataset["path"])
    start = o2o_start_checkpoint(qmix, tmp_path / "start.ckpt", dataset)
    module = load_qmix_checkpoint(str(start))
    assert module.settings.keeps_offline_target and module.settings.cql.variant == "macql"
    assert module.settings.cql.alpha == pytest.approx(0.05) and module.hparams.dataset["name"] == "3m/medium"
    # The memory and the targets are the evaluated networks, not the checkpoint's older targets.
    for online, frozen, target in ((module.agent, module.objective.frozen_agent, module.objective.td.target_agent),
                                   (module.mixer, module.objective.frozen_mixer, module.objective.td.target_mixer)):
        for p, f, t in zip(online.parameters(), frozen.parameters(), target.parameters()):
            assert torch.equal(p, f) and torch.equal(p, t)
    with pytest.raises(ValueError, match="already holds a frozen offline target"):
        o2o_start_checkpoint(start, tmp_path / "again.ckpt", dataset)

    run_dir = tmp_path / "ovmse"
    proc = run_train("phase=online", "algo=macql", f"ckpt={start}", *TINY_ONLINE, "final_eval.episodes=0",
                     "checkpoint.keep_replay=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "online_summary.json").read_text())
    assert summary["settings"]["cql_alpha"] == pytest.approx(0.05) and summary["settings"]["mixing_ratio"] == 0.3
    # checkpoint.keep_replay=false: the finished run's resume buffer is gone, its checkpoints stay.
    assert summary["replay_removed_bytes"] > 0 and not (run_dir / "checkpoints" / "replay").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_fine_tuning_takes_the_map_from_the_checkpoint_when_env_is_not_given(tmp_path, offline_ckpt, run_train):
    """train.yaml's default map is 2s3z; the checkpoint is 3m's: without env= the run is on 3m."""
    overrides = [o for o in TINY_ONLINE if not o.startswith("env=")]
    proc = run_train("phase=online", "algo=ovmse", f"ckpt={offline_ckpt}", *overrides, "final_eval.episodes=0",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"env=3m: the map {offline_ckpt} was trained on" in proc.stderr
    assert json.loads((tmp_path / "run" / "online_summary.json").read_text())["map"] == "3m"


def test_the_run_records_agree_on_the_online_objective(ovmse_run):
    """hparams.yaml (what the loggers keep) holds the objective the run trained with, as its summary."""
    import yaml

    summary = json.loads((ovmse_run / "online_summary.json").read_text())
    for path in (ovmse_run / "hparams.yaml", ovmse_run / "tensorboard" / "hparams.yaml"):
        hparams = yaml.safe_load(path.read_text())
        assert hparams["objective"] == summary["settings"]["objective"], path
        assert hparams["objective"]["ovm"] is not None and hparams["objective"]["cql"]["alpha"] == 0.0


def test_fine_tuning_evaluates_the_offline_policy_at_env_step_0_without_changing_training(
        ovmse_run, offline_ckpt, tmp_path, run_train):
    """The curve's first point is the offline policy (env step 0, before any collection); the
    evaluation plays its own battles, so the run trains exactly as without it."""
    rows = list(csv.DictReader((ovmse_run / "metrics.csv").open()))
    evals = [r for r in rows if r.get("eval/win_rate") and not r.get("eval/final_win_rate")]
    assert int(float(evals[0]["env_steps"])) == 0 and int(float(evals[1]["env_steps"])) > 0
    proc = run_train("phase=online", "algo=ovmse", f"ckpt={offline_ckpt}", *TINY_ONLINE, "eval.at_start=false",
                     f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    without = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert min(int(float(r["env_steps"])) for r in without if r.get("eval/win_rate")) > 0

    def losses(table):
        return [(r["env_steps"], r["train/loss"]) for r in table if r.get("train/loss")]

    assert losses(rows) and losses(rows) == losses(without)


def test_an_offline_runs_best_evaluation_becomes_an_o2o_start_only_if_the_run_finished(tmp_path, offline_ckpt, build):
    """The stalled-start diagnosis fine-tunes a pretraining's best evaluation (best.ckpt, no frozen
    target): o2o_start takes it when the last.ckpt beside it says the run finished, and the
    online phase then accepts the start; a snapshot of a run that did not finish is refused."""
    from ovmse.training.o2o_start import o2o_start_checkpoint

    best = offline_ckpt.parent / "best.ckpt"
    raw = torch.load(best, weights_only=True)
    assert not raw["offline_run"]["finished"]  # written at an evaluation, before the run's end
    dataset = Path(load_qmix_checkpoint(str(offline_ckpt)).hparams.dataset["path"])
    start = o2o_start_checkpoint(best, tmp_path / "start.ckpt", dataset, cql_alpha=0.5)
    written = torch.load(start, weights_only=True)["offline_run"]
    assert written["finished"] and written["snapshot_of_finished_run"]
    assert written["updates"] == raw["offline_run"]["updates"]
    assert load_qmix_checkpoint(str(start)).settings.cql.alpha == pytest.approx(0.5)
    run = build(tmp_path / "run", "algo=switch_cql", f"ckpt={start}")  # accepted: its run finished
    assert run.module.settings.keeps_offline_target

    alone = tmp_path / "elsewhere" / "best.ckpt"  # no last.ckpt beside it: not known to have finished
    alone.parent.mkdir()
    torch.save(raw, alone)
    with pytest.raises(ValueError, match="did not finish"):
        o2o_start_checkpoint(alone, tmp_path / "refused.ckpt", dataset)

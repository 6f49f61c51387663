"""phase=collect end to end on a tiny budget, and the win-rate milestone logic."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ovmse.datasets import load_dataset
from ovmse.training.milestones import WinRateMilestone, WinRateMilestoneCallback

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

# QMIX on 4 battles, 8-battle evaluations every 384 env steps (8 count for a level), 24-episode datasets,
# a 48-episode buffer (configs/debug/tiny/collect.yaml).
TINY = ["env=3m", "debug=tiny"]


@pytest.fixture(scope="module")
def collect(run_train):
    """``collect(data_root, run_dir, *extra)``: a tiny phase=collect run."""
    def collect(data_root, run_dir, *extra):
        return run_train("phase=collect", *TINY, f"data_root={data_root}", f"hydra.run.dir={run_dir}", *extra)

    return collect


@pytest.fixture(scope="module")
def collected(tmp_path_factory, collect):
    root = tmp_path_factory.mktemp("data")
    run_dir = tmp_path_factory.mktemp("run")
    # Band [0, 1]: the first evaluation counts as "medium"; expert [1, 1] is out of reach
    # in 1536 steps, so it is taken at the budget.
    proc = collect(root, run_dir, "medium.win_rate=[0.0,1.0]", "expert.win_rate=[1.0,1.0]", "env_steps=1536",
                   "qualities=[medium,medium_replay,expert,mixed]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, run_dir, proc


def test_writes_valid_datasets_with_metadata(collected):
    root, run_dir, proc = collected
    for quality in ("medium", "medium_replay", "expert", "mixed"):
        ds = load_dataset(root / "3m" / quality, map_name="3m")  # full validation
        meta = ds.metadata
        assert meta["quality"] == quality and meta["map"] == "3m"
        assert meta["generator"]["task_name"] == "collect"
        assert meta["code_version"]["ovmse"]
        stats, returns = ds.stats()
        assert stats["episodes"] == meta["episodes"] == len(ds)
        assert meta["return_mean"] == pytest.approx(float(returns.mean()))
    assert len(load_dataset(root / "3m" / "medium", validate="structure")) == 24
    assert len(load_dataset(root / "3m" / "mixed", validate="structure")) == 24
    assert "3m/medium " in proc.stdout and "3m/mixed " in proc.stdout  # the Table 8 printout


def test_behaviour_records_how_the_policy_was_chosen(collected):
    root, run_dir, _ = collected
    medium = load_dataset(root / "3m" / "medium", validate="structure").metadata["behaviour"]
    expert = load_dataset(root / "3m" / "expert", validate="structure").metadata["behaviour"]
    assert medium["reason"] == "band" and 0.0 <= medium["eval/win_rate"] <= 1.0
    assert expert["reason"] == "budget" and expert["env_steps"] >= 1536
    assert medium["env_steps"] < expert["env_steps"]
    assert Path(medium["checkpoint"]).exists() and Path(expert["checkpoint"]).exists()
    summary = json.loads((run_dir / "collect_summary.json").read_text())
    assert set(summary["datasets"]) == {"medium", "medium_replay", "expert", "mixed"}
    # Medium holds on two consecutive evaluations (band [0, 1]: the 2nd); every dataset keeps
    # the whole run's evaluations, including those after its level was taken.
    history = summary["evaluations"]
    assert medium["taken_at_env_steps"] == medium["env_steps"] == history[1]["env_steps"]
    assert medium["consecutive"] == 2 and len(history) >= 3
    assert history[-1]["env_steps"] >= expert["env_steps"] > medium["env_steps"]
    for quality in ("medium", "medium_replay", "expert"):
        meta = load_dataset(root / "3m" / quality, validate="structure").metadata
        assert meta["behaviour"]["evaluations"] == history


def test_medium_replay_is_the_buffer_when_medium_was_reached(collected):
    root, _, _ = collected
    ds = load_dataset(root / "3m" / "medium_replay", validate="structure")
    behaviour = ds.metadata["behaviour"]
    assert len(ds) == min(48, behaviour["episodes_collected"])
    assert behaviour["buffer_size"] == 48


def test_refuses_to_overwrite_before_training(collected, tmp_path, collect):
    root, _, _ = collected
    before = (root / "3m" / "medium" / "dataset.json").read_text()
    proc = collect(root, tmp_path / "again", "env_steps=100000")
    assert proc.returncode != 0
    assert "already exist" in proc.stderr and "overwrite=true" in proc.stderr
    assert not (tmp_path / "again" / "metrics.csv").exists()  # refused before any training
    assert (root / "3m" / "medium" / "dataset.json").read_text() == before


def test_mixed_needs_medium_and_expert(tmp_path, collect):
    proc = collect(tmp_path / "data", tmp_path / "run", "qualities=[mixed]")
    assert proc.returncode != 0 and "list both" in proc.stderr


# --------------------------------------------------------------------- milestone logic
class _Eval:
    def __init__(self, episodes=128):
        self.evaluations, self.latest, self.episodes = 0, {}, episodes

    def report(self, rate, episodes=128):
        self.evaluations += 1
        self.latest = {"eval/win_rate": rate, "eval/episodes": float(episodes)}


def _callback(bands, consecutive=1, episodes=128):
    fired = []
    ms = [WinRateMilestone(name, lo, hi, lambda t, m, info, name=name: fired.append((name, info["reason"])))
          for name, lo, hi in bands]
    ev = _Eval(episodes)
    return WinRateMilestoneCallback(ms, evaluation=ev, consecutive=consecutive), ev, fired


def _module():
    return SimpleNamespace(env_steps=0, episodes=0, updates=0, training=True, eval=lambda: None,
                           train=lambda mode=True: None)


def test_milestones_fire_once_in_order_and_stop_training():
    cb, ev, fired = _callback([("medium", 0.2, 0.5), ("expert", 0.9, 1.0)])
    trainer, module = SimpleNamespace(should_stop=False), _module()
    for rate in (0.0, 0.1, 0.3, 0.4, 0.6):
        ev.report(rate)
        cb.on_train_batch_end(trainer, module, None, None, 0)
        cb.on_train_batch_end(trainer, module, None, None, 0)  # no new evaluation: nothing happens
    assert fired == [("medium", "band")] and not trainer.should_stop
    ev.report(0.95)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    assert fired == [("medium", "band"), ("expert", "band")] and trainer.should_stop


def test_milestone_overshoot_and_budget_reasons():
    cb, ev, fired = _callback([("medium", 0.2, 0.5), ("expert", 0.99, 1.0)])
    trainer, module = SimpleNamespace(should_stop=False), _module()
    ev.report(0.7)  # jumped over the medium band
    cb.on_train_batch_end(trainer, module, None, None, 0)
    assert fired == [("medium", "overshot")]
    cb.on_train_end(trainer, module)  # budget spent before expert
    assert fired == [("medium", "overshot"), ("expert", "budget")]


def test_level_needs_consecutive_in_band_evaluations():
    """A transient in-band evaluation (the early peak) does not make a level; two in a row do,
    and the action gets every evaluation so far."""
    histories = []
    ms = [WinRateMilestone("medium", 0.1, 0.4, lambda t, m, info: histories.append(info))]
    ev = _Eval()
    cb = WinRateMilestoneCallback(ms, evaluation=ev, consecutive=2)
    trainer, module = SimpleNamespace(should_stop=False), _module()
    for step, rate in enumerate((0.0, 0.3, 0.05, 0.35, 0.05, 0.2, 0.25)):
        module.env_steps = 1000 * (step + 1)
        ev.report(rate)
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert len(histories) == 1 and trainer.should_stop
    info = histories[0]
    assert info["reason"] == "band" and info["env_steps"] == 7000 and info["eval/win_rate"] == 0.25
    assert [h["eval/win_rate"] for h in info["history"]] == [0.0, 0.3, 0.05, 0.35, 0.05, 0.2, 0.25]
    assert [h["env_steps"] for h in cb.history] == [1000 * k for k in range(1, 8)]


def test_evaluations_swinging_across_the_top_of_the_band_reach_the_level():
    cb, ev, fired = _callback([("medium", 0.1, 0.4)], consecutive=2)
    trainer, module = SimpleNamespace(should_stop=False), _module()
    for rate in (0.05, 0.35, 0.45):  # below, in, above: not yet
        ev.report(rate)
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert fired == []
    ev.report(0.38)  # above, in: held at or above the floor, the latest inside
    cb.on_train_batch_end(trainer, module, None, None, 0)
    assert fired == [("medium", "band")]


def test_overshoot_needs_consecutive_evaluations_above_the_band():
    cb, ev, fired = _callback([("medium", 0.1, 0.4)], consecutive=2)
    trainer, module = SimpleNamespace(should_stop=False), _module()
    for rate in (0.6, 0.05, 0.7):  # above, below, above: neither holds twice
        ev.report(rate)
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert fired == []
    ev.report(0.8)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    assert fired == [("medium", "overshot")]


def test_level_refuses_small_evaluations():
    cb, ev, _ = _callback([("medium", 0.1, 0.4)], episodes=32)
    trainer = SimpleNamespace(callbacks=[])
    with pytest.raises(ValueError, match="at least 128 battles"):
        cb.on_fit_start(trainer, _module())
    cb, ev, _ = _callback([("medium", 0.1, 0.4)])
    ev.report(0.2, episodes=64)
    with pytest.raises(ValueError, match="this one played 64"):
        cb.on_train_batch_end(SimpleNamespace(should_stop=False), _module(), None, None, 0)


def test_milestone_band_validation():
    with pytest.raises(ValueError, match="low <= high"):
        WinRateMilestone("medium", 0.6, 0.2, lambda *a: None)


def test_collect_refuses_ddp(tmp_path, collect):
    proc = collect(tmp_path / "data", tmp_path / "run", "trainer=ddp")
    assert proc.returncode != 0 and "writes datasets from one process" in proc.stderr
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------- a rerun after a kill (issue 19)
def _partial_copy(collected, tmp_path, *remove):
    """The collected datasets as a killed run would have left them: ``remove`` not written."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(collected[0], root)
    for quality in remove:
        shutil.rmtree(root / "3m" / quality)
    return root


ALL = "qualities=[medium,medium_replay,expert,mixed]"


def test_rerun_keeps_written_qualities_and_trains_only_to_the_missing_level(collected, tmp_path, collect):
    root = _partial_copy(collected, tmp_path, "expert", "mixed")
    before = {q: (root / "3m" / q / "dataset.json").read_text() for q in ("medium", "medium_replay")}
    proc = collect(root, tmp_path / "rerun", ALL, "medium.win_rate=[0.0,1.0]", "expert.win_rate=[1.0,1.0]",
                   "env_steps=768")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"kept {root / '3m' / 'medium'}" in proc.stdout
    assert {q: (root / "3m" / q / "dataset.json").read_text() for q in before} == before  # untouched
    summary = json.loads((tmp_path / "rerun" / "collect_summary.json").read_text())
    assert set(summary["kept"]) == {"medium", "medium_replay"} and set(summary["levels"]) == {"expert"}
    assert not (tmp_path / "rerun" / "checkpoints" / "medium.ckpt").exists()  # no medium level this time
    expert = load_dataset(root / "3m" / "expert", map_name="3m").metadata
    assert expert["behaviour"]["evaluations"] == summary["evaluations"]
    mixed = load_dataset(root / "3m" / "mixed", map_name="3m")
    assert len(mixed) == 24 and str(root / "3m" / "medium") in mixed.metadata["behaviour"]["policy"]


def test_rerun_records_a_missing_medium_from_the_kept_replays_policy(collected, tmp_path, collect):
    root = _partial_copy(collected, tmp_path, "medium")
    proc = collect(root, tmp_path / "rerun")  # qualities: medium, medium_replay
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "rerun" / "metrics.csv").exists()  # recorded, not trained
    replay = load_dataset(root / "3m" / "medium_replay", validate="structure").metadata["behaviour"]
    medium = load_dataset(root / "3m" / "medium", map_name="3m").metadata["behaviour"]
    assert medium["checkpoint"] == replay["checkpoint"]
    assert medium["env_steps"] == replay["env_steps"] and medium["evaluations"] == replay["evaluations"]
    # The same policy, seed and battles as the first run's medium: the same episodes.
    first = load_dataset(collected[0] / "3m" / "medium", validate="structure")
    again = load_dataset(root / "3m" / "medium", validate="structure")
    assert first.stats()[0] == again.stats()[0]


def test_rerun_refuses_to_remake_medium_replay_apart_from_medium(collected, tmp_path, collect):
    root = _partial_copy(collected, tmp_path, "medium_replay")
    before = (root / "3m" / "medium" / "dataset.json").read_text()
    proc = collect(root, tmp_path / "rerun")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "medium_replay is the replay buffer of the run that made medium" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (root / "3m" / "medium" / "dataset.json").read_text() == before
    assert not (root / "3m" / "medium_replay").exists()


def test_rerun_makes_a_missing_mixed_from_the_datasets_on_disk(collected, tmp_path, collect):
    root = _partial_copy(collected, tmp_path, "mixed")
    proc = collect(root, tmp_path / "rerun", ALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "rerun" / "metrics.csv").exists()  # nothing trained
    first = load_dataset(collected[0] / "3m" / "mixed", validate="structure")
    again = load_dataset(root / "3m" / "mixed", map_name="3m")
    assert first.stats()[0] == again.stats()[0]  # same seed, same sources: the same draw

"""The phases' loops (ovmse.training.loops): the order of work around an update, what the
loop carries in checkpoints, and resume points of runs from before the loop was one callback."""

from types import SimpleNamespace

import pytest

from ovmse.training.checkpoint_compat import loop_state_of
from ovmse.training.collection_schedule import CollectionSchedule
from ovmse.training.loops import OfflineLoop, OnlineLoop
from ovmse.training.target_schedule import TargetSchedule
from ovmse.training.update_ratio import UpdateRatio


class Recorder:
    """Parts of a loop that write what they do, in order, into one shared list."""

    def __init__(self):
        self.calls: list[str] = []


class FakeCollection:
    def __init__(self, log: list[str], steps: int = 100):
        self.log, self.steps, self.replay = log, steps, []

    def collect(self, env_steps: int) -> dict:
        self.log.append("collect")
        self.replay.append(None)
        return {"env_steps": self.steps, "episodes": 1, "collect/return": 1.0}

    def close(self) -> None:
        self.log.append("close")


class FakeEvaluation:
    def __init__(self, log: list[str]):
        self.log, self.save_last, self.latest, self.ran_at = log, None, {}, -1

    def due(self, module) -> bool:
        return True

    def evaluated_now(self, module) -> bool:
        return self.ran_at == module.env_steps

    def run(self, trainer, module) -> dict:
        self.log.append("evaluate")
        self.ran_at = module.env_steps
        if self.save_last is not None:
            self.save_last(trainer, module)
        return {}

    def state_dict(self) -> dict:
        return {"ran_at": self.ran_at}

    def load_state_dict(self, state: dict) -> None:
        self.ran_at = state["ran_at"]


class FakeResume:
    def __init__(self, log: list[str], due: bool = True):
        self.log, self._due = log, due

    def due(self, module) -> bool:
        return self._due

    def save(self, trainer, module) -> None:
        self.log.append("resume point")

    def restore(self, trainer, module) -> dict:
        self.log.append("restore")
        return {}


class FakeProbe:
    def __init__(self, log: list[str]):
        self.log = log

    def due(self, module) -> bool:
        return True

    def measure(self, trainer, module) -> dict:
        self.log.append("probe")
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def fakes(log_calls: list[str]):
    logger = SimpleNamespace(log_metrics=lambda row, step: log_calls.append("log"), save=lambda: None)
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    trainer = SimpleNamespace(strategy=strategy, is_global_zero=True, loggers=[logger], should_stop=False)
    module = SimpleNamespace(env_steps=0, episodes=0, updates=0, last_target_update_episode=0, progress=lambda: 0,
                             update_targets=lambda: log_calls.append("targets"))
    return trainer, module


def test_online_loop_order_collect_targets_evaluate_resume_probe_log_stop():
    calls: list[str] = []
    trainer, module = fakes(calls)
    schedule = CollectionSchedule(FakeCollection(calls), env_steps=300, warmup_episodes=1, log_every=1,
                                  ratio=UpdateRatio("episodes", 1), threads=None)
    loop = OnlineLoop(schedule, TargetSchedule(1, unit="episodes"), FakeEvaluation(calls), resume=FakeResume(calls),
                      probe=FakeProbe(calls))
    loop.on_fit_start(trainer, module)
    assert calls == ["restore", "collect", "probe"]  # warm-up, then the offline policy is probed
    calls.clear()
    module.updates += 1
    loop.on_train_batch_end(trainer, module, None, None, 0)
    # The evaluation writes the resume point itself (no second save in the same iteration).
    assert calls == ["collect", "targets", "evaluate", "resume point", "probe", "log"]
    assert not trainer.should_stop and module.env_steps == 200
    calls.clear()
    module.updates += 1
    loop.on_train_batch_end(trainer, module, None, None, 0)
    assert trainer.should_stop and module.env_steps == 300  # the budget
    calls.clear()
    loop.on_train_end(trainer, module)  # just evaluated at this step: only the resume point
    loop.on_fit_end(trainer, module)
    assert calls == ["resume point", "close"]


def test_online_loop_without_evaluation_saves_resume_points_when_due():
    calls: list[str] = []
    trainer, module = fakes(calls)
    schedule = CollectionSchedule(FakeCollection(calls), env_steps=10**6, warmup_episodes=1, log_every=10**6,
                                  ratio=UpdateRatio("episodes", 1), threads=None)
    loop = OnlineLoop(schedule, TargetSchedule(10**6, unit="episodes"), None, resume=FakeResume(calls))
    loop.on_fit_start(trainer, module)
    calls.clear()
    module.updates += 1
    loop.on_train_batch_end(trainer, module, None, None, 0)
    assert calls == ["collect", "resume point", "log"]  # the first log row comes at once


def test_offline_loop_counts_targets_evaluates_logs_and_stops():
    calls: list[str] = []
    trainer, module = fakes(calls)
    loop = OfflineLoop(steps=2, batch_size=8, targets=TargetSchedule(2, unit="updates"),
                       evaluation=FakeEvaluation(calls), log_every=1)
    loop.on_fit_start(trainer, module)
    module.updates = 1
    loop.on_train_batch_end(trainer, module, None, None, 0)
    assert calls == ["evaluate", "log"] and module.episodes == 8 and not trainer.should_stop
    calls.clear()
    module.updates = 2
    loop.on_train_batch_end(trainer, module, None, None, 0)
    assert calls == ["targets", "evaluate", "log"] and trainer.should_stop
    with pytest.raises(ValueError, match="offline steps must be >= 1"):
        OfflineLoop(steps=0, batch_size=8, targets=TargetSchedule(1, "updates"), evaluation=FakeEvaluation([]))


def test_loop_state_round_trip_and_resume_points_of_older_runs():
    calls: list[str] = []
    schedule = CollectionSchedule(FakeCollection(calls), env_steps=10, warmup_episodes=1, threads=None)
    evaluation = FakeEvaluation(calls)
    loop = OnlineLoop(schedule, TargetSchedule(5), evaluation)
    schedule._credit, evaluation.ran_at = 3, 77
    state = loop.state_dict()
    assert loop_state_of({"OnlineLoop": state}) == state
    other = OnlineLoop(CollectionSchedule(FakeCollection(calls), env_steps=10, warmup_episodes=1, threads=None),
                       TargetSchedule(5), FakeEvaluation(calls))
    other.load_state_dict(state)
    assert other.collection.state_dict() == schedule.state_dict() and other.evaluation.ran_at == 77
    # A resume point written while collection, evaluation and probe were separate callbacks.
    legacy = {"OnlineCollectionCallback": {"next_log": 4000, "credit": 2},
              "GreedyEvaluationCallback": {"ran_at": 5}, "UnlearningProbeCallback": {"next": 10000}}
    assert loop_state_of(legacy) == {"collection": {"next_log": 4000, "credit": 2}, "evaluation": {"ran_at": 5},
                                     "probe": {"next": 10000}}
    assert loop_state_of({"NonFiniteGuard": {}}) == {}


def test_online_loop_times_each_part_around_the_updates(monkeypatch):
    """time/<part>_seconds: each part's own wall time (here a fake clock that advances by a
    known amount per part), logged cumulatively; the summary's split leaves the rest to the updates."""
    from ovmse.training import loops

    now = [0.0]
    monkeypatch.setattr(loops.time, "perf_counter", lambda: now[0])
    cost = {"collect": 2.0, "evaluate": 5.0, "resume point": 0.5, "probe": 1.0}

    class Clocked(list):  # a call log whose entries advance the clock by their part's cost
        def append(self, call):
            now[0] += cost.get(call, 0.0)
            super().append(call)

    calls: list[str] = Clocked()
    rows: list[dict] = []
    trainer, module = fakes(calls)
    trainer.loggers[0].log_metrics = lambda row, step: rows.append(dict(row))
    schedule = CollectionSchedule(FakeCollection(calls), env_steps=300, warmup_episodes=1, log_every=1,
                                  ratio=UpdateRatio("episodes", 1), threads=None)
    loop = OnlineLoop(schedule, TargetSchedule(10**6, unit="episodes"), None, resume=FakeResume(calls),
                      probe=FakeProbe(calls))
    loop.on_fit_start(trainer, module)  # restore, warm-up collect, probe
    module.updates += 1
    loop.on_train_batch_end(trainer, module, None, None, 0)  # collect, resume point, probe, log
    assert loop.times.seconds == {"collect": 4.0, "evaluate": 0.0, "checkpoint": 0.5, "probe": 2.0}
    assert rows[-1]["time/collect_seconds"] == 4.0 and rows[-1]["time/probe_seconds"] == 2.0
    assert loop.times.split(10.0) == {"collect": 4.0, "evaluate": 0.0, "checkpoint": 0.5, "probe": 2.0,
                                      "updates_and_rest": 3.5}

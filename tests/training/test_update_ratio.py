"""The update-to-data ratio holds whatever one collection call brings (UpdateRatio + the
collection schedule's credit), and travels with resume points."""

from types import SimpleNamespace

import pytest

from ovmse.training.collection_schedule import CollectionSchedule
from ovmse.training.update_ratio import UpdateRatio


class FakeCollection:
    """Each collect() brings ``steps`` env steps and the next entry of ``episodes`` completed episodes."""

    def __init__(self, steps: int, episodes: list[int]):
        self.steps, self.episodes, self.calls = steps, episodes, 0
        self.replay = [None] * 1000  # the warm-up is over at once

    def collect(self, env_steps: int) -> dict:
        n = self.episodes[self.calls % len(self.episodes)]
        self.calls += 1
        return {"env_steps": self.steps, "episodes": n}

    def close(self) -> None:
        pass


def fake_trainer():
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    return SimpleNamespace(strategy=strategy, is_global_zero=True, loggers=[], should_stop=False)


def fake_module():
    return SimpleNamespace(env_steps=0, episodes=0, updates=0, progress=lambda: 0)


def train(cb: CollectionSchedule, updates: int, module=None, trainer=None):
    """What the online loop (ovmse.training.loops.OnlineLoop) does with the schedule: warm up
    when fitting starts, then one update and the owed collection, ``updates`` times, stopping
    at the budget."""
    module, trainer = module or fake_module(), trainer or fake_trainer()
    cb.warm_up(trainer, module)
    trainer.should_stop = cb.done(module)
    calls_before = []
    for _ in range(updates):
        if trainer.should_stop:
            break
        calls_before.append(cb.collection.calls)
        module.updates += 1
        cb.collect_owed(trainer, module)
        trainer.should_stop = cb.done(module)
    return module, calls_before


@pytest.mark.parametrize("every,per_call,collects_per_update", [(2, 4, 0.5), (4, 4, 1.0), (8, 2, 4.0)])
def test_one_update_per_every_episodes_whatever_a_call_brings(every, per_call, collects_per_update):
    cb = CollectionSchedule(FakeCollection(256, [per_call]), env_steps=10**9, warmup_episodes=1,
                                  log_every=10**9, ratio=UpdateRatio("episodes", every), threads=None)
    module, _ = train(cb, 40)
    assert cb.collection.calls == pytest.approx(40 * collects_per_update, abs=1)
    # Every update but the first (paid by the warm-up) is paid by `every` collected episodes.
    assert module.episodes >= (module.updates - 1) * every
    assert module.episodes - (module.updates - 1) * every < every + per_call


def test_env_step_ratio_and_uneven_episodes():
    cb = CollectionSchedule(FakeCollection(256, [0, 7, 1]), env_steps=10**9, warmup_episodes=1,
                                  log_every=10**9, ratio=UpdateRatio("env_steps", 512), threads=None)
    module, _ = train(cb, 10)
    # The warm-up pays for the first update; after each update the next one's data is collected.
    assert cb.collection.calls == 2 * 10
    assert module.env_steps == 512 * 10


def test_budget_stops_collection_and_training():
    cb = CollectionSchedule(FakeCollection(256, [1]), env_steps=1024, warmup_episodes=1,
                                  log_every=10**9, ratio=UpdateRatio("episodes", 3), threads=None)
    trainer = fake_trainer()
    module, _ = train(cb, 100, trainer=trainer)
    assert module.env_steps == 1024 and trainer.should_stop
    assert module.updates == 2  # 4 episodes pay for one update after the first


def test_credit_travels_with_the_resume_point():
    ratio = UpdateRatio("episodes", 8)
    cb = CollectionSchedule(FakeCollection(256, [3]), env_steps=10**9, warmup_episodes=1,
                                  log_every=10**9, ratio=ratio, threads=None)
    module, _ = train(cb, 5)
    state = cb.state_dict()
    assert 0 <= state["credit"] < 8 + 3
    again = CollectionSchedule(FakeCollection(256, [3]), env_steps=10**9, warmup_episodes=1,
                                     log_every=10**9, ratio=ratio, threads=None)
    again.load_state_dict(state)
    again.warm_up(fake_trainer(), module)  # a resumed run (updates > 0) keeps its credit
    assert again._credit == state["credit"]


def test_ratio_settings_are_checked():
    assert UpdateRatio.from_settings(8, None) == UpdateRatio("episodes", 8)
    assert UpdateRatio.from_settings(8, 256) == UpdateRatio("env_steps", 256)  # env steps win when set
    with pytest.raises(ValueError, match="episodes_per_update must be an integer >= 1"):
        UpdateRatio.from_settings(0, None)
    with pytest.raises(ValueError, match="env_steps_per_update must be an integer >= 1"):
        UpdateRatio.from_settings(8, 2.5)
    with pytest.raises(ValueError, match="set algo.episodes_per_update"):
        UpdateRatio.from_settings(None, None)
    with pytest.raises(ValueError, match="unit must be one of"):
        UpdateRatio("updates", 1)

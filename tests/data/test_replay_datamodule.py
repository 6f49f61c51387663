"""ReplayDataModule: exact offline/online mix, shapes, errors, lazy dataloader sampling."""

import pytest
import torch
from tensordict import TensorDict

from data_modules import ReplayDataModule
from ovmse.collection import EpisodeReplayBuffer

T1, N_AGENTS, N_ACT, OBS, STATE = 6, 3, 5, 4, 7
OFFLINE_MARK = -7.0  # "state" value of every offline episode; online episodes use their id >= 0


def episodes(n: int, mark: float | None = None, start_id: int = 0) -> TensorDict:
    """Synthetic episodes [n, T1] in the EpisodeAssembler layout; ``state`` holds ``mark``
    (offline) or the episode id ``start_id + e`` (online)."""
    ids = torch.arange(start_id, start_id + n, dtype=torch.float32)
    val = torch.full((n,), mark) if mark is not None else ids
    return TensorDict(
        {
            "agents": {
                "observation": torch.randn(n, T1, N_AGENTS, OBS),
                "action_mask": torch.ones(n, T1, N_AGENTS, N_ACT, dtype=torch.bool),
                "action": torch.zeros(n, T1, N_AGENTS, dtype=torch.long),
            },
            "state": val[:, None, None].expand(n, T1, STATE).clone(),
            "reward": torch.zeros(n, T1, 1),
            "terminated": torch.zeros(n, T1, 1, dtype=torch.bool),
            "truncated": torch.zeros(n, T1, 1, dtype=torch.bool),
            "info": {"battle_won": torch.zeros(n, T1, 1, dtype=torch.bool)},
            "filled": torch.ones(n, T1, 1, dtype=torch.bool),
        },
        batch_size=(n, T1),
    )


def buffers(n_online: int = 40, n_offline: int = 40):
    on = EpisodeReplayBuffer(100, generator=torch.Generator().manual_seed(0))
    off = EpisodeReplayBuffer(100, generator=torch.Generator().manual_seed(1))
    if n_online:
        on.extend(episodes(n_online))
    if n_offline:
        off.extend(episodes(n_offline, mark=OFFLINE_MARK))
    return on, off


def is_offline(batch) -> torch.Tensor:
    return batch["state"][:, 0, 0] == OFFLINE_MARK


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("batch_size", [10, 32])
def test_exact_offline_fraction(frac, batch_size):
    on, off = buffers()
    dm = ReplayDataModule(on, off, batch_size=batch_size, offline_fraction=frac)
    n_off = round(frac * batch_size)
    assert dm.n_offline == n_off and dm.n_online == batch_size - n_off
    assert dm.ready()
    total_off = 0
    n_batches = 50
    for _ in range(n_batches):
        b = dm.sample()
        off_rows = is_offline(b)
        assert int(off_rows.sum()) == n_off  # exact every batch, not only on average
        # offline rows come first, then online rows
        assert off_rows[:n_off].all() and not off_rows[n_off:].any()
        # the from_offline flag agrees with the content marker, constant over time
        flag = b["from_offline"]
        assert flag.shape == (batch_size, T1, 1) and flag.dtype == torch.bool
        assert torch.equal(flag[:, :, 0], off_rows[:, None].expand(batch_size, T1))
        total_off += int(off_rows.sum())
    assert total_off / (n_batches * batch_size) == n_off / batch_size
    if frac in (0.0, 0.5, 1.0):  # exactly representable splits
        assert total_off / (n_batches * batch_size) == frac


def test_shapes_and_keys():
    on, off = buffers()
    dm = ReplayDataModule(on, off, batch_size=8, offline_fraction=0.25)
    b = dm.sample()
    assert tuple(b.batch_size) == (8, T1)
    assert b["agents", "observation"].shape == (8, T1, N_AGENTS, OBS)
    assert b["agents", "action_mask"].shape == (8, T1, N_AGENTS, N_ACT)
    assert b["agents", "action"].shape == (8, T1, N_AGENTS)
    assert b["state"].shape == (8, T1, STATE)
    for k in ("reward", "terminated", "truncated", ("info", "battle_won"), "filled", "from_offline"):
        assert b[k].shape == (8, T1, 1)
    assert "index" not in b.keys()


def test_online_only_and_offline_only_need_only_their_buffer():
    on, _ = buffers(n_offline=0)
    dm = ReplayDataModule(on, batch_size=8)  # no offline buffer at all
    b = dm.sample()
    assert not is_offline(b).any() and not b["from_offline"].any()

    empty_on, off = buffers(n_online=0)
    dm = ReplayDataModule(empty_on, off, batch_size=8, offline_fraction=1.0)
    assert dm.ready()  # the online buffer is never read in the offline phase
    b = dm.sample()
    assert is_offline(b).all() and b["from_offline"].all()


@pytest.mark.parametrize("frac", [-0.1, 1.5, float("nan")])
def test_bad_fraction(frac):
    on, off = buffers()
    with pytest.raises(ValueError, match="offline_fraction"):
        ReplayDataModule(on, off, offline_fraction=frac)


def test_fraction_needs_offline_buffer():
    on, _ = buffers()
    with pytest.raises(ValueError, match="offline buffer"):
        ReplayDataModule(on, None, offline_fraction=0.3)


@pytest.mark.parametrize("bs", [0, -3, 2.5])
def test_bad_batch_size(bs):
    on, off = buffers()
    with pytest.raises(ValueError, match="batch_size"):
        ReplayDataModule(on, off, batch_size=bs)


def test_not_ready_then_ready():
    on, off = buffers(n_online=3, n_offline=1)
    dm = ReplayDataModule(on, off, batch_size=10, offline_fraction=0.2)  # needs 8 online, 2 offline
    assert not dm.ready()
    with pytest.raises(RuntimeError, match=r"online buffer holds 3 episodes, needs >= 8") as e:
        dm.sample()
    assert "offline buffer holds 1 episodes, needs >= 2" in str(e.value)
    on.extend(episodes(5, start_id=100))
    assert not dm.ready()  # offline still short
    off.extend(episodes(1, mark=OFFLINE_MARK))
    assert dm.ready()
    assert tuple(dm.sample().batch_size) == (10, T1)


def test_generator_makes_sampling_reproducible():
    def run():
        on, off = buffers()
        dm = ReplayDataModule(on, off, batch_size=8, offline_fraction=0.0,
                              generator=torch.Generator().manual_seed(123))
        return torch.stack([dm.sample()["state"][:, 0, 0] for _ in range(3)])

    assert torch.equal(run(), run())


def test_dataloader_is_lazy_and_sees_new_episodes():
    on = EpisodeReplayBuffer(8)
    dm = ReplayDataModule(on, batch_size=8)
    dl = dm.train_dataloader()
    assert dl.num_workers == 0 and dl.batch_size is None
    it = iter(dl)  # creating the iterator draws nothing: the buffer is still empty
    on.extend(episodes(8, start_id=0))
    first = next(it)
    assert tuple(first.batch_size) == (8, T1)
    assert set(first["state"][:, 0, 0].tolist()) <= set(range(8))
    # Overwrite every stored episode (FIFO ring of 8) after the iterator exists: the next
    # batch must come only from the new episodes.
    on.extend(episodes(8, start_id=1000))
    for _ in range(5):
        assert set(next(it)["state"][:, 0, 0].tolist()) <= set(range(1000, 1008))
    # batches are fresh draws, not a cached object
    assert next(it) is not next(it)


def test_dataloader_sees_episodes_added_to_a_growing_buffer():
    on = EpisodeReplayBuffer(1000, generator=torch.Generator().manual_seed(0))
    on.extend(episodes(4, start_id=0))
    it = iter(ReplayDataModule(on, batch_size=4).train_dataloader())
    assert set(next(it)["state"][:, 0, 0].tolist()) <= set(range(4))
    on.extend(episodes(200, start_id=500))
    seen = set()
    for _ in range(10):
        seen |= set(next(it)["state"][:, 0, 0].tolist())
    assert any(v >= 500 for v in seen)


@pytest.mark.parametrize("replace", [False, True])
def test_sampling_with_and_without_replacement(replace):
    """Default (PyMARL2, CFCQL): no episode twice in a batch, even one as large as the buffer;
    replace=True draws with replacement, so a full-size batch repeats episodes."""
    on = EpisodeReplayBuffer(100, generator=torch.Generator().manual_seed(0))
    on.extend(episodes(16))
    dm = ReplayDataModule(on, batch_size=16, replace=replace)
    repeats = 0
    for _ in range(20):
        ids = dm.sample()["state"][:, 0, 0]
        repeats += int(ids.unique().numel() < 16)
        if not replace:
            assert sorted(ids.tolist()) == list(range(16))
    assert (repeats == 20) if replace else (repeats == 0)
    assert ReplayDataModule(on, batch_size=4).replace is False


def test_sample_indices_are_distinct():
    from ovmse.collection.replay import sample_indices
    idx = sample_indices(10, 10, torch.Generator().manual_seed(3))
    assert sorted(idx.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="cannot draw 11 distinct episodes from 10"):
        sample_indices(10, 11)

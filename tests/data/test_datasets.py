"""Offline datasets: write/load round trip, recording quotas, writer safety, validation
messages for every corruption, and the ReplayDataModule fed by an OfflineDataset.

One small 3m dataset (random policy, 10 episodes from 4 parallel battles) is recorded once
per module; tests that damage it work on a ``shutil.copytree`` copy.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from tensordict import MemoryMappedTensor, TensorDict

import ovmse.datasets.loading as loading_mod
import ovmse.datasets.recording as recording_mod
from data_modules import ReplayDataModule
from ovmse.collection import EpisodeAssembler, EpisodeReplayBuffer
from ovmse.datasets import DatasetError, EpisodeDatasetWriter, OfflineDataset, field_specs, load_dataset
from ovmse.datasets.format import key_name
from ovmse.datasets.recording import record_episodes
from ovmse.datasets.validation import check_fields
from ovmse.envs import get_map

MAP = "3m"
SPEC = get_map(MAP)
T1 = SPEC.episode_limit + 1
N_EPISODES, NUM_ENVS, SEED = 10, 4, 3
KEYS = list(field_specs(SPEC).keys())


# --------------------------------------------------------------------------- fixtures
class _LoggingAssembler(EpisodeAssembler):
    """EpisodeAssembler that keeps, for every ``add``, the env index and a copy of each
    episode it emitted (through its public ``last_env_indices``)."""

    log: list[tuple[int, TensorDict]] = []

    def add(self, batch):
        out = super().add(batch)
        if out is not None:
            for i, b in enumerate(self.last_env_indices):
                type(self).log.append((b, exact_copy(out[i])))
        return out


def record(path: Path, n: int, num_envs: int, seed: int) -> torch.Tensor:
    """Record ``n`` random-policy episodes to ``path``; returns what was appended ``[n, T+1]``."""
    appended: list[TensorDict] = []
    with EpisodeDatasetWriter(path, SPEC, n, quality="medium") as writer:
        orig = writer.append

        def append(episodes):
            if episodes is not None and episodes.shape[0]:
                appended.append(exact_copy(episodes.select(*KEYS)))
            return orig(episodes)

        writer.append = append
        record_episodes(writer, None, num_envs=num_envs, seed=seed)
        assert writer.count == n
        writer.close(behaviour={"policy": "random"})
    return torch.cat(appended, 0)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Record the module's dataset, capturing what the assembler produced and what was
    appended to the writer. Returns (path, appended [E, T+1], assembler log)."""
    path = tmp_path_factory.mktemp("data") / MAP / "medium"
    _LoggingAssembler.log = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recording_mod, "EpisodeAssembler", _LoggingAssembler)
        appended = record(path, N_EPISODES, NUM_ENVS, SEED)
    return path, appended, list(_LoggingAssembler.log)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """40 episodes, enough that every batch of 32 can come from the dataset (the DataModule
    wants the offline source to hold at least ``n_offline`` episodes)."""
    path = tmp_path_factory.mktemp("big") / MAP / "medium"
    return path, record(path, 40, 40, SEED + 1)


@pytest.fixture(scope="module")
def dataset_path(recorded):
    return recorded[0]


@pytest.fixture(scope="module")
def written(recorded):
    return recorded[1]


@pytest.fixture
def copy(dataset_path, tmp_path):
    """A fresh copy of the module's dataset, free to damage."""
    dst = tmp_path / "copy" / MAP / "medium"
    shutil.copytree(dataset_path, dst)
    return dst


def exact_copy(td):
    """Bit-exact copy. (``TensorDict.clone`` of a TD with a device copies float leaves with
    ``torch._foreach_add(x, 0)``, which turns -0.0 into +0.0; the simulator emits -0.0.)"""
    return td.apply(lambda x: x.clone())


def lengths_of(episodes) -> torch.Tensor:
    """Transitions per episode, from the end flag (independent of ``filled``)."""
    end = (episodes["terminated"] | episodes["truncated"]).squeeze(-1)  # [E, T+1]
    assert bool((end.sum(-1) == 1).all())
    return end.float().argmax(-1) + 1


def assert_td_equal(a, b, keys=KEYS):
    assert tuple(a.batch_size) == tuple(b.batch_size)
    for k in keys:
        x, y = a.get(k), b.get(k)
        assert x.dtype == y.dtype and x.shape == y.shape, k
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dtype == torch.float32:  # bit patterns: also tells -0.0 from 0.0 and keeps NaN == NaN
            x, y = x.view(torch.int32), y.view(torch.int32)
        assert torch.equal(x, y), f"field {key_name(k)} differs"


def fingerprint(episodes) -> torch.Tensor:
    """Exact per-episode key ``[E]`` (int64) from the bit patterns of ``state``: equal states
    give equal keys whatever the batch (integer arithmetic, no rounding)."""
    bits = torch.as_tensor(episodes["state"]).reshape(episodes.shape[0], -1).view(torch.int32).long()
    weights = torch.arange(1, bits.shape[1] + 1, dtype=torch.long) * 1_000_003 + 7
    return (bits * weights).sum(-1) + bits.sum(-1) * 31


def match_rows(rows, stored) -> torch.Tensor:
    """Index into ``stored`` of each row (matched on ``state``); asserts every row matches one."""
    keys = fingerprint(stored)
    assert len(set(keys.tolist())) == len(keys), "stored episodes are not distinguishable by state"
    eq = fingerprint(rows)[:, None] == keys[None, :]  # [B, E]
    assert bool((eq.sum(-1) == 1).all()), "a row is not a stored episode"
    return eq.float().argmax(-1)


# --------------------------------------------------------------------------- round trip
def test_round_trip_every_field_exact(dataset_path, written):
    assert tuple(written.batch_size) == (N_EPISODES, T1)
    for in_memory in (True, False):
        ds = load_dataset(dataset_path, map_name=MAP, in_memory=in_memory)
        assert isinstance(ds, OfflineDataset) and len(ds) == N_EPISODES
        stored = set(ds.episodes.keys(include_nested=True, leaves_only=True))
        assert stored == set(KEYS)
        for k, (dtype, shape) in field_specs(SPEC).items():
            assert ds.episodes.get(k).dtype == dtype
            assert tuple(ds.episodes.get(k).shape) == (N_EPISODES, T1, *shape)
        assert_td_equal(ds.episodes, written)


def test_recorded_episodes_are_complete(written):
    lengths = lengths_of(written)
    filled = written["filled"].squeeze(-1)
    t = torch.arange(T1)
    assert torch.equal(filled, t[None] <= lengths[:, None])
    pad = t[None] > lengths[:, None]
    assert not written["reward"].squeeze(-1)[pad].any()
    assert not written["agents", "action_mask"][pad].any()


def test_metadata_matches_independent_computation(dataset_path, written):
    meta = json.loads((dataset_path / "dataset.json").read_text())
    lengths = lengths_of(written)
    t = torch.arange(T1)
    trans = t[None] < lengths[:, None]
    returns = (written["reward"].squeeze(-1).double() * trans).sum(-1)
    won = (written["info", "battle_won"].squeeze(-1) & trans).any(-1)
    assert meta["map"] == MAP and meta["quality"] == "medium" and meta["name"] == f"{MAP}/medium"
    assert (meta["n_agents"], meta["obs_dim"], meta["state_dim"], meta["n_actions"], meta["episode_limit"]) == (
        SPEC.n_agents, SPEC.obs_dim, SPEC.state_dim, SPEC.n_actions, SPEC.episode_limit)
    assert meta["episodes"] == N_EPISODES
    assert meta["transitions"] == int(lengths.sum())
    assert meta["return_min"] == pytest.approx(float(returns.min()), rel=1e-12, abs=1e-12)
    assert meta["return_max"] == pytest.approx(float(returns.max()), rel=1e-12, abs=1e-12)
    assert meta["return_mean"] == pytest.approx(float(returns.mean()), rel=1e-12, abs=1e-12)
    assert meta["win_rate"] == pytest.approx(float(won.double().mean()))
    assert meta["episode_length_mean"] == pytest.approx(float(lengths.double().mean()))
    assert meta["behaviour"] == {"policy": "random"}
    assert meta["fields"]["agents.observation"] == {"dtype": "float32", "shape": [T1, SPEC.n_agents, SPEC.obs_dim]}
    # the dataset's own summary agrees
    ds = load_dataset(dataset_path)
    summary, per_episode = ds.stats()
    assert torch.allclose(per_episode, returns, rtol=0, atol=1e-9)
    assert summary["transitions"] == meta["transitions"] == ds.n_transitions


def test_content_digest_names_the_episodes_not_the_run(dataset_path, written, tmp_path):
    """dataset.json records the episodes' SHA-256: the same episodes written again (another run,
    another time) give the same digest, one changed value another. It is what tells a set
    collected again at its commit from another set (ovmse.phases.fine_tuning.SET_FIELDS)."""
    from ovmse.datasets.format import content_digest, field_file

    meta = json.loads((dataset_path / "dataset.json").read_text())
    expected = hashlib.sha256()  # by hand: each field's name, NUL, then its file's bytes, in layout order
    for key in field_specs(SPEC):
        expected.update(key_name(key).encode() + b"\0" + field_file(dataset_path, key).read_bytes())
    assert meta["content_sha256"] == content_digest(dataset_path, SPEC) == expected.hexdigest()
    again = tmp_path / MAP / "medium"
    with EpisodeDatasetWriter(again, SPEC, N_EPISODES, quality="medium") as w:
        w.append(written)
        w.close(behaviour={"policy": "random, written again"})
    meta_again = json.loads((again / "dataset.json").read_text())
    assert meta_again["content_sha256"] == meta["content_sha256"]
    assert load_dataset(again).identity()["content_sha256"] == meta["content_sha256"]
    td = TensorDict.load_memmap(again / "episodes")
    td["reward"][0, 0, 0] += 1.0  # writes through to the file
    del td
    assert content_digest(again, SPEC) != meta["content_sha256"]


def test_sample_rows_are_stored_episodes(dataset_path, written):
    ds = load_dataset(dataset_path, map_name=MAP)
    ds.set_generator(torch.Generator().manual_seed(0))
    for k in (1, 7, 25):
        batch = ds.sample(k)
        assert tuple(batch.batch_size) == (k, T1)
        idx = match_rows(batch, written)
        assert_td_equal(batch, written[idx])


def test_in_memory_and_memmap_sample_identically(dataset_path):
    a = load_dataset(dataset_path, in_memory=True)
    b = load_dataset(dataset_path, in_memory=False)
    assert not isinstance(a.episodes["state"], MemoryMappedTensor)
    assert isinstance(b.episodes["state"], MemoryMappedTensor)
    a.set_generator(torch.Generator().manual_seed(11))
    b.set_generator(torch.Generator().manual_seed(11))
    for _ in range(5):
        assert_td_equal(a.sample(16), b.sample(16))


@pytest.mark.parametrize("in_memory", [True, False])
def test_dataset_gathers_only_the_rows_asked(dataset_path, in_memory):
    ds = load_dataset(dataset_path, in_memory=in_memory)
    idx = torch.tensor([3, 0, 3, len(ds) - 1])
    whole = ds.get(idx)
    assert ds.max_rows == whole.shape[1]
    assert_td_equal(ds.get(idx, rows=5), whole[:, :5])
    filled = whole["filled"].reshape(len(idx), whole.shape[1], -1).any(-1)
    last = max(int(torch.nonzero(f).max()) + 1 if f.any() else 0 for f in filled)
    assert ds.max_rows_filled(idx) == last


def test_wrong_map_name_raises(dataset_path):
    with pytest.raises(DatasetError, match=r"map: expected '8m', found '3m'") as e:
        load_dataset(dataset_path, map_name="8m")
    assert str(dataset_path) in str(e.value)


def test_recording_takes_equal_quotas_per_env(recorded):
    """n=10 over 4 envs: envs 0..3 contribute their first 3, 3, 2, 2 episodes from reset,
    in the order they finished (not the first 10 battles to finish)."""
    _, written, log = recorded
    taken = torch.zeros(NUM_ENVS, dtype=torch.long)
    expected = []
    quota = [3, 3, 2, 2]
    for b, ep in log:
        if taken[b] < quota[b]:
            expected.append(ep)
        taken[b] += 1
    assert (taken >= torch.tensor(quota)).all()
    expected = torch.stack(expected, 0)
    assert_td_equal(written, expected)
    per_env = [0] * NUM_ENVS
    for b, ep in log:
        if any(torch.equal(ep["state"], w) for w in written["state"]):
            per_env[b] += 1
    assert per_env == quota
    assert written.shape[0] == N_EPISODES


# --------------------------------------------------------------------------- writer safety
def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name)


def test_writer_refuses_existing_dataset(copy):
    before = tree_digest(copy)
    with pytest.raises(FileExistsError, match="already exists"):
        EpisodeDatasetWriter(copy, SPEC, 3, quality="medium")
    assert tree_digest(copy) == before
    assert leftovers(copy.parent) == []
    load_dataset(copy, map_name=MAP)


def test_exception_inside_with_leaves_nothing(tmp_path, written):
    path = tmp_path / MAP / "medium"
    with pytest.raises(RuntimeError, match="boom"):
        with EpisodeDatasetWriter(path, SPEC, 5, quality="medium") as w:
            w.append(written[:2])
            assert any(".partial-" in p.name for p in path.parent.iterdir())
            raise RuntimeError("boom")
    assert not path.exists()
    assert leftovers(path.parent) == []


def test_close_with_too_few_episodes_raises(tmp_path, written):
    path = tmp_path / "ds"
    with pytest.raises(ValueError, match=r"3 episodes written, but the dataset was created for 5"):
        with EpisodeDatasetWriter(path, SPEC, 5, quality="medium") as w:
            w.append(written[:3])
            w.close()
    assert not path.exists() and leftovers(tmp_path) == []


def test_appending_more_than_declared_raises(tmp_path, written):
    path = tmp_path / "ds"
    with EpisodeDatasetWriter(path, SPEC, 4, quality="medium") as w:
        w.append(written[:3])
        with pytest.raises(ValueError, match=r"appending 2 episodes to 3 exceeds the 4"):
            w.append(written[3:5])
        assert w.count == 3
        w.append(written[3:4])
        w.close()
    ds = load_dataset(path, map_name=MAP)
    assert_td_equal(ds.episodes, written[:4])


def test_overwrite_replaces(copy, written):
    with EpisodeDatasetWriter(copy, SPEC, 2, quality="expert", overwrite=True) as w:
        w.append(written[5:7])
        w.close(source="test")
    ds = load_dataset(copy, map_name=MAP)
    assert len(ds) == 2 and ds.metadata["quality"] == "expert" and ds.metadata["source"] == "test"
    assert_td_equal(ds.episodes, written[5:7])
    assert leftovers(copy.parent) == []


def test_dataset_appearing_while_writing_is_kept_apart(tmp_path, written):
    """Someone else creates ``path`` during the write: close() refuses to replace it and keeps
    the finished dataset at the partial path its message names."""
    path = tmp_path / "ds"
    with pytest.raises(FileExistsError, match="appeared while writing") as e:
        with EpisodeDatasetWriter(path, SPEC, 2, quality="medium") as w:
            w.append(written[:2])
            path.mkdir()
            (path / "theirs").write_text("x")
            w.close()
    assert sorted(p.name for p in path.iterdir()) == ["theirs"]
    kept = Path(str(e.value).rsplit("kept the new one at ", 1)[1])
    assert kept.is_dir() and ".finished-" in kept.name  # not a partial: no later writer removes it
    assert_td_equal(load_dataset(kept, map_name=MAP).episodes, written[:2])


def test_partial_datasets_of_killed_processes_are_removed(tmp_path, written):
    """Issue 19: a killed phase=collect leaves <name>.partial-<pid>/ (preallocated, GBs at paper
    size); the next writer of that dataset removes it, and leaves a live process's alone."""
    import socket
    import subprocess
    import sys

    path = tmp_path / "ds"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"ds.partial-{dead.pid}"  # from before the owner file: the pid in the name
    stale.mkdir()
    (stale / "big.memmap").write_bytes(b"0" * 1024)
    stale_owned = tmp_path / "ds.partial-77"
    stale_owned.mkdir()
    (stale_owned / ".owner").write_text(f"{socket.gethostname()} {dead.pid}")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"ds.partial-{alive.pid}"
        live.mkdir()
        (live / ".owner").write_text(f"{socket.gethostname()} {alive.pid}")
        with EpisodeDatasetWriter(path, SPEC, 2, quality="medium") as w:
            w.append(written[:2])
            w.close()
        assert not stale.exists() and not stale_owned.exists() and live.is_dir()
        assert not (path / ".owner").exists()
        # overwrite=true killed after moving the old dataset aside: removed by the next writer
        replaced = tmp_path / f"ds.replaced-{dead.pid}"
        replaced.mkdir()
        live_replaced = tmp_path / f"ds.replaced-{alive.pid}"
        live_replaced.mkdir()
        with EpisodeDatasetWriter(path, SPEC, 2, quality="medium", overwrite=True) as w:
            w.append(written[:2])
            w.close()
        assert not replaced.exists() and live_replaced.is_dir()
        assert_td_equal(load_dataset(path, map_name=MAP).episodes, written[:2])
    finally:
        alive.kill()
        alive.wait()


# --------------------------------------------------------------------------- validation
def edit_meta(path: Path, **changes):
    meta = json.loads((path / "dataset.json").read_text())
    meta.update(changes)
    (path / "dataset.json").write_text(json.dumps(meta))


def edit_contents(path: Path, fn):
    """Apply ``fn(td, lengths)`` to the file-backed memmap tensors in place."""
    td = TensorDict.load_memmap(path / "episodes")
    lengths = td["filled"].squeeze(-1).sum(-1) - 1
    fn(td, lengths)
    del td


def _first_short(lengths) -> int:
    """An episode with at least 3 transitions and room for padding."""
    ok = ((lengths >= 3) & (lengths <= T1 - 3)).nonzero().flatten()
    assert len(ok)
    return int(ok[0])


def _gap(td, L):
    e = _first_short(L)
    td["filled"][e, 2] = False


def _pad_reward(td, L):
    e = _first_short(L)
    td["reward"][e, int(L[e]) + 1] = 0.5


def _unavailable(td, L):
    e = _first_short(L)
    a = int(td["agents", "action"][e, 1, 0])
    td["agents", "action_mask"][e, 1, 0, a] = False


def _out_of_range(td, L):
    e = _first_short(L)
    td["agents", "action"][e, 1, 0] = SPEC.n_actions


def _nan_reward(td, L):
    e = _first_short(L)
    td["reward"][e, 1] = float("nan")


def _early_terminated(td, L):
    e = _first_short(L)
    td["terminated"][e, 0] = True


def _truncate_file(path):
    f = path / "episodes" / "state.memmap"
    data = f.read_bytes()
    f.write_bytes(data[:-100])


def _drop_file(path):
    (path / "episodes" / "agents" / "action_mask.memmap").unlink()


def _wrong_dtype_on_disk(path):
    # tensordict keeps each leaf's dtype in its meta.json; int32 has float32's size, so the
    # byte-size check passes and the dtype check must catch it
    f = path / "episodes" / "meta.json"
    meta = json.loads(f.read_text())
    assert meta["reward"]["dtype"] == "torch.float32"
    meta["reward"]["dtype"] = "torch.int32"
    f.write_text(json.dumps(meta))


def _bad_json(path):
    (path / "dataset.json").write_text('{"format": "ovmse-episodes", ')


CORRUPTIONS = {
    "missing_metadata": (lambda p: (p / "dataset.json").unlink(),
                         r"metadata file dataset\.json is missing", "dataset.json", {}),
    "invalid_json": (_bad_json, r"metadata file dataset\.json is not valid JSON", "dataset.json", {}),
    "format_version": (lambda p: edit_meta(p, format_version=2),
                       r"metadata format: expected 'ovmse-episodes' version 1, found 'ovmse-episodes' version 2",
                       "format", {}),
    "metadata_map": (lambda p: edit_meta(p, map="8m"), r"map: expected '3m', found '8m'", "map",
                     {"map_name": "3m"}),
    "obs_dim": (lambda p: edit_meta(p, obs_dim=SPEC.obs_dim + 1),
                rf"metadata obs_dim: expected {SPEC.obs_dim} for map 3m, found {SPEC.obs_dim + 1}", "obs_dim", {}),
    "truncated_file": (_truncate_file, r"file episodes/state\.memmap is \d+ bytes, expected \d+ .*truncated",
                       "state", {}),
    "missing_file": (_drop_file, r"file episodes/agents/action_mask\.memmap is missing", "agents.action_mask", {}),
    "wrong_dtype": (_wrong_dtype_on_disk, r"expected dtype torch\.float32, found torch\.int32", "reward", {}),
    "filled_gap": (lambda p: edit_contents(p, _gap), r"expected True for steps 0\.\.len .* gap .* step 2",
                   "filled", {}),
    "padding_reward": (lambda p: edit_contents(p, _pad_reward), r"expected 0 from the final-observation row on .*found 0\.5", "reward", {}),
    "unavailable_action": (lambda p: edit_contents(p, _unavailable),
                           r"step 1, agent 0 took action \d+, which agents\.action_mask marks unavailable",
                           "agents.action", {}),
    "action_range": (lambda p: edit_contents(p, _out_of_range),
                     rf"expected values in \[0, {SPEC.n_actions}\), found .*{SPEC.n_actions}", "agents.action", {}),
    "nan_reward": (lambda p: edit_contents(p, _nan_reward), r"expected finite values, found nan .* step 1",
                   "reward", {}),
    "early_terminated": (lambda p: edit_contents(p, _early_terminated),
                         r"expected exactly one episode end, at the last transition, found a mismatch .* step 0",
                         "terminated", {}),
    "count_transitions": (lambda p: edit_meta(p, transitions=json.loads((p / "dataset.json").read_text())
                                              ["transitions"] + 1),
                          r"metadata transitions: file says \d+, the stored episodes have \d+", "transitions", {}),
    "count_episodes": (lambda p: edit_meta(p, episodes=N_EPISODES + 1),
                       rf"metadata episodes: file says {N_EPISODES + 1}, the stored episodes have {N_EPISODES}",
                       "episodes", {}),
    "count_episodes_fewer": (lambda p: edit_meta(p, episodes=N_EPISODES - 1),
                             rf"metadata episodes: file says {N_EPISODES - 1}, the stored episodes have "
                             rf"{N_EPISODES}", "episodes", {}),
    "storage_meta": (lambda p: (p / "episodes" / "meta.json").write_text("garbage"),
                     r"cannot read the episode storage episodes/", "episodes/", {}),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_has_its_own_message(copy, case):
    corrupt, pattern, field, kwargs = CORRUPTIONS[case]
    corrupt(copy)
    with pytest.raises(DatasetError, match=pattern) as e:
        load_dataset(copy, **kwargs)
    msg = str(e.value)
    assert msg.startswith(f"dataset {copy}:"), msg
    assert field in msg, msg
    # no other case's message fits this one
    for other, (_, other_pattern, _, _) in CORRUPTIONS.items():
        if other != case:
            assert not re.search(other_pattern, msg), (case, other, msg)


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory") as e:
        load_dataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_check_fields_rejects_wrong_dtype_and_shape(dataset_path):
    td = load_dataset(dataset_path, in_memory=True).episodes
    p = Path("/some/dataset")
    check_fields(p, td, SPEC)
    bad = td.clone()
    bad.set("reward", bad["reward"].double())
    with pytest.raises(DatasetError, match=r"^dataset /some/dataset: field reward: expected dtype torch\.float32, "
                                           r"found torch\.float64"):
        check_fields(p, bad, SPEC)
    bad = td.clone()
    bad.set(("agents", "action"), bad["agents", "action"].int())
    with pytest.raises(DatasetError, match=r"field agents\.action: expected dtype torch\.int64, found torch\.int32"):
        check_fields(p, bad, SPEC)
    bad = td.exclude(("info", "battle_won"))
    with pytest.raises(DatasetError, match=r"field info\.battle_won is missing"):
        check_fields(p, bad, SPEC)
    with pytest.raises(DatasetError, match=r"field agents\.observation: expected shape"):
        check_fields(p, td, get_map("8m"))


def test_structure_validation_does_not_read_contents(copy, monkeypatch):
    edit_contents(copy, _nan_reward)
    with pytest.raises(DatasetError, match="expected finite values"):
        load_dataset(copy, validate="full")

    def forbidden(*a, **k):
        raise AssertionError("structure validation read the contents")

    with monkeypatch.context() as m:
        m.setattr(loading_mod, "check_contents", forbidden)
        ds = load_dataset(copy, validate="structure", in_memory=False)
    assert torch.isnan(ds.episodes["reward"]).any()
    with pytest.raises(ValueError, match="validate must be"):
        load_dataset(copy, validate="partial")


# --------------------------------------------------------------------------- DataModule
ONLINE_MARK = -1000.0  # online episodes: state[..., 0] = ONLINE_MARK - id (no real state is that low)


def online_buffer(written, n: int = 40, seed: int = 0) -> EpisodeReplayBuffer:
    idx = torch.arange(n) % written.shape[0]
    eps = written[idx].clone()
    state = eps["state"]
    state[..., 0] = ONLINE_MARK - torch.arange(n, dtype=torch.float32)[:, None]
    buf = EpisodeReplayBuffer(100, generator=torch.Generator().manual_seed(seed))
    buf.extend(eps)
    return buf


def check_batch(batch, n_off: int, written, all_fields: bool = True):
    B, rows = batch.shape
    written = written[:, :rows]  # batches are cut to their longest episode (trim_to_filled)
    flag = batch["from_offline"]
    assert flag.shape == (B, rows, 1) and flag.dtype == torch.bool and batch["filled"][:, -1].any()
    assert torch.equal(flag, flag[:, :1].expand_as(flag))  # constant along time
    off = flag[:, 0, 0]
    assert int(off.sum()) == n_off
    online_rows = batch["state"][:, 0, 0] <= ONLINE_MARK
    assert torch.equal(online_rows, ~off)
    if n_off:
        rows = batch[:n_off]  # offline rows come first
        assert bool(off[:n_off].all())
        idx = match_rows(rows, written)
        if all_fields:
            assert_td_equal(rows, written[idx])
    return int(off.sum())


def test_offline_only_batches_come_from_the_dataset(big):
    dataset_path, written = big
    ds = load_dataset(dataset_path, map_name=MAP)
    dm = ReplayDataModule(EpisodeReplayBuffer(10), ds, batch_size=16, offline_fraction=1.0,
                          generator=torch.Generator().manual_seed(0))
    assert dm.ready()
    seen = set()
    for _ in range(20):
        b = dm.sample()
        # Cut to its longest episode (trim_to_filled): the last row is some episode's final row.
        assert b.shape[0] == 16 and b.shape[1] <= T1 and b["filled"][:, -1].any() and b["from_offline"].all()
        stored = written[:, : b.shape[1]]
        seen |= set(match_rows(b, stored).tolist())
        assert_td_equal(b, stored[match_rows(b, stored)])
        assert not written[match_rows(b, stored)]["filled"][:, b.shape[1]:].any()  # only padding was cut
    assert len(seen) == len(written)  # uniform draws reach every episode


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_mixed_batches_exact_fraction(big, frac):
    dataset_path, written = big
    B, n_batches = 32, 200
    ds = load_dataset(dataset_path, map_name=MAP)
    dm = ReplayDataModule(online_buffer(written), ds, batch_size=B, offline_fraction=frac,
                          generator=torch.Generator().manual_seed(1))
    n_off = round(frac * B)
    # every row of every batch is classified and matched; all fields compared on 20 batches
    total = sum(check_batch(dm.sample(), n_off, written, all_fields=i < 20) for i in range(n_batches))
    assert total / (n_batches * B) == n_off / B


def test_dataloader_over_offline_dataset(big):
    dataset_path, written = big
    dm = ReplayDataModule(online_buffer(written), load_dataset(dataset_path, in_memory=False),
                          batch_size=8, offline_fraction=0.5)
    it = iter(dm.train_dataloader())
    for _ in range(3):
        check_batch(next(it), 4, written)


def test_seeded_generator_reproduces_batches(big):
    dataset_path, written = big
    def run(seed, in_memory):
        dm = ReplayDataModule(online_buffer(written, seed=99), load_dataset(dataset_path, in_memory=in_memory),
                              batch_size=32, offline_fraction=0.25, generator=torch.Generator().manual_seed(seed))
        return [dm.sample() for _ in range(4)]

    a, b, c = run(5, True), run(5, False), run(6, True)
    for x, y in zip(a, b):
        assert_td_equal(x, y, KEYS + ["from_offline"])
    assert any(not torch.equal(x["state"], z["state"]) for x, z in zip(a, c))


def test_reward_on_the_final_observation_row_is_rejected(copy):
    """Row ``len`` holds the last observation only: a reward there belongs to no transition."""
    path = copy

    def put(td, L):
        e = _first_short(L)
        td["reward"][e, int(L[e])] = 0.25

    edit_contents(path, put)
    with pytest.raises(DatasetError, match=r"field reward: expected 0 from the final-observation row on .*0\.25 at episode \d+, step \d+"):
        load_dataset(path)


def test_absurd_finite_reward_is_rejected(copy):
    """Issue 19 A: a finite reward of 3e38 passed validation and trained to NaN; it is refused."""
    path = copy

    def put(td, L):
        td["reward"][0, 0] = 3e38

    edit_contents(path, put)
    with pytest.raises(DatasetError, match=r"field reward: expected values within ±1e\+06 .*found 3e\+38 at episode 0, "
                                           r"step 0.*rescale the rewards"):
        load_dataset(path)

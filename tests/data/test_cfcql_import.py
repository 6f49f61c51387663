"""Importing CFCQL-format HDF5 datasets (ovmse.datasets.cfcql, .cfcql_convert, .smac_state).

The HDF5 files are written here, in CFCQL's layout (PyMARL ``EpisodeBatch`` arrays), from
real simulator episodes, so the derived ``truncated`` / ``battle_won`` can be checked
against the simulator's own flags.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensordict import TensorDict

h5py = pytest.importorskip("h5py")

from ovmse.datasets import DatasetError, load_dataset  # noqa: E402
from ovmse.datasets.cfcql import import_cfcql, parse_cfcql_name  # noqa: E402
from ovmse.datasets.smac_state import battle_outcome, state_layout  # noqa: E402
from ovmse.envs import get_map, make_env  # noqa: E402
from ovmse.envs.features import compute_features  # noqa: E402

STOP, EAST = 1, 4
FIELDS = (("agents", "observation"), ("agents", "action_mask"), ("agents", "action"), "state", "reward",
          "terminated", "truncated", ("info", "battle_won"), "filled")


# --------------------------------------------------------------------------- recording
def _record(map_name: str = "3m", B: int = 16, seed: int = 1) -> TensorDict:
    """The first episode of each of ``B`` battles, in our layout ``[B, T+1]``, with the env's own
    terminated / truncated / battle_won. Battle 0 stalls (teams far apart, enemies frozen, allies
    stop) and is truncated at the episode limit; odd battles attack the first attackable enemy
    (so some are won), the others play uniformly random available actions (mostly lost)."""
    env = make_env(map_name, B, seed=seed)
    spec = env.spec
    N, M, T1 = spec.n_agents, spec.n_enemies, spec.episode_limit + 1
    td = env.reset()
    b = env.battle
    for i in range(N):
        b.x[0, i], b.y[0, i] = 3.0, 12.0 + 4 * i
    for j in range(M):
        u = N + j
        b.x[0, u], b.y[0, u] = 28.0, 12.0 + 4 * j
        b.order[0, u], b.target[0, u] = 0, -1  # idle, no target
    mask, obs, state = compute_features(b, env.tables)
    td["agents", "observation"], td["agents", "action_mask"], td["state"] = obs, mask, state

    ep = TensorDict({}, batch_size=(B, T1))
    for key, src in ((("agents", "observation"), obs), ("state", state), (("agents", "action_mask"), mask)):
        ep.set(key, torch.zeros(B, T1, *src.shape[1:], dtype=src.dtype))
    ep.set(("agents", "action"), torch.zeros(B, T1, N, dtype=torch.int64))
    ep.set("reward", torch.zeros(B, T1, 1))
    for key in ("terminated", "truncated", ("info", "battle_won"), "filled"):
        ep.set(key, torch.zeros(B, T1, 1, dtype=torch.bool))

    attacker = torch.arange(B) % 2 == 1
    active = torch.ones(B, dtype=torch.bool)
    for t in range(spec.episode_limit):
        td = env.rand_action(td)
        m = td["agents", "action_mask"]
        attack = m[..., 6:]
        scripted = torch.where(attack.any(-1), attack.float().argmax(-1) + 6,
                               torch.where(m[..., EAST], EAST, m.float().argmax(-1)))
        action = torch.where(attacker[:, None], scripted, td["agents", "action"])
        action[0] = torch.where(m[0, :, STOP], STOP, 0)
        td["agents", "action"] = action
        out, td = env.step_and_maybe_reset(td)
        nxt = out["next"]
        a = active.nonzero().flatten()
        for key in (("agents", "observation"), "state", ("agents", "action_mask"), ("agents", "action")):
            ep.get(key)[a, t] = out.get(key)[a]
        for key in ("reward", "terminated", "truncated", ("info", "battle_won")):
            ep.get(key)[a, t] = nxt.get(key)[a]
        ep.get("filled")[a, t] = True
        end = (active & nxt["done"][:, 0]).nonzero().flatten()
        for key in (("agents", "observation"), "state", ("agents", "action_mask")):
            ep.get(key)[end, t + 1] = nxt.get(key)[end]
        ep.get("filled")[end, t + 1] = True
        active &= ~nxt["done"][:, 0]
        if not active.any():
            break
    assert not active.any()
    return ep


@pytest.fixture(scope="module")
def episodes():
    ep = _record()
    trunc = ep["truncated"].squeeze(-1).any(-1)
    won = ep["info", "battle_won"].squeeze(-1).any(-1)
    term = ep["terminated"].squeeze(-1).any(-1)
    # the cases the import must tell apart are all present
    assert bool(trunc[0]) and int(trunc.sum()) == 1
    assert int(won.sum()) >= 1 and int((term & ~won).sum()) >= 1
    return ep


def _write_h5(path, ep: TensorDict, *, timeout_as_terminated: bool = False, final_action: bool = True,
              edit=None):
    """Write ``ep`` (our layout) as a CFCQL file. PyMARL details mimicked: dtypes, ``probs``, an
    action selected at the final state (row len), and -- with ``timeout_as_terminated`` -- SMAC's
    ``continuing_episode=False``, which stores a timeout as terminated."""
    filled = ep["filled"].squeeze(-1)
    lengths = filled.sum(-1) - 1
    E, T1, N, A = ep["agents", "action_mask"].shape
    actions = ep["agents", "action"].clone()
    if final_action:  # PyMARL's episode runner selects an action at the final state as well
        g = torch.Generator().manual_seed(0)
        for e in range(E):
            m = ep["agents", "action_mask"][e, lengths[e]]
            actions[e, lengths[e]] = torch.multinomial(m.float(), 1, generator=g).squeeze(-1)
    terminated = ep["terminated"].clone()
    if timeout_as_terminated:
        terminated |= ep["truncated"]
    arrays = {
        "state": ep["state"].numpy(),
        "obs": ep["agents", "observation"].numpy(),
        "actions": actions.unsqueeze(-1).numpy().astype(np.int64),
        "avail_actions": ep["agents", "action_mask"].numpy().astype(np.int32),
        "probs": (ep["agents", "action_mask"].float() / ep["agents", "action_mask"].sum(-1, keepdim=True).clamp(min=1)).numpy(),
        "reward": ep["reward"].numpy(),
        "terminated": terminated.numpy().astype(np.uint8),
        "filled": filled.unsqueeze(-1).numpy().astype(np.int64),
    }
    if edit is not None:
        edit(arrays)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


# --------------------------------------------------------------------------- state layout
@pytest.mark.parametrize("map_name", ["3m", "2s3z", "MMM", "6h_vs_8z"])
def test_state_layout_matches_simulator_state(map_name):
    """Health offsets, block sizes and the last-action block against the simulator's real state."""
    spec = get_map(map_name)
    lay = state_layout(spec)
    assert lay.state_dim == spec.state_dim
    assert lay.last_action.stop == spec.state_dim
    env = make_env(map_name, 8, seed=0, check_actions=False)
    td = env.reset()
    b, ut, N = env.battle, env.battle.units, spec.n_agents
    for _ in range(3):
        td = env.step(env.rand_action(td))["next"]
    # kill some units so dead blocks (all zeros) are covered too
    b.health[:4, 0] = 0.0
    b.health[2:6, N] = 0.0
    td = env.rand_action(td)
    td["agents", "action"][:4, 0] = 0  # the no-op of a dead agent
    action = td["agents", "action"].clone()
    state = env.step(td)["next", "state"]
    frac = b.health / ut.max_health * b.alive
    assert torch.allclose(state[:, lay.ally_health], frac[:, :N])
    assert torch.allclose(state[:, lay.enemy_health], frac[:, N:])
    for i in range(N):
        block = state[:, lay.ally_start + i * lay.ally_dim: lay.ally_start + (i + 1) * lay.ally_dim]
        assert torch.equal(block.abs().sum(-1) == 0, ~b.alive[:, i])
    for j in range(spec.n_enemies):
        block = state[:, lay.enemy_start + j * lay.enemy_dim: lay.enemy_start + (j + 1) * lay.enemy_dim]
        assert torch.equal(block.abs().sum(-1) == 0, ~b.alive[:, N + j])
    last = state[:, lay.last_action].view(8, N, spec.n_actions)
    assert torch.equal(last, torch.nn.functional.one_hot(action, spec.n_actions).float())
    assert lay.ally_combat == tuple(not m for m in ut.is_medivac[:N].tolist())


@pytest.mark.parametrize("map_name", ["3m", "2s3z", "MMM"])
def test_battle_outcome_matches_simulator_rule(map_name):
    """Random sets of dead units (including lone medivacs and both sides wiped out): the outcome
    read from the state agrees with the simulator's own end / win rule."""
    B = 512
    env = make_env(map_name, B, seed=0)
    b, spec = env.battle, env.spec
    U = b.n_units
    g = torch.Generator().manual_seed(0)
    p = torch.rand(B, 1, generator=g)
    dead = torch.rand(B, U, generator=g) < p
    if spec.medivac_map:
        N = spec.n_agents
        dead[:2] = False
        dead[0, N:-1] = True  # allies alive vs a lone enemy medivac: won
        dead[1, : N - 1] = True  # a lone allied medivac vs living enemies: lost
    dead[2] = True  # both wiped out: over, not won
    b.health = torch.where(dead, 0.0, b.health * (0.1 + 0.9 * torch.rand(B, U, generator=g)))
    state = compute_features(b, env.tables)[2]
    sim = env.rewards.outcome()
    over, won = battle_outcome(state, state_layout(spec))
    assert torch.equal(over, sim.terminated)
    assert torch.equal(won, sim.battle_won)
    assert 0 < int(won.sum()) < B and 0 < int((over & ~won).sum()) and 0 < int((~over).sum())
    if spec.medivac_map:
        assert over[:2].tolist() == [True, True] and won[:2].tolist() == [True, False]
    assert bool(over[2]) and not bool(won[2])


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("timeout_as_terminated", [False, True])
def test_round_trip(tmp_path, episodes, timeout_as_terminated):
    h5 = _write_h5(tmp_path / "3m_medium.h5", episodes, timeout_as_terminated=timeout_as_terminated)
    out = import_cfcql(h5, tmp_path / "ds", chunk=5)  # 16 episodes: chunks of 5, 5, 5, 1
    assert out == tmp_path / "ds"
    ds = load_dataset(out, map_name="3m", validate="full")
    assert len(ds) == 16
    for key in FIELDS:
        assert torch.equal(ds.episodes.get(key), episodes.get(key)), key
    # the stored final-observation row has action 0 even though the file had one there
    lengths = episodes["filled"].squeeze(-1).sum(-1) - 1
    assert not ds.episodes["agents", "action"][torch.arange(16), lengths].any()
    meta = ds.metadata
    assert (meta["map"], meta["quality"]) == ("3m", "medium")
    assert meta["source"]["format"] == "cfcql-hdf5"
    assert meta["source"]["file"] == str(h5)
    assert meta["source"]["dropped_keys"] == ["probs"]
    assert set(meta["source"]["derived"]) == {"truncated", "battle_won"}
    assert meta["source"]["timeouts_relabelled_truncated"] == int(timeout_as_terminated)
    assert meta["behaviour"] == {"policy": "unknown (imported)"}
    won = episodes["info", "battle_won"].squeeze(-1).any(-1)
    assert meta["win_rate"] == pytest.approx(float(won.double().mean()))
    assert meta["return_mean"] == pytest.approx(float(episodes["reward"].double().sum((1, 2)).mean()), rel=1e-6)
    assert json.loads((out / "dataset.json").read_text())["episodes"] == 16


def test_file_name_inference_and_default_destination(tmp_path, episodes):
    assert parse_cfcql_name("x/5m_vs_6m_medium_replay.h5") == ("5m_vs_6m", "medium_replay")
    assert parse_cfcql_name("2s3z_medium.h5") == ("2s3z", "medium")
    assert parse_cfcql_name("/d/3s_vs_5z_expert.hdf5") == ("3s_vs_5z", "expert")
    assert parse_cfcql_name("MMM_mixed.h5") == ("MMM", "mixed")
    assert parse_cfcql_name("data.h5", "3m", "expert") == ("3m", "expert")
    assert parse_cfcql_name("whatever_medium.h5", map_name="3m") == ("3m", "medium")
    for bad in ("3m.h5", "3m_good.h5", "_medium.h5"):
        with pytest.raises(DatasetError, match="cannot tell"):
            parse_cfcql_name(bad)
    with pytest.raises(ValueError, match="quality"):
        parse_cfcql_name("3m_medium.h5", quality="great")

    h5 = _write_h5(tmp_path / "3m_medium_replay.h5", episodes.clone()[:3])
    out = import_cfcql(h5, data_root=tmp_path / "data")
    assert out == tmp_path / "data" / "3m" / "medium_replay"
    assert load_dataset(out).metadata["quality"] == "medium_replay"
    renamed = _write_h5(tmp_path / "downloaded.h5", episodes.clone()[:3])
    out = import_cfcql(renamed, data_root=tmp_path / "data", map_name="3m", quality="expert")
    assert out == tmp_path / "data" / "3m" / "expert"


def test_refuses_to_overwrite_without_overwrite(tmp_path, episodes):
    h5 = _write_h5(tmp_path / "3m_expert.h5", episodes.clone()[:4])
    out = import_cfcql(h5, tmp_path / "ds")
    with pytest.raises(FileExistsError, match="overwrite"):
        import_cfcql(h5, tmp_path / "ds")
    assert len(load_dataset(out)) == 4
    h5 = _write_h5(tmp_path / "3m_expert.h5", episodes.clone()[:6])
    import_cfcql(h5, tmp_path / "ds", overwrite=True)
    assert len(load_dataset(out)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3m_expert.h5", "ds"]  # no partial dirs left


# --------------------------------------------------------------------------- errors
def _obs_plus_one(a):
    a["obs"] = np.concatenate([a["obs"], np.zeros_like(a["obs"][..., :1])], -1)


def _one_step_short(a):
    for key in a:
        a[key] = a[key][:, :-1]


def _no_avail_actions(a):
    del a["avail_actions"]


def _fewer_rewards(a):
    a["reward"] = a["reward"][:-1]


@pytest.mark.parametrize("edit, message", [
    (_obs_plus_one, r"key obs: expected shape \[E, 61, 3, 30\] for map 3m, found \[5, 61, 3, 31\]"),
    (_one_step_short, r"key state: expected shape \[E, 61, 48\] for map 3m, found \[5, 60, 48\]"),
    (_no_avail_actions, r"key avail_actions is missing"),
    (_fewer_rewards, r"key reward: expected shape \[5, 61, 1\] \(5 episodes, as key state\), found \[4, 61, 1\]"),
])
def test_shape_and_key_mismatches(tmp_path, episodes, edit, message):
    h5 = _write_h5(tmp_path / "3m_medium.h5", episodes.clone()[:5], edit=edit)
    with pytest.raises(DatasetError, match=message) as err:
        import_cfcql(h5, tmp_path / "ds")
    assert str(err.value).startswith(f"dataset {h5}: ")
    assert not (tmp_path / "ds").exists()


def test_unknown_map_missing_file_and_not_hdf5(tmp_path, episodes):
    h5 = _write_h5(tmp_path / "27m_vs_30m_medium.h5", episodes.clone()[:2])
    with pytest.raises(DatasetError, match=r"map '27m_vs_30m' is not a known map"):
        import_cfcql(h5, tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_cfcql(tmp_path / "3m_medium.h5", tmp_path / "ds")
    junk = tmp_path / "3m_expert.h5"
    junk.write_text("not hdf5\n")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        import_cfcql(junk, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_unavailable_taken_action_is_a_validation_error(tmp_path, episodes):
    """Episode 9 (third chunk of 4) takes an action its mask forbids: the message names the file,
    agents.action and the episode's index in the file."""
    ep = episodes.clone()
    e, t = 9, 0
    mask = ep["agents", "action_mask"][e, t, 1]
    ep["agents", "action"][e, t, 1] = int((~mask).nonzero()[0])
    h5 = _write_h5(tmp_path / "3m_medium.h5", ep)
    with pytest.raises(DatasetError, match=rf"dataset {h5}: field agents\.action: episode 9, step 0, agent 1 "
                                           "took action .*unavailable"):
        import_cfcql(h5, tmp_path / "ds", chunk=4)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob("ds.partial-*"))


def test_non_binary_flags_and_a_reward_on_the_final_row(tmp_path, episodes):
    def bad_filled(a):
        a["filled"][1, 0, 0] = 2

    h5 = _write_h5(tmp_path / "3m_medium.h5", episodes.clone()[:3], edit=bad_filled)
    with pytest.raises(DatasetError, match=r"key filled: expected 0 or 1, found 2 at episode 1, step 0"):
        import_cfcql(h5, tmp_path / "ds")

    lengths = episodes["filled"].squeeze(-1).sum(-1) - 1

    def reward_at_len(a):
        a["reward"][2, int(lengths[2]), 0] = 0.5

    h5 = _write_h5(tmp_path / "3m_medium.h5", episodes.clone()[:3], edit=reward_at_len)
    with pytest.raises(DatasetError, match=rf"key reward: expected 0 at the final-observation row \(step len = "
                                           rf"{int(lengths[2])}\) of episode 2, found 0.5"):
        import_cfcql(h5, tmp_path / "ds")


def test_missing_h5py_is_a_clear_import_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(ImportError, match=r'pip install h5py.*pip install -e "\.\[hdf5\]"'):
        import_cfcql(tmp_path / "3m_medium.h5", tmp_path / "ds")

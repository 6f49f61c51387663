"""The real-SMAC (StarCraft II) backend's adapter, tested against a scripted stand-in.

THE REAL GAME IS NOT EXERCISED HERE: this machine has neither StarCraft II nor oxwhirl's
``smac``. Every test drives :class:`~ovmse.envs.starcraft.StarCraftSMACEnv` (and the batched
envs built around it) with :class:`FakeStarCraft2Env`, a scripted object with
``smac.env.StarCraft2Env``'s methods and attributes (``reset``, ``step``, ``get_obs``,
``get_state``, ``get_avail_actions``, ``get_env_info``, ``close``, ``timeouts``,
``battles_won``) and its conventions (``info`` always has ``battle_won``/``dead_allies``/
``dead_enemies``, ``episode_limit`` only with ``continuing_episode=True``, dead agents can only
no-op, an unavailable action fails an ``assert``). What is checked: specs equal to the
simulator's, exact value translation, terminated/truncated/battle_won in every scripted ending,
the dimension check, crash restarts and lost episodes (through TorchRL's ``Collector`` and the
``EpisodeAssembler``), the missing-install messages, ``make_env`` and the parity script failing
at once here. See docs/starcraft.md for running the real game.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs.utils import check_env_specs

from ovmse.collection import EpisodeAssembler
from ovmse.envs import MAPS, SimSMACEnv, get_map, make_env
from ovmse.envs.starcraft import (
    StarCraftCrashError,
    StarCraftDimensionError,
    StarCraftParallelEnv,
    StarCraftSerialEnv,
    StarCraftSMACEnv,
    StarCraftUnavailableError,
    check_starcraft_available,
    make_starcraft_env,
)
from ovmse.phases.common import env_options
from simtools import run_collector_through_assembler

ROOT = Path(__file__).resolve().parents[2]
SMAC_PIP = "pip install git+https://github.com/oxwhirl/smac.git"
HAS_SMAC = importlib.util.find_spec("smac") is not None


# ------------------------------------------------------------------------------ stand-in
class FakeConnectionError(Exception):
    """Stands for pysc2's ``protocol.ConnectionError`` (a plain ``Exception`` subclass)."""


class FakeStarCraft2Env:
    """Scripted stand-in for ``smac.env.StarCraft2Env`` (no game, no randomness).

    Episode kinds (``episodes`` is cycled, one entry per ``reset``):

    * ``"win"``: ends at step 3, ``battle_won=True``, all enemies dead;
    * ``"loss"``: agent 0 dies at step 1 (only the no-op is available to it from then on),
      everybody at step 2; ``battle_won=False``;
    * ``"timeout"``: runs to the episode limit; ``terminated=True``, ``timeouts`` += 1, and
      ``info["episode_limit"]=True`` only with ``continuing_episode=True`` (SMAC's rule);
    * ``"wipe"``: both sides die at the episode limit (decided, not a timeout; no counter).

    Values are functions of (instance, episode, step, agent) so tests can check them exactly;
    the last ones returned are kept in ``last_obs``/``last_state``/``last_avail``.

    ``plan`` (a dict shared by the instances one factory builds, in this process) scripts
    failures: ``crash`` = ``{seed: k}`` raises :class:`FakeConnectionError` once, in the k-th
    ``step`` (counted over the game's life) of the game with that seed, or in ``get_obs`` after
    it, or in its next ``reset`` (``crash_in`` = "step" (default), "get_obs", "reset");
    ``internal_restart`` = ``{seed: step}`` returns SMAC's post-crash ``(0, True, {})`` once;
    ``fail_builds`` = how many of the next constructions raise ``OSError``.
    """

    def __init__(self, map_name: str = "3m", seed: int | None = None, *, episodes=("win",),
                 continuing_episode: bool = False, env_info: dict | None = None, has_timeouts: bool = True,
                 plan: dict | None = None) -> None:
        self.plan = plan if plan is not None else {}
        if self.plan.get("fail_builds", 0) > 0:
            self.plan["fail_builds"] -= 1
            raise OSError("fake: could not launch StarCraft II")
        self.plan["built"] = self.plan.get("built", 0) + 1
        self.instance = self.plan["built"]
        self.map = get_map(map_name)
        self.map_name, self.seed = map_name, seed
        self.n_agents, self.n_enemies = self.map.n_agents, self.map.n_enemies
        self.n_actions, self.episode_limit = self.map.n_actions, self.map.episode_limit
        self.episodes = list(episodes)
        self.continuing_episode = continuing_episode
        self._env_info = env_info or {}
        if has_timeouts:
            self.timeouts = 0
        self.battles_won = 0
        self.battles_game = 0
        self.total_steps = 0
        self.resets = 0
        self.closed = False
        self.ep = -1
        self.t = 0
        self.dead = np.zeros(self.n_agents, dtype=bool)
        self.enemies_dead = False

    # SMAC API ---------------------------------------------------------------
    def get_env_info(self) -> dict:
        info = {"state_shape": self.map.state_dim, "obs_shape": self.map.obs_dim, "n_actions": self.n_actions,
                "n_agents": self.n_agents, "episode_limit": self.episode_limit}
        info.update(self._env_info)
        return info

    def _maybe_crash(self, where: str, step: int) -> None:
        crash = self.plan.get("crash", {})
        if self.plan.get("crash_in", "step") == where and crash.get(self.seed) == step:
            del crash[self.seed]
            raise FakeConnectionError(f"fake: connection to SC2 lost in {where}")

    def reset(self):
        if self.plan.get("crash_in") == "reset" and self.plan.get("crash", {}).pop(self.seed, None) is not None:
            raise FakeConnectionError("fake: connection to SC2 lost in reset")
        self.resets += 1
        self.ep += 1
        self.t = 0
        self.dead[:] = False
        self.enemies_dead = False
        return self.get_obs(), self.get_state()

    def _kind(self) -> str:
        return self.episodes[self.ep % len(self.episodes)]

    def get_obs(self):
        self._maybe_crash("get_obs", self.total_steps)  # the observation after step k
        d = self.map.obs_dim
        obs = [np.zeros(d, dtype=np.float32) if self.dead[i] else
               (np.arange(d, dtype=np.float32) / 64 + 1000 * self.instance + 100 * self.ep + 10 * self.t + i)
               .astype(np.float32) for i in range(self.n_agents)]
        self.last_obs = obs
        return obs

    def get_state(self):
        s = (np.arange(self.map.state_dim, dtype=np.float64) / 32 - 7 * self.t + 0.1 * self.ep)
        self.last_state = s
        return s

    def get_avail_actions(self):
        avail = []
        for i in range(self.n_agents):
            if self.dead[i]:
                row = [1] + [0] * (self.n_actions - 1)
            else:
                row = [0, 1] + [int((self.t + i + k) % 2 == 0) for k in range(4)]
                row += [int(not self.enemies_dead and (self.t + j) % 3 != 2) for j in range(self.n_enemies)]
            avail.append(row)
        self.last_avail = avail
        return avail

    def step(self, actions):
        actions = [int(a) for a in actions]
        avail = self.get_avail_actions()
        for a_id, a in enumerate(actions):
            assert avail[a_id][a] == 1, f"Agent {a_id} cannot perform action {a}"
        self._maybe_crash("step", self.total_steps + 1)
        self.total_steps += 1
        internal = self.plan.get("internal_restart", {})
        if internal.get(self.seed) == self.total_steps:
            del internal[self.seed]
            return 0, True, {}
        self.t += 1
        kind = self._kind()
        reward = 0.25 * self.t + 0.125 * sum(actions)
        info = {"battle_won": False, "dead_allies": 0, "dead_enemies": 0}
        terminated = False
        if kind == "win" and self.t == 3:
            self.enemies_dead = True
            terminated = True
            info["battle_won"] = True
            self.battles_won += 1
            reward += 10.0
        elif kind == "loss":
            self.dead[0] = True
            if self.t == 2:
                self.dead[:] = True
                terminated = True
        elif kind == "wipe" and self.t >= self.episode_limit:
            self.dead[:] = True
            self.enemies_dead = True
            terminated = True
        elif kind in ("timeout", "wipe") and self.t >= self.episode_limit:
            terminated = True
        if kind == "timeout" and terminated:
            if self.continuing_episode:
                info["episode_limit"] = True
            if hasattr(self, "timeouts"):
                self.timeouts += 1
        info["dead_allies"] = int(self.dead.sum())
        info["dead_enemies"] = self.n_enemies if self.enemies_dead else 0
        if terminated:
            self.battles_game += 1
        return reward, terminated, info

    def close(self) -> None:
        self.closed = True


def fake_factory(map_name="3m", seed=0, **kwargs):
    """A picklable ``() -> game`` factory for the adapter."""
    return functools.partial(FakeStarCraft2Env, map_name, seed, **kwargs)


def adapter(map_name="3m", seed=0, **kwargs) -> StarCraftSMACEnv:
    adapter_kw = {k: kwargs.pop(k) for k in ("check_actions", "max_restarts") if k in kwargs}
    return StarCraftSMACEnv(map_name, seed=seed, env_factory=fake_factory(map_name, seed, **kwargs), **adapter_kw)


def step(env, action=None):
    """One env step with the given (or random available) actions; returns the "next" tensordict."""
    td = TensorDict({}, batch_size=env.batch_size)
    if action is None:
        td = env.rand_action(td)
    else:
        td.set(("agents", "action"), torch.as_tensor(action, dtype=torch.int64))
    return env.step(td)["next"]


def flags(nxt) -> tuple[bool, bool, bool, bool, bool]:
    return tuple(bool(nxt[k].item()) for k in ("done", "terminated", "truncated", ("info", "battle_won"),
                                              ("info", "episode_lost")))


def play_episode(env) -> list:
    out = []
    while True:
        nxt = step(env)
        out.append(nxt)
        if nxt["done"].item():
            env.reset()
            return out


# ------------------------------------------------------------------------------ specs
def _leaves(spec):
    return {k: spec[k] for k in spec.keys(True, True)}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_specs_equal_the_simulators(name):
    sim = SimSMACEnv(get_map(name), 1, seed=0)
    env = adapter(name)
    for attr in ("full_observation_spec", "full_action_spec", "full_reward_spec", "full_done_spec"):
        ours, theirs = _leaves(getattr(env, attr)), _leaves(getattr(sim, attr))
        assert set(ours) == set(theirs), attr
        for key, s in theirs.items():
            o = ours[key]
            assert o.shape == s.shape[1:], (attr, key)
            assert o.dtype == s.dtype, (attr, key)
            assert type(o) is type(s), (attr, key)
            if hasattr(s, "space") and hasattr(s.space, "n"):
                assert o.space.n == s.space.n, (attr, key)
    assert env.batch_size == torch.Size([])
    assert ("info", "episode_lost") in _leaves(sim.full_observation_spec)
    env.close()


def test_check_env_specs_with_the_stand_in():
    env = adapter(episodes=("win", "loss", "timeout"))
    check_env_specs(env, seed=0)
    env.close()


# ------------------------------------------------------------------------------ values
def test_values_are_translated_exactly():
    env = adapter(episodes=("loss",))
    td = env.reset()
    game = env.game
    assert torch.equal(td["agents", "observation"], torch.as_tensor(np.stack(game.last_obs)))
    assert torch.equal(td["state"], torch.as_tensor(game.last_state, dtype=torch.float32))
    assert torch.equal(td["agents", "action_mask"], torch.as_tensor(game.last_avail, dtype=torch.bool))
    assert td["agents", "observation"].dtype == torch.float32 and td["state"].dtype == torch.float32
    action = [1, 3, 6]  # stop, move south, attack enemy 0 -- all available at t=0
    assert all(game.last_avail[i][a] for i, a in enumerate(action))
    nxt = step(env, action)
    assert nxt["reward"].dtype == torch.float32 and nxt["reward"].shape == (1,)
    assert nxt["reward"].item() == np.float32(0.25 + 0.125 * sum(action))
    assert torch.equal(nxt["agents", "observation"], torch.as_tensor(np.stack(game.last_obs)))
    assert torch.equal(nxt["state"], torch.as_tensor(game.last_state, dtype=torch.float32))
    assert torch.equal(nxt["agents", "action_mask"], torch.as_tensor(game.last_avail, dtype=torch.bool))
    # agent 0 died: zero observation, only the no-op available
    assert float(nxt["agents", "observation"][0].abs().sum()) == 0
    assert nxt["agents", "action_mask"][0].tolist() == [True] + [False] * 8
    env.close()


def test_dead_agents_noop_and_action_checks(caplog):
    env = adapter(episodes=("loss",))
    env.reset()
    step(env, [1, 1, 1])  # agent 0 dies
    for _ in range(20):
        assert env.rand_action()["agents", "action"][0].item() == 0
    with pytest.raises(ValueError, match="agent 0 took action 1"):
        step(env, [1, 1, 1])
    env.close()
    # Without our check, SMAC's own assert fires: a usage error, re-raised, not a crash to restart.
    env = adapter(episodes=("loss",), check_actions=False)
    env.reset()
    step(env, [1, 1, 1])
    with pytest.raises(AssertionError, match="cannot perform action"):
        step(env, [1, 1, 1])
    assert env.restarts == 0
    env.close()


# ------------------------------------------------------------------------------ endings
def test_win_loss_and_timeouts():
    env = adapter(episodes=("win", "loss", "timeout"))
    env.reset()
    win, loss, timeout = play_episode(env), play_episode(env), play_episode(env)
    # (done, terminated, truncated, battle_won, episode_lost)
    assert len(win) == 3 and flags(win[-1]) == (True, True, False, True, False)
    assert len(loss) == 2 and flags(loss[-1]) == (True, True, False, False, False)
    assert len(timeout) == 60 and flags(timeout[-1]) == (True, False, True, False, False)
    for ep in (win, loss, timeout):
        assert all(flags(n) == (False,) * 5 for n in ep[:-1])
    env.close()


def test_timeout_with_the_episode_limit_key():
    env = adapter(episodes=("timeout", "win"), continuing_episode=True)
    env.reset()
    timeout, win = play_episode(env), play_episode(env)
    assert len(timeout) == 60 and flags(timeout[-1]) == (True, False, True, False, False)
    assert flags(win[-1]) == (True, True, False, True, False)
    env.close()


def test_timeout_fallback_without_counter_or_key():
    """No ``timeouts`` attribute, no ``episode_limit`` key: steps >= limit and nobody wiped out."""
    env = adapter(episodes=("timeout", "wipe", "loss"), has_timeouts=False)
    env.reset()
    timeout, wipe, loss = play_episode(env), play_episode(env), play_episode(env)
    assert flags(timeout[-1]) == (True, False, True, False, False)
    assert len(wipe) == 60 and flags(wipe[-1]) == (True, True, False, False, False)  # decided at the limit
    assert flags(loss[-1]) == (True, True, False, False, False)
    env.close()


def test_wipe_at_the_limit_is_terminated_with_the_counter_too():
    env = adapter(episodes=("wipe",))
    env.reset()
    ep = play_episode(env)
    assert flags(ep[-1]) == (True, True, False, False, False)
    env.close()


def test_dimension_mismatch_names_map_and_field():
    with pytest.raises(StarCraftDimensionError, match=r"'3m'.*obs_shape=31.*obs_dim=30"):
        adapter(env_info={"obs_shape": 31})
    with pytest.raises(StarCraftDimensionError, match=r"'8m'.*n_actions=9.*n_actions=14"):
        adapter("8m", env_info={"n_actions": 9})
    with pytest.raises(StarCraftDimensionError, match="episode_limit"):
        adapter(env_info={"episode_limit": 120})


# ------------------------------------------------------------------------------ crashes
def test_crash_mid_episode_restarts_and_loses_the_episode(caplog):
    plan = {"crash": {0: 5}}  # the 5th step of the game with seed 0 raises
    env = adapter(episodes=("win",), plan=plan)
    env.reset()
    first = env.game
    win = play_episode(env)  # steps 1-3
    assert flags(win[-1]) == (True, True, False, True, False)
    step(env)  # step 4
    with caplog.at_level(logging.WARNING, logger="ovmse.envs.starcraft"):
        lost = step(env)  # step 5: crash
    assert flags(lost) == (True, False, True, False, True)
    assert lost["reward"].item() == 0.0
    assert env.restarts == 1 and env.episodes_lost == 1
    assert first.closed and env.game is not first and env.game.resets == 1
    # the next observation is the fresh game's first one, and reset does not reset it again
    fresh = torch.as_tensor(np.stack(env.game.last_obs))
    assert torch.equal(lost["agents", "observation"], fresh)
    td = env.reset()
    assert env.game.resets == 1
    assert torch.equal(td["agents", "observation"], fresh)
    assert not td["done"].item() and not td["info", "episode_lost"].item()
    assert "restarted" in caplog.text and "1 restart" in caplog.text
    win = play_episode(env)  # the new game plays normally
    assert len(win) == 3 and flags(win[-1]) == (True, True, False, True, False)
    env.close()


@pytest.mark.parametrize("where", ["get_obs", "reset"])
def test_crash_in_getters_and_reset(where):
    plan = {"crash": {0: 2 if where == "get_obs" else 0}, "crash_in": where}
    env = adapter(episodes=("win",), plan=plan)
    env.reset()
    if where == "reset":  # nothing in progress: restarted, no episode lost
        assert env.restarts == 1 and env.episodes_lost == 0 and plan["built"] == 2
        env.close()
        return
    step(env)
    lost = step(env)
    assert flags(lost) == (True, False, True, False, True) and env.restarts == 1
    env.close()


def test_smac_internal_restart_is_a_lost_episode():
    """SMAC's step catches protocol errors itself, relaunches the game and returns (0, True, {})."""
    plan = {"internal_restart": {0: 2}}
    env = adapter(episodes=("win",), plan=plan)
    env.reset()
    game = env.game
    step(env)
    lost = step(env)
    assert flags(lost) == (True, False, True, False, True)
    assert env.game is game and game.resets == 2 and env.restarts == 1
    assert flags(play_episode(env)[-1]) == (True, True, False, True, False)
    env.close()


def test_restart_retries_exhausted():
    plan = {"crash": {0: 1}}
    env = adapter(plan=plan, max_restarts=3)
    env.reset()
    plan["fail_builds"] = 3
    with pytest.raises(StarCraftCrashError, match=r"crashed \(FakeConnectionError.*3 restart attempt") as info:
        step(env)
    assert isinstance(info.value.__cause__, FakeConnectionError)
    assert env.game is None
    # A later step retries (the launch works again) and reports the episode as lost.
    assert flags(step(env)) == (True, False, True, False, True) and env.restarts == 1
    env.close()


def test_restart_succeeds_on_a_later_attempt():
    plan = {"crash": {0: 1}}
    env = adapter(plan=plan, max_restarts=3)
    env.reset()
    plan["fail_builds"] = 2
    assert flags(step(env)) == (True, False, True, False, True)
    assert env.restarts == 1
    env.close()


def test_collector_drops_the_lost_episode_and_keeps_the_others():
    """SerialEnv of 2 adapters in a TorchRL Collector; battle 0's game crashes in its 3rd episode."""
    plan = {"crash": {0: 3 + 2 + 30}}  # win (3 steps), loss (2), then step 30 of the timeout episode
    env = make_starcraft_env("3m", 2, seed=0, parallel=False,
                             game_factory=functools.partial(FakeStarCraft2Env, episodes=("win", "loss", "timeout"),
                                                            plan=plan))
    assert isinstance(env, StarCraftSerialEnv)
    collector = Collector(env, env.rand_action, frames_per_batch=2 * 25, total_frames=2 * 150,
                          auto_register_policy_transforms=False)
    assembler = EpisodeAssembler(get_map("3m").episode_limit)
    raw, emitted = run_collector_through_assembler(collector, assembler)  # raw: [B, steps], contiguous
    done, lost = raw["next", "done"].squeeze(-1), raw["next", "info", "episode_lost"].squeeze(-1)
    assert int(lost.sum()) == 1 and bool(lost[0].any()) and assembler.episodes_lost == 1
    expected = []
    for b in range(2):
        start = 0
        for end in done[b].nonzero().flatten().tolist():
            if not lost[b, end]:
                expected.append(raw[b, start:end + 1])
            start = end + 1
    episodes = torch.cat(emitted)
    assert episodes.shape[0] == len(expected) == int(done.sum()) - 1
    # same multiset of episodes (order: by batch, then env index)
    got = sorted((int(e["filled"].sum()) - 1, e["agents", "observation"][0].sum().item()) for e in episodes)
    want = sorted((ep.shape[0], ep["agents", "observation"][0].sum().item()) for ep in expected)
    assert got == want
    n = torch.tensor([ep.shape[0] for ep in expected])
    assert set(n.tolist()) <= {2, 3, 60}  # loss, win, timeout: the cut 30-step episode is gone
    # the lost episode's successor on battle 0 starts from the fresh game's first observation
    end = int(lost[0].nonzero()[0])
    assert torch.equal(raw[0, end + 1]["agents", "observation"], raw[0, end]["next", "agents", "observation"])
    assert raw[0, end + 1]["agents", "observation"][0, 0].item() >= 2000  # built by the 2nd game instance


def test_assembler_drops_lost_episodes_across_batch_cuts():
    B, T, N, A = 1, 10, 2, 3
    done = torch.zeros(B, T, 1, dtype=torch.bool)
    lost = torch.zeros(B, T, 1, dtype=torch.bool)
    done[0, [2, 6, 9]] = True
    lost[0, 6] = True  # episode of steps 3..6 is lost; 0..2 and 7..9 are kept
    obs = torch.arange(T, dtype=torch.float32)[None, :, None, None].expand(B, T, N, 4).clone()
    mask = torch.ones(B, T, N, A, dtype=torch.bool)
    td = TensorDict({
        ("agents", "observation"): obs, ("agents", "action_mask"): mask, "state": obs[:, :, 0],
        ("agents", "action"): torch.zeros(B, T, N, dtype=torch.int64),
        ("next", "agents", "observation"): obs + 1, ("next", "agents", "action_mask"): mask,
        ("next", "state"): obs[:, :, 0] + 1, ("next", "reward"): torch.ones(B, T, 1),
        ("next", "done"): done, ("next", "terminated"): done & ~lost, ("next", "truncated"): lost,
        ("next", "info", "battle_won"): torch.zeros(B, T, 1, dtype=torch.bool),
        ("next", "info", "episode_lost"): lost,
    }, batch_size=(B, T))
    asm = EpisodeAssembler(5)
    out = [asm.add(td[:, s:s + 4]) for s in (0, 4, 8)]  # the lost episode spans two batches
    eps = torch.cat([o for o in out if o is not None])
    assert eps.shape[0] == 2 and asm.episodes_lost == 1 and asm.episodes_emitted == 2
    assert eps["agents", "observation"][:, 0, 0, 0].tolist() == [0.0, 7.0]
    assert asm.pending_steps == {}
    assert out[1] is None and asm.last_env_indices == [0]


# ------------------------------------------------------------------------------ batched envs
def _rollout_layout(env, steps=6):
    torch.manual_seed(0)
    td = env.rollout(steps, policy=env.rand_action, break_when_any_done=False)
    return {k: (tuple(td[k].shape), td[k].dtype) for k in td.keys(True, True)}


def test_serial_env_rollout_has_the_simulators_layout():
    sim = make_env("3m", 3, seed=0)
    env = make_starcraft_env("3m", 3, seed=10, parallel=False,
                             game_factory=functools.partial(FakeStarCraft2Env, episodes=("win", "loss")))
    assert env.batch_size == sim.batch_size and env.spec is get_map("3m")
    assert _rollout_layout(env) == _rollout_layout(sim)
    assert [e.game.seed for e in env._envs] == [10, 11, 12]
    with pytest.raises(ValueError, match="action_mask"):
        env.rand_action()
    env.close()


def test_parallel_env_rollout_has_the_simulators_layout():
    factory = functools.partial(FakeStarCraft2Env, episodes=("win", "loss"))
    pickle.loads(pickle.dumps(factory))  # what a spawn-started worker needs
    start, threads = time.perf_counter(), torch.get_num_threads()
    env = make_starcraft_env("3m", 2, seed=0, parallel=True, game_factory=factory, mp_start_method="fork")
    assert isinstance(env, StarCraftParallelEnv)
    try:
        assert _rollout_layout(env) == _rollout_layout(make_env("3m", 2, seed=0))
        assert torch.get_num_threads() == threads  # TorchRL would lower this process's thread count
    finally:
        env.close()
    assert torch.get_num_threads() == threads
    assert time.perf_counter() - start < 15


# ------------------------------------------------------------------------------ install checks
@pytest.fixture
def no_smac(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", None)  # `import smac` -> ModuleNotFoundError


@pytest.fixture
def oxwhirl_smac(monkeypatch):
    """A stand-in oxwhirl ``smac`` package whose StarCraft2Env is the fake."""
    pkg = types.ModuleType("smac")
    pkg.__path__ = []
    sub = types.ModuleType("smac.env")
    sub.StarCraft2Env = FakeStarCraft2Env
    pkg.env = sub
    monkeypatch.setitem(sys.modules, "smac", pkg)
    monkeypatch.setitem(sys.modules, "smac.env", sub)


def _sc2_dir(tmp_path, *, build=True, maps=()):
    root = tmp_path / "StarCraftII"
    root.mkdir()
    if build:
        (root / "Versions" / "Base75689").mkdir(parents=True)
    for m in maps:
        (root / "Maps" / "SMAC_Maps").mkdir(parents=True, exist_ok=True)
        (root / "Maps" / "SMAC_Maps" / f"{m}.SC2Map").write_bytes(b"")
    return root


def test_missing_smac_message(no_smac):
    with pytest.raises(StarCraftUnavailableError, match="not installed") as info:
        check_starcraft_available("3m")
    assert SMAC_PIP in str(info.value) and "SMAC3" in str(info.value)


def test_smac3_message(monkeypatch):
    smac3 = types.ModuleType("smac")  # PyPI's SMAC3: a 'smac' module without smac.env
    smac3.__version__ = "2.2.0"
    monkeypatch.setitem(sys.modules, "smac", smac3)
    monkeypatch.delitem(sys.modules, "smac.env", raising=False)
    with pytest.raises(StarCraftUnavailableError, match="SMAC3") as info:
        check_starcraft_available("3m")
    msg = str(info.value)
    assert "hyperparameter" in msg and "pip uninstall -y smac" in msg and SMAC_PIP in msg and "2.2.0" in msg
    assert "not installed" not in msg


def test_sc2_missing_messages(oxwhirl_smac, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SC2PATH", str(empty))
    with pytest.raises(StarCraftUnavailableError, match="StarCraft II not found") as info:
        check_starcraft_available("3m")
    assert "SC2PATH=" in str(info.value) and "SC2.4.10.zip" in str(info.value)
    assert "docs/starcraft.md" in str(info.value)
    monkeypatch.delenv("SC2PATH")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # default ~/StarCraftII is missing
    with pytest.raises(StarCraftUnavailableError, match="SC2PATH is not set") as info:
        check_starcraft_available("3m")
    assert "StarCraftII" in str(info.value)


def test_maps_missing_message(oxwhirl_smac, monkeypatch, tmp_path):
    root = _sc2_dir(tmp_path, maps=("8m",))
    monkeypatch.setenv("SC2PATH", str(root))
    with pytest.raises(StarCraftUnavailableError, match="SMAC map '3m' not found") as info:
        check_starcraft_available("3m")
    assert "SMAC_Maps.zip" in str(info.value) and "StarCraft II not found" not in str(info.value)
    assert check_starcraft_available("8m") == root


def test_make_env_starcraft_end_to_end_with_stand_ins(oxwhirl_smac, monkeypatch, tmp_path):
    """make_env -> check -> SerialEnv whose default factory imports (the fake) smac.env.StarCraft2Env."""
    monkeypatch.setenv("SC2PATH", str(_sc2_dir(tmp_path, maps=("3m",))))
    env = make_env("3m", 2, backend="starcraft", seed=7, parallel=False, substeps=8, spawn_jitter=1.0)
    assert isinstance(env, StarCraftSerialEnv)
    assert _rollout_layout(env, 4) == _rollout_layout(make_env("3m", 2, seed=0), 4)
    assert [e.game.seed for e in env._envs] == [7, 8] and all(isinstance(e.game, FakeStarCraft2Env) for e in env._envs)
    env.close()
    with pytest.raises(ValueError, match="scripted_allies"):
        make_env("3m", 2, backend="starcraft", parallel=False, scripted_allies=True)


@pytest.mark.skipif(HAS_SMAC, reason="a 'smac' package is installed here")
def test_make_env_starcraft_fails_at_once_here(monkeypatch):
    import ovmse.envs as envs

    def must_not_build(*args, **kwargs):
        raise AssertionError("an env was built before the install check")

    monkeypatch.setattr(envs, "make_starcraft_env", must_not_build)
    start = time.perf_counter()
    with pytest.raises(StarCraftUnavailableError, match="not installed") as info:
        make_env("3m", 8, backend="starcraft", seed=0)
    assert SMAC_PIP in str(info.value)
    assert time.perf_counter() - start < 2


def test_unknown_backend_lists_the_backends():
    with pytest.raises(ValueError, match="available: sim, starcraft"):
        make_env("3m", 1, backend="nonsense")


def test_env_config_backend_reaches_make_env():
    cfg = {"map_name": "3m", "backend": "starcraft", "num_envs": 8, "substeps": 8, "spawn_jitter": 1.0,
           "device": "cpu"}
    assert env_options(cfg) == {"backend": "starcraft", "substeps": 8, "spawn_jitter": 1.0}
    assert env_options({"map_name": "3m", "num_envs": 2})["backend"] == "sim"


# ------------------------------------------------------------------------------ parity script
@pytest.mark.skipif(HAS_SMAC, reason="a 'smac' package is installed here")
@pytest.mark.slow
def test_parity_script_exits_2_without_starcraft(tmp_path):
    out = tmp_path / "parity.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "backend_parity.py"), "--map", "3m", "--episodes", "2",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert SMAC_PIP in proc.stderr and "not installed" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_parity_script_report_with_stand_ins(oxwhirl_smac, monkeypatch, tmp_path, capsys):
    """The script's full path, with the fake game behind the default factory (SerialEnv)."""
    import importlib.util as iu

    monkeypatch.setenv("SC2PATH", str(_sc2_dir(tmp_path, maps=("3m",))))
    spec = iu.spec_from_file_location("backend_parity", ROOT / "scripts" / "backend_parity.py")
    script = iu.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "parity.md"
    assert script.main(["--map", "3m", "--episodes", "4", "--num-envs", "2", "--serial", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| obs_shape | 30 | 30 | yes |" in text and "| state_shape | 48 | 48 | yes |" in text
    assert "| win rate |" in text and "| env steps / s |" in text and "Base75689" in text
    # every scripted stand-in battle is a 3-step win
    assert "| win rate | " in text and text.split("| win rate | ")[1].split(" | ")[1].startswith("1.000")

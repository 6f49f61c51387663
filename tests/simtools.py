"""Helpers to build hand-made battle scenarios on the embedded SMAC simulator.

Units are indexed [allies..., enemies...]; agent ``i`` is unit ``i`` and enemy
``j`` is unit ``n_agents + j``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ovmse.envs import make_env

IDLE = 0  # Battle order codes (ovmse.envs.battle): IDLE, MOVE, ATTACK, ATTACK_MOVE
STOP, NORTH, SOUTH, EAST, WEST = 1, 2, 3, 4, 5
# Per-env-step duration and SC2 loops per game-second (facts sheet, "Time").
STEP_SECONDS = 0.5
LOOPS_PER_SECOND = 16


def scenario_env(map_name: str, num_envs: int = 1, **kw):
    """A deterministic env (no spawn jitter, fixed seed), reset and ready."""
    kw.setdefault("seed", 0)
    kw.setdefault("spawn_jitter", 0.0)
    env = make_env(map_name, num_envs, **kw)
    td = env.reset()
    return env, td


def act(env, actions) -> TensorDict:
    """Step ``env`` with ``actions`` ([B, N] or a list for B == 1); return the "next" tensordict."""
    B, N = env.batch_size[0], env.spec.n_agents
    a = torch.as_tensor(actions, dtype=torch.int64).reshape(B, N)
    td = TensorDict({}, batch_size=env.batch_size)
    td.set(("agents", "action"), a)
    return env.step(td)["next"]


def stop_all(env) -> TensorDict:
    """Step with every agent taking ``stop`` (alive) or no-op (dead)."""
    alive = env.battle.alive[:, : env.spec.n_agents]
    return act(env, torch.where(alive, STOP, 0))


def place(battle, b: int, u: int, x: float, y: float) -> None:
    battle.x[b, u] = x
    battle.y[b, u] = y


def freeze(battle, b: int, u: int, x: float, y: float) -> None:
    """Put unit ``u`` at (x, y) with no order and no target.

    An AI unit then stands still until a hostile comes within its acquisition
    range (9); keep frozen units farther than that from every hostile.
    """
    place(battle, b, u, x, y)
    battle.order[b, u] = IDLE
    battle.target[b, u] = -1


def features_now(env):
    """(action mask, observations, state) of the env's *current* battle state, without stepping."""
    from ovmse.envs import features as F

    if hasattr(F, "compute_features"):
        return F.compute_features(env.battle, env.tables)
    mask = F.available_actions(env.battle, env.tables)
    return mask, F.observations(env.battle, env.tables, mask), F.global_state(env.battle, env.tables)


def shots_fired_by_step(cooldown_s: float, n_steps: int) -> list[int]:
    """Cumulative shots of a unit that may fire every loop from loop 0 on, at the end of steps 1..n.

    Shot n (n = 1, 2, ...) happens in the first game loop L >= (n - 1) * cooldown * 16,
    i.e. L_n = ceil((n - 1) * cooldown * 16); env step k covers loops 8(k-1) .. 8k-1.
    """
    import math

    per_shot = cooldown_s * LOOPS_PER_SECOND
    counts = []
    for k in range(1, n_steps + 1):
        last_loop = 8 * k - 1
        n = 0
        while math.ceil(n * per_shot) <= last_loop:
            n += 1
        counts.append(n)
    return counts


def run_collector_through_assembler(collector, assembler):
    """Drain ``collector`` into ``assembler``; returns the raw stream ``[B, total steps]``
    (contiguous in time per env) and the list of emitted episode batches."""
    batches, emitted = [], []
    for batch in collector:
        batches.append(batch.clone())
        eps = assembler.add(batch)
        if eps is not None:
            emitted.append(eps)
    collector.shutdown()
    return torch.cat(batches, dim=1), emitted


def random_dataset(path, map_name: str = "3m", episodes: int = 24, seed: int = 3):
    """A small dataset of random-policy battles at ``path`` (``<root>/<map>/medium``); returns it."""
    from ovmse.datasets import EpisodeDatasetWriter
    from ovmse.datasets.recording import record_episodes
    from ovmse.envs import get_map

    with EpisodeDatasetWriter(path, get_map(map_name), episodes, quality="medium") as w:
        record_episodes(w, None, num_envs=8, seed=seed)
        w.close(behaviour={"policy": "random"})
    return path


def load_script(relative_path: str):
    """A script of the repository (``benchmarks/x.py``, ``scripts/y.py``) imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

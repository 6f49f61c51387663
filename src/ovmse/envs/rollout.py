"""Run many battles with a policy and summarise them (win rate, return, length, speed)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

Policy = Callable[[TensorDictBase], TensorDictBase]
# Called when battles end, before they reset: (env, the step's "next" tensordict)
# -> per-battle values ``[B]`` to record for the battles that ended.
EndHook = Callable[[EnvBase, TensorDictBase], dict[str, torch.Tensor]]


@dataclass
class BattleStats:
    """Outcome of a batch of complete battles.

    ``returns``, ``lengths``, ``won``, ``truncated`` (episode limit reached)
    and each list in ``extra`` (filled by an ``on_end`` hook) hold one entry
    per battle. Every env contributes the same number of consecutive battles
    from its reset, so short battles are not over-represented.
    """

    returns: list[float]
    lengths: list[int]
    won: list[bool]
    truncated: list[bool]
    env_steps: int
    seconds: float
    extra: dict[str, list] = field(default_factory=dict)

    @property
    def battles(self) -> int:
        return len(self.returns)

    @property
    def win_rate(self) -> float:
        return sum(self.won) / max(self.battles, 1)

    @property
    def mean_return(self) -> float:
        return sum(self.returns) / max(self.battles, 1)

    @property
    def std_return(self) -> float:
        m = self.mean_return
        return math.sqrt(sum((r - m) ** 2 for r in self.returns) / max(self.battles, 1))

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / max(self.battles, 1)

    @property
    def steps_per_second(self) -> float:
        """Env steps (one per battle per step) per wall-clock second."""
        return self.env_steps / max(self.seconds, 1e-9)

    def summary(self) -> dict[str, float]:
        return {
            "battles": self.battles,
            "win_rate": self.win_rate,
            "return_mean": self.mean_return,
            "return_std": self.std_return,
            "return_min": min(self.returns, default=float("nan")),
            "return_max": max(self.returns, default=float("nan")),
            "episode_length_mean": self.mean_length,
            "env_steps": self.env_steps,
            "env_steps_per_second": self.steps_per_second,
        }


def run_battles(
    env: EnvBase, n_battles: int, policy: Policy | None = None, on_end: EndHook | None = None
) -> BattleStats:
    """Play at least ``n_battles`` complete battles on a batched env.

    Each of the env's ``B`` battles plays ``ceil(n_battles / B)`` consecutive
    episodes from a fresh reset and all of them are recorded, so the count is
    ``B * ceil(n_battles / B)``. ``policy`` writes ``("agents", "action")``
    into the tensordict it gets; the default is uniformly random available
    actions (``env.rand_action``). ``on_end`` can read the env before ended
    battles reset (e.g. who is left standing) and adds its values to ``extra``.
    """
    if n_battles < 1:
        raise ValueError(f"n_battles must be >= 1, got {n_battles}")
    policy = policy or env.rand_action
    B = env.batch_size[0]
    per_env = math.ceil(n_battles / B)
    done_count = torch.zeros(B, dtype=torch.long)
    ep_return = torch.zeros(B, dtype=torch.float64)
    ep_length = torch.zeros(B, dtype=torch.long)
    stats = BattleStats([], [], [], [], 0, 0.0)
    start = time.perf_counter()
    td = env.reset()
    while bool((done_count < per_env).any()):
        td = env.step(policy(td))
        stats.env_steps += B
        nxt = td.get("next")
        ep_return += nxt.get("reward").reshape(B).double().cpu()
        ep_length += 1
        done = nxt.get("done").reshape(B).cpu()
        if bool(done.any()):
            record = done & (done_count < per_env)
            stats.returns += ep_return[record].tolist()
            stats.lengths += ep_length[record].tolist()
            stats.won += nxt.get(("info", "battle_won")).reshape(B).cpu()[record].tolist()
            stats.truncated += nxt.get("truncated").reshape(B).cpu()[record].tolist()
            for key, values in (on_end(env, nxt) if on_end else {}).items():
                stats.extra.setdefault(key, []).extend(values.reshape(B).cpu()[record].tolist())
            done_count += done.long()
            ep_return[done] = 0
            ep_length[done] = 0
        td = env.maybe_reset(step_mdp(td))
    stats.seconds = time.perf_counter() - start
    return stats

"""Phase ``rollout``: play battles with a fixed policy and report their statistics.

    python train.py phase=rollout env=2s3z [policy=random|scripted] [n_battles=256]

Prints a table and writes ``rollout_stats.json`` into the run directory. The
metrics use slash names (``rollout/win_rate``, ``rollout/return_mean``, ...), as
every phase's metrics do.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from ovmse.envs.rollout import BattleStats, run_battles

from .common import env_from_config, log_scalars, seed_everything, write_json

log = logging.getLogger(__name__)

POLICIES = ("random", "scripted")
STATS_FILE = "rollout_stats.json"


def run(cfg: DictConfig) -> dict[str, float]:
    policy = str(cfg.policy)
    if policy not in POLICIES:
        raise ValueError(f"Unknown policy {policy!r} for phase=rollout; choose one of: {', '.join(POLICIES)}.")
    n_battles = int(cfg.n_battles)
    if n_battles < 1:
        raise ValueError(f"n_battles must be >= 1, got {n_battles}")
    seed_everything(int(cfg.seed))
    num_envs = min(int(cfg.env.num_envs), n_battles)
    env = env_from_config(cfg.env, seed=int(cfg.seed), num_envs=num_envs,
                          scripted_allies=(policy == "scripted"))
    # With scripted allies the env ignores the actions, but they still have to be
    # valid, so both policies hand it random available actions.
    stats = run_battles(env, n_battles, policy=None)

    metrics = {f"rollout/{k}": v for k, v in stats.summary().items()}
    result = {
        "phase": "rollout",
        "map_name": env.spec.name,
        "backend": str(cfg.env.backend),
        "policy": policy,
        "num_envs": num_envs,
        "seed": int(cfg.seed),
        "device": str(env.device),
        "metrics": metrics,
    }
    out_dir = Path(cfg.paths.output_dir)
    path = write_json(out_dir / STATS_FILE, result)
    log_scalars(cfg, metrics)
    print(format_table(result, stats))
    log.info("Rollout statistics written to %s", path)
    return metrics


def format_table(result: dict, stats: BattleStats) -> str:
    """A short, readable summary of a rollout."""
    s = stats.summary()
    rows = [
        ("battles", f"{s['battles']:d}"),
        ("win rate", f"{s['win_rate']:.3f}"),
        ("return mean ± std", f"{s['return_mean']:.3f} ± {s['return_std']:.3f}"),
        ("return min / max", f"{s['return_min']:.3f} / {s['return_max']:.3f}"),
        ("episode length mean", f"{s['episode_length_mean']:.1f}"),
        ("env steps", f"{s['env_steps']:d}"),
        ("env steps / s", _fmt_rate(s["env_steps_per_second"])),
        ("wall time", f"{stats.seconds:.1f} s"),
    ]
    title = (f"rollout  {result['map_name']}  policy={result['policy']}  "
             f"({result['num_envs']} envs, {result['backend']}, {result['device']}, seed {result['seed']})")
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else str(x)

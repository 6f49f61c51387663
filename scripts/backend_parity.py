#!/usr/bin/env python
"""The same SMAC map through both env backends: the embedded simulator and real StarCraft II.

    python scripts/backend_parity.py                          # 3m, 64 random-policy battles each, 4 at a time
    python scripts/backend_parity.py --map 2s3z --episodes 200 --num-envs 8
    python scripts/backend_parity.py --serial                 # SerialEnv for the game (debugging)

For a machine with StarCraft II 4.10, the SMAC maps and oxwhirl's ``smac`` (docs/starcraft.md).
Prints and writes ``benchmarks/results/backend_parity_<map>.md`` (or ``--out``): the dimensions
each backend reports side by side, and for a uniformly random policy over available actions the
episode length and return (mean ± std), win rate, fraction of battles stopped by the episode
limit, and env steps per second (``B`` battles at a time: one tensor batch on the simulator,
one game process per battle on StarCraft II). Episodes lost to a game crash are left out and
counted. Without StarCraft II it prints what is missing and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _std(values: list[float]) -> float:
    if not values:
        return float("nan")
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def play(env, episodes: int) -> dict:
    """Random-policy battles on ``env``; crashed (lost) episodes are excluded and counted."""
    from ovmse.envs.rollout import run_battles

    def on_end(_env, nxt):
        return {"lost": nxt.get(("info", "episode_lost")).reshape(-1)}

    stats = run_battles(env, episodes, on_end=on_end)
    keep = [not lost for lost in stats.extra["lost"]]
    pick = lambda xs: [x for x, k in zip(xs, keep) if k]  # noqa: E731
    returns, lengths = pick(stats.returns), [float(n) for n in pick(stats.lengths)]
    won, truncated = pick(stats.won), pick(stats.truncated)
    return {
        "battles": len(returns),
        "lost": len(keep) - len(returns),
        "length": (_mean(lengths), _std(lengths)),
        "return": (_mean(returns), _std(returns)),
        "win_rate": _mean([float(w) for w in won]),
        "timeout_rate": _mean([float(t) for t in truncated]),
        "steps_per_second": stats.steps_per_second,
        "env_steps": stats.env_steps,
        "seconds": stats.seconds,
    }


def dimensions(map_name: str) -> tuple[dict, dict]:
    """(simulator MapSpec, StarCraft2Env.get_env_info()) for the map; no game is launched."""
    from ovmse.envs import get_map
    from ovmse.envs.starcraft import default_game

    spec = get_map(map_name)
    ours = {"n_agents": spec.n_agents, "n_actions": spec.n_actions, "obs_shape": spec.obs_dim,
            "state_shape": spec.state_dim, "episode_limit": spec.episode_limit}
    game = default_game(map_name)
    try:
        info = game.get_env_info()
    finally:
        game.close()
    return ours, {k: info.get(k) for k in ours}


def report(map_name: str, args, dims: tuple[dict, dict], sim: dict, sc2: dict, sc2_builds: list[str]) -> str:
    ours, theirs = dims
    lines = [
        f"# Backend parity: {map_name}",
        "",
        f"Written by `scripts/backend_parity.py --map {map_name} --episodes {args.episodes} "
        f"--num-envs {args.num_envs} --seed {args.seed}` on {time.strftime('%Y-%m-%d %H:%M')}. "
        f"StarCraft II builds found: {', '.join(sc2_builds) or '?'} (SC2 4.10 = Base75689).",
        "",
        "## Dimensions",
        "",
        "| field | simulator (MapSpec) | StarCraft II (get_env_info) | equal |",
        "|---|---|---|---|",
    ]
    for k in ours:
        lines.append(f"| {k} | {ours[k]} | {theirs[k]} | {'yes' if ours[k] == theirs[k] else '**NO**'} |")
    lines += [
        "",
        f"## Uniformly random available actions, {args.num_envs} battles at a time",
        "",
        "| metric | simulator | StarCraft II |",
        "|---|---|---|",
        f"| battles | {sim['battles']} | {sc2['battles']} (+{sc2['lost']} lost to crashes) |",
        f"| episode length | {sim['length'][0]:.2f} ± {sim['length'][1]:.2f} | "
        f"{sc2['length'][0]:.2f} ± {sc2['length'][1]:.2f} |",
        f"| return | {sim['return'][0]:.3f} ± {sim['return'][1]:.3f} | "
        f"{sc2['return'][0]:.3f} ± {sc2['return'][1]:.3f} |",
        f"| win rate | {sim['win_rate']:.3f} | {sc2['win_rate']:.3f} |",
        f"| episode-limit rate | {sim['timeout_rate']:.3f} | {sc2['timeout_rate']:.3f} |",
        f"| env steps / s | {sim['steps_per_second']:.0f} | {sc2['steps_per_second']:.0f} |",
        "",
        "Return = SMAC's scaled reward (max 20). ± is the standard deviation over battles, not an error bar. "
        "Random-policy statistics differ where the simulator approximates SC2 (pathing, target "
        "acquisition; docs/simulator.md).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", default="3m")
    parser.add_argument("--episodes", type=int, default=64, help="random-policy battles per backend")
    parser.add_argument("--num-envs", type=int, default=4, help="battles at a time (B)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serial", action="store_true", help="SerialEnv instead of ParallelEnv for the game")
    parser.add_argument("--out", type=Path, default=None,
                        help="report path (default benchmarks/results/backend_parity_<map>.md)")
    args = parser.parse_args(argv)

    from ovmse.envs import StarCraftUnavailableError, check_starcraft_available, make_env

    try:
        sc2_root = check_starcraft_available(args.map)
    except StarCraftUnavailableError as err:
        print(f"backend_parity: the starcraft backend is unavailable here.\n{err}", file=sys.stderr)
        return 2
    builds = sorted(p.name for p in (sc2_root / "Versions").iterdir() if p.name.startswith("Base"))

    dims = dimensions(args.map)
    print(f"dimensions (simulator, StarCraft II): {dims}", flush=True)
    sim_env = make_env(args.map, args.num_envs, seed=args.seed, backend="sim")
    sim = play(sim_env, args.episodes)
    print(f"simulator: {sim}", flush=True)
    sc2_env = make_env(args.map, args.num_envs, seed=args.seed, backend="starcraft", parallel=not args.serial)
    try:
        sc2 = play(sc2_env, args.episodes)
    finally:
        sc2_env.close()
    print(f"starcraft: {sc2}", flush=True)

    text = report(args.map, args, dims, sim, sc2, builds)
    out = args.out or ROOT / "benchmarks" / "results" / f"backend_parity_{args.map}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

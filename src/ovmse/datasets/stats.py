"""Per-episode statistics of episode-structured data (returns, lengths, wins)."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase

from ovmse.collection import layout


def episode_stats(episodes: TensorDictBase) -> dict[str, torch.Tensor]:
    """Returns ``[E]`` (float64), lengths ``[E]`` (transitions) and ``won`` ``[E]`` of
    episodes ``[E, T+1]`` in the stored layout (only ``filled`` rows count)."""
    transition = layout.transition_rows(episodes.get(layout.FILLED))
    reward = episodes.get(layout.REWARD).squeeze(-1).double()
    won = episodes.get(layout.BATTLE_WON).squeeze(-1)
    return {
        "return": (reward * transition).sum(-1),
        "length": transition.sum(-1),
        "won": (won & transition).any(-1),
    }


def summarize(returns: torch.Tensor, lengths: torch.Tensor, won: torch.Tensor) -> dict[str, float]:
    """The paper's Table 8 row (size, min/average/max return) plus win rate and lengths."""
    n = int(returns.numel())
    nan = math.nan
    return {
        "episodes": n,
        "transitions": int(lengths.sum()),
        "return_min": float(returns.min()) if n else nan,
        "return_mean": float(returns.mean()) if n else nan,
        "return_max": float(returns.max()) if n else nan,
        "return_std": float(returns.std(unbiased=False)) if n else nan,
        "win_rate": float(won.double().mean()) if n else nan,
        "episode_length_mean": float(lengths.double().mean()) if n else nan,
    }


def dataset_stats(episodes: TensorDictBase, chunk: int = 1000) -> tuple[dict[str, float], torch.Tensor]:
    """Summary and per-episode returns ``[E]`` of a (possibly memory-mapped) dataset, read
    ``chunk`` episodes at a time so a dataset larger than memory is never loaded whole."""
    parts: dict[str, list[torch.Tensor]] = {"return": [], "length": [], "won": []}
    for start in range(0, episodes.shape[0], chunk):
        s = episode_stats(episodes[start : start + chunk])
        for k in parts:
            parts[k].append(s[k])
    cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}
    return summarize(cat["return"], cat["length"], cat["won"].bool()), cat["return"]

"""Unlearning diagnostic (the paper's Figure 1): Q_tot of a fixed set of trajectories of the
offline policy, tracked through online fine-tuning.

Before the first online update the offline policy plays ``episodes`` greedy battles; those
episodes (``[E, T+1]``, the PyMARL layout of :mod:`ovmse.collection.episodes`) are kept fixed for
the whole run. Every ``every_env_steps`` env steps the current learner is measured on them:

    eval/probe_q_tot         mean over valid transitions of Q_tot(τ_t, a_t), the actions taken
    eval/probe_q_tot_greedy  the same for the learner's own greedy actions
    eval/probe_mc_return     the trajectories' discounted Monte-Carlo return-to-go (fixed)

A value that falls away from the offline estimate and from the Monte-Carlo return while the
trajectories stay the same is what the paper calls unlearning.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from tensordict import TensorDict, TensorDictBase

from ovmse.datasets.recording import record_episodes
from ovmse.envs import get_map
from ovmse.nets import RNNAgent

from .metrics_log import log_env_metrics
from .value_diagnostics import value_sums


class _EpisodeSink:
    """What :func:`record_episodes` writes into, kept in memory."""

    def __init__(self, spec, n_episodes: int) -> None:
        self.spec, self.n_episodes, self.parts = spec, int(n_episodes), []

    def append(self, episodes: TensorDictBase) -> int:
        self.parts.append(episodes.clone())
        return episodes.shape[0]


def record_probe(agent: RNNAgent, map_name: str, episodes: int, *, seed: int, device="cpu",
                 env_options: dict | None = None) -> TensorDict:
    """``episodes`` greedy episodes of ``agent`` in fresh battles: ``[E, T+1]``."""
    sink = _EpisodeSink(get_map(map_name), episodes)
    record_episodes(sink, agent, num_envs=min(episodes, 64), seed=seed, device=device, env_options=env_options)
    return torch.cat(sink.parts, 0)[:episodes]


def probe_values(module, probe: TensorDictBase) -> dict[str, float]:
    """The ``eval/probe_*`` values of ``module`` on ``probe`` (see the module docstring)."""
    was_training = module.training
    module.eval()
    sums = value_sums(module, probe)
    module.train(was_training)
    n = max(sums["n"], 1.0)
    return {"eval/probe_q_tot": sums["q_data"] / n, "eval/probe_q_tot_greedy": sums["q_greedy"] / n,
            "eval/probe_mc_return": sums["mc_return"] / n}


class UnlearningProbe:
    """Measures :func:`probe_values` on fixed episodes when training starts (before any update)
    and every ``every_env_steps`` env steps after; the loop logs them. The probe is saved under
    ``checkpoints/probe`` (:func:`load_or_record_probe`), so a resumed run measures the same
    trajectories.

    Args:
        probe: the fixed episodes ``[E, T+1]`` (:func:`record_probe`).
        every_env_steps: env steps between two measurements.
    """

    def __init__(self, probe: TensorDictBase, every_env_steps: int) -> None:
        if every_env_steps < 1:
            raise ValueError(f"unlearning_probe.every_env_steps must be >= 1, got {every_env_steps}")
        self.probe = probe
        self.every = int(every_env_steps)
        self._next = 0
        self.history: list[tuple[int, dict[str, float]]] = []

    def due(self, module) -> bool:
        return module.env_steps >= self._next

    def measure(self, trainer: pl.Trainer, module) -> dict[str, float]:
        values = probe_values(module, self.probe.to(module.device))
        self.history.append((module.env_steps, values))
        log_env_metrics(trainer, module, values)
        self._next = (module.env_steps // self.every + 1) * self.every
        return values

    def state_dict(self) -> dict:
        return {"next": self._next}

    def load_state_dict(self, state: dict) -> None:
        self._next = int(state["next"])


def load_or_record_probe(path: Path, agent: RNNAgent, map_name: str, episodes: int, *, seed: int, device,
                         env_options: dict | None) -> TensorDict:
    """The probe of a run: loaded from ``path`` when a previous (killed) attempt saved it, else
    recorded now with ``agent`` and saved there (written under a temporary name, then renamed)."""
    import os

    if path.is_dir():
        return TensorDict.load_memmap(str(path), allow_pickle=False).clone()
    probe = record_probe(agent, map_name, episodes, seed=seed, device=device, env_options=env_options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    probe.cpu().memmap_(str(tmp))
    os.replace(tmp, path)
    return probe

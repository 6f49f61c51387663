"""Settings every phase shares, checked before a phase starts: each wrong value is refused
with the key that holds it, instead of a traceback (or a division by zero) later."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

__all__ = ["check_device", "check_settings"]

# (key, smallest value, what the value means): checked where the phase's config has the key.
COUNTS = (
    ("env_steps", 1, "the online budget in env steps"),
    ("steps", 1, "offline updates"),
    ("log_every_env_steps", 1, "env steps between two rows of metrics"),
    ("log_every_updates", 1, "updates between two rows of metrics"),
    ("eval.interval_env_steps", 1, "env steps between greedy evaluations"),
    ("eval.interval_updates", 1, "updates between greedy evaluations"),
    ("eval.episodes", 1, "battles per evaluation"),
    ("eval.num_envs", 1, "battles evaluated side by side"),
    ("final_eval.episodes", 0, "battles of the final test; 0 skips it"),
    ("final_eval.num_envs", 1, "battles of the final test side by side"),
    ("checkpoint.every_env_steps", 0, "env steps between resume points; 0: only after evaluations"),
    ("unlearning_probe.episodes", 0, "battles of the unlearning probe; 0 turns it off"),
    ("unlearning_probe.every_env_steps", 1, "env steps between probe measurements"),
    ("env.num_envs", 1, "battles collected side by side"),
    ("n_battles", 1, "battles to play"),
    ("episodes", 1, "episodes to play or record"),  # evaluate.py, phase=collect
    ("num_envs", 1, "battles side by side"),  # evaluate.py
    ("algo.steps_per_env", 1, "env steps per battle in one collection call"),
    ("algo.batch_size", 1, "episodes per update"),
    ("algo.buffer_size", 1, "episodes in the online replay buffer"),
    ("algo.hidden_dim", 1, "width of the agent's GRU"),
    ("algo.mixing_embed_dim", 1, "width of the mixer"),
    ("algo.hypernet_embed", 1, "width of the mixer's hypernetworks"),
    ("algo.target_update_interval", 1, "episodes between target refreshes"),
    ("algo.episodes_per_update", 1, "completed episodes per update"),
    ("algo.env_steps_per_update", 1, "env steps per update (null: episodes_per_update decides)"),
    ("algo.epsilon_anneal_steps", 0, "env steps over which ε falls"),
    ("algo.offline.batch_size", 1, "episodes per offline update"),
    ("algo.offline.samples", 1, "joint actions MACQL samples per transition"),
    ("algo.offline.target_update_updates", 1, "offline updates between target refreshes"),
)
# (key, low, high): real numbers that must lie in [low, high] (None: unbounded).
RANGES = (
    ("algo.lr", 0.0, None),
    ("algo.gamma", 0.0, 1.0),
    ("algo.td_lambda", 0.0, 1.0),
    ("algo.online.td_lambda", 0.0, 1.0),
    ("algo.grad_norm_clip", 0.0, None),
    ("algo.epsilon_start", 0.0, 1.0),
    ("algo.epsilon_end", 0.0, 1.0),
)


def check_device(name: str) -> torch.device:
    """``device`` as a torch device that this machine has (``auto``: cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} is not a torch device: use cpu, cuda, cuda:<index> or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but this torch ({torch.__version__}) sees no CUDA GPU: use device=cpu "
                             "or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device={name!r}: this project runs on cpu or cuda")
    return device


def check_settings(cfg: DictConfig) -> None:
    """The shared settings of ``cfg``: seed, device and every count of :data:`COUNTS` present."""
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if cfg.get("device") is not None:
        check_device(str(cfg.device))
    for key, least, meaning in COUNTS:
        for where, value in _values(cfg, key):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{where} must be an integer >= {least} ({meaning}), got {value!r}")
    for key, low, high in RANGES:
        for where, value in _values(cfg, key):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    value >= low and (high is None or value <= high)):
                bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{where} must be a number {bounds}, got {value!r}")


def _values(cfg: DictConfig, key: str) -> list[tuple[str, object]]:
    """``key``'s value, or each value of a per-map table (``{2s3z: 50, default: 200}``), with
    the key that names it; nothing when the key is absent or null."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return []
    if OmegaConf.is_dict(value):
        return [(f"{key}.{k}", v) for k, v in value.items() if v is not None]
    return [(key, value)]

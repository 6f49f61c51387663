"""Helpers shared by the phases: seeding, device choice, env construction, outputs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

# Keys of an env config that are not make_env options (make_env takes them as arguments of their own).
# ``backend`` is not among them: it must reach every make_env call (OnlineCollection,
# GreedyEvaluator, record_episodes get ``**env_options``).
_ENV_KEYS = ("map_name", "num_envs", "device")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as given, if this machine has it
    (:func:`ovmse.phases.checks.check_device`)."""
    from .checks import check_device

    return check_device(name)


def collection_threads(cfg: DictConfig) -> int | None:
    """``collect_threads`` of train.yaml: torch threads of the simulator's side (collection,
    greedy evaluation); updates run with ``num_threads`` (:mod:`ovmse.training.threads`)."""
    from ovmse.training.threads import check_threads

    return check_threads(cfg.get("collect_threads", 1), "collect_threads")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)


def env_from_config(env_cfg: DictConfig | Mapping[str, Any], *, seed: int | None = None,
                    num_envs: int | None = None, **overrides):
    """Build the env an ``env`` config group entry describes (``configs/env/*.yaml``).

    Every key besides ``map_name``, ``num_envs`` and ``device`` is passed to
    :func:`ovmse.envs.make_env`: ``backend`` ("sim" when absent) and the backend's options
    (``substeps``, ``spawn_jitter``, ...); ``overrides`` add or replace options
    (e.g. ``scripted_allies=True``).
    """
    from ovmse.envs import make_env

    cfg = OmegaConf.to_container(env_cfg, resolve=True) if isinstance(env_cfg, DictConfig) else dict(env_cfg)
    options = {**env_options(cfg), **overrides}
    return make_env(
        cfg["map_name"],
        int(num_envs if num_envs is not None else cfg.get("num_envs", 1)),
        device=resolve_device(str(cfg.get("device", "cpu"))),
        seed=seed,
        **options,
    )


def env_options(env_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The ``make_env`` options of an ``env`` config: ``backend`` ("sim" when absent) and the
    backend's options (all keys but map, batch size and device)."""
    cfg = OmegaConf.to_container(env_cfg, resolve=True) if isinstance(env_cfg, DictConfig) else dict(env_cfg)
    options = {k: v for k, v in cfg.items() if k not in _ENV_KEYS}
    options.setdefault("backend", "sim")
    return options


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename: a kill leaves
    the old file or the new one, never a truncated one (summaries mark a stage as done)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def log_scalars(cfg: DictConfig, metrics: Mapping[str, float], step: int = 0) -> None:
    """Write ``metrics`` (slash names) to TensorBoard under ``<run dir>/tensorboard``."""
    if not cfg.logger.tensorboard:
        return
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(Path(cfg.paths.output_dir) / "tensorboard")) as writer:
        for name, value in metrics.items():
            writer.add_scalar(name, float(value), step)


def check_backend(env_cfg: DictConfig | Mapping[str, Any]) -> None:
    """Fail at once, before anything is built, when ``env.backend=starcraft`` is selected on a
    machine without StarCraft II or oxwhirl's ``smac`` (the message says how to install)."""
    if str(env_cfg.get("backend", "sim")) == "starcraft":
        from ovmse.envs.starcraft import check_starcraft_available

        check_starcraft_available(str(env_cfg["map_name"]))


def make_loggers(cfg: DictConfig, out: str | Path, hparams: dict | None = None, resume_step: int | None = None) -> list:
    """``metrics.csv`` in the run directory, plus TensorBoard events under ``tensorboard/``
    when ``logger.tensorboard`` (the default). ``resume_step``: a resumed run keeps its rows up
    to there (:func:`continue_metrics_csv`, first: the CSV logger deletes the file when it
    starts). ``hparams`` (the module's, as the run trains) are then given to every logger: the
    loop logs rows before Lightning would log them, and TensorBoard writes its hparams.yaml
    only once, at its first save."""
    import warnings

    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    if not (Path(out) / "metrics.csv").exists():
        # A new run's directory holds Hydra's files only: Lightning's "previous log files will be
        # deleted" is a false alarm there (a resume, with a metrics.csv, keeps its rows itself).
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    loggers = [CSVLogger(save_dir=str(out), name="", version="")]
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False))
    if resume_step is not None:
        continue_metrics_csv(loggers, out, upto_step=resume_step)
    for logger in loggers if hparams is not None else ():
        logger.log_hyperparams(hparams)
    return loggers


def trainer_settings(trainer: DictConfig | Mapping[str, Any] | None):
    """The typed :class:`~ovmse.training.ddp.TrainerSettings` of a ``trainer`` config (or of a
    run's stored config); ``training/`` takes these, never the config itself."""
    from ovmse.training.ddp import TrainerSettings

    if isinstance(trainer, DictConfig):
        trainer = OmegaConf.to_container(trainer, resolve=True)
    return TrainerSettings.from_mapping(trainer or {})


def make_qmix_module(algo: DictConfig, spec, objective=None, **kwargs):
    """The :class:`~ovmse.training.QMixModule` of an ``algo`` config for map ``spec``: networks
    from the config, ``objective`` (:func:`~ovmse.phases.objective.resolve_objective`; default:
    the config's TD(λ) alone); ``kwargs`` add the dataset identity."""
    from ovmse.training import QMixModule

    from .objective import ObjectiveSettings, td_settings

    return QMixModule(
        obs_dim=spec.obs_dim, state_dim=spec.state_dim, n_agents=spec.n_agents, n_actions=spec.n_actions,
        map_name=spec.name, hidden_dim=algo.hidden_dim, mixing_embed_dim=algo.mixing_embed_dim,
        hypernet_embed=algo.hypernet_embed, lr=algo.lr,
        objective=objective if objective is not None else ObjectiveSettings(td=td_settings(algo)), **kwargs,
    )


def continue_metrics_csv(loggers: list, out: str | Path, upto_step: int) -> None:
    """Keep a resumed run's ``metrics.csv``: Lightning's CSV logger deletes an existing file when it
    starts, so its rows up to ``upto_step`` (the resume point) are handed to the new logger, and
    the rows the killed run wrote after its last checkpoint (superseded by the resumed run) are
    moved to ``metrics.before-resume-<step>.csv`` rather than lost."""
    import csv

    from pytorch_lightning.loggers import CSVLogger

    path = Path(out) / "metrics.csv"
    csv_logger = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is None or not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    keep, later = [], []
    for r in rows:
        (keep if r.get("step") not in (None, "") and float(r["step"]) <= upto_step else later).append(r)
    if later:
        with (Path(out) / f"metrics.before-resume-{upto_step}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(later)
    writer = csv_logger.experiment  # creating it deletes metrics.csv: its rows are in memory now
    writer.metrics_keys = sorted(header)
    writer.metrics = [{k: v for k, v in r.items() if v != ""} for r in keep]
    writer.save()

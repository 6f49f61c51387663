"""Phase "online": train in the environment (QMIX from scratch for now).

``python train.py phase=online env=3m algo=qmix env_steps=300000`` writes into
the run directory the resolved config, TensorBoard events (``tensorboard/``),
``metrics.csv`` (one row per logged env step with ``env_steps``, ``collect/``,
``train/``, ``eval/`` columns) and ``checkpoints/{last,best}.ckpt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from data_modules import ReplayDataModule
from ovmse.collection import EpisodeReplayBuffer
from ovmse.envs import get_map
from ovmse.exploration import LinearSchedule
from ovmse.training import QMixModule
from ovmse.training.callbacks import (
    EnvStepProgressBar,
    GreedyEvaluationCallback,
    OnlineCollectionCallback,
    TargetUpdateCallback,
)
from ovmse.training.collection_driver import OnlineCollection
from ovmse.training.evaluation import GreedyEvaluator

from .common import check_backend, make_loggers, make_qmix_module
from .common import env_options as env_options_of
from .common import resolve_device, seed_everything, write_json


@dataclass
class OnlineRun:
    """Everything an online training run is made of (built by :func:`build_online_run`)."""

    module: QMixModule
    replay: EpisodeReplayBuffer
    collection: OnlineCollectionCallback
    evaluation: GreedyEvaluationCallback
    trainer: pl.Trainer
    data: ReplayDataModule


def build_online_run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> OnlineRun:
    """QMIX learner, replay, collector, evaluator, loggers and Trainer of ``cfg`` (train.yaml
    with an online-style phase: ``env_steps``, ``eval``, ``log_every_env_steps``).
    ``extra_callbacks`` run after the evaluation callback in every training iteration."""
    seed_everything(int(cfg.seed))
    check_backend(cfg.env)
    algo, out = cfg.algo, Path(cfg.paths.output_dir)
    spec = get_map(cfg.env.map_name)
    env_options = env_options_of(cfg.env)
    # trainer=ddp: each rank collects and evaluates with its own seeds, on its own GPU if any
    # (docs/scaling.md).
    from ovmse.training.ddp import (check_rank, debug_callbacks, expected_global_rank, rank_device, rank_seed,
                                    trainer_kwargs)

    device = rank_device(resolve_device(str(cfg.device)), cfg.trainer)
    rank = expected_global_rank(cfg.trainer)
    env_seed = rank_seed(cfg.seed, rank, int(cfg.collector.num_workers))

    module = make_qmix_module(algo, spec)
    module.to(device)
    replay = EpisodeReplayBuffer(capacity=int(algo.buffer_size), device=device)
    data = ReplayDataModule(online=replay, batch_size=int(algo.batch_size), offline_fraction=0.0)
    collection = make_collection(cfg, module, replay, env_seed, device, env_options)
    evaluator = GreedyEvaluator(
        module.agent, spec.name, int(cfg.eval.num_envs), seed=env_seed + 10_000, device=device,
        env_options=env_options,
    )
    collect_cb = OnlineCollectionCallback(
        collection, int(cfg.env_steps), warmup_episodes=int(algo.batch_size), log_every=int(cfg.log_every_env_steps)
    )
    eval_cb = GreedyEvaluationCallback(evaluator, int(cfg.eval.interval_env_steps), int(cfg.eval.episodes),
                                       out / "checkpoints")
    loggers = make_loggers(cfg, out)
    trainer = pl.Trainer(
        **trainer_kwargs(cfg.trainer, cfg.get("num_threads")),
        max_epochs=1,
        max_steps=-1,
        gradient_clip_val=float(algo.grad_norm_clip),
        logger=loggers,
        callbacks=[collect_cb, TargetUpdateCallback(int(algo.target_update_interval)), eval_cb,
                   *extra_callbacks, *debug_callbacks(out),
                   EnvStepProgressBar(eval_cb, collect_cb, refresh_rate=int(cfg.trainer.progress_refresh_rate))],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    check_rank(trainer, rank)
    return OnlineRun(module, replay, collect_cb, eval_cb, trainer, data)


def make_collection(cfg: DictConfig, module: QMixModule, replay: EpisodeReplayBuffer, seed: int,
                    device: torch.device, env_options: dict):
    """The env side of ``cfg.collector``: an in-process or multi-process
    :class:`OnlineCollection`, or torch.distributed env workers (``collector.distributed``)."""
    algo, collector = cfg.algo, cfg.collector
    num_envs, workers = int(cfg.env.num_envs), int(collector.num_workers)
    epsilon = LinearSchedule(algo.epsilon_start, algo.epsilon_end, int(algo.epsilon_anneal_steps))
    dist = collector.get("distributed") or {}
    if not dist.get("enabled", False):
        return OnlineCollection(
            module.agent, cfg.env.map_name, num_envs, replay, exploration=algo.exploration, epsilon=epsilon,
            steps_per_env=int(algo.steps_per_env), seed=seed, device=device, env_options=env_options,
            num_workers=workers,
        )
    from ovmse.training.ddp import is_ddp
    from ovmse.training.distributed_collection import DistributedEnvWorkers

    if is_ddp(cfg.trainer):
        raise ValueError("collector.distributed.enabled=true cannot be combined with trainer=ddp: both need "
                         "the default torch.distributed process group (docs/scaling.md)")
    if num_envs % workers:
        raise ValueError(f"env.num_envs={num_envs} must be divisible by collector.num_workers={workers}")
    return DistributedEnvWorkers(
        module.agent, cfg.env.map_name, num_workers=workers, envs_per_worker=num_envs // workers,
        steps_per_env=int(algo.steps_per_env), replay=replay, exploration=algo.exploration, epsilon=epsilon,
        seed=seed, device=device, env_options=env_options, launcher=str(dist.launcher),
        backend=str(dist.backend), tcp_port=dist.get("tcp_port"),
    )


def run(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("ckpt"):
        raise ValueError(
            f"ckpt={cfg.ckpt!r}: fine-tuning from an offline checkpoint (OVMSE and the other "
            "offline-to-online algorithms) is not implemented yet; phase=online trains algo=qmix "
            "from scratch (leave ckpt unset). phase=offline writes the checkpoints it will start from."
        )
    out = Path(cfg.paths.output_dir)
    r = build_online_run(cfg)
    r.trainer.fit(r.module, datamodule=r.data)
    module, eval_cb = r.module, r.evaluation
    result = {"env_steps": module.env_steps, "episodes": module.episodes, "updates": module.updates,
              **eval_cb.latest, "eval/best_win_rate": eval_cb.best}
    if not r.trainer.is_global_zero:  # trainer=ddp: rank 0 speaks for the run
        return result
    write_json(out / "online_summary.json", result)
    print(f"online {cfg.env.map_name}: {module.env_steps} env steps, {module.updates} updates, "
          f"final greedy win rate {eval_cb.latest.get('eval/win_rate', float('nan')):.3f} "
          f"(best {eval_cb.best:.3f}); checkpoints in {out / 'checkpoints'}")
    return result

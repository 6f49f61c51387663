"""Phase "offline": pretrain QMIX with a CQL regulariser on a dataset alone.

``python train.py phase=offline env=2s3z dataset=medium algo=ovmse`` trains
``L_TD + α·L_CQL`` (MACQL or CFCQL, α by map: ``configs/algo/o2o.yaml``) on batches drawn
from the dataset only, counting gradient steps (``steps``, or ``dataset_timesteps`` as CFCQL
counts them), with a greedy evaluation in the
simulator every ``eval.interval_updates`` updates (``eval/win_rate`` etc., x-axis = updates).
At the end the target networks are refreshed (unless the last update just did) and frozen
into the module as the offline target ``Q_tot-offline``, and ``checkpoints/last.ckpt`` is
written with it (``frozen_agent`` / ``frozen_mixer``): that is the checkpoint the online
phase starts from. ``best.ckpt`` is the
evaluation with the best win rate, for inspection (no frozen target).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data_modules import ReplayDataModule
from ovmse.collection import EpisodeReplayBuffer
from ovmse.datasets import load_dataset, resolve_dataset
from ovmse.envs import get_map
from ovmse.training.behaviour_pretraining import pretrain_behaviour
from ovmse.training.checkpointing import atomic_save_checkpoint
from ovmse.training.evaluation import GreedyEvaluator
from ovmse.training.loops import OfflineLoop
from ovmse.training.progress_bar import EnvStepProgressBar
from ovmse.training.scheduled_evaluation import ScheduledEvaluation
from ovmse.training.target_schedule import TargetSchedule
from ovmse.training.trainer import make_trainer

from .common import (check_backend, collection_threads, make_loggers, make_qmix_module, resolve_device, seed_everything,
                     trainer_settings, write_json)
from .common import env_options as env_options_of
from .objective import resolve_objective
from .settings import offline_settings


def offline_updates(steps: int, dataset_timesteps: int | None, batch_size: int, episodes: int, transitions: int) -> int:
    """The offline phase's length in updates: ``steps``, or, when ``dataset_timesteps`` is set,
    the updates whose batches hold that many filled rows (CFCQL's ``t_max`` counts each episode
    of ``len`` transitions as ``len + 1`` rows, PyMARL's layout)."""
    if dataset_timesteps is None:
        return int(steps)
    if int(dataset_timesteps) < 1:
        raise ValueError(f"dataset_timesteps must be >= 1 (or null to train for `steps` updates), got {dataset_timesteps}")
    rows_per_episode = transitions / episodes + 1
    return math.ceil(int(dataset_timesteps) / (batch_size * rows_per_episode))


def run(cfg: DictConfig) -> dict[str, float]:
    seed_everything(int(cfg.seed))
    check_backend(cfg.env)
    algo, out = cfg.algo, Path(cfg.paths.output_dir)
    device = resolve_device(str(cfg.device))
    spec = get_map(cfg.env.map_name)
    settings = offline_settings(cfg, spec.name)
    in_memory = cfg.in_memory if cfg.in_memory == "auto" else bool(cfg.in_memory)
    dataset = load_dataset(resolve_dataset(str(cfg.dataset), cfg.data_root, spec.name), map_name=spec.name, validate="full",
                           in_memory=in_memory, device=device)
    module = make_qmix_module(algo, spec, objective=resolve_objective(cfg, spec.name), dataset=dataset.identity())
    module.clock = "updates"
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    module.to(device)
    data = ReplayDataModule(online=EpisodeReplayBuffer(1, device=device), offline=dataset,
                            batch_size=settings["batch_size"], offline_fraction=1.0,
                            replace=settings["sample_with_replacement"])
    evaluator = GreedyEvaluator(module.agent, spec.name, int(cfg.eval.num_envs), seed=int(cfg.seed) + 10_000,
                                device=device, env_options=env_options_of(cfg.env),
                                threads=collection_threads(cfg))
    evaluation = ScheduledEvaluation(evaluator, int(cfg.eval.interval_updates), int(cfg.eval.episodes),
                                     out / "checkpoints")
    dataset_timesteps = cfg.get("dataset_timesteps")
    steps = offline_updates(int(cfg.steps), None if dataset_timesteps is None else int(dataset_timesteps),
                            settings["batch_size"], len(dataset), dataset.n_transitions)
    if dataset_timesteps is not None:
        print(f"offline budget: {int(dataset_timesteps):,} dataset timesteps = {steps} updates of "
              f"{settings['batch_size']} episodes (dataset_timesteps replaces steps={cfg.steps})", flush=True)
    loop = OfflineLoop(steps, settings["batch_size"], TargetSchedule(settings["target_update_updates"], unit="updates"),
                       evaluation, log_every=int(cfg.log_every_updates))
    # Every checkpoint says how far the offline run got; only the final one says it finished.
    module.offline_run = {"planned_updates": steps, "finished": False}
    progress = EnvStepProgressBar(evaluation, None, total=steps, refresh_rate=int(cfg.trainer.progress_refresh_rate))
    trainer = make_trainer(trainer_settings(cfg.trainer), out, loop, progress, loggers=make_loggers(cfg, out, hparams=dict(module.hparams)),
                           gradient_clip_val=float(algo.grad_norm_clip), distributed=False)
    start = time.perf_counter()
    behaviour = None
    if module.objective.needs_behaviour_pretraining:
        behaviour = pretrain_behaviour(module.objective, data.sample, lr=float(algo.lr),
                                       grad_clip=float(algo.grad_norm_clip), patience=settings["behaviour_patience"],
                                       max_updates=settings["behaviour_max_updates"])
        behaviour["wall_seconds"] = time.perf_counter() - start
        print(f"behaviour cloning (CFCQL, before the Q networks): {behaviour['updates']} updates, stopped by "
              f"{behaviour['stopped_by']}, loss {behaviour['last_loss']:.4f} (best {behaviour['best_loss']:.4f}), "
              f"accuracy {behaviour['last_accuracy']:.3f}", flush=True)
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - start
    # Q_tot-offline: the offline target network (paper §4.1), refreshed once more so that it is
    # the final offline Q rather than one up to target_update_updates - 1 updates old. PyMARL2's
    # and CFCQL's load_models likewise start online with targets equal to the saved networks.
    if module.updates % settings["target_update_updates"]:
        module.update_targets()
    module.freeze_offline_target()
    module.offline_run.update(finished=module.updates >= steps, updates=module.updates)
    atomic_save_checkpoint(trainer, out / "checkpoints" / "last.ckpt")
    result = {"updates": module.updates, "planned_updates": steps, "dataset_timesteps": dataset_timesteps, "wall_seconds": wall, "dataset": dataset.name, "cql": settings["cql"] or "none",
              "cql_alpha": settings["cql_alpha"], "settings": settings, "behaviour_pretraining": behaviour, **evaluation.latest, "eval/best_win_rate": evaluation.best,
              **{k: float(v) for k, v in getattr(module, "latest_train_metrics", {}).items()}}
    write_json(out / "offline_summary.json", result)
    print(f"offline {spec.name} on {dataset.name} ({settings['cql'] or 'no CQL'}{', calibrated' if settings['cql_calibrated'] else ''}, "
          f"alpha={settings['cql_alpha']}): "
          f"{module.updates} updates, final greedy win rate {evaluation.latest.get('eval/win_rate', float('nan')):.3f} "
          f"over {int(evaluation.latest.get('eval/episodes', 0))} battles (best evaluation {evaluation.best:.3f}); checkpoint with the frozen offline target: {out / 'checkpoints' / 'last.ckpt'}")
    return result

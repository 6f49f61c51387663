"""Phase "online": train in the environment, from scratch (``algo=qmix``) or fine-tuning an
offline checkpoint (``algo=ovmse|macql|macalql|switch_cql|ovm_only|se_only``, see
:mod:`ovmse.phases.fine_tuning`).

``python train.py phase=online env=3m algo=qmix env_steps=300000`` and
``python train.py phase=online experiment=2s3z_medium algo=ovmse ckpt=<offline run>/checkpoints/last.ckpt``
write into the run directory the resolved config, TensorBoard events (``tensorboard/``),
``metrics.csv`` (one row per logged env step with ``env_steps``, ``collect/``,
``train/``, ``eval/`` columns), ``checkpoints/{last,best}.ckpt`` and ``online_summary.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from data_modules import ReplayDataModule
from ovmse.collection import EpisodeReplayBuffer
from ovmse.collection.online import OnlineCollection
from ovmse.envs import get_map
from ovmse.exploration import LinearSchedule
from ovmse.training import QMixModule
from ovmse.training.checkpointing import remove_replay_chunks
from ovmse.training.collection_schedule import CollectionSchedule
from ovmse.training.evaluation import GreedyEvaluator
from ovmse.training.loops import OnlineLoop
from ovmse.training.metrics_log import log_env_metrics
from ovmse.training.progress_bar import EnvStepProgressBar
from ovmse.training.resume_point import ResumeWriter
from ovmse.training.scheduled_evaluation import ScheduledEvaluation
from ovmse.training.target_schedule import TargetSchedule
from ovmse.training.trainer import make_trainer
from ovmse.training.unlearning import UnlearningProbe, load_or_record_probe
from ovmse.training.update_ratio import UpdateRatio

from .common import check_backend, collection_threads, make_loggers, make_qmix_module, trainer_settings
from .objective import resolve_objective
from .common import env_options as env_options_of
from .common import resolve_device, seed_everything, write_json
from .fine_tuning import (
    O2O_ALGOS,
    checkpoint_dataset,
    is_fine_tuning,
    load_mixing_dataset,
    load_checkpoint_for_map,
    online_settings,
    resolve_fine_tuning_dataset,
)
from .resume import check_not_finished, check_resume_config, resume_checkpoint, set_aside_summary


@dataclass
class OnlineRun:
    """Everything an online training run is made of (built by :func:`build_online_run`)."""

    module: QMixModule
    replay: EpisodeReplayBuffer
    loop: OnlineLoop
    trainer: pl.Trainer
    data: ReplayDataModule
    settings: dict

    @property
    def collection(self) -> CollectionSchedule:
        return self.loop.collection

    @property
    def evaluation(self) -> ScheduledEvaluation:
        return self.loop.evaluation


def build_online_run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = (), resumable: bool = True) -> OnlineRun:
    """QMIX learner, replay, collector, evaluator, loggers and Trainer of ``cfg`` (train.yaml
    with an online-style phase: ``env_steps``, ``eval``, ``log_every_env_steps``).
    ``extra_callbacks`` run after the loop (:class:`~ovmse.training.loops.OnlineLoop`) in every
    training iteration, so they see its evaluations.

    With an offline-to-online ``algo`` (one with an ``online:`` block) the learner is the
    checkpoint ``cfg.ckpt`` set up for fine-tuning (:meth:`QMixModule.configure_fine_tuning`),
    and, with a mixing ratio > 0, batches mix in that share of episodes of its offline dataset.

    ``resumable``: ``last.ckpt`` is a resume point with the replay buffer beside it
    (:mod:`ovmse.training.checkpointing`); ``False`` (phase=collect) saves plain checkpoints.
    """
    seed_everything(int(cfg.seed))
    check_backend(cfg.env)
    algo, out = cfg.algo, Path(cfg.paths.output_dir)
    spec = get_map(cfg.env.map_name)
    fine_tune = is_fine_tuning(algo)
    check_checkpoint_use(cfg, fine_tune)
    env_options = env_options_of(cfg.env)
    # trainer=ddp: each rank collects and evaluates with its own seeds, on its own GPU if any
    # (docs/scaling.md).
    from ovmse.training.ddp import check_rank, expected_global_rank, rank_device, rank_seed

    trainer_cfg = trainer_settings(cfg.trainer)
    device = rank_device(resolve_device(str(cfg.device)), trainer_cfg)
    rank = expected_global_rank(trainer_cfg)
    env_seed = rank_seed(cfg.seed, rank, int(cfg.collector.num_workers))

    resume_from = resume_checkpoint(cfg)
    module, settings, offline = make_learner(cfg, spec, fine_tune, resume_from, device)
    if resume_from is None:
        module.run_config = OmegaConf.to_container(cfg, resolve=True)
    else:  # accepted: only now does the resume write into the run's directory
        check_not_finished(module, cfg, out)
        set_aside_summary(module, out)
        (out / "config_resolved.resume.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module.to(device)
    replay = EpisodeReplayBuffer(capacity=int(algo.buffer_size), device=device)
    data = ReplayDataModule(online=replay, offline=offline, batch_size=settings["batch_size"],
                            offline_fraction=settings["mixing_ratio"], replace=settings["sample_with_replacement"])
    collection = make_collection(cfg, module, replay, env_seed, device, env_options, settings)
    collect_threads = collection_threads(cfg)
    evaluator = GreedyEvaluator(
        module.agent, spec.name, int(cfg.eval.num_envs), seed=env_seed + 10_000, device=device,
        env_options=env_options, threads=collect_threads,
    )
    ckpt_cfg = cfg.get("checkpoint") or {}
    loop = OnlineLoop(
        CollectionSchedule(collection, int(cfg.env_steps), warmup_episodes=max(data.n_online, 1),
                           log_every=int(cfg.log_every_env_steps), ratio=UpdateRatio(**settings["update_ratio"]),
                           threads=collect_threads),
        TargetSchedule(settings["target_update_interval"], unit="episodes"),
        ScheduledEvaluation(evaluator, int(cfg.eval.interval_env_steps), int(cfg.eval.episodes), out / "checkpoints"),
        resume=(ResumeWriter(out / "checkpoints", replay, generators=collection_generators(collection),
                             every_env_steps=int(ckpt_cfg.get("every_env_steps", 0)), resume_from=resume_from)
                if resumable else None),
        probe=make_probe(cfg, module, fine_tune, out, env_seed, device, env_options),
        # At the switch (not on resume: a resume point restores its own optimiser).
        optimizer_from=cfg.ckpt if fine_tune and resume_from is None and settings["restore_optimizer"] else None,
        evaluate_at_start=fine_tune and bool(cfg.eval.get("at_start", False)),
    )
    loggers = make_loggers(cfg, out, hparams=dict(module.hparams),
                           resume_step=module.progress() if resume_from is not None else None)
    progress = EnvStepProgressBar(loop.evaluation, loop.collection, total=int(cfg.env_steps),
                                  refresh_rate=int(cfg.trainer.progress_refresh_rate))
    trainer = make_trainer(trainer_cfg, out, loop, progress, loggers=loggers, num_threads=cfg.get("num_threads"),
                           gradient_clip_val=settings["grad_norm_clip"], extra_callbacks=extra_callbacks)
    check_rank(trainer, rank)
    return OnlineRun(module, replay, loop, trainer, data, settings)


def make_learner(cfg: DictConfig, spec, fine_tune: bool, resume_from: Path | None, device):
    """``(module, settings, offline dataset or None)`` of a run: a fresh QMIX learner, an offline
    checkpoint set up for fine-tuning, or (``resume_from``) the killed run's own ``last.ckpt``,
    which already holds its online objective and counters (the optimiser, callbacks, RNGs and
    replay are restored by :class:`~ovmse.training.resume_point.ResumeWriter` when fit starts)."""
    if resume_from is None and not fine_tune:
        return make_qmix_module(cfg.algo, spec), online_settings(cfg, spec.name, None), None
    module = load_checkpoint_for_map(str(resume_from or cfg.ckpt), spec)
    if resume_from is not None:
        check_resume_config(module.run_config, cfg)
    if not fine_tune:
        return module, online_settings(cfg, spec.name, None), None
    quality, source = resolve_fine_tuning_dataset(cfg, module, spec.name)
    settings = online_settings(cfg, spec.name, quality)
    objective = resolve_objective(cfg, spec.name, quality, pretrained=module.settings)
    if resume_from is None:
        module.configure_fine_tuning(objective)
    # The record says which weight "offline" meant, and the objective as the module has it.
    settings.update(cql_alpha=objective.cql.alpha if objective.cql else 0.0, objective=objective.to_dict(),
                    dataset=quality)
    offline = (load_mixing_dataset(cfg, source, spec.name, device, pretrained_on=checkpoint_dataset(module))
               if settings["mixing_ratio"] > 0 else None)
    return module, settings, offline


def make_probe(cfg: DictConfig, module: QMixModule, fine_tune: bool, out: Path, seed: int, device,
               env_options: dict) -> UnlearningProbe | None:
    """The unlearning probe (paper Figure 1) of a fine-tuning run, when ``unlearning_probe.episodes``
    > 0: the offline policy's greedy episodes, recorded before the first update (or reloaded
    from ``checkpoints/probe`` when resuming)."""
    probe_cfg = cfg.get("unlearning_probe") or {}
    episodes = int(probe_cfg.get("episodes", 0))
    if not fine_tune or episodes <= 0:
        return None
    probe = load_or_record_probe(out / "checkpoints" / "probe", module.agent, cfg.env.map_name, episodes,
                                 seed=seed + 30_000, device=device, env_options=env_options)
    return UnlearningProbe(probe, int(probe_cfg.get("every_env_steps", 5000)))


def collection_generators(collection) -> dict:
    """The exploration RNG of an in-process collection (worker processes seed their own)."""
    exploration = getattr(collection, "exploration", None)
    gen = getattr(exploration, "generator", None) if getattr(collection, "num_workers", 1) == 1 else None
    return {"exploration": gen} if gen is not None else {}


def check_checkpoint_use(cfg: DictConfig, fine_tune: bool) -> None:
    """An O2O algorithm needs ``ckpt``; QMIX from scratch must not get one."""
    name = cfg.algo.get("name")
    if fine_tune and not cfg.get("ckpt"):
        raise ValueError(
            f"algo={name} fine-tunes an offline checkpoint: pass ckpt=<offline run>/checkpoints/last.ckpt "
            f"(python train.py phase=offline env={cfg.env.map_name} dataset=<quality> algo={name} writes it), "
            "or train from scratch with algo=qmix")
    if not fine_tune and cfg.get("ckpt"):
        raise ValueError(
            f"ckpt={cfg.ckpt!r} given with algo={name}, which trains from scratch; fine-tune with one of the "
            f"offline-to-online algorithms: algo={'|'.join(O2O_ALGOS)}")


def make_collection(cfg: DictConfig, module: QMixModule, replay: EpisodeReplayBuffer, seed: int,
                    device: torch.device, env_options: dict, settings: dict):
    """The env side of ``cfg.collector``: an in-process or multi-process
    :class:`OnlineCollection`, or torch.distributed env workers (``collector.distributed``),
    exploring with ``settings["exploration"]`` and its ε schedule."""
    algo, collector = cfg.algo, cfg.collector
    num_envs, workers = int(cfg.env.num_envs), int(collector.num_workers)
    epsilon = LinearSchedule(settings["epsilon_start"], settings["epsilon_end"], settings["epsilon_anneal_steps"])
    exploration = settings["exploration"]
    dist = collector.get("distributed") or {}
    if not dist.get("enabled", False):
        return OnlineCollection(
            module.agent, cfg.env.map_name, num_envs, replay, exploration=exploration, epsilon=epsilon,
            steps_per_env=int(algo.steps_per_env), seed=seed, device=device, env_options=env_options,
            num_workers=workers,
        )
    from ovmse.training.ddp import is_ddp
    from ovmse.collection.distributed import DistributedEnvWorkers

    if is_ddp(trainer_settings(cfg.trainer)):
        raise ValueError("collector.distributed.enabled=true cannot be combined with trainer=ddp: both need "
                         "the default torch.distributed process group (docs/scaling.md)")
    if num_envs % workers:
        raise ValueError(f"env.num_envs={num_envs} must be divisible by collector.num_workers={workers}")
    return DistributedEnvWorkers(
        module.agent, cfg.env.map_name, num_workers=workers, envs_per_worker=num_envs // workers,
        steps_per_env=int(algo.steps_per_env), replay=replay, exploration=exploration, epsilon=epsilon,
        seed=seed, device=device, env_options=env_options, launcher=str(dist.launcher),
        backend=str(dist.backend), tcp_port=dist.get("tcp_port"),
    )


def run(cfg: DictConfig) -> dict[str, float]:
    out = Path(cfg.paths.output_dir)
    r = build_online_run(cfg)
    start = time.perf_counter()
    r.trainer.fit(r.module, datamodule=r.data)
    module, eval_cb = r.module, r.evaluation
    wall = time.perf_counter() - start

    result = {"algo": str(cfg.algo.name), "map": str(cfg.env.map_name), "seed": int(cfg.seed),
              "ckpt": cfg.get("ckpt"), "settings": r.settings,
              "env_steps": module.env_steps, "episodes": module.episodes, "updates": module.updates,
              "env_steps_per_update": module.env_steps / max(module.updates, 1),
              "wall_seconds": wall, "wall_seconds_by_part": r.loop.times.split(wall),
              **eval_cb.latest, "eval/best_win_rate": eval_cb.best}
    if not r.trainer.is_global_zero:  # trainer=ddp: rank 0 speaks for the run
        return result
    final = final_evaluation(cfg, module)
    if final:
        log_env_metrics(r.trainer, module, final)
        result.update(final)
    write_json(out / "online_summary.json", result)
    if not bool((cfg.get("checkpoint") or {}).get("keep_replay", True)):
        # After the summary: a kill in between leaves a finished run, never an unresumable unfinished one.
        result["replay_removed_bytes"] = remove_replay_chunks(out / "checkpoints")
        write_json(out / "online_summary.json", result)
    final_text = (f"; final test {final['eval/final_win_rate']:.3f} over {int(final['eval/final_episodes'])} battles"
                  if final else "")
    print(f"online {cfg.env.map_name} ({cfg.algo.name}): {module.env_steps} env steps, {module.updates} updates, "
          f"last greedy win rate {eval_cb.latest.get('eval/win_rate', float('nan')):.3f} over "
          f"{int(eval_cb.latest.get('eval/episodes', 0))} battles (best evaluation {eval_cb.best:.3f}){final_text}; checkpoints in {out / 'checkpoints'}")
    return result


def final_evaluation(cfg: DictConfig, module: QMixModule) -> dict[str, float]:
    """The paper's final test: ``final_eval.episodes`` greedy battles (640) of the final policy in
    fresh battles with their own seeds, as ``eval/final_*`` metrics ({} when episodes is 0)."""
    final_cfg = cfg.get("final_eval") or {}
    episodes = int(final_cfg.get("episodes", 0))
    if episodes <= 0:
        return {}
    evaluator = GreedyEvaluator(module.agent, cfg.env.map_name, int(final_cfg.get("num_envs", 128)),
                                seed=int(cfg.seed) + 20_000, device=module.device,
                                env_options=env_options_of(cfg.env), threads=collection_threads(cfg))
    was_training = module.training
    module.eval()
    metrics = GreedyEvaluator.metrics(evaluator.run(episodes))
    module.train(was_training)
    return {k.replace("eval/", "eval/final_"): v for k, v in metrics.items()}

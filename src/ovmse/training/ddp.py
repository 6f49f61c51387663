"""Learner data parallelism (``trainer=ddp``): strategy, per-rank seeds, a debugging dump.

With ``trainer=ddp`` every process (rank) runs the whole online loop of one
single-process run -- its own collector, replay buffer and evaluator -- and
Lightning's ``DDPStrategy`` averages the gradients of every update, so all
replicas keep identical weights. What each rank does and what is synchronised is
written up in ``docs/scaling.md``; the callbacks in :mod:`.callbacks` make the
decisions that must agree across ranks (warm-up length, target updates, best
checkpoint, evaluation metrics) collectively.

Seeds: rank ``r`` offsets every env-side seed by ``1000 * r`` (collection env
``seed + 1000 r``, its exploration generator ``seed + 1000 r + 1``, evaluation env
``seed + 10_000 + 1000 r``; the stride is ``1000 * collector.num_workers`` with several
collector processes per rank, see :func:`rank_seed`); the network initialisation uses
``seed`` on every rank (DDP also broadcasts rank 0's weights when it wraps the module).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch

from ovmse.collection.acting import WORKER_SEED_STRIDE

#: Per-rank seed offset of the env side (collection env, exploration, evaluation env).
RANK_SEED_STRIDE = WORKER_SEED_STRIDE  # the same stride, so ranks x workers never share a seed

#: Set to a non-empty value to make every rank write its final parameters to
#: ``<run dir>/debug_params/rank<r>.pt`` (a debugging aid: DDP replicas must match).
DUMP_PARAMS_ENV = "OVMSE_DEBUG_DUMP_PARAMS"


STRATEGIES = ("auto", "ddp")


@dataclass(frozen=True)
class TrainerSettings:
    """The Trainer's settings (``configs/trainer/*.yaml``), typed: what ``training/`` needs of
    them. The phases build it from the config (:meth:`from_mapping`); nothing here reads one.

    ``strategy``: ``auto`` (one process) or ``ddp`` (one process per rank). Other strategies
    (``ddp_spawn``, ``fsdp``, ...) are refused: the env side is built before the Trainer, in
    the process that will run it, and must know its rank then."""

    accelerator: str = "cpu"
    devices: int | str | tuple = 1
    num_nodes: int = 1
    strategy: str = "auto"
    process_group_backend: str | None = None
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"trainer.strategy={self.strategy!r}: online training supports 'auto' (one process) "
                             "and 'ddp' (one process per rank; see docs/scaling.md)")

    @classmethod
    def from_mapping(cls, trainer: Mapping[str, Any]) -> "TrainerSettings":
        devices = trainer.get("devices", 1)
        if hasattr(devices, "__len__") and not isinstance(devices, str):
            devices = tuple(devices)
        return cls(accelerator=str(trainer.get("accelerator", "cpu")), devices=devices,
                   num_nodes=int(trainer.get("num_nodes", 1) or 1), strategy=str(trainer.get("strategy", "auto")),
                   process_group_backend=trainer.get("process_group_backend"),
                   find_unused_parameters=bool(trainer.get("find_unused_parameters", False)))

    @property
    def ddp(self) -> bool:
        return self.strategy == "ddp"


def is_ddp(trainer: TrainerSettings) -> bool:
    """True for ``strategy: ddp``."""
    return trainer.ddp


def _processes_per_node(trainer: TrainerSettings) -> int:
    devices = trainer.devices
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        return int(devices)
    if isinstance(devices, tuple):
        return len(devices)
    raise ValueError(
        f"trainer.devices={devices!r}: with trainer=ddp give the number of processes per node "
        "(an integer) or a list of device indices, so that each rank can derive its seeds"
    )


def _cluster_environment():
    """The cluster environment Lightning will pick (its order: TorchElastic/torchrun, SLURM,
    LSF, MPI, else Lightning's own launcher reading ``NODE_RANK`` / ``LOCAL_RANK``)."""
    from lightning_fabric.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if env_type.detect():
            return env_type()
    return LightningEnvironment()


def expected_global_rank(trainer: TrainerSettings) -> int:
    """This process's DDP rank, as Lightning will compute it once the Trainer exists.

    The rank decides the env seeds, which are needed before the Trainer is built (the
    collection is part of its callbacks). Mirrors Lightning's own choice: the cluster
    environment (TorchElastic/torchrun, SLURM, LSF, MPI, else Lightning's launcher with
    ``NODE_RANK``/``LOCAL_RANK``) and ``node_rank * processes_per_node + local_rank``.
    :func:`check_rank` compares it with the Trainer's after construction.
    0 without ``trainer=ddp``.
    """
    if not trainer.ddp:
        return 0
    env = _cluster_environment()
    return env.node_rank() * _processes_per_node(trainer) + env.local_rank()


def rank_device(device: torch.device, trainer: TrainerSettings) -> torch.device:
    """The device of this rank's env side and replay: with ``trainer=ddp`` and a CUDA
    ``device`` given without an index, the GPU Lightning gives this rank
    (``trainer.devices[local_rank]`` for a list, else ``cuda:<local_rank>``); else ``device``."""
    if not trainer.ddp or device.type != "cuda" or device.index is not None:
        return device
    local_rank = _cluster_environment().local_rank()
    if isinstance(trainer.devices, tuple):
        return torch.device("cuda", int(trainer.devices[local_rank]))
    return torch.device("cuda", local_rank)


def rank_seed(seed: int, rank: int, num_workers: int = 1) -> int:
    """Base seed of rank ``rank``'s env side (``seed`` on rank 0, as a single-process run).

    ``seed + 1000 * rank`` with one collector process per rank. With ``num_workers``
    collector processes per rank (``collector.num_workers``; worker ``w`` adds
    ``1000 * w`` itself) the stride is ``1000 * num_workers``, so worker ``w`` of rank
    ``r`` gets ``seed + 1000 * (r * num_workers + w)``: no two workers of the whole job
    share a seed.
    """
    return int(seed) + RANK_SEED_STRIDE * int(num_workers) * int(rank)


def trainer_kwargs(trainer: TrainerSettings, num_threads: int | None = None) -> dict[str, Any]:
    """``accelerator``, ``devices``, ``num_nodes`` and ``strategy`` for ``pl.Trainer``.

    ``strategy: ddp`` becomes ``DDPStrategy(process_group_backend=...)`` (``gloo`` on CPU,
    ``nccl`` for GPUs). Lightning's launcher would set torch's thread count to
    ``cpu_count // processes`` unless ``OMP_NUM_THREADS`` is set; it is set to
    ``num_threads`` (train.yaml) so the configured value holds on every rank. With
    ``num_threads: null`` (the default) Lightning's share of the cores holds.
    """
    kwargs: dict[str, Any] = {
        "accelerator": trainer.accelerator,
        "devices": list(trainer.devices) if isinstance(trainer.devices, tuple) else trainer.devices,
        "num_nodes": trainer.num_nodes,
    }
    if trainer.ddp:
        from pytorch_lightning.strategies import DDPStrategy

        if num_threads is not None:
            os.environ.setdefault("OMP_NUM_THREADS", str(int(num_threads)))
        kwargs["strategy"] = DDPStrategy(process_group_backend=trainer.process_group_backend,
                                         find_unused_parameters=trainer.find_unused_parameters)
    else:
        kwargs["strategy"] = "auto"
    return kwargs


def check_rank(trainer: pl.Trainer, rank: int) -> None:
    """Fail loudly if the rank used for the seeds is not the Trainer's rank."""
    if trainer.global_rank != rank:
        raise RuntimeError(
            f"this process seeded its envs as rank {rank} but Lightning made it rank {trainer.global_rank} "
            "(unusual launcher environment?); two ranks could be collecting the same battles"
        )


class DumpParamsCallback(pl.Callback):
    """Debugging aid: every rank saves its module's state dict at the end of training.

    Writes ``<out_dir>/debug_params/rank<r>.pt``: ``{"state_dict": ...}`` (all parameters
    and buffers, targets included) and the rank's ``env_steps``, ``episodes``, ``updates``.
    Under DDP the state dicts, ``env_steps`` and ``updates`` of all ranks must be equal.
    """

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir) / "debug_params"

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        progress = {k: int(getattr(module, k, -1)) for k in ("env_steps", "episodes", "updates")}
        torch.save({"state_dict": state, **progress}, self.dir / f"rank{trainer.global_rank}.pt")


def debug_callbacks(out_dir: str | Path) -> list[pl.Callback]:
    """``[DumpParamsCallback]`` when ``OVMSE_DEBUG_DUMP_PARAMS`` is set, else ``[]``."""
    return [DumpParamsCallback(out_dir)] if os.environ.get(DUMP_PARAMS_ENV) else []

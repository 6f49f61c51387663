"""LightningModule holding the QMIX agent and mixer, the optimiser, the run's progress and the
objective (:class:`~ovmse.losses.objective.QMixObjective`: target networks, CQL and OVM losses,
CFCQL's behaviour net and the frozen offline target)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase

from ovmse.losses.objective import ObjectiveSettings, QMixObjective
from ovmse.nets import QMixer, RNNAgent
from ovmse.training.checkpoint_compat import upgrade_checkpoint
from ovmse.training.checkpointing import count_nonfinite

CLOCKS = ("env_steps", "updates")


@dataclass
class Progress:
    """How far a run is: env steps and episodes collected, updates made, and the episode count
    at the last target refresh. Restarts at 0 when fine-tuning begins; saved in checkpoints."""

    env_steps: int = 0
    episodes: int = 0
    updates: int = 0
    last_target_update_episode: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in asdict(self):
            setattr(self, key, int(state.get(key, 0)))


def _counter(name: str) -> property:
    return property(lambda self: getattr(self.run_progress, name),
                    lambda self, value: setattr(self.run_progress, name, int(value)),
                    doc=f"``run_progress.{name}``")


class QMixModule(pl.LightningModule):
    """QMIX learner: the recurrent agent shared by all agents, the monotonic mixer and the
    objective they are trained on.

    Each ``training_step`` gets an episode batch ``[B, T+1]`` (PyMARL layout, see
    :mod:`ovmse.collection.episodes`) and minimises the sum of the objective's ``loss_*`` terms
    (:mod:`ovmse.losses.objective` lists them per algorithm); every other output is logged as
    ``train/<name>``. Target networks are updated by the caller (an interval callback), not by
    optimiser steps. Fine-tuning changes the objective (:meth:`configure_fine_tuning`), not the
    class: every algorithm is this one module.

    ``run_progress`` counts env steps, episodes and updates (also readable as ``env_steps``,
    ``episodes``, ``updates``); ``clock`` names the one that is the x-axis of logs and
    evaluation schedules (``"env_steps"`` online, ``"updates"`` offline).

    Args:
        obs_dim, state_dim, n_agents, n_actions: env dimensions.
        map_name: recorded in the checkpoint (evaluation rebuilds the env from it).
        hidden_dim: GRU width (PyMARL2: 64).
        mixing_embed_dim, hypernet_embed: mixer widths (32, 64).
        lr: Adam learning rate (1e-3).
        objective: :class:`~ovmse.losses.objective.ObjectiveSettings` (or its ``to_dict()``);
            default: QMIX's TD(λ) alone.
        dataset: identity of the offline dataset trained on (name, path, counts, created).
        offline_progress: the offline run's ``updates`` / ``episodes`` this module was
            fine-tuned from (recorded by :meth:`configure_fine_tuning`).
    """

    env_steps = _counter("env_steps")
    episodes = _counter("episodes")
    updates = _counter("updates")
    last_target_update_episode = _counter("last_target_update_episode")

    def __init__(
        self,
        obs_dim: int,
        state_dim: int,
        n_agents: int,
        n_actions: int,
        map_name: str = "",
        hidden_dim: int = 64,
        mixing_embed_dim: int = 32,
        hypernet_embed: int = 64,
        lr: float = 1e-3,
        objective: ObjectiveSettings | Mapping[str, Any] | None = None,
        dataset: dict | None = None,
        offline_progress: dict | None = None,
    ) -> None:
        super().__init__()
        settings = objective if isinstance(objective, ObjectiveSettings) else ObjectiveSettings.from_dict(objective or {})
        self.save_hyperparameters({
            "obs_dim": obs_dim, "state_dim": state_dim, "n_agents": n_agents, "n_actions": n_actions,
            "map_name": map_name, "hidden_dim": hidden_dim, "mixing_embed_dim": mixing_embed_dim,
            "hypernet_embed": hypernet_embed, "lr": lr, "objective": settings.to_dict(), "dataset": dataset,
            "offline_progress": offline_progress})
        self.agent = RNNAgent(obs_dim + n_actions + n_agents, n_actions, hidden_dim)
        self.mixer = QMixer(state_dim, n_agents, mixing_embed_dim, hypernet_embed)
        self.objective = QMixObjective(self.agent, self.mixer, settings)
        self.run_progress = Progress()
        self.clock = "env_steps"
        self.run_config: dict | None = None  # resolved config, stored in checkpoints
        # The offline phase's plan, stored in its checkpoints: {"planned_updates": n, "finished": bool}
        # (fine-tuning refuses a checkpoint of an unfinished offline run).
        self.offline_run: dict | None = None

    @property
    def settings(self) -> ObjectiveSettings:
        """The objective being optimised."""
        return self.objective.settings

    def configure_fine_tuning(self, settings: ObjectiveSettings) -> None:
        """Turn an offline-pretrained module into an online learner: set the online objective
        (:meth:`QMixObjective.reconfigure` checks that it fits the pretrained networks) and
        restart the progress counters at 0, the start of the online phase (λ_memory and ε are
        annealed over env steps since then). The offline run's counters are kept in
        ``hparams.offline_progress``; the objective is an hparam, so every online checkpoint
        records it."""
        self.objective.reconfigure(settings)
        # save_hyperparameters, not hparams.update: the loggers' hparams.yaml are written from the
        # initial hparams, which must be the online run's too.
        self.save_hyperparameters({**self.hparams, "objective": settings.to_dict(),
                                   "offline_progress": {"updates": self.updates, "episodes": self.episodes}})
        self.run_progress = Progress()
        self.clock = "env_steps"

    def progress(self) -> int:
        """The value of ``clock`` (x-axis of logs and schedules)."""
        if self.clock not in CLOCKS:
            raise ValueError(f"clock={self.clock!r}: choose one of {', '.join(CLOCKS)}")
        return getattr(self.run_progress, self.clock)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        out = self.objective(batch, self.env_steps)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        metrics = {f"train/{k}": v for k, v in out.items() if not k.startswith("loss_")}
        metrics["train/loss"] = loss.detach()
        self.updates += 1
        # Kept as tensors: converting to floats here would sync a GPU every update;
        # the logging callback converts them when it writes a row.
        self.latest_train_metrics = metrics
        return loss

    def q_parameters(self) -> list[torch.nn.Parameter]:
        return self.objective.online_parameters()

    def configure_optimizers(self):
        groups = [{"params": self.q_parameters()}]
        if self.objective.trains_behaviour_jointly:  # "before": trained and frozen ahead of the Q networks
            groups.append({"params": list(self.objective.behaviour.parameters())})
        return torch.optim.Adam(groups, lr=self.hparams.lr)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the Q networks' and the behaviour network's gradients separately: they are
        independent objectives, and one must not shrink the other's step."""
        if not gradient_clip_val:
            return
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], float(gradient_clip_val))

    def update_targets(self) -> None:
        """Hard update: copy the online agent and mixer into the targets."""
        self.objective.td.hard_update_targets()
        self.last_target_update_episode = self.episodes

    def freeze_offline_target(self) -> None:
        """Keep a frozen copy of the current *target* agent and mixer (the paper's
        Q_tot-offline); it is saved in every later checkpoint."""
        self.objective.freeze_offline_target()
        self.hparams.update(objective=self.settings.to_dict())

    # Progress counters and the run's config travel with the checkpoint.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["progress"] = self.run_progress.state_dict()
        if self.run_config is not None:
            checkpoint["config"] = self.run_config
        if self.offline_run is not None:
            # An offline run's checkpoints hold its update count so far; once it has finished the
            # record keeps the count it finished with (online checkpoints carry it on unchanged).
            checkpoint["offline_run"] = {"updates": self.updates, **self.offline_run}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)  # before Lightning loads its state dict (a resume point)
        self.run_progress.load_state_dict(checkpoint.get("progress", {}))
        self.run_config = checkpoint.get("config")
        self.offline_run = checkpoint.get("offline_run")


def load_qmix_checkpoint(path: str, map_location: str = "cpu") -> QMixModule:
    """Rebuild a :class:`QMixModule` from a checkpoint without executing pickled code.

    Uses ``torch.load(weights_only=True)``; a file that is not a QMIX checkpoint
    gives a ``ValueError`` naming what is missing.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we accept"
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise ValueError(f"{path}: not a loadable torch checkpoint ({type(err).__name__}: {detail})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path}: not a QMIX checkpoint (expected 'state_dict' and 'hyper_parameters' entries)")
    bad, tensors = count_nonfinite(checkpoint["state_dict"].values())
    if bad:
        raise ValueError(f"{path}: {bad} weight values in {tensors} tensors are NaN or infinite: the run that wrote "
                         "it diverged; use an earlier checkpoint of that run")
    upgrade_checkpoint(checkpoint)
    hparams = dict(checkpoint["hyper_parameters"])
    module = QMixModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module

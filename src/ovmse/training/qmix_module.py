"""LightningModule holding the QMIX agent, mixer, their target copies and the TD(λ) loss."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase

from ovmse.losses import QMixTDLoss
from ovmse.nets import QMixer, RNNAgent


class QMixModule(pl.LightningModule):
    """QMIX learner: recurrent agent shared by all agents + monotonic mixer.

    Each ``training_step`` gets an episode batch ``[B, T+1]`` (PyMARL layout, see
    :mod:`ovmse.collection.episodes`) and minimises the double-Q TD(λ) loss of
    :class:`~ovmse.losses.QMixTDLoss`. Target networks are updated by the caller
    (an episode-interval callback), not by optimiser steps.

    ``env_steps`` and ``episodes`` count environment progress; they are saved in
    checkpoints so that schedules and logging resume from them.

    Args:
        obs_dim, state_dim, n_agents, n_actions: env dimensions.
        map_name: recorded in the checkpoint (evaluation rebuilds the env from it).
        hidden_dim: GRU width (PyMARL2: 64).
        mixing_embed_dim, hypernet_embed: mixer widths (32, 64).
        lr: Adam learning rate (1e-3).
        gamma, td_lambda, double_q: TD(λ) target settings (0.99, 0.6, True).
    """

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
        gamma: float = 0.99,
        td_lambda: float = 0.6,
        double_q: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.agent = RNNAgent(obs_dim + n_actions + n_agents, n_actions, hidden_dim)
        self.mixer = QMixer(state_dim, n_agents, mixing_embed_dim, hypernet_embed)
        self.loss = QMixTDLoss.from_online(self.agent, self.mixer, gamma=gamma, td_lambda=td_lambda, double_q=double_q)
        self.env_steps = 0
        self.episodes = 0
        self.last_target_update_episode = 0
        self.updates = 0

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        out = self.loss(batch)
        self.updates += 1
        # Kept as tensors: converting to floats here would sync a GPU every update;
        # the logging callback converts them when it writes a row.
        self.latest_train_metrics = {f"train/{k}": v.detach() for k, v in out.items()}
        return out["loss"]

    def configure_optimizers(self):
        return torch.optim.Adam(self.loss.online_parameters(), lr=self.hparams.lr)

    def update_targets(self) -> None:
        """Hard update: copy the online agent and mixer into the targets."""
        self.loss.hard_update_targets()
        self.last_target_update_episode = self.episodes

    # Progress counters travel with the checkpoint.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["progress"] = {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "updates": self.updates,
            "last_target_update_episode": self.last_target_update_episode,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        progress = checkpoint.get("progress", {})
        self.env_steps = int(progress.get("env_steps", 0))
        self.episodes = int(progress.get("episodes", 0))
        self.updates = int(progress.get("updates", 0))
        self.last_target_update_episode = int(progress.get("last_target_update_episode", 0))


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
    module = QMixModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module

"""LightningModule holding the QMIX agent, mixer, their target copies, the TD(λ) and CQL losses
and the frozen offline target."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from tensordict import TensorDictBase

from ovmse.losses import (
    CFCQLLoss,
    MACQLLoss,
    QMixTDLoss,
    behaviour_cloning_loss,
    behaviour_probs,
    ovm_loss,
    q_tot_taken,
    return_to_go,
    taken_actions,
    unroll_agent_q,
)
from ovmse.exploration.schedules import LinearSchedule
from ovmse.nets import QMixer, RNNAgent
from ovmse.training.checkpointing import count_nonfinite


CQL_VARIANTS = ("macql", "cfcql")
OVM_TARGETS = ("one_step", "td_lambda")


class QMixModule(pl.LightningModule):
    """QMIX learner: recurrent agent shared by all agents + monotonic mixer, with an optional
    CQL regulariser (offline pretraining) and the frozen offline target it leaves behind.

    Each ``training_step`` gets an episode batch ``[B, T+1]`` (PyMARL layout, see
    :mod:`ovmse.collection.episodes`) and minimises

        L = L_TD + cql_alpha · L_CQL

    with the double-Q TD(λ) loss of :class:`~ovmse.losses.QMixTDLoss` and, when ``cql`` is set
    and ``cql_alpha > 0``,
    :class:`~ovmse.losses.MACQLLoss` (joint-action CQL) or :class:`~ovmse.losses.CFCQLLoss`
    (counterfactual CQL; its agent weights need a behaviour-cloning policy, trained here on
    the same batches as a separate network with its own gradient clipping). Target networks
    are updated by the caller (an episode-interval callback), not by optimiser steps.

    Online fine-tuning (:meth:`configure_fine_tuning`) changes the objective by settings, not
    by subclassing, so every algorithm is this one module:

    * ``ovm``: the TD term is replaced by the OVM loss (:func:`~ovmse.losses.ovm_loss`) with
      the frozen offline target evaluated on the same batch and λ_memory annealed over env
      steps (paper Eq. 6): ``L = L_OVM + cql_alpha · L_CQL``.
    * ``cql_calibrated``: Cal-QL, the CQL push-down values are bounded below by the
      Monte-Carlo return-to-go of the batch's episodes (offline and online alike).
    * ``cql_alpha = 0`` switches CQL off (Switch-CQL, and OVMSE off 2s3z).

    ``env_steps``, ``episodes`` and ``updates`` count progress and travel with checkpoints;
    ``clock`` names the one that is the x-axis of logs and evaluation schedules
    (``"env_steps"`` online, ``"updates"`` offline).

    Args:
        obs_dim, state_dim, n_agents, n_actions: env dimensions.
        map_name: recorded in the checkpoint (evaluation rebuilds the env from it).
        hidden_dim: GRU width (PyMARL2: 64).
        mixing_embed_dim, hypernet_embed: mixer widths (32, 64).
        lr: Adam learning rate (1e-3).
        gamma, td_lambda, double_q: TD(λ) target settings (0.99, 0.6, True).
        cql: ``None``, ``"macql"`` or ``"cfcql"``.
        cql_alpha: weight α of the CQL term (paper Table 3: 0.05 on 2s3z, ...).
        cql_samples: joint actions sampled per transition by MACQL (CFCQL repo: 100).
        cql_sampling: how MACQL draws them: ``"available"`` (valid joint actions) or ``"all"``
            (uniform over all actions, invalid left out; checkpoints from before this option).
        cfcql_temperature: softmax temperature of CFCQL's agent weights (0 = uniform).
        frozen_offline_target: hold ``frozen_agent`` / ``frozen_mixer``, the offline target
            networks frozen at the end of offline training (set by :meth:`freeze_offline_target`).
        dataset: identity of the offline dataset trained on (name, path, counts, created).
        ovm: train with the OVM loss (needs ``frozen_offline_target``).
        ovm_target: the target the memory is compared with in ``Q_OVM = max(Q_tot-offline, ·)``:
            ``"one_step"`` (the paper's Eq. 4, r + γ·Q̄_tot(τ', a*)) or ``"td_lambda"`` (the TD(λ)
            target of the TD term; our behaviour before issue 16, and old checkpoints').
        lambda_memory_start, lambda_memory_end, lambda_memory_anneal_steps: λ_memory schedule
            over env steps (paper Tables 6-7; start = end is a constant).
        cql_calibrated: Cal-QL bound on the CQL push-down values (MACal-QL).
        offline_progress: the offline run's ``updates`` / ``episodes`` this module was
            fine-tuned from (recorded by :meth:`configure_fine_tuning`).
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
        cql: str | None = None,
        cql_alpha: float = 0.0,
        cql_samples: int = 100,
        cql_sampling: str = "available",
        cfcql_temperature: float = 1.0,
        frozen_offline_target: bool = False,
        dataset: dict | None = None,
        ovm: bool = False,
        lambda_memory_start: float = 1.0,
        lambda_memory_end: float = 1.0,
        lambda_memory_anneal_steps: int = 0,
        cql_calibrated: bool = False,
        offline_progress: dict | None = None,
        ovm_target: str = "one_step",
    ) -> None:
        super().__init__()
        self._check_ovm_target(ovm_target)
        if cql is not None and cql not in CQL_VARIANTS:
            raise ValueError(f"cql={cql!r}: choose one of {', '.join(CQL_VARIANTS)} (or null for no CQL)")
        self._check_objective(cql, cql_alpha, cql_calibrated, ovm, frozen_offline_target)
        self.lambda_memory = self._lambda_schedule(lambda_memory_start, lambda_memory_end, lambda_memory_anneal_steps)
        self.save_hyperparameters()
        self.agent = RNNAgent(obs_dim + n_actions + n_agents, n_actions, hidden_dim)
        self.mixer = QMixer(state_dim, n_agents, mixing_embed_dim, hypernet_embed)
        self.loss = QMixTDLoss.from_online(self.agent, self.mixer, gamma=gamma, td_lambda=td_lambda, double_q=double_q)
        self.cql_loss = None
        self.behaviour = None
        if cql == "macql":
            self.cql_loss = MACQLLoss(self.mixer, n_samples=cql_samples, sampling=cql_sampling)
        elif cql == "cfcql":
            self.cql_loss = CFCQLLoss(self.mixer, temperature=cfcql_temperature)
            if cfcql_temperature > 0:
                self.behaviour = RNNAgent(obs_dim + n_actions + n_agents, n_actions, hidden_dim)
        if frozen_offline_target:
            self.frozen_agent, self.frozen_mixer = QMixTDLoss.make_targets(self.agent, self.mixer)
        self.env_steps = 0
        self.episodes = 0
        self.last_target_update_episode = 0
        self.updates = 0
        self.clock = "env_steps"
        self.run_config: dict | None = None  # resolved config, stored in checkpoints
        # The offline phase's plan, stored in its checkpoints: {"planned_updates": n, "finished": bool}
        # (fine-tuning refuses a checkpoint of an unfinished offline run).
        self.offline_run: dict | None = None

    @staticmethod
    def _check_objective(cql: str | None, cql_alpha: float, cql_calibrated: bool, ovm: bool,
                         frozen_offline_target: bool) -> None:
        """The objective's settings must fit the module (at construction and at the switch online)."""
        if cql_alpha < 0:
            raise ValueError(f"cql_alpha must be >= 0, got {cql_alpha}")
        if cql_calibrated and cql is None:
            raise ValueError("cql_calibrated (Cal-QL) needs a module trained with CQL (cql='macql' or 'cfcql')")
        if ovm and not frozen_offline_target:
            raise ValueError("the OVM loss needs the frozen offline target Q_tot-offline (frozen_offline_target), "
                             "which this module does not hold: fine-tune from <offline run>/checkpoints/last.ckpt "
                             "(best.ckpt has none)")

    @staticmethod
    def _lambda_schedule(start: float, end: float, steps: int) -> LinearSchedule:
        for name, v in (("lambda_memory_start", start), ("lambda_memory_end", end)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        return LinearSchedule(float(start), float(end), int(steps))

    @staticmethod
    def _check_ovm_target(ovm_target: str) -> None:
        if ovm_target not in OVM_TARGETS:
            raise ValueError(f"ovm_target={ovm_target!r}: choose one of {', '.join(OVM_TARGETS)}")

    def configure_fine_tuning(
        self,
        *,
        cql_alpha: float,
        cql_calibrated: bool = False,
        ovm: bool = False,
        ovm_target: str = "one_step",
        lambda_memory_start: float = 1.0,
        lambda_memory_end: float = 1.0,
        lambda_memory_anneal_steps: int = 0,
    ) -> None:
        """Turn an offline-pretrained module into an online learner: set the online objective
        (see the class docstring) and restart the progress counters at 0, the start of the
        online phase (λ_memory and ε are annealed over env steps since then). The offline
        run's counters are kept in ``hparams.offline_progress``. The settings are hparams, so
        every online checkpoint records them."""
        if cql_alpha > 0 and self.cql_loss is None:
            raise ValueError(f"online cql_alpha={cql_alpha} needs a CQL loss, but this checkpoint was trained "
                             "without CQL (cql=None); set the online CQL weight to 0")
        self._check_objective(self.hparams.cql, cql_alpha, cql_calibrated, ovm, self.hparams.frozen_offline_target)
        self._check_ovm_target(ovm_target)
        self.lambda_memory = self._lambda_schedule(lambda_memory_start, lambda_memory_end, lambda_memory_anneal_steps)
        self.hparams.update(
            cql_alpha=float(cql_alpha), cql_calibrated=bool(cql_calibrated), ovm=bool(ovm), ovm_target=str(ovm_target),
            lambda_memory_start=float(lambda_memory_start), lambda_memory_end=float(lambda_memory_end),
            lambda_memory_anneal_steps=int(lambda_memory_anneal_steps),
            offline_progress={"updates": self.updates, "episodes": self.episodes},
        )
        self.env_steps = self.episodes = self.updates = self.last_target_update_episode = 0
        self.clock = "env_steps"

    def progress(self) -> int:
        """The value of ``clock`` (x-axis of logs and schedules)."""
        return int(getattr(self, self.clock))

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        td, parts = self.loss.compute(batch)
        loss = td["loss"]
        metrics = {f"train/{k}": v.detach() for k, v in td.items()}
        metrics["train/td_loss"] = metrics.pop("train/loss")
        mask = parts["mask"]
        T = mask.shape[1]
        keys = self.loss.keys
        with torch.no_grad():
            mc = return_to_go(batch[keys.reward][:, :T].to(mask.dtype), parts["terminated"], mask, self.hparams.gamma)
            n = mask.sum().clamp(min=1.0)
            q = parts["q_taken"].detach()
            metrics["train/mc_return_mean"] = (mc * mask).sum() / n
            metrics["train/q_minus_mc_return"] = ((q - mc) * mask).sum() / n
        if "from_offline" in batch.keys():
            metrics["train/offline_fraction"] = batch["from_offline"][:, 0].float().mean()
        if self.hparams.ovm:
            lam = self.lambda_memory(self.env_steps)
            with torch.no_grad():
                q_offline = q_tot_taken(self.frozen_agent, self.frozen_mixer, batch, keys=keys)
            y_memory = parts["y_one_step"] if self.hparams.ovm_target == "one_step" else parts["y"]
            ovm = ovm_loss(parts["q_taken"], parts["y"], q_offline, mask, lam, loss_scale=self.loss.loss_scale,
                           y_memory=y_memory)
            loss = ovm["loss"]  # replaces the TD term (train/td_loss stays the plain TD loss, for comparison)
            metrics["train/lambda_memory"] = ovm["lambda_memory"]
            metrics["train/ovm_active_fraction"] = ovm["active_fraction"]
            metrics["train/ovm_td_part"] = ovm["td_part"]
            metrics["train/ovm_memory_part"] = ovm["memory_part"]
            metrics["train/ovm_loss"] = ovm["loss"].detach()
            metrics["train/offline_q_mean"] = ovm["offline_q_mean"]
            metrics["train/ovm_target_mean"] = ovm["ovm_target_mean"]
        if self.cql_loss is not None and self.hparams.cql_alpha > 0:
            bound = mc if self.hparams.cql_calibrated else None
            avail = batch[keys.action_mask][:, :T].bool()
            state = batch[keys.state][:, :T]
            agent_q = parts["agent_q"][:, :T]
            if self.hparams.cql == "macql":
                cql = self.cql_loss(agent_q, avail, state, parts["q_taken"], mask, lower_bound=bound)
            else:
                probs, actions = None, taken_actions(batch, T, keys)
                if self.behaviour is not None:
                    logits = unroll_agent_q(self.behaviour, batch, keys)[:, :T]
                    bc_loss, bc_accuracy = behaviour_cloning_loss(logits, avail, actions, mask)
                    loss = loss + bc_loss  # separate parameters: this only trains the behaviour net
                    metrics["train/bc_loss"], metrics["train/bc_accuracy"] = bc_loss.detach(), bc_accuracy.detach()
                    probs = behaviour_probs(logits.detach(), avail)
                cql = self.cql_loss(agent_q, avail, state, actions, parts["q_taken"], mask,
                                    behaviour_probs=probs, lower_bound=bound)
            loss = loss + self.hparams.cql_alpha * cql["loss"]
            metrics.update({f"train/cql_{k}": v.detach() for k, v in cql.items() if k != "loss"})
            metrics["train/cql_loss"] = cql["loss"].detach()
        metrics["train/loss"] = loss.detach()
        self.updates += 1
        # Kept as tensors: converting to floats here would sync a GPU every update;
        # the logging callback converts them when it writes a row.
        self.latest_train_metrics = metrics
        return loss

    def q_parameters(self) -> list[torch.nn.Parameter]:
        return self.loss.online_parameters()

    def configure_optimizers(self):
        groups = [{"params": self.q_parameters()}]
        if self.behaviour is not None:
            groups.append({"params": list(self.behaviour.parameters())})
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
        self.loss.hard_update_targets()
        self.last_target_update_episode = self.episodes

    @torch.no_grad()
    def freeze_offline_target(self) -> None:
        """Keep a frozen copy of the current *target* agent and mixer as ``frozen_agent`` /
        ``frozen_mixer`` (the paper's Q_tot-offline); it is saved in every later checkpoint."""
        self.frozen_agent, self.frozen_mixer = QMixTDLoss.make_targets(self.loss.target_agent, self.loss.target_mixer)
        self.hparams.frozen_offline_target = True

    # Progress counters and the run's config travel with the checkpoint.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["progress"] = {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "updates": self.updates,
            "last_target_update_episode": self.last_target_update_episode,
        }
        if self.run_config is not None:
            checkpoint["config"] = self.run_config
        if self.offline_run is not None:
            # An offline run's checkpoints hold its update count so far; once it has finished the
            # record keeps the count it finished with (online checkpoints carry it on unchanged).
            checkpoint["offline_run"] = {"updates": self.updates, **self.offline_run}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        progress = checkpoint.get("progress", {})
        self.env_steps = int(progress.get("env_steps", 0))
        self.episodes = int(progress.get("episodes", 0))
        self.updates = int(progress.get("updates", 0))
        self.last_target_update_episode = int(progress.get("last_target_update_episode", 0))
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
    hparams = dict(checkpoint["hyper_parameters"])
    # Checkpoints written before MACQL could draw valid joint actions (issue 16) drew them over
    # all actions: rebuild them as they were trained.
    hparams.setdefault("cql_sampling", "all")
    # ... and before the OVM target could be the paper's one-step target, it was TD(λ)'s.
    hparams.setdefault("ovm_target", "td_lambda")
    module = QMixModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module

"""The learner's whole objective in one loss module: TD(λ), or OVM, plus CQL and behaviour cloning.

Every algorithm of the project is one :class:`ObjectiveSettings` (typed, frozen, in the style
of BenchMARL's algorithm configs) over the same :class:`QMixObjective`:

=====================  ===================================  =============================
run                    settings                             loss terms
=====================  ===================================  =============================
QMIX (scratch)         ``td``                               ``loss_td``
offline MACQL / CFCQL  ``td`` + ``cql`` (α > 0)             ``loss_td``, ``loss_cql``
                                                            (+ ``loss_bc``: CFCQL's
                                                            behaviour net trained
                                                            jointly, ``"joint"`` only)
MACQL online           ``td`` + ``cql`` (offline α)         ``loss_td``, ``loss_cql``
MACal-QL online        ``cql.calibrated``                   as MACQL, push-down bounded
Switch-CQL, SE only    ``cql.alpha = 0``                    ``loss_td``
OVMSE, OVM only        ``ovm`` (+ ``cql.alpha = 0``)        ``loss_ovm``
=====================  ===================================  =============================

:meth:`QMixObjective.forward` takes an episode batch ``[B, T+1]`` (PyMARL layout, see
:mod:`ovmse.collection.episodes`) and the env steps so far (λ_memory is annealed over them,
paper Eq. 6) and returns a :class:`~tensordict.TensorDict` (batch size ``[]``), as TorchRL's
loss modules do: the differentiable ``loss_*`` terms, whose sum is what the optimiser
minimises, and detached diagnostics:

    loss_td            0.5 · masked mean (Q_tot − y^λ)²      (without OVM)
    loss_ovm           Eq. 5, :func:`~ovmse.losses.ovm_loss`  (with OVM, replaces loss_td)
    loss_cql           α · L_CQL (MACQL or CFCQL)             (α > 0)
    loss_bc            behaviour-cloning cross-entropy       (CFCQL with temperature > 0 and
                                                              behaviour_training="joint";
                                                              its own network)
    td_loss            the plain TD(λ) loss, also under OVM (for comparison)
    td_error_abs_mean, q_taken_mean, target_mean, mask_fraction
    mc_return_mean, q_minus_mc_return                         Monte-Carlo return-to-go of the batch
    offline_fraction                                          share of offline episodes (mixed batches)
    lambda_memory, ovm_active_fraction, ovm_td_part, ovm_memory_part, ovm_loss,
    offline_q_mean, ovm_target_mean                           (with OVM)
    cql_loss (unweighted L_CQL), cql_*                        (α > 0)
    bc_loss, bc_accuracy                                      (with the behaviour net)

The module owns the target networks (in its :class:`~ovmse.losses.QMixTDLoss`), the CQL loss,
CFCQL's behaviour net and the frozen offline target ``Q_tot-offline``
(:meth:`QMixObjective.freeze_offline_target`); the online agent and mixer are the caller's.

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from ovmse.losses.objective import CQLSettings, ObjectiveSettings, OVMSettings, QMixObjective
    >>> from ovmse.nets import QMixer, RNNAgent
    >>> B, T, N, A, O, S = 4, 6, 3, 9, 30, 48          # 4 episodes of 6 transitions, 3m's sizes
    >>> batch = TensorDict({
    ...     "agents": {"observation": torch.randn(B, T + 1, N, O), "action": torch.randint(A, (B, T + 1, N)),
    ...                "action_mask": torch.ones(B, T + 1, N, A, dtype=torch.bool)},
    ...     "state": torch.randn(B, T + 1, S), "reward": torch.rand(B, T + 1, 1),
    ...     "terminated": torch.zeros(B, T + 1, 1, dtype=torch.bool),
    ...     "filled": torch.ones(B, T + 1, 1, dtype=torch.bool)}, batch_size=[B, T + 1])
    >>> agent, mixer = RNNAgent(O + A + N, A, 16), QMixer(S, N, 8, 16)
    >>> offline = QMixObjective(agent, mixer, ObjectiveSettings(cql=CQLSettings("macql", alpha=0.05, samples=10)))
    >>> out = offline(batch, env_steps=0)
    >>> sorted(k for k in out.keys() if k.startswith("loss_"))
    ['loss_cql', 'loss_td']
    >>> offline.freeze_offline_target()                  # the end of offline training
    >>> offline.reconfigure(ObjectiveSettings(cql=CQLSettings("macql", alpha=0.0, samples=10),
    ...                                       ovm=OVMSettings(), keeps_offline_target=True))
    >>> out = offline(batch, env_steps=0)
    >>> sorted(k for k in out.keys() if k.startswith("loss_")), float(out["lambda_memory"])
    (['loss_ovm'], 1.0)
    >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from ovmse.exploration.schedules import LinearSchedule
from ovmse.nets import QMixer, RNNAgent
from ovmse.nets.agent import PackedRows

from .behaviour_cloning import behaviour_cloning_loss, behaviour_probs
from .cfcql import CFCQLLoss
from .macql import SAMPLINGS, MACQLLoss
from .ovm import ovm_loss
from .qmix_td import QMixTDLoss
from .qmix_values import q_tot_taken, taken_actions, unroll_agent_q
from .returns import return_to_go

__all__ = ["CQLSettings", "ObjectiveSettings", "OVMSettings", "QMixObjective", "TDSettings", "CQL_VARIANTS",
           "OVM_TARGETS"]

CQL_VARIANTS = ("macql", "cfcql")
# When CFCQL's behaviour net learns: "before" the Q networks, alone, then frozen (the CFCQL
# repo's run.py: train_behaviour until its loss stops improving, then CQL); "joint" = one
# behaviour-cloning step with every Q update (this project until 2026-12-04; checkpoints
# written then load as "joint").
BEHAVIOUR_TRAININGS = ("before", "joint")
OVM_TARGETS = ("one_step", "td_lambda")


@dataclass(frozen=True)
class TDSettings:
    """The TD(λ) target (PyMARL2 ``nq_learner``: γ 0.99, λ 0.6, double Q)."""

    gamma: float = 0.99
    td_lambda: float = 0.6
    double_q: bool = True


@dataclass(frozen=True)
class CQLSettings:
    """The conservative term ``α · L_CQL``.

    ``variant`` is ``"macql"`` (joint actions sampled uniformly, ``samples`` per transition,
    drawn over valid joint actions or, ``sampling="all"``, over all of them as checkpoints from
    before issue 16) or ``"cfcql"`` (counterfactual, agent weights from a behaviour-cloning
    policy at ``temperature``; 0 = uniform and no behaviour net). ``alpha = 0`` switches the
    term off but keeps its networks (Switch-CQL fine-tunes a CQL checkpoint). ``calibrated``:
    Cal-QL, the push-down values are bounded below by the Monte-Carlo return-to-go.
    ``behaviour_training``: when CFCQL's behaviour net learns (``BEHAVIOUR_TRAININGS``): with
    ``"before"`` the module refuses CFCQL updates until
    :func:`~ovmse.training.behaviour_pretraining.pretrain_behaviour` has trained it."""

    variant: str
    alpha: float
    samples: int = 100
    sampling: str = "available"
    temperature: float = 1.0
    calibrated: bool = False
    behaviour_training: str = "before"

    def __post_init__(self) -> None:
        if self.variant not in CQL_VARIANTS:
            raise ValueError(f"cql={self.variant!r}: choose one of {', '.join(CQL_VARIANTS)} (or null for no CQL)")
        if not self.alpha >= 0:
            raise ValueError(f"cql_alpha must be >= 0, got {self.alpha}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"MACQL sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.behaviour_training not in BEHAVIOUR_TRAININGS:
            raise ValueError(f"behaviour_training={self.behaviour_training!r}: choose one of "
                             f"{', '.join(BEHAVIOUR_TRAININGS)}")


@dataclass(frozen=True)
class OVMSettings:
    """OVM (paper §4.1): ``target`` the memory is compared with (``"one_step"``, Eq. 4, or
    ``"td_lambda"``, the TD term's y) and λ_memory annealed linearly over env steps from
    ``lambda_start`` to ``lambda_end`` (Eq. 6 with its footnote's max; start = end: constant)."""

    target: str = "one_step"
    lambda_start: float = 1.0
    lambda_end: float = 1.0
    anneal_steps: int = 0

    def __post_init__(self) -> None:
        if self.target not in OVM_TARGETS:
            raise ValueError(f"ovm_target={self.target!r}: choose one of {', '.join(OVM_TARGETS)}")
        for name, v in (("lambda_memory_start", self.lambda_start), ("lambda_memory_end", self.lambda_end)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")

    def schedule(self) -> LinearSchedule:
        return LinearSchedule(float(self.lambda_start), float(self.lambda_end), int(self.anneal_steps))


@dataclass(frozen=True)
class ObjectiveSettings:
    """One algorithm's objective. ``keeps_offline_target``: the module holds the frozen offline
    target Q_tot-offline (set at the end of offline training); OVM needs it."""

    td: TDSettings = field(default_factory=TDSettings)
    cql: CQLSettings | None = None
    ovm: OVMSettings | None = None
    keeps_offline_target: bool = False

    def __post_init__(self) -> None:
        if self.ovm is not None and not self.keeps_offline_target:
            raise ValueError("the OVM loss needs the frozen offline target Q_tot-offline (frozen_offline_target), "
                             "which this module does not hold: fine-tune from <offline run>/checkpoints/last.ckpt "
                             "(best.ckpt has none)")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: stored in checkpoints as hyperparameters (``weights_only`` loads)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ObjectiveSettings":
        # A CQL block without behaviour_training was written before it existed: trained jointly.
        cql = {"behaviour_training": "joint", **d["cql"]} if d.get("cql") else None
        return cls(td=TDSettings(**d.get("td", {})), cql=CQLSettings(**cql) if cql else None,
                   ovm=OVMSettings(**d["ovm"]) if d.get("ovm") else None,
                   keeps_offline_target=bool(d.get("keeps_offline_target", False)))

    def with_cql(self, **changes) -> "ObjectiveSettings":
        return replace(self, cql=replace(self.cql, **changes)) if self.cql is not None else self


class QMixObjective(nn.Module):
    """The loss of the module docstring over the online ``agent`` and ``mixer``.

    Args:
        agent, mixer: the online networks (trained; owned by the caller).
        settings: the objective.
        loss_scale: factor on the squared errors (PyMARL2: 0.5).
    """

    def __init__(self, agent: RNNAgent, mixer: QMixer, settings: ObjectiveSettings = ObjectiveSettings(),
                 loss_scale: float = 0.5) -> None:
        super().__init__()
        td = settings.td
        self.td = QMixTDLoss.from_online(agent, mixer, gamma=td.gamma, td_lambda=td.td_lambda, double_q=td.double_q,
                                         loss_scale=loss_scale)
        self.cql: MACQLLoss | CFCQLLoss | None = None
        self.behaviour: RNNAgent | None = None
        cql = settings.cql
        if cql is not None and cql.variant == "macql":
            self.cql = MACQLLoss(mixer, n_samples=cql.samples, sampling=cql.sampling)
        elif cql is not None:
            self.cql = CFCQLLoss(mixer, temperature=cql.temperature)
            if cql.temperature > 0:
                self.behaviour = RNNAgent(agent.fc1.in_features, agent.fc2.out_features, agent.hidden_dim)
                if cql.behaviour_training == "before":
                    # Saved with the module: a checkpoint says whether its behaviour net is trained.
                    self.register_buffer("behaviour_pretrained", torch.zeros((), dtype=torch.bool))
        self._behaviour_checked = False
        self.frozen_agent: RNNAgent | None = None
        self.frozen_mixer: QMixer | None = None
        if settings.keeps_offline_target:
            self.frozen_agent, self.frozen_mixer = QMixTDLoss.make_targets(agent, mixer)
        self.settings = settings
        self.lambda_memory = settings.ovm.schedule() if settings.ovm else None

    @torch.no_grad()
    def freeze_offline_target(self) -> None:
        """Keep a frozen copy of the current *target* agent and mixer as Q_tot-offline."""
        self.frozen_agent, self.frozen_mixer = QMixTDLoss.make_targets(self.td.target_agent, self.td.target_mixer)
        self.settings = replace(self.settings, keeps_offline_target=True)

    def reconfigure(self, settings: ObjectiveSettings) -> None:
        """Change what is optimised (the online phase's objective) over the same networks:
        ``settings`` must keep this module's structure (γ and double Q, CQL variant and its
        sampling, the frozen offline target); the TD(λ) target's λ, the CQL weight, Cal-QL and
        OVM may change."""
        have, want = self.settings, settings
        if want.cql is not None and have.cql is None:
            what = "cql_calibrated (Cal-QL)" if want.cql.calibrated else f"online cql_alpha={want.cql.alpha}"
            raise ValueError(f"{what} needs a CQL loss, but this checkpoint was trained without CQL (cql=None); "
                             "set the online CQL weight to 0")
        structure = ("variant", "samples", "sampling", "temperature", "behaviour_training")
        if (have.cql is None) != (want.cql is None) or have.cql is not None and any(
                getattr(have.cql, k) != getattr(want.cql, k) for k in structure):
            raise ValueError(f"the online objective's CQL ({want.cql}) does not fit the pretrained one ({have.cql}): "
                             "only its weight alpha and calibrated may change")
        if replace(want.td, td_lambda=have.td.td_lambda) != have.td:
            raise ValueError(f"the online objective's TD settings ({want.td}) differ from the pretrained ({have.td}) "
                             "in more than td_lambda")
        if want.keeps_offline_target != have.keeps_offline_target:
            raise ValueError("keeps_offline_target follows the module (freeze_offline_target sets it)")
        self.settings = want
        self.td.td_lambda = float(want.td.td_lambda)
        self.lambda_memory = want.ovm.schedule() if want.ovm else None

    def online_parameters(self) -> list[nn.Parameter]:
        """The Q networks' parameters (agent, then mixer); the behaviour net is apart."""
        return self.td.online_parameters()

    @property
    def trains_behaviour_jointly(self) -> bool:
        """Whether ``loss_bc`` trains the behaviour net with every update (its parameters then
        belong in the optimiser)."""
        return self.behaviour is not None and self.settings.cql.behaviour_training == "joint"

    @property
    def needs_behaviour_pretraining(self) -> bool:
        """CFCQL with ``behaviour_training="before"`` whose behaviour net is not trained yet."""
        return hasattr(self, "behaviour_pretrained") and not bool(self.behaviour_pretrained)

    def behaviour_cloning(self, batch: TensorDictBase, mask: torch.Tensor,
                          packed: tuple[torch.Tensor, PackedRows] | None = None) -> tuple[torch.Tensor, ...]:
        """The behaviour net's logits ``[B, T, N, A]`` on the batch's ``T`` transitions (``mask``
        ``[B, T, 1]``, their validity) and its cloning loss and accuracy on the dataset actions.
        ``packed``: the batch's :func:`~ovmse.losses.qmix_values.pack_agent_inputs`, if built."""
        keys, T = self.td.keys, mask.shape[1]
        logits = unroll_agent_q(self.behaviour, batch, keys, packed)[:, :T]
        loss, accuracy = behaviour_cloning_loss(logits, batch[keys.action_mask][:, :T].bool(),
                                                taken_actions(batch, T, keys), mask)
        return logits, loss, accuracy

    def _check_behaviour_pretrained(self) -> None:
        if self._behaviour_checked:  # once: reading the flag would sync a GPU every update
            return
        if self.needs_behaviour_pretraining:
            raise RuntimeError("CFCQL with behaviour_training='before' needs its behaviour net trained first "
                               "(ovmse.training.behaviour_pretraining.pretrain_behaviour; phase=offline does it)")
        self._behaviour_checked = True

    def forward(self, batch: TensorDictBase, env_steps: int = 0) -> TensorDict:
        s = self.settings
        td, parts = self.td.compute(batch)
        keys = self.td.keys
        mask = parts["mask"]
        T = mask.shape[1]
        out: dict[str, torch.Tensor] = {}
        diagnostics = {k: v.detach() for k, v in td.items() if k != "loss"}
        diagnostics["td_loss"] = td["loss"].detach()
        with torch.no_grad():
            mc = return_to_go(batch[keys.reward][:, :T].to(mask.dtype), parts["terminated"], mask, s.td.gamma)
            n = mask.sum().clamp(min=1.0)
            diagnostics["mc_return_mean"] = (mc * mask).sum() / n
            diagnostics["q_minus_mc_return"] = ((parts["q_taken"].detach() - mc) * mask).sum() / n
        if "from_offline" in batch.keys():
            diagnostics["offline_fraction"] = batch["from_offline"][:, 0].float().mean()
        if s.ovm is None:
            out["loss_td"] = td["loss"]
        else:
            with torch.no_grad():
                q_offline = q_tot_taken(self.frozen_agent, self.frozen_mixer, batch, keys=keys,
                                        agent_q=unroll_agent_q(self.frozen_agent, batch, keys, parts["packed"]))
            y_memory = parts["y_one_step"] if s.ovm.target == "one_step" else parts["y"]
            ovm = ovm_loss(parts["q_taken"], parts["y"], q_offline, mask, self.lambda_memory(env_steps),
                           loss_scale=self.td.loss_scale, y_memory=y_memory)
            out["loss_ovm"] = ovm["loss"]
            diagnostics.update(lambda_memory=ovm["lambda_memory"], ovm_active_fraction=ovm["active_fraction"],
                               ovm_td_part=ovm["td_part"], ovm_memory_part=ovm["memory_part"],
                               ovm_loss=ovm["loss"].detach(), offline_q_mean=ovm["offline_q_mean"],
                               ovm_target_mean=ovm["ovm_target_mean"])
        if s.cql is not None and s.cql.alpha > 0:
            bound = mc if s.cql.calibrated else None
            avail = batch[keys.action_mask][:, :T].bool()
            state = batch[keys.state][:, :T]
            agent_q = parts["agent_q"][:, :T]
            if s.cql.variant == "macql":
                cql = self.cql(agent_q, avail, state, parts["q_taken"], mask, lower_bound=bound)
            else:
                probs, actions = None, taken_actions(batch, T, keys)
                if self.behaviour is not None:
                    joint = self.trains_behaviour_jointly
                    if not joint:
                        self._check_behaviour_pretrained()
                    # Trained before and frozen: a forward pass only.
                    with torch.set_grad_enabled(joint and torch.is_grad_enabled()):
                        logits, bc_loss, bc_accuracy = self.behaviour_cloning(batch, mask, parts["packed"])
                    if joint:
                        out["loss_bc"] = bc_loss  # its own parameters: this trains the behaviour net only
                    diagnostics.update(bc_loss=bc_loss.detach(), bc_accuracy=bc_accuracy.detach())
                    probs = behaviour_probs(logits.detach(), avail)
                cql = self.cql(agent_q, avail, state, actions, parts["q_taken"], mask, behaviour_probs=probs,
                               lower_bound=bound)
            out["loss_cql"] = s.cql.alpha * cql["loss"]
            diagnostics.update({f"cql_{k}": v.detach() for k, v in cql.items() if k != "loss"})
            diagnostics["cql_loss"] = cql["loss"].detach()
        return TensorDict({**out, **diagnostics}, batch_size=[])

"""CFCQL's behaviour net trained before the Q networks and then frozen (the CFCQL repo's
run.py), against the joint training this project did before."""

import pytest
import torch
from tensordict import TensorDict

from ovmse.losses.objective import CQLSettings, ObjectiveSettings, QMixObjective
from ovmse.nets import QMixer, RNNAgent
from ovmse.training.behaviour_pretraining import pretrain_behaviour
from ovmse.training.qmix_module import QMixModule

B, T, N, A, O, S = 6, 7, 3, 9, 30, 48


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    avail = torch.rand(B, T + 1, N, A, generator=g) > 0.3
    avail[..., 0] = True
    actions = torch.zeros(B, T + 1, N, dtype=torch.long)  # the dataset action, always available
    filled = torch.ones(B, T + 1, 1, dtype=torch.bool)
    filled[0, 4:] = False
    terminated = torch.zeros(B, T + 1, 1, dtype=torch.bool)
    terminated[0, 2] = True
    return TensorDict({"agents": {"observation": torch.randn(B, T + 1, N, O, generator=g), "action": actions,
                                  "action_mask": avail},
                       "state": torch.randn(B, T + 1, S, generator=g), "reward": torch.rand(B, T + 1, 1, generator=g),
                       "terminated": terminated, "filled": filled}, batch_size=[B, T + 1])


def objective(training="before", seed=0):
    torch.manual_seed(seed)
    return QMixObjective(RNNAgent(O + A + N, A, 16), QMixer(S, N, 8, 16),
                         ObjectiveSettings(cql=CQLSettings("cfcql", alpha=1.0, behaviour_training=training)))


def test_a_cfcql_update_is_refused_until_the_behaviour_net_is_trained():
    obj = objective()
    assert obj.needs_behaviour_pretraining and not obj.trains_behaviour_jointly
    with pytest.raises(RuntimeError, match="behaviour net trained first"):
        obj(batch())
    pretrain_behaviour(obj, lambda: batch(), lr=1e-3, patience=3, max_updates=50)
    out = obj(batch())
    assert "loss_bc" not in out.keys() and "bc_accuracy" in out.keys()
    sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
    assert all(p.grad is None for p in obj.behaviour.parameters())
    with pytest.raises(ValueError, match="no behaviour net waiting"):
        pretrain_behaviour(obj, lambda: batch(), lr=1e-3)


def test_training_stops_when_the_loss_has_not_improved_for_more_than_patience_updates():
    # lr = 0: the loss of one fixed batch never improves on the first update's.
    info = pretrain_behaviour(objective(), lambda: batch(), lr=0.0, patience=4, max_updates=100)
    assert info["stopped_by"] == "patience" and info["updates"] == 4 + 2
    info = pretrain_behaviour(objective(), lambda: batch(), lr=1e-2, patience=4, max_updates=5)
    assert info["stopped_by"] == "max_updates" and info["updates"] == 5
    assert info["last_loss"] <= info["best_loss"] + 1e-6 and info["best_loss"] < float("inf")
    with pytest.raises(ValueError, match="patience >= 1"):
        pretrain_behaviour(objective(), lambda: batch(), lr=1e-3, patience=0)


def test_the_frozen_behaviour_gives_the_cql_term_the_joint_training_gives_for_the_same_weights():
    before, joint = objective("before"), objective("joint")
    pretrain_behaviour(before, lambda: batch(1), lr=1e-2, patience=3, max_updates=30)
    joint.load_state_dict({k: v for k, v in before.state_dict().items() if k != "behaviour_pretrained"})
    a, b = before(batch(2)), joint(batch(2))
    torch.testing.assert_close(a["loss_cql"], b["loss_cql"])
    torch.testing.assert_close(a["bc_loss"], b["bc_loss"])
    assert "loss_bc" in b.keys() and "loss_bc" not in a.keys()


def test_the_trained_flag_travels_with_the_state_and_old_settings_read_as_joint():
    trained = objective()
    pretrain_behaviour(trained, lambda: batch(), lr=1e-3, patience=2, max_updates=10)
    fresh = objective(seed=1)
    fresh.load_state_dict(trained.state_dict())
    assert not fresh.needs_behaviour_pretraining
    fresh(batch())  # no refusal
    old = ObjectiveSettings(cql=CQLSettings("cfcql", alpha=1.0)).to_dict()
    del old["cql"]["behaviour_training"]  # a checkpoint's hyperparameters from before the setting
    assert ObjectiveSettings.from_dict(old).cql.behaviour_training == "joint"
    with pytest.raises(ValueError, match="behaviour_training='later'"):
        CQLSettings("cfcql", alpha=1.0, behaviour_training="later")


@pytest.mark.parametrize("training, groups", [("before", 1), ("joint", 2)])
def test_only_joint_training_puts_the_behaviour_net_in_the_optimiser(training, groups):
    module = QMixModule(O, S, N, A, hidden_dim=16, mixing_embed_dim=8, hypernet_embed=16,
                        objective=ObjectiveSettings(cql=CQLSettings("cfcql", alpha=1.0, behaviour_training=training)))
    assert len(module.configure_optimizers().param_groups) == groups

"""The OVM loss (paper Eq. 4-5) by hand, the λ_memory schedule (Eq. 6) in the learner, and
the frozen offline target staying bit-identical through online updates."""

import pytest
import torch

from ovmse.datasets import load_dataset
from ovmse.envs import get_map
from ovmse.losses import QMixTDLoss, ovm_loss
from ovmse.training import QMixModule
from objectives import fine_tune, settings
from simtools import random_dataset


def test_ovm_target_and_loss_by_hand():
    # Three transitions and one padding row:
    #   t0: Q_off 5 > y 3  -> Q_OVM 5 (memory active);  Q_tot 4
    #   t1: Q_off 1 < y 2  -> Q_OVM 2;                  Q_tot 0
    #   t2: Q_off 7 = y 7  -> Q_OVM 7 (not "active");   Q_tot 6
    #   t3: padding with NaNs everywhere (mask 0)
    q = torch.tensor([[[4.0], [0.0], [6.0], [float("nan")]]], requires_grad=True)
    y = torch.tensor([[[3.0], [2.0], [7.0], [float("nan")]]])
    q_off = torch.tensor([[[5.0], [1.0], [7.0], [float("nan")]]])
    mask = torch.tensor([[[1.0], [1.0], [1.0], [0.0]]])
    lam = 0.25
    out = ovm_loss(q, y, q_off, mask, lam, loss_scale=0.5)
    td_sq = ((4 - 3) ** 2 + (0 - 2) ** 2 + (6 - 7) ** 2) / 3  # 2
    ovm_sq = ((4 - 5) ** 2 + (0 - 2) ** 2 + (6 - 7) ** 2) / 3  # 2
    assert out["td_part"].item() == pytest.approx(0.5 * 0.75 * td_sq)
    assert out["memory_part"].item() == pytest.approx(0.5 * 0.25 * ovm_sq)
    assert out["loss"].item() == pytest.approx(0.5 * (0.75 * td_sq + 0.25 * ovm_sq))
    assert out["active_fraction"].item() == pytest.approx(1 / 3)
    assert out["offline_q_mean"].item() == pytest.approx((5 + 1 + 7) / 3)
    assert out["ovm_target_mean"].item() == pytest.approx((5 + 2 + 7) / 3)
    assert out["lambda_memory"].item() == pytest.approx(0.25)
    out["loss"].backward()
    # d/dQ = 0.5 * (2 (1-λ)(Q - y) + 2 λ (Q - Q_OVM)) / 3
    expected = [(0.75 * (4 - 3) + 0.25 * (4 - 5)) / 3, (0.75 * (0 - 2) + 0.25 * (0 - 2)) / 3,
                (0.75 * (6 - 7) + 0.25 * (6 - 7)) / 3, 0.0]
    torch.testing.assert_close(q.grad.flatten(), torch.tensor(expected))


def test_ovm_memory_is_compared_with_y_memory_and_the_td_part_keeps_y_td():
    q = torch.tensor([[[4.0], [0.0]]], requires_grad=True)
    y_td = torch.tensor([[[3.0], [2.0]]])
    y_one = torch.tensor([[[6.0], [-1.0]]])
    q_off = torch.tensor([[[5.0], [1.0]]])
    mask = torch.ones(1, 2, 1)
    out = ovm_loss(q, y_td, q_off, mask, 0.5, loss_scale=1.0, y_memory=y_one)
    # Q_OVM = max(q_off, y_one) = [6, 1]
    assert out["td_part"].item() == pytest.approx(0.5 * ((4 - 3) ** 2 + (0 - 2) ** 2) / 2)
    assert out["memory_part"].item() == pytest.approx(0.5 * ((4 - 6) ** 2 + (0 - 1) ** 2) / 2)
    assert out["active_fraction"].item() == pytest.approx(0.5)  # only t1: memory 1 > y_one -1


def test_one_step_target_is_reward_plus_discounted_next_target_value(batch):
    from ovmse.losses import transition_mask
    from ovmse.losses.qmix_values import target_values, unroll_agent_q

    module = _module()
    with torch.no_grad():
        for p in module.objective.td.target_agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _, parts = module.objective.td.compute(batch)
    mask, term = transition_mask(batch)
    T = mask.shape[1]
    q_next = target_values(unroll_agent_q(module.agent, batch), module.objective.td.target_agent, module.objective.td.target_mixer,
                           batch)
    expected = (batch["reward"][:, :T] + 0.99 * (1 - term) * q_next[:, 1:]) * mask
    torch.testing.assert_close(parts["y_one_step"], expected)
    assert not torch.allclose(parts["y_one_step"], parts["y"])  # TD(λ) mixes in later rewards


def test_old_checkpoints_keep_the_td_lambda_ovm_target(tmp_path):
    from ovmse.training.qmix_module import load_qmix_checkpoint

    m = _module(frozen_offline_target=True)
    fine_tune(m, cql_alpha=0.0, ovm=True)
    assert m.settings.ovm.target == "one_step"
    # A checkpoint as written before the option existed: flat hparams, no ovm_target.
    hparams = {k: v for k, v in m.hparams.items() if k != "objective"}
    hparams.update(frozen_offline_target=True, ovm=True, cql_alpha=0.0)
    state = {k.replace("objective.td.", "loss.").replace("objective.frozen_", "frozen_"): v
             for k, v in m.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "old.ckpt")
    assert load_qmix_checkpoint(str(tmp_path / "old.ckpt")).settings.ovm.target == "td_lambda"
    with pytest.raises(ValueError, match="ovm_target='eq4'"):
        fine_tune(m, cql_alpha=0.0, ovm=True, ovm_target="eq4")


def test_ovm_with_lambda_one_regresses_on_the_memory_where_it_is_higher():
    q = torch.tensor([[[0.0], [0.0]]], requires_grad=True)
    y = torch.tensor([[[1.0], [3.0]]])
    q_off = torch.tensor([[[2.0], [-5.0]]])
    out = ovm_loss(q, y, q_off, torch.ones(1, 2, 1), 1.0)
    assert out["td_part"].item() == 0.0
    assert out["loss"].item() == pytest.approx(0.5 * (2.0 ** 2 + 3.0 ** 2) / 2)  # targets max(2,1)=2, max(-5,3)=3
    out["loss"].backward()
    assert q_off.grad is None and y.grad is None  # targets are constants


def test_ovm_with_lambda_zero_is_the_td_loss():
    torch.manual_seed(0)
    q = torch.randn(4, 6, 1)
    y = torch.randn(4, 6, 1)
    q_off = torch.randn(4, 6, 1) + 10.0  # memory far above: must not matter at λ = 0
    mask = (torch.rand(4, 6, 1) > 0.3).float()
    out = ovm_loss(q, y, q_off, mask, 0.0)
    td = 0.5 * ((q - y) ** 2 * mask).sum() / mask.sum()
    assert out["loss"].item() == pytest.approx(td.item(), rel=1e-6)
    assert out["memory_part"].item() == 0.0


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_ovm_rejects_lambda_outside_unit_interval(lam):
    x = torch.zeros(1, 1, 1)
    with pytest.raises(ValueError, match="lambda_memory"):
        ovm_loss(x, x, x, torch.ones(1, 1, 1), lam)


def test_ovm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B, T, 1\]"):
        ovm_loss(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 4, 1), torch.ones(2, 3, 1), 0.5)


# ----------------------------------------------------------------------------- the learner


def _module(**kwargs) -> QMixModule:
    spec = get_map("3m")
    return QMixModule(obs_dim=spec.obs_dim, state_dim=spec.state_dim, n_agents=spec.n_agents,
                      n_actions=spec.n_actions, map_name="3m", hidden_dim=16, mixing_embed_dim=8,
                      hypernet_embed=16, objective=settings(**kwargs))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    path = random_dataset(tmp_path_factory.mktemp("ovm") / "3m" / "medium", episodes=16, seed=5)
    ds = load_dataset(path, map_name="3m")
    ds.set_generator(torch.Generator().manual_seed(0))
    return ds.sample(8)


def test_lambda_memory_constant_when_start_equals_end(batch):
    module = _module(cql="macql", cql_alpha=0.05, cql_samples=4, frozen_offline_target=True)
    fine_tune(module, cql_alpha=0.0, ovm=True, lambda_memory_start=1.0, lambda_memory_end=1.0,
                                 lambda_memory_anneal_steps=200_000)
    for t in (0, 1, 50_000, 200_000, 10_000_000):
        module.env_steps = t
        module.training_step(batch, 0)
        assert module.latest_train_metrics["train/lambda_memory"].item() == 1.0


def test_lambda_memory_anneals_linearly_and_stops_at_its_end_value(batch):
    module = _module(frozen_offline_target=True)
    fine_tune(module, cql_alpha=0.0, ovm=True, lambda_memory_start=1.0, lambda_memory_end=0.1,
                                 lambda_memory_anneal_steps=200_000)
    seen = {}
    for t in (0, 50_000, 100_000, 200_000, 300_000, 5_000_000):
        module.env_steps = t
        module.training_step(batch, 0)
        seen[t] = module.latest_train_metrics["train/lambda_memory"].item()
    assert seen[0] == pytest.approx(1.0)
    assert seen[50_000] == pytest.approx(0.775)
    assert seen[100_000] == pytest.approx(0.55)
    assert seen[200_000] == pytest.approx(0.1)
    assert seen[300_000] == pytest.approx(0.1) and seen[5_000_000] == pytest.approx(0.1)  # max(λ_end, ...)


def test_configure_fine_tuning_restarts_the_clock_and_records_offline_progress():
    module = _module(frozen_offline_target=True)
    module.updates, module.episodes, module.env_steps, module.last_target_update_episode = 2000, 64000, 0, 64000
    module.clock = "updates"
    fine_tune(module, cql_alpha=0.0, ovm=True)
    assert (module.updates, module.episodes, module.env_steps, module.last_target_update_episode) == (0, 0, 0, 0)
    assert module.clock == "env_steps"
    assert module.hparams.offline_progress == {"updates": 2000, "episodes": 64000}
    assert module.settings.ovm is not None and module.settings.cql is None
    assert module.hparams.objective == module.settings.to_dict()


def test_ovm_needs_the_frozen_offline_target():
    with pytest.raises(ValueError, match="frozen offline target"):
        fine_tune(_module(), cql_alpha=0.0, ovm=True)
    with pytest.raises(ValueError, match="frozen_offline_target"):
        _module(ovm=True, cql_alpha=0.0)


def test_online_cql_needs_a_cql_checkpoint():
    with pytest.raises(ValueError, match="without CQL"):
        fine_tune(_module(frozen_offline_target=True), cql_alpha=0.05)
    with pytest.raises(ValueError, match="Cal-QL"):
        fine_tune(_module(frozen_offline_target=True), cql_alpha=0.0, cql_calibrated=True)


@pytest.mark.parametrize("ovm_target", ["one_step", "td_lambda"])
def test_ovm_loss_in_the_learner_uses_the_frozen_target_on_the_same_batch(batch, ovm_target):
    module = _module(frozen_offline_target=True)
    fine_tune(module, cql_alpha=0.0, ovm=True, lambda_memory_start=0.5, lambda_memory_end=0.5,
                                 ovm_target=ovm_target)
    with torch.no_grad():  # make the memory differ from the online nets, on the targets' scale
        for p in module.objective.frozen_mixer.parameters():
            p.mul_(0.5)
    loss = module.training_step(batch, 0)
    td, parts = module.objective.td.compute(batch)
    from ovmse.losses import q_tot_taken

    q_off = q_tot_taken(module.objective.frozen_agent, module.objective.frozen_mixer, batch)
    y_memory = parts["y_one_step"] if ovm_target == "one_step" else parts["y"]
    expected = ovm_loss(parts["q_taken"], parts["y"], q_off, parts["mask"], 0.5, y_memory=y_memory)
    other = ovm_loss(parts["q_taken"], parts["y"], q_off, parts["mask"], 0.5,
                     y_memory=parts["y"] if ovm_target == "one_step" else parts["y_one_step"])
    assert loss.item() == pytest.approx(expected["loss"].item(), rel=1e-6)
    assert loss.item() != pytest.approx(other["loss"].item(), rel=1e-6)  # the two targets differ here
    m = module.latest_train_metrics
    assert m["train/ovm_active_fraction"].item() == pytest.approx(expected["active_fraction"].item())
    assert m["train/td_loss"].item() == pytest.approx(td["loss"].item(), rel=1e-6)  # the plain TD loss, logged
    # batches from the ReplayDataModule carry "from_offline"; its mean is logged
    tagged = batch.clone()
    flag = torch.zeros(*tagged.batch_size, 1, dtype=torch.bool)
    flag[:3] = True
    tagged.set("from_offline", flag)
    module.training_step(tagged, 1)
    assert module.latest_train_metrics["train/offline_fraction"].item() == pytest.approx(3 / 8)


def test_frozen_offline_target_is_bit_identical_after_many_online_updates(batch):
    module = _module(cql="macql", cql_alpha=0.05, cql_samples=4, frozen_offline_target=True)
    fine_tune(module, cql_alpha=0.05, ovm=True)
    frozen_before = {k: v.clone() for k, v in {**module.objective.frozen_agent.state_dict(),
                                                **{f"m.{k}": v for k, v in module.objective.frozen_mixer.state_dict().items()}}.items()}
    online_before = [p.clone() for p in module.q_parameters()]
    opt = module.configure_optimizers()
    for step in range(40):
        opt.zero_grad()
        module.training_step(batch, step).backward()
        opt.step()
        if step % 10 == 9:
            module.update_targets()
    frozen_after = {**module.objective.frozen_agent.state_dict(), **{f"m.{k}": v for k, v in module.objective.frozen_mixer.state_dict().items()}}
    assert frozen_after.keys() == frozen_before.keys()
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    assert not any(p.requires_grad for p in module.objective.frozen_agent.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(online_before, module.q_parameters()))  # training did happen
    assert not any(p is q for p in module.objective.frozen_agent.parameters() for q in opt.param_groups[0]["params"])


def test_calql_bound_is_the_return_to_go_of_the_batch(batch, monkeypatch):
    from ovmse.losses import return_to_go, transition_mask

    module = _module(cql="macql", cql_alpha=0.05, cql_samples=4, frozen_offline_target=True)
    seen = {}
    original = module.objective.cql.forward

    def spy(*args, **kwargs):
        seen["lower_bound"] = kwargs.get("lower_bound")
        return original(*args, **kwargs)

    monkeypatch.setattr(module.objective.cql, "forward", spy)
    fine_tune(module, cql_alpha=0.05, cql_calibrated=True)
    module.training_step(batch, 0)
    mask, term = transition_mask(batch)
    T = mask.shape[1]
    expected = return_to_go(batch["reward"][:, :T].float(), term, mask, module.settings.td.gamma)
    assert seen["lower_bound"] is not None and torch.equal(seen["lower_bound"], expected)
    assert expected.abs().sum() > 0  # the random battles do score
    assert "train/cql_calibrated_fraction" in module.latest_train_metrics
    # plain MACQL: no bound; CQL off: no CQL term at all
    fine_tune(module, cql_alpha=0.05, cql_calibrated=False)
    module.training_step(batch, 0)
    assert seen["lower_bound"] is None
    seen.clear()
    fine_tune(module, cql_alpha=0.0)
    module.training_step(batch, 0)
    assert seen == {} and "train/cql_loss" not in module.latest_train_metrics


def test_td_loss_parts_are_unchanged_by_fine_tuning_settings(batch):
    """Switch-CQL's objective is exactly the QMIX TD loss."""
    module = _module(cql="macql", cql_alpha=0.05, cql_samples=4, frozen_offline_target=True)
    fine_tune(module, cql_alpha=0.0)
    loss = module.training_step(batch, 0)
    td = QMixTDLoss.forward(module.objective.td, batch)["loss"]
    assert loss.item() == pytest.approx(td.item(), rel=1e-6)

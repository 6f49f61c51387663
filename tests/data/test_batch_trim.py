"""Batches cut to their longest filled episode (``trim_to_filled``, PyMARL2's ``max_t_filled``)
give the same losses, gradients and value statistics as the padded batches they come from."""

import pytest
import torch

import ovmse.training.value_diagnostics as value_diagnostics
from data_modules import ReplayDataModule
from ovmse.collection import EpisodeReplayBuffer
from ovmse.datasets import load_dataset, trim_to_filled
from ovmse.envs import get_map
from ovmse.training import QMixModule
from objectives import settings
from simtools import random_dataset

K = 6  # MACQL samples per transition


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """24 random-play 3m episodes ``[24, 61]``; the longest is made a time-limit end (truncated,
    not terminated) and a shorter one too, so both bootstrap paths of the TD(λ) target run."""
    path = random_dataset(tmp_path_factory.mktemp("trim") / "3m" / "medium", episodes=24, seed=11)
    eps = load_dataset(path, map_name="3m").episodes[:].clone()
    lengths = eps["filled"].squeeze(-1).sum(1) - 1
    order = lengths.argsort(descending=True)
    for e in (int(order[0]), int(order[len(order) // 2])):
        last = int(lengths[e]) - 1
        eps["terminated"][e, last] = False
        eps["truncated"][e, last] = True
    return eps


def module(**kwargs) -> QMixModule:
    torch.manual_seed(0)
    spec = get_map("3m")
    m = QMixModule(obs_dim=spec.obs_dim, state_dim=spec.state_dim, n_agents=spec.n_agents,
                   n_actions=spec.n_actions, map_name="3m", hidden_dim=16, mixing_embed_dim=8,
                   hypernet_embed=16, objective=settings(cql_samples=K, **kwargs))
    # Distinct targets so that a wrong bootstrap (online vs target net) would show.
    with torch.no_grad():
        for p in m.objective.td.target_agent.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def fixed_samples(m: QMixModule, rows: int) -> None:
    """MACQL draws [B, T, K, N] samples; fix them per (b, t) so both batch lengths see the same."""
    if m.settings.cql is None or m.settings.cql.variant != "macql":
        return
    table = torch.randint(0, m.hparams.n_actions, (64, rows, K, m.hparams.n_agents),
                          generator=torch.Generator().manual_seed(3))
    draw = m.objective.cql.forward  # the draw is not under test: pass the table as explicit samples

    def forward_with_table(agent_q, *args, **kwargs):
        return draw(agent_q, *args, samples=table[: agent_q.shape[0], : agent_q.shape[1]], **kwargs)

    m.objective.cql.forward = forward_with_table


def loss_and_grads(m: QMixModule, batch):
    m.zero_grad()
    loss = m.training_step(batch, 0)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None}
    return loss.detach(), grads, dict(m.latest_train_metrics)


OBJECTIVES = {
    "qmix": {},
    "macql": {"cql": "macql", "cql_alpha": 0.5},
    "ovm+macal-ql": {"cql": "macql", "cql_alpha": 0.5, "frozen_offline_target": True, "ovm": True,
                     "cql_calibrated": True, "lambda_memory_start": 0.7, "lambda_memory_end": 0.7},
    "cfcql+behaviour": {"cql": "cfcql", "cql_alpha": 0.5, "cfcql_temperature": 1.0},
}


def test_trim_cuts_to_the_longest_episode_and_keeps_rows(episodes):
    trimmed = trim_to_filled(episodes)
    longest = int(episodes["filled"].squeeze(-1).sum(1).max())
    assert trimmed.shape == (episodes.shape[0], longest) and longest < episodes.shape[1]
    assert (trimmed == episodes[:, :longest]).all()
    assert not episodes["filled"][:, longest:].any()
    assert trim_to_filled(trimmed) is trimmed  # nothing to cut: the batch itself


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_loss_and_gradients_equal_with_and_without_the_cut(episodes, objective):
    trimmed = trim_to_filled(episodes)
    assert trimmed.shape[1] < episodes.shape[1]
    results = []
    for batch in (episodes, trimmed):
        m = module(**OBJECTIVES[objective])
        fixed_samples(m, episodes.shape[1])
        results.append(loss_and_grads(m, batch))
    (loss_full, grads_full, metrics_full), (loss_cut, grads_cut, metrics_cut) = results
    torch.testing.assert_close(loss_cut, loss_full, rtol=1e-5, atol=1e-6)
    assert grads_full.keys() == grads_cut.keys() and len(grads_full) > 0
    for name in grads_full:
        torch.testing.assert_close(grads_cut[name], grads_full[name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ("train/td_loss", "train/q_taken_mean", "train/target_mean", "train/mc_return_mean"):
        torch.testing.assert_close(metrics_cut[key], metrics_full[key], rtol=1e-5, atol=1e-6, msg=key)


def test_mixed_offline_online_batches_are_cut_and_learn_the_same(episodes, monkeypatch):
    def data():
        online = EpisodeReplayBuffer(64, generator=torch.Generator().manual_seed(1))
        online.extend(episodes[:12].clone())
        offline = EpisodeReplayBuffer(64, generator=torch.Generator().manual_seed(2))
        offline.extend(episodes[12:].clone())
        return ReplayDataModule(online, offline, batch_size=10, offline_fraction=0.3)

    cut = data().sample()
    # The same draws gathered whole: the buffers report every row as filled.
    monkeypatch.setattr(EpisodeReplayBuffer, "max_rows_filled", lambda self, indices: self.max_rows)
    full = data().sample()
    assert full.shape[1] == episodes.shape[1] and cut.shape[1] < full.shape[1]
    assert cut.shape[1] == trim_to_filled(full).shape[1], "the gather stops at the longest drawn episode"
    assert (cut == full[:, : cut.shape[1]]).all()
    assert cut["from_offline"][:, 0].sum() == 3
    results = []
    for batch in (full, cut):
        m = module(**OBJECTIVES["ovm+macal-ql"])
        fixed_samples(m, full.shape[1])
        results.append(loss_and_grads(m, batch))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_value_statistics_equal_with_and_without_the_cut(episodes, monkeypatch):
    m = module()
    cut = value_diagnostics.value_sums(m, episodes)
    monkeypatch.setattr(value_diagnostics, "trim_to_filled", lambda td: td)
    full = value_diagnostics.value_sums(m, episodes)
    assert cut.keys() == full.keys()
    for key in cut:
        assert cut[key] == pytest.approx(full[key], rel=1e-5, abs=1e-4), key


def test_trim_keeps_one_transition_column_of_an_empty_batch(episodes):
    empty = episodes[:3].clone()
    empty["filled"].zero_()
    assert trim_to_filled(empty).shape == (3, 2)

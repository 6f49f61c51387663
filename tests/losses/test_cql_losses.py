"""CQL-family losses: QMixer.forward_samples, return_to_go, MACQL, CFCQL, behaviour cloning."""

import math

import pytest
import torch
from torch import nn

from ovmse.losses import CFCQLLoss, MACQLLoss, behaviour_cloning_loss, behaviour_probs, return_to_go
from ovmse.nets.mixer import QMixer


class SumMixer(nn.Module):
    """VDN-like test double: Q_tot = Σ_i Q_i (exact numbers by hand)."""

    def forward(self, agent_qs, state):
        return agent_qs.sum(-1, keepdim=True)

    def forward_samples(self, agent_qs, state):
        return agent_qs.sum(-1, keepdim=True)


def lse(*xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# ----------------------------------------------------------------------------- forward_samples


def test_forward_samples_equals_per_sample_forward():
    torch.manual_seed(0)
    mixer = QMixer(5, 3, embed_dim=8, hypernet_embed=16)
    qs = torch.randn(2, 4, 7, 3)
    state = torch.randn(2, 4, 5)
    out = mixer.forward_samples(qs, state)
    assert out.shape == (2, 4, 7, 1)
    expanded = mixer(qs, state.unsqueeze(-2).expand(2, 4, 7, 5))
    torch.testing.assert_close(out, expanded, rtol=1e-5, atol=1e-6)
    for k in range(7):
        torch.testing.assert_close(out[:, :, k], mixer(qs[:, :, k], state), rtol=1e-5, atol=1e-6)
    # no leading dims
    torch.testing.assert_close(mixer.forward_samples(qs[0, 0], state[0, 0]), out[0, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        mixer.forward_samples(qs, state[:, :3])


@pytest.mark.parametrize("block", [1 << 19, 8 * 7 * 3])  # one block; blocks of 3 states with a short last one
def test_forward_samples_gradients_equal_the_autograd_mix(monkeypatch, block):
    import ovmse.nets.sample_mixing as sample_mixing

    monkeypatch.setattr(sample_mixing, "CPU_BLOCK_ELEMENTS", block)
    torch.manual_seed(1)
    mixer = QMixer(5, 3, embed_dim=8, hypernet_embed=16)
    qs = torch.randn(2, 4, 7, 3, requires_grad=True)
    state = torch.randn(2, 4, 5, requires_grad=True)
    weights = torch.randn(2, 4, 7, 1)
    results = []
    for fn in (lambda: mixer.forward_samples(qs, state), lambda: mixer(qs, state.unsqueeze(-2).expand(2, 4, 7, 5))):
        mixer.zero_grad()
        qs.grad = state.grad = None
        out = fn()
        (out * weights).sum().backward()
        grads = [qs.grad.clone(), state.grad.clone()] + [p.grad.clone() for p in mixer.parameters()]
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for fused, plain in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("block", [1 << 19, 100 * 32 * 7])  # one block; blocks of 7 states, a short last one
def test_mix_samples_matches_float64_elu_mixing_at_2s3z_shapes(monkeypatch, block):
    """The exp2 form of ELU and the transposed products against ``elu(qs @ w1 + b1) @ w_final + v``
    in float64, at a 2s3z batch's K and E, with pre-activations from -300 (exp2 underflows:
    ELU = -1, slope 0) to +300: values and every gradient within float32 rounding."""
    import ovmse.nets.sample_mixing as sample_mixing

    monkeypatch.setattr(sample_mixing, "CPU_BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(3)
    M, K, N, E = 40, 100, 5, 32
    scale = torch.logspace(-2, 1.5, M).view(M, 1, 1)  # small to very large pre-activations
    inputs = [torch.randn(M, K, N, generator=g) * scale, torch.rand(M, N, E, generator=g),
              torch.randn(M, 1, E, generator=g) * scale, torch.rand(M, E, 1, generator=g),
              torch.randn(M, 1, 1, generator=g)]
    weights = torch.randn(M, K, 1, generator=g)
    ours = [x.clone().requires_grad_() for x in inputs]
    ref = [x.double().requires_grad_() for x in inputs]
    out = sample_mixing.mix_samples(*ours)
    (out * weights).sum().backward()
    q, w1, b1, wf, v = ref
    expected = torch.baddbmm(v, torch.nn.functional.elu(torch.baddbmm(b1, q, w1)), wf)
    (expected * weights.double()).sum().backward()
    pre = torch.baddbmm(b1, q, w1)
    assert pre.min() < -100 and pre.max() > 100  # both ends of ELU are exercised
    for got, want in zip([out] + [x.grad for x in ours], [expected] + [x.grad for x in ref]):
        assert got.shape == want.shape
        tol = 2e-6 * want.abs().max().item() + 1e-6
        assert (got.double() - want).abs().max().item() <= tol
    # The output is the Function's own tensor, not a view of one: callers may change it in place.
    sample_mixing.mix_samples(*ours).mul_(2.0).sum().backward()


# ----------------------------------------------------------------------------- return_to_go


def test_return_to_go_by_hand():
    g = 0.5
    # ep0: terminated at its 3rd transition, then padding (reward 9 must not leak)
    # ep1: truncated after 2 transitions (no bootstrap), padding rewards 5
    # ep2: 4 transitions, time limit at the last column
    reward = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 8.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]]).unsqueeze(-1)
    terminated = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool).unsqueeze(-1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32).unsqueeze(-1)
    expected = torch.tensor(
        [
            [1 + g * (2 + g * 3), 2 + g * 3, 3.0, 0.0],  # 2.75, 3.5, 3, 0
            [4 + g * 8, 8.0, 0.0, 0.0],
            [1 + g * (1 + g * (1 + g)), 1 + g * (1 + g), 1 + g, 1.0],
        ]
    ).unsqueeze(-1)
    out = return_to_go(reward, terminated, mask, g)
    torch.testing.assert_close(out, expected)
    assert expected[0, 0, 0].item() == 2.75 and expected[2, 0, 0].item() == 1.875


# ----------------------------------------------------------------------------- MACQL

B, T, N, A, S = 2, 3, 2, 3, 4


def make_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mixer = QMixer(S, N, embed_dim=8, hypernet_embed=16)
    agent_q = torch.randn(B, T, N, A, generator=g, requires_grad=True)
    state = torch.randn(B, T, S, generator=g)
    avail = torch.ones(B, T, N, A, dtype=torch.bool)
    avail[0, 0, 0, 2] = False
    avail[0, 2, 1, 1:] = False
    avail[1, 0, :, 1] = False
    actions = torch.zeros(B, T, N, dtype=torch.long)
    actions[0, 1] = torch.tensor([2, 1])
    actions[1, 1] = torch.tensor([1, 2])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]).unsqueeze(-1)
    return mixer, agent_q, avail, state, actions, mask


def q_data(mixer, agent_q, state, actions):
    return mixer(agent_q.gather(-1, actions.unsqueeze(-1)).squeeze(-1), state)


def macql_reference(mixer, agent_q, avail, state, q_taken, mask, samples):
    """Independent loop: one mixer.forward call per valid sample; the dataset action's Q_tot is
    always one more term of the log-sum-exp."""
    gaps, n_valid_samples, n_trans, n_none = [], 0, 0, 0
    for b in range(B):
        for t in range(T):
            if mask[b, t, 0] <= 0:
                continue
            n_trans += 1
            vals = []
            for k in range(samples.shape[2]):
                a = samples[b, t, k]
                if all(bool(avail[b, t, i, a[i]]) for i in range(N)):
                    qs = torch.stack([agent_q[b, t, i, a[i]] for i in range(N)])
                    vals.append(mixer(qs, state[b, t]).squeeze())
            n_valid_samples += len(vals)
            if not vals:
                n_none += 1
            gaps.append(torch.logsumexp(torch.stack([q_taken[b, t, 0], *vals]), 0) - q_taken[b, t, 0])
    return torch.stack(gaps).mean(), n_valid_samples, n_trans, n_none


@pytest.mark.parametrize("sampling", ["available", "all"])
def test_macql_matches_reference_and_is_deterministic(sampling):
    mixer, agent_q, avail, state, actions, mask = make_case()
    q_taken = q_data(mixer, agent_q, state, actions)
    loss_fn = MACQLLoss(mixer, n_samples=9, generator=torch.Generator().manual_seed(3), sampling=sampling)
    out = loss_fn(agent_q, avail, state, q_taken, mask, return_samples=True)
    samples = out["samples"]
    assert samples.shape == (B, T, 9, N) and samples.dtype == torch.int64
    assert int(samples.min()) >= 0 and int(samples.max()) < A
    ref, n_valid, n_trans, n_none = macql_reference(mixer, agent_q, avail, state, q_taken, mask, samples)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["gap_mean"], ref.detach(), rtol=1e-5, atol=1e-6)
    assert out["valid_sample_fraction"].item() == pytest.approx(n_valid / (9 * n_trans))
    if sampling == "all":
        assert 0 < out["valid_sample_fraction"].item() < 1  # some samples hit unavailable actions
    else:  # every sample is a valid joint action
        assert out["valid_sample_fraction"].item() == 1.0 and n_none == 0
    assert out["no_valid_sample_fraction"].item() == pytest.approx(n_none / n_trans)
    gap = out["logsumexp_mean"] - out["q_data_mean"]
    torch.testing.assert_close(gap, out["gap_mean"], rtol=1e-5, atol=1e-5)
    assert not out["logsumexp_mean"].requires_grad and out["loss"].requires_grad
    # same generator seed, same samples and loss
    again = MACQLLoss(mixer, n_samples=9, generator=torch.Generator().manual_seed(3), sampling=sampling)(
        agent_q, avail, state, q_taken, mask, return_samples=True
    )
    assert torch.equal(again["samples"], samples)
    assert torch.equal(again["loss"], out["loss"])
    # default generator path runs and draws K = n_samples
    assert MACQLLoss(mixer)(agent_q, avail, state, q_taken, mask, return_samples=True)["samples"].shape[2] == 100


def test_macql_unavailable_actions_do_not_count():
    mixer, agent_q, avail, state, actions, mask = make_case(1)
    q_taken = q_data(mixer, agent_q, state, actions).detach()
    loss_fn = MACQLLoss(mixer, n_samples=20, generator=torch.Generator().manual_seed(0))
    out = loss_fn(agent_q, avail, state, q_taken, mask, return_samples=True)
    changed = agent_q.detach().clone()
    changed[~avail] += 50.0  # huge Q on unavailable actions
    out2 = loss_fn(changed, avail, state, q_taken, mask, samples=out["samples"])
    torch.testing.assert_close(out2["loss"], out["loss"].detach())
    # ... whereas changing an available action's Q does move it
    changed[0, 1, 0, 0] += 5.0
    assert not torch.allclose(loss_fn(changed, avail, state, q_taken, mask, samples=out["samples"])["loss"], out["loss"])


def test_macql_transition_without_valid_sample_contributes_zero():
    mixer, agent_q, avail, state, actions, mask = make_case(2)
    q_taken = q_data(mixer, agent_q, state, actions)
    avail = avail.clone()
    avail[1, 1, 0] = False  # agent 0 has no available action at (1, 1): no valid joint sample
    loss_fn = MACQLLoss(mixer, n_samples=12, generator=torch.Generator().manual_seed(5))
    out = loss_fn(agent_q, avail, state, q_taken, mask, return_samples=True)
    ref, _, n_trans, n_none = macql_reference(mixer, agent_q, avail, state, q_taken, mask, out["samples"])
    assert n_none == 1 and n_trans == 5
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    assert out["no_valid_sample_fraction"].item() == pytest.approx(1 / 5)
    out["loss"].backward()
    assert torch.isfinite(agent_q.grad).all()
    assert agent_q.grad[1, 1].abs().sum() == 0  # lse = Q_data there: the term is 0 and so is its gradient
    assert agent_q.grad[1, 0].abs().sum() > 0
    grads = [p.grad for p in mixer.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(gr.abs().sum() for gr in grads) > 0


def test_macql_gradient_flows_only_where_valid():
    mixer, agent_q, avail, state, actions, mask = make_case(3)
    q_taken = q_data(mixer, agent_q, state, actions)
    out = MACQLLoss(mixer, n_samples=30, generator=torch.Generator().manual_seed(1))(
        agent_q, avail, state, q_taken, mask
    )
    out["loss"].backward()
    assert torch.isfinite(agent_q.grad).all()
    assert agent_q.grad[1, 2].abs().sum() == 0  # padding transition
    assert agent_q.grad[~avail].abs().sum() == 0  # unavailable actions are never in a valid sample
    assert agent_q.grad[0, 0].abs().sum() > 0
    assert all(p.grad is not None for p in mixer.parameters())


def test_macql_sum_mixer_by_hand():
    # t0: all available, Q_0 = [1, 2], Q_1 = [0, 3], data (1, 0): Q_tot 2
    # t1: agent 1's action 1 unavailable; Q_0 = [0, 0], Q_1 = [1, 100], data (0, 0): Q_tot 1
    # t2: padding (mask 0, NaN data value, garbage Q)
    agent_q = torch.tensor(
        [[[[1.0, 2.0], [0.0, 3.0]], [[0.0, 0.0], [1.0, 100.0]], [[1e6, -1e6], [7.0, 7.0]]]], requires_grad=True
    )
    avail = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    avail[0, 1, 1, 1] = False
    avail[0, 2] = False
    q_taken = torch.tensor([[[2.0], [1.0], [float("nan")]]], requires_grad=True)
    mask = torch.tensor([[[1.0], [1.0], [0.0]]])
    state = torch.zeros(1, 3, 1)
    samples = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])  # every joint action once
    out = MACQLLoss(SumMixer(), n_samples=4)(agent_q, avail, state, q_taken, mask, samples=samples)
    # the dataset action (Q_tot 2, resp. 1) is always in the sum, next to the valid samples
    gap0 = lse(2.0, 1.0, 4.0, 2.0, 5.0) - 2.0
    gap1 = lse(1.0, 1.0, 1.0) - 1.0  # = log 3: samples (0,0) and (1,0) plus the data action
    assert out["loss"].item() == pytest.approx((gap0 + gap1) / 2, rel=1e-6)
    assert out["loss"].item() >= 0.0
    assert out["logsumexp_mean"].item() == pytest.approx((lse(2.0, 1.0, 4.0, 2.0, 5.0) + 1 + math.log(3)) / 2, rel=1e-6)
    assert out["q_data_mean"].item() == pytest.approx(1.5)
    assert out["valid_sample_fraction"].item() == pytest.approx(6 / 8)
    assert out["no_valid_sample_fraction"].item() == 0.0
    out["loss"].backward()
    # d/dQ: softmax weights over {data, valid samples}, / 2 transitions
    w = torch.tensor([2.0, 1.0, 4.0, 2.0, 5.0]).softmax(0) / 2  # data, (0,0), (0,1), (1,0), (1,1)
    torch.testing.assert_close(agent_q.grad[0, 0, 0], torch.stack([w[1] + w[2], w[3] + w[4]]))
    third = 1.0 / 6.0
    torch.testing.assert_close(agent_q.grad[0, 1], torch.tensor([[third, third], [2 * third, 0.0]]))
    assert agent_q.grad[0, 2].abs().sum() == 0
    torch.testing.assert_close(q_taken.grad, torch.tensor([[[float(w[0]) - 0.5], [third - 0.5], [0.0]]]))


def test_macql_cannot_go_negative():
    """With the dataset action in the sum the term is >= 0 whatever the sampled values: a
    mixer that drives every sampled joint action to -1e6 leaves L_CQL at 0, not -1e6."""
    agent_q = torch.tensor([[[[0.0, -1e6], [0.0, -1e6]]]])  # data (0, 0); every other action very low
    avail = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    samples = torch.tensor([[1, 1], [1, 1]])
    q_taken = torch.tensor([[[0.0]]])
    out = MACQLLoss(SumMixer(), n_samples=2)(agent_q, avail, torch.zeros(1, 1, 1), q_taken, torch.ones(1, 1, 1),
                                            samples=samples)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- CFCQL


def cfcql_case():
    # Q_0 = [1, 2, 0.5] (action 2 unavailable), Q_1 = [0, -1, 3]; data (1, 2): Q_tot 5.
    # t1 is padding with a garbage action and NaN data value.
    agent_q = torch.tensor([[[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]]], requires_grad=True)
    avail = torch.ones(1, 2, 2, 3, dtype=torch.bool)
    avail[0, 0, 0, 2] = False
    avail[0, 1] = False
    actions = torch.tensor([[[1, 2], [-1, 77]]])
    q_taken = torch.tensor([[[5.0], [float("nan")]]], requires_grad=True)
    mask = torch.tensor([[[1.0], [0.0]]])
    state = torch.zeros(1, 2, 1)
    beta = torch.tensor([[[[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]], [[0.0] * 3, [0.0] * 3]]])
    return agent_q, avail, state, actions, q_taken, mask, beta


C0 = lse(1.0 + 3.0, 2.0 + 3.0)  # agent 0 varies over its available actions, agent 1 keeps 2
C1 = lse(2.0 + 0.0, 2.0 - 1.0, 2.0 + 3.0)  # agent 1 varies, agent 0 keeps 1


def kl_by_hand():
    mu0 = torch.tensor([4.0, 5.0]).softmax(0)
    mu1 = torch.tensor([2.0, 1.0, 5.0]).softmax(0)
    kl0 = (mu0 * (mu0 / torch.tensor([0.2, 0.8])).log()).sum()
    kl1 = (mu1 * (mu1 / torch.tensor([0.5, 0.25, 0.25])).log()).sum()
    return torch.stack([kl0, kl1])


def test_cfcql_temperature_zero_uniform():
    agent_q, avail, state, actions, q_taken, mask, beta = cfcql_case()
    loss_fn = CFCQLLoss(SumMixer(), temperature=0.0)
    out = loss_fn(agent_q, avail, state, actions, q_taken, mask, return_details=True)
    assert out["loss"].item() == pytest.approx((C0 + C1) / 2 - 5.0, rel=1e-6)
    assert torch.equal(out["agent_weights"][0, 0], torch.tensor([0.5, 0.5]))
    assert out["agent_weight_max_mean"].item() == 0.5
    assert out["kl_mean"].item() == 0.0
    assert out["cf_q"][0, 0, 0, 2].item() == -1e10
    torch.testing.assert_close(out["cf_q"][0, 0, 1], torch.tensor([2.0, 1.0, 5.0]))
    assert out["q_data_mean"].item() == 5.0
    assert out["lse_mean"].item() == pytest.approx((C0 + C1) / 2, rel=1e-6)
    # the unavailable action's Q does not matter
    changed = agent_q.detach().clone()
    changed[0, 0, 0, 2] = 1000.0
    assert loss_fn(changed, avail, state, actions, q_taken, mask)["loss"].item() == pytest.approx(out["loss"].item())
    # with behaviour_probs at temperature 0: still uniform, KL reported
    out_b = loss_fn(agent_q, avail, state, actions, q_taken, mask, behaviour_probs=beta)
    assert out_b["loss"].item() == out["loss"].item()
    assert out_b["kl_mean"].item() == pytest.approx(kl_by_hand().mean().item(), rel=1e-5)
    out["loss"].backward()
    assert torch.isfinite(agent_q.grad).all() and agent_q.grad[0, 1].abs().sum() == 0
    assert agent_q.grad[0, 0, 0, 2] == 0
    torch.testing.assert_close(q_taken.grad, torch.tensor([[[-1.0], [0.0]]]))


def test_cfcql_temperature_positive_uses_kl_weights():
    agent_q, avail, state, actions, q_taken, mask, beta = cfcql_case()
    kl = kl_by_hand()
    for temp in (0.5, 3.0):
        out = CFCQLLoss(SumMixer(), temperature=temp)(
            agent_q, avail, state, actions, q_taken, mask, behaviour_probs=beta, return_details=True
        )
        lam = (temp * kl).softmax(0)
        torch.testing.assert_close(out["kl"][0, 0], kl, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["agent_weights"][0, 0], lam, rtol=1e-5, atol=1e-6)
        expected = lam[0].item() * C0 + lam[1].item() * C1 - 5.0
        assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
        assert out["agent_weight_max_mean"].item() == pytest.approx(lam.max().item(), rel=1e-5)
        assert out["kl_mean"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    hard = CFCQLLoss(SumMixer(), temperature=float("inf"))(
        agent_q, avail, state, actions, q_taken, mask, behaviour_probs=beta, return_details=True
    )
    assert torch.equal(hard["agent_weights"][0, 0], torch.nn.functional.one_hot(kl.argmax(), 2).float())
    with pytest.raises(ValueError):
        CFCQLLoss(SumMixer(), temperature=1.0)(agent_q, avail, state, actions, q_taken, mask)
    with pytest.raises(ValueError):
        CFCQLLoss(SumMixer(), temperature=-1.0)


def test_cfcql_qmixer_counterfactuals_and_gradients():
    mixer, agent_q, avail, state, actions, mask = make_case(4)
    q_taken = q_data(mixer, agent_q, state, actions)
    logits = torch.randn(B, T, N, A)
    beta = behaviour_probs(logits, avail)
    out = CFCQLLoss(mixer, temperature=1.0)(
        agent_q, avail, state, actions, q_taken, mask, behaviour_probs=beta, return_details=True
    )
    cf = out["cf_q"]
    valid = mask[..., 0] > 0
    for b in range(B):
        for t in range(T):
            if not valid[b, t]:  # padding rows are left out of the term and reported as 0
                assert not cf[b, t].any() and not out["agent_weights"][b, t].any()
                continue
            for i in range(N):
                for j in range(A):
                    a = actions[b, t].clone()
                    a[i] = j
                    qs = agent_q[b, t].gather(-1, a.unsqueeze(-1)).squeeze(-1)
                    want = mixer(qs, state[b, t]).item() if avail[b, t, i, j] else -1e10
                    assert cf[b, t, i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
                # the dataset action reproduces Q_tot(s, a^D)
                assert cf[b, t, i, actions[b, t, i]].item() == pytest.approx(q_taken[b, t, 0].item(), abs=1e-5)
    lam = out["agent_weights"]
    torch.testing.assert_close(lam.sum(-1)[valid], torch.ones(int(valid.sum())))
    expected = ((lam * out["agent_lse"]).sum(-1, keepdim=True) - q_taken.detach())[mask > 0].mean()
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert torch.isfinite(agent_q.grad).all() and agent_q.grad[1, 2].abs().sum() == 0
    # V(s) is added to every mixed value alike, so it cancels in (Σ_i λ_i c_i − Q_tot(a^D))
    for name, p in mixer.named_parameters():
        assert p.grad is not None
        if name.startswith("V."):
            assert p.grad.abs().max() < 1e-5
        else:
            assert p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- behaviour cloning


def test_behaviour_cloning_by_hand():
    # t0: agent 0 logits [1, 2, 3] with action 2 unavailable, data action 0 (argmax is 1: miss);
    #     agent 1 logits [0, 0, 5], all available, data action 2 (hit).
    # t1: padding, every action unavailable. t2: valid, agent 0 has no available action
    #     (excluded), agent 1 logits [1, 1, 1], data action 1 (argmax 0: miss).
    logits = torch.tensor(
        [[[[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]], [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]], [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]]],
        requires_grad=True,
    )
    avail = torch.ones(1, 3, 2, 3, dtype=torch.bool)
    avail[0, 0, 0, 2] = False
    avail[0, 1] = False
    avail[0, 2, 0] = False
    actions = torch.tensor([[[0, 2], [0, 0], [0, 1]]])
    mask = torch.tensor([[[1.0], [0.0], [1.0]]])
    loss, acc = behaviour_cloning_loss(logits, avail, actions, mask)
    expected = (math.log(1 + math.e) + math.log(1 + 2 * math.exp(-5)) + math.log(3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(1 / 3)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 2, 0].abs().sum() == 0
    assert logits.grad[0, 0, 0, 2] == 0

    probs = behaviour_probs(logits.detach(), avail)
    p = 1 / (1 + math.e)
    torch.testing.assert_close(probs[0, 0, 0], torch.tensor([p, 1 - p, 0.0]))
    assert torch.equal(probs[0, 1], torch.zeros(2, 3))
    torch.testing.assert_close(probs[0, 2, 1], torch.full((3,), 1 / 3))
    assert torch.isfinite(probs).all()


# ----------------------------------------------------------------------------- Cal-QL (MACal-QL)


def test_macql_calibrated_raises_sampled_values_to_the_return_to_go():
    # One transition, sum mixer: Q_0 = [1, 2], Q_1 = [0, 3], data (1, 0): Q_tot 2.
    # Joint samples (0,0)=1, (0,1)=4, (1,0)=2, (1,1)=5; with G = 4.5 they count as 4.5, 4.5, 4.5, 5.
    agent_q = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]]]], requires_grad=True)
    avail = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    q_taken = torch.tensor([[[2.0]]], requires_grad=True)
    samples = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    bound = torch.tensor([[[4.5]]])
    out = MACQLLoss(SumMixer(), n_samples=4)(agent_q, avail, torch.zeros(1, 1, 1), q_taken, torch.ones(1, 1, 1),
                                             samples=samples, lower_bound=bound)
    assert out["loss"].item() == pytest.approx(lse(2.0, 4.5, 4.5, 4.5, 5.0) - 2.0, rel=1e-6)
    assert out["calibrated_fraction"].item() == pytest.approx(3 / 4)
    assert out["q_data_mean"].item() == 2.0  # the data term is not clamped
    out["loss"].backward()
    w = torch.tensor([2.0, 4.5, 4.5, 4.5, 5.0]).softmax(0)
    # only the unclamped sample (1, 1) passes gradient into the agent Qs
    torch.testing.assert_close(agent_q.grad[0, 0], torch.tensor([[0.0, float(w[4])], [0.0, float(w[4])]]))
    torch.testing.assert_close(q_taken.grad, torch.tensor([[[float(w[0]) - 1.0]]]))
    # a bound below every value changes nothing
    low = MACQLLoss(SumMixer(), n_samples=4)(agent_q, avail, torch.zeros(1, 1, 1), q_taken, torch.ones(1, 1, 1),
                                             samples=samples, lower_bound=torch.tensor([[[-100.0]]]))
    assert low["loss"].item() == pytest.approx(lse(2.0, 1.0, 4.0, 2.0, 5.0) - 2.0, rel=1e-6)
    assert low["calibrated_fraction"].item() == 0.0


def test_macql_calibrated_bound_shape_is_checked():
    agent_q = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="lower_bound"):
        MACQLLoss(SumMixer(), n_samples=2)(agent_q, torch.ones(1, 2, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 1),
                                           torch.zeros(1, 2, 1), torch.ones(1, 2, 1), lower_bound=torch.zeros(1, 2))


def test_cfcql_calibrated_raises_available_counterfactuals_only():
    agent_q, avail, state, actions, q_taken, mask, beta = cfcql_case()
    bound = torch.tensor([[[4.6], [123.0]]])  # the padding row's bound must not matter
    out = CFCQLLoss(SumMixer(), temperature=0.0)(agent_q, avail, state, actions, q_taken, mask,
                                                 return_details=True, lower_bound=bound)
    # agent 0: [4, 5, unavailable] -> [4.6, 5]; agent 1: [2, 1, 5] -> [4.6, 4.6, 5]
    assert out["loss"].item() == pytest.approx((lse(4.6, 5.0) + lse(4.6, 4.6, 5.0)) / 2 - 5.0, rel=1e-6)
    assert out["cf_q"][0, 0, 0, 2].item() == -1e10  # unavailable stays out
    assert out["calibrated_fraction"].item() == pytest.approx(3 / 5)
    # the agent weights come from the unclamped values: same KL as without the bound
    plain = CFCQLLoss(SumMixer(), temperature=1.0)(agent_q, avail, state, actions, q_taken, mask, behaviour_probs=beta)
    cal = CFCQLLoss(SumMixer(), temperature=1.0)(agent_q, avail, state, actions, q_taken, mask, behaviour_probs=beta,
                                                 lower_bound=bound)
    assert cal["kl_mean"].item() == pytest.approx(plain["kl_mean"].item())


def test_available_sampling_is_uniform_over_each_agents_available_actions():
    """Each agent's sample is uniform over its available actions (a dead agent: its only
    action); padding rows without any available action still give an index in range."""
    from ovmse.losses.macql import sample_available_joint_actions

    A = 7
    avail = torch.zeros(1, 3, 3, A, dtype=torch.bool)
    avail[0, 0, 0, [1, 4, 6]] = True      # 3 of 7
    avail[0, 0, 1, 0] = True              # dead agent: no-op only
    avail[0, 0, 2] = True                 # all 7
    avail[0, 1] = avail[0, 0].flip(-1)
    # row 2: padding, nothing available
    K = 20_000
    s = sample_available_joint_actions(avail, K, torch.Generator().manual_seed(0))  # [1, 3, K, 3]
    assert s.shape == (1, 3, K, 3) and s.dtype == torch.int64
    assert int(s.min()) >= 0 and int(s.max()) < A
    for t in range(2):
        for i in range(3):
            counts = torch.bincount(s[0, t, :, i], minlength=A).float()
            allowed = avail[0, t, i]
            assert counts[~allowed].sum() == 0
            expected = K / int(allowed.sum())
            assert (counts[allowed] - expected).abs().max() < 5 * expected ** 0.5  # ~5 sigma


def test_available_rank_never_reaches_the_count():
    """floor(u · c) < c for the largest float32 u that torch.rand makes (the sampler has no clamp)."""
    from ovmse.losses.macql import available_ranks

    u_max = torch.tensor(1.0 - 2.0 ** -24)
    for c in range(1, 4097):
        assert int((u_max * c).long()) == c - 1
    avail = torch.ones(2, 4, 3, 9, dtype=torch.bool)
    avail[..., ::2] = False
    ranked, rank = available_ranks(avail, 50, torch.Generator().manual_seed(0))
    assert ranked.shape == (2, 4, 3, 9) and rank.shape == (2, 4, 50, 3)
    assert int(rank.max()) <= 3 and torch.equal(ranked[0, 0, 0, :4], torch.tensor([1, 3, 5, 7]))


@pytest.mark.parametrize("cql", ["macql", "cfcql"])
def test_cql_terms_ignore_padding_rows_entirely(cql):
    """Padding rows are left out of the term: NaN there changes neither the loss nor any gradient."""
    mixer, agent_q, avail, state, actions, mask = make_case(6)
    q_taken = q_data(mixer, agent_q, state, actions)
    samples = torch.randint(0, A, (B, T, 7, N), generator=torch.Generator().manual_seed(1))
    samples = torch.where(gather_avail(avail, samples), samples, torch.zeros_like(samples))

    def run(q, s, qt, av):
        mixer.zero_grad()
        q = q.detach().requires_grad_(True)
        if cql == "macql":
            out = MACQLLoss(mixer)(q, av, s, qt, mask, samples=samples)
        else:
            out = CFCQLLoss(mixer, temperature=0.0)(q, av, s, actions, qt, mask)
        out["loss"].backward()
        return out["loss"].detach(), q.grad, [p.grad.clone() for p in mixer.parameters()]

    clean = run(agent_q, state, q_taken.detach(), avail)
    pad = mask[..., 0] == 0
    dirty_q, dirty_s, dirty_qt, dirty_av = agent_q.detach().clone(), state.clone(), q_taken.detach().clone(), avail.clone()
    dirty_q[pad], dirty_s[pad], dirty_qt[pad], dirty_av[pad] = float("nan"), float("nan"), float("nan"), False
    dirty = run(dirty_q, dirty_s, dirty_qt, dirty_av)
    torch.testing.assert_close(dirty[0], clean[0])
    torch.testing.assert_close(dirty[1], clean[1])
    assert dirty[1][pad].abs().sum() == 0
    for g_dirty, g_clean in zip(dirty[2], clean[2]):
        torch.testing.assert_close(g_dirty, g_clean)


def gather_avail(avail, samples):
    """True where every agent's sampled action is available: ``[B, T, K, N]``, broadcast back."""
    from ovmse.losses.macql import gather_joint

    return gather_joint(avail, samples).all(-1, keepdim=True).expand_as(samples)


def test_macql_sampling_setting_is_checked_and_old_checkpoints_keep_theirs(tmp_path):
    with pytest.raises(ValueError, match="sampling must be one of"):
        MACQLLoss(QMixer(S, N), sampling="valid")
    from ovmse.training.qmix_module import QMixModule, load_qmix_checkpoint

    from objectives import settings

    m = QMixModule(4, 5, 2, 3, objective=settings(cql="macql", cql_alpha=1.0))
    assert m.objective.cql.sampling == "available"
    # As written before the option existed (and before issue 18): flat hparams without it.
    hparams = {k: v for k, v in m.hparams.items() if k != "objective"}
    hparams.update(cql="macql", cql_alpha=1.0)
    state = {k.replace("objective.td.", "loss.").replace("objective.cql.", "cql_loss."): v
             for k, v in m.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "old.ckpt")
    assert load_qmix_checkpoint(str(tmp_path / "old.ckpt")).objective.cql.sampling == "all"

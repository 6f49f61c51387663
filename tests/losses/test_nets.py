"""Agent network, QMIX mixer and masked greedy helpers."""

import pytest
import torch

from ovmse.nets import QMixer, RNNAgent, agent_inputs, masked_greedy, masked_max

B, T, N, OBS, A, S = 3, 5, 4, 7, 6, 11


def test_agent_inputs_layout():
    obs = torch.randn(B, N, OBS)
    last = torch.tensor([[-1, 0, 5, 2]] * B)
    x = agent_inputs(obs, last, A)
    assert x.shape == (B, N, OBS + A + N)
    assert torch.equal(x[..., :OBS], obs)
    act = x[..., OBS : OBS + A]
    assert torch.equal(act[:, 0], torch.zeros(B, A))  # -1 -> no previous action
    assert torch.equal(act[:, 1].argmax(-1), torch.zeros(B, dtype=torch.long))
    assert torch.equal(act[:, 2].argmax(-1), torch.full((B,), 5))
    assert torch.equal(act.sum(-1)[0], torch.tensor([0.0, 1.0, 1.0, 1.0]))
    ids = x[..., OBS + A :]
    assert torch.equal(ids, torch.eye(N).expand(B, N, N))


def test_agent_inputs_time_dim():
    obs = torch.randn(B, T, N, OBS)
    last = torch.randint(-1, A, (B, T, N))
    x = agent_inputs(obs, last, A)
    assert x.shape == (B, T, N, OBS + A + N)
    assert torch.equal(x[..., OBS + A :], torch.eye(N).expand(B, T, N, N))


def test_agent_shapes_and_unroll_matches_stepwise():
    torch.manual_seed(0)
    D = OBS + A + N
    agent = RNNAgent(D, A)
    h0 = agent.initial_hidden((B, N))
    assert h0.shape == (B, N, 64) and not h0.any()
    inputs = torch.randn(B, T, N, D)
    q_seq = agent.unroll(inputs)
    assert q_seq.shape == (B, T, N, A)
    h = h0
    steps = []
    for t in range(T):
        q, h = agent(inputs[:, t], h)
        assert q.shape == (B, N, A) and h.shape == (B, N, 64)
        steps.append(q)
    torch.testing.assert_close(q_seq, torch.stack(steps, 1))
    # The hidden state really carries information: a fresh hidden at t=1 changes the output.
    q_fresh, _ = agent(inputs[:, 1], h0)
    assert not torch.allclose(q_fresh, q_seq[:, 1])


def test_agent_shares_weights_across_agents():
    agent = RNNAgent(OBS + A + N, A)
    x = torch.randn(1, 1, OBS + A + N).expand(1, N, -1)  # identical inputs for all agents
    q, _ = agent(x, agent.initial_hidden((1, N)))
    torch.testing.assert_close(q, q[:, :1].expand_as(q))


def test_mixer_shapes():
    mixer = QMixer(S, N)
    assert mixer(torch.randn(B, T, N), torch.randn(B, T, S)).shape == (B, T, 1)
    assert mixer(torch.randn(B, N), torch.randn(B, S)).shape == (B, 1)
    with pytest.raises(ValueError):
        mixer(torch.randn(B, T, N), torch.randn(B, S))


def test_mixer_monotonic():
    torch.manual_seed(1)
    mixer = QMixer(S, N)
    for _ in range(3):
        qs = (torch.randn(64, N) * 5).requires_grad_(True)
        states = torch.randn(64, S) * 3
        q_tot = mixer(qs, states)
        (grad,) = torch.autograd.grad(q_tot.sum(), qs)
        assert (grad >= 0).all()
        assert (grad > 0).any()


def _random_mask(shape, gen):
    mask = torch.rand(shape, generator=gen) < 0.4
    # Guarantee one available action per row at a random position.
    idx = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return mask | torch.nn.functional.one_hot(idx, shape[-1]).bool()


def test_masked_greedy_never_picks_masked():
    gen = torch.Generator().manual_seed(2)
    mask = _random_mask((500, N, A), gen)
    q = torch.randn(500, N, A, generator=gen)
    q = torch.where(mask, q, torch.full_like(q, 1e30))  # masked entries look best
    a = masked_greedy(q, mask)
    assert a.dtype == torch.int64 and a.shape == (500, N)
    assert mask.gather(-1, a.unsqueeze(-1)).all()
    expected = torch.where(mask, q, torch.full_like(q, -1e38)).max(-1)
    assert torch.equal(a, expected.indices)
    torch.testing.assert_close(masked_max(q, mask), expected.values)


def test_masked_empty_row():
    q = torch.randn(2, A)
    mask = torch.zeros(2, A, dtype=torch.bool)
    mask[0, 3] = True
    with pytest.raises(ValueError):
        masked_greedy(q, mask)
    with pytest.raises(ValueError):
        masked_max(q, mask)
    # Padded replay rows: finite value so multiplying by a zero mask does not produce NaN.
    v = masked_max(q, mask, strict=False)
    assert torch.isfinite(v).all() and v[1] == 0 and v[0] == q[0, 3]
    assert masked_greedy(q, mask, strict=False)[0] == 3

"""The packed sequence GRU (``ovmse.nets.packed_gru``) and the agent unroll built on it compute
what ``GRUCell`` step by step computes, values and gradients, on episodes of unequal lengths;
the mixer's row-restricted pass equals the full pass on its rows."""

import pytest
import torch
from torch import nn

from ovmse.nets import QMixer, RNNAgent
from ovmse.nets.packed_gru import packed_gru

B, T, N, D, A, H = 5, 7, 3, 9, 4, 16


def _stepwise(agent: RNNAgent, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The reference: ``RNNAgent.forward`` (GRUCell) step by step over all T rows."""
    h, qs = h0, []
    for t in range(x.shape[1]):
        q, h = agent(x[:, t], h)
        qs.append(q)
    return torch.stack(qs, 1)


def test_gradcheck_in_double():
    torch.manual_seed(0)
    sizes = [4, 4, 3, 1, 1]
    cell = nn.GRUCell(3, 5).double()
    x = torch.randn(sum(sizes), 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(4, 5, dtype=torch.double, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in
              (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]

    def run(x, h0, w_ih, w_hh, b_ih, b_hh):
        weights = nn.Module()
        weights.weight_ih, weights.weight_hh, weights.bias_ih, weights.bias_hh = w_ih, w_hh, b_ih, b_hh
        return packed_gru(x, weights, h0, sizes)

    assert torch.autograd.gradcheck(run, (x, h0, *params))


@pytest.mark.parametrize("with_hidden0", [False, True])
def test_unroll_equals_stepwise_cell_on_its_rows_values_and_gradients(with_hidden0):
    torch.manual_seed(1)
    agent = RNNAgent(D, A, H)
    x = torch.randn(B, T, N, D)
    lengths = torch.tensor([3, 7, 1, 7, 5])  # unsorted, ties, a one-row episode
    h0 = torch.randn(B, N, H) if with_hidden0 else agent.initial_hidden((B, N))
    rows = (torch.arange(T) < lengths[:, None])[..., None, None]  # [B, T, 1, 1]
    weights = torch.randn(B, T, N, A)  # an arbitrary loss on the computed rows

    ref = _stepwise(agent, x, h0)
    (ref * weights * rows).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in agent.named_parameters()}
    agent.zero_grad()

    got = agent.unroll(x, hidden0=h0 if with_hidden0 else None, lengths=lengths)
    (got * weights * rows).sum().backward()

    torch.testing.assert_close(got * rows, ref * rows, rtol=1e-5, atol=1e-6)
    assert torch.equal(got * ~rows, torch.zeros_like(got)), "rows after an episode's length must hold 0"
    for name, p in agent.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_unroll_without_lengths_computes_every_row_and_zero_lengths_compute_none():
    torch.manual_seed(2)
    agent = RNNAgent(D, A, H)
    x = torch.randn(B, T, N, D)
    torch.testing.assert_close(agent.unroll(x), _stepwise(agent, x, agent.initial_hidden((B, N))),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(agent.unroll(x, lengths=torch.zeros(B, dtype=torch.long)), torch.zeros(B, T, N, A))
    with pytest.raises(ValueError, match="lengths must be"):
        agent.unroll(x, lengths=torch.ones(B + 1, dtype=torch.long))


def test_packed_gru_rejects_sizes_that_do_not_describe_x():
    cell = nn.GRUCell(3, 4)
    with pytest.raises(ValueError, match="non-increasing"):
        packed_gru(torch.randn(3, 3), cell, torch.zeros(1, 4), [1, 2])
    with pytest.raises(ValueError, match="non-increasing"):  # no step at all
        packed_gru(torch.randn(0, 3), cell, torch.zeros(0, 4), [])
    with pytest.raises(ValueError, match="sum to"):
        packed_gru(torch.randn(4, 3), cell, torch.zeros(2, 4), [2, 1])


def test_target_network_unroll_keeps_nothing_for_a_backward():
    """Under no_grad (target networks) the GRU keeps no per-step intermediates."""
    agent = RNNAgent(D, A, H)
    with torch.no_grad():
        q = agent.unroll(torch.randn(B, T, N, D), lengths=torch.full((B,), T))
    assert q.grad_fn is None


def test_mixer_forward_rows_equals_forward_on_those_rows_and_zero_elsewhere():
    torch.manual_seed(3)
    S = 6
    mixer = QMixer(S, N, 8, 16)
    qs, state = torch.randn(B, T, N, requires_grad=True), torch.randn(B, T, S)
    rows = torch.rand(B, T) > 0.4
    got = mixer.forward_rows(qs, state, rows)
    full = mixer(qs, state)
    torch.testing.assert_close(got[rows], full[rows])
    assert torch.equal(got[~rows], torch.zeros_like(got[~rows]))
    got.sum().backward()
    assert torch.equal(qs.grad[~rows], torch.zeros_like(qs.grad[~rows]))

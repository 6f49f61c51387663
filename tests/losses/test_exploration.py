"""Annealing schedules and exploration policies (ε-greedy, centralised / decentralised SE)."""

import math

import pytest
import torch
from tensordict import TensorDict

from ovmse.exploration import (
    CentralisedSequentialExploration,
    DecentralisedSequentialExploration,
    EpsilonGreedy,
    LinearSchedule,
    make_exploration,
)

A = 6


# ---------------------------------------------------------------- schedules
def test_linear_schedule_decreasing():
    s = LinearSchedule(1.0, 0.05, 100)
    assert s(0) == 1.0
    assert s(50) == pytest.approx(0.525)
    assert s(100) == pytest.approx(0.05)
    assert s(101) == 0.05 and s(10**6) == 0.05  # lower-bounded by end


def test_linear_schedule_increasing_and_constant():
    up = LinearSchedule(0.0, 1.0, 10)
    assert up(5) == pytest.approx(0.5) and up(10) == 1.0 and up(1000) == 1.0
    const = LinearSchedule(1.0, 1.0, 0)  # OVMSE λ on 2s3z / 3s5z
    assert const(0) == 1.0 and const(12345) == 1.0
    assert LinearSchedule(0.3, 0.3, 100)(7) == 0.3
    assert LinearSchedule(1.0, 0.05, 0)(0) == 0.05


def test_linear_schedule_validation():
    with pytest.raises(ValueError, match="duration"):
        LinearSchedule(1.0, 0.05, -1)
    with pytest.raises(ValueError):
        LinearSchedule(1.0, 0.05, 10)(-1)


# ---------------------------------------------------------------- helpers
def _battles(B, N, gen, dead_frac=0.3):
    """Random masks: dead agents have only no-op; alive agents have no-op off and >= 1 action."""
    alive = torch.rand(B, N, generator=gen) >= dead_frac
    acts = torch.rand(B, N, A, generator=gen) < 0.5
    forced = torch.randint(1, A, (B, N), generator=gen)
    acts |= torch.nn.functional.one_hot(forced, A).bool()
    acts[..., 0] = False
    dead_mask = torch.zeros(B, N, A, dtype=torch.bool)
    dead_mask[..., 0] = True
    mask = torch.where(alive.unsqueeze(-1), acts, dead_mask)
    q = torch.randn(B, N, A, generator=gen)
    q = torch.where(mask, q, torch.full_like(q, 1e9))  # masked entries would win if not masked
    return TensorDict({"agents": TensorDict({"action_value": q, "action_mask": mask}, [B, N])}, [B]), alive


def _greedy(td):
    q, mask = td["agents", "action_value"], td["agents", "action_mask"]
    return q.masked_fill(~mask, -float("inf")).argmax(-1)


ALL = ["epsilon_greedy", "sequential", "decentralised_sequential"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("eps", [0.0, 0.5, 1.0])
def test_masks_respected_and_dead_noop(name, eps):
    gen = torch.Generator().manual_seed(0)
    td, alive = _battles(4000, 5, gen)
    pol = make_exploration(name, epsilon=eps, generator=torch.Generator().manual_seed(1))
    out = pol(td.clone())
    a = out["agents", "action"]
    assert a.dtype == torch.int64 and a.shape == (4000, 5)
    assert td["agents", "action_mask"].gather(-1, a.unsqueeze(-1)).all()
    assert (a[~alive] == 0).all()
    explored = out["agents", "explored"]
    assert explored.dtype == torch.bool and not explored[~alive].any()
    # Non-explored agents are exactly greedy.
    greedy = _greedy(td)
    assert torch.equal(a[~explored], greedy[~explored])
    if eps == 0.0:
        assert torch.equal(a, greedy) and not explored.any()


@pytest.mark.parametrize("name", ALL)
def test_explore_false_is_greedy(name):
    td, _ = _battles(200, 4, torch.Generator().manual_seed(3))
    pol = make_exploration(name, epsilon=1.0, explore=False)
    out = pol(td.clone())
    assert torch.equal(out["agents", "action"], _greedy(td))
    assert not out["agents", "explored"].any()


def test_centralised_exactly_one_alive_explorer():
    gen = torch.Generator().manual_seed(4)
    td, alive = _battles(5000, 5, gen, dead_frac=0.5)
    alive[:50] = False  # some battles with nobody alive
    td["agents", "action_mask"][:50] = torch.nn.functional.one_hot(torch.zeros(50, 5, dtype=torch.long), A).bool()
    pol = CentralisedSequentialExploration(1.0, generator=torch.Generator().manual_seed(5))
    out = pol(td.clone())
    n_exp = out["agents", "explored"].sum(-1)
    any_alive = alive.any(-1)
    assert (n_exp[any_alive] == 1).all()
    assert (n_exp[~any_alive] == 0).all()
    assert torch.equal(out["agents", "action"][:50], torch.zeros(50, 5, dtype=torch.long))
    # Chosen agent uniform over alive agents: battles with all 5 alive pick each ~1/5.
    full = alive.all(-1)
    picks = out["agents", "explored"][full].float().mean(0)
    n = int(full.sum())
    se = math.sqrt(0.2 * 0.8 / n)
    assert ((picks - 0.2).abs() < 5 * se).all(), (picks, n)

    pol.set_epsilon(0.3)
    out = pol(td.clone())
    n_exp = out["agents", "explored"].sum(-1)
    assert (n_exp <= 1).all()
    rate = n_exp[any_alive].float().mean().item()
    m = int(any_alive.sum())
    assert abs(rate - 0.3) < 5 * math.sqrt(0.3 * 0.7 / m)


def test_explored_actions_uniform_over_available():
    # Every agent alive with the same mask: actions {1, 3, 4} available.
    B, N = 30000, 1
    mask = torch.zeros(B, N, A, dtype=torch.bool)
    mask[..., [1, 3, 4]] = True
    q = torch.zeros(B, N, A)
    q[..., 0] = 1e9  # masked but largest
    td = TensorDict({"agents": TensorDict({"action_value": q, "action_mask": mask}, [B, N])}, [B])
    pol = CentralisedSequentialExploration(1.0, generator=torch.Generator().manual_seed(6))
    out = pol(td)
    assert out["agents", "explored"].all()
    counts = torch.bincount(out["agents", "action"].flatten(), minlength=A).float() / B
    assert counts[[0, 2, 5]].sum() == 0
    se = math.sqrt((1 / 3) * (2 / 3) / B)
    assert ((counts[[1, 3, 4]] - 1 / 3).abs() < 5 * se).all(), counts


def test_decentralised_rate_eps_over_n():
    eps, N, B = 0.5, 5, 20000
    td, _ = _battles(B, N, torch.Generator().manual_seed(7), dead_frac=0.0)
    pol = DecentralisedSequentialExploration(eps, generator=torch.Generator().manual_seed(8))
    rate = pol(td)["agents", "explored"].float().mean(0)  # per agent
    p = eps / N
    assert ((rate - p).abs() < 5 * math.sqrt(p * (1 - p) / B)).all(), rate


def test_epsilon_greedy_rate():
    eps, N, B = 0.3, 4, 20000
    td, _ = _battles(B, N, torch.Generator().manual_seed(9), dead_frac=0.0)
    pol = EpsilonGreedy(eps, generator=torch.Generator().manual_seed(10))
    rate = pol(td)["agents", "explored"].float().mean(0)
    assert ((rate - eps).abs() < 5 * math.sqrt(eps * (1 - eps) / B)).all(), rate


def test_generator_reproducible():
    td, _ = _battles(500, 5, torch.Generator().manual_seed(11))
    a1 = make_exploration("sequential", epsilon=0.7, generator=torch.Generator().manual_seed(3))(td.clone())
    a2 = make_exploration("sequential", epsilon=0.7, generator=torch.Generator().manual_seed(3))(td.clone())
    assert torch.equal(a1["agents", "action"], a2["agents", "action"])


def test_factory_and_epsilon_validation():
    with pytest.raises(ValueError, match="epsilon_greedy.*sequential.*decentralised_sequential"):
        make_exploration("boltzmann")
    pol = make_exploration("epsilon_greedy", epsilon=0.1)
    pol.set_epsilon(LinearSchedule(1.0, 0.05, 100)(100))
    assert pol.epsilon == pytest.approx(0.05)
    with pytest.raises(ValueError):
        pol.set_epsilon(1.5)
    assert pol.in_keys == [("agents", "action_value"), ("agents", "action_mask")]
    assert pol.out_keys == [("agents", "action"), ("agents", "explored")]

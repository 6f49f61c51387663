"""TD(λ) targets against hand-computed values (PyMARL2 build_td_lambda_targets)."""

import pytest
import torch

from ovmse.losses import td_lambda_targets

G, LAM = 0.99, 0.6


def test_hand_computed_two_episodes():
    # Episode 0 runs all 3 steps without terminating (truncated: bootstrap from V3).
    # Episode 1 terminates at t=1; t=2 is padding (mask 0).
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.5, 9.0]])
    terminated = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    target_qs = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]])

    # Episode 0, by the recursion written out with literal numbers:
    r3 = 40.0
    r2 = LAM * G * r3 + (3.0 + (1 - LAM) * G * 40.0)  # 0.594*40 + 3 + 0.396*40
    r1 = LAM * G * r2 + (2.0 + (1 - LAM) * G * 30.0)
    r0 = LAM * G * r1 + (1.0 + (1 - LAM) * G * 20.0)
    assert r2 == pytest.approx(42.6)  # 23.76 + 3 + 15.84
    # Episode 1: ret3 = 8 * (1 - 1) = 0; t=2 masked -> 0; t=1 terminal -> reward only.
    s2 = 0.0
    s1 = 1.5
    s0 = LAM * G * s1 + (0.5 + (1 - LAM) * G * 6.0)  # 0.891 + 0.5 + 2.376
    assert s0 == pytest.approx(3.767)
    expected = torch.tensor([[r0, r1, r2], [s0, s1, s2]])

    out = td_lambda_targets(rewards, terminated, mask, target_qs, G, LAM)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, expected)


def test_lambda_zero_is_one_step_td():
    torch.manual_seed(0)
    B, T = 4, 6
    rewards = torch.randn(B, T)
    terminated = torch.zeros(B, T)
    terminated[0, 3] = 1.0
    mask = torch.ones(B, T)
    mask[0, 4:] = 0.0
    target_qs = torch.randn(B, T + 1)
    out = td_lambda_targets(rewards, terminated, mask, target_qs, G, 0.0)
    one_step = mask * (rewards + G * target_qs[:, 1:] * (1 - terminated))
    torch.testing.assert_close(out, one_step)


def test_lambda_one_zero_values_is_monte_carlo():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0, 7.0]])
    terminated = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    target_qs = torch.zeros(1, 6)
    out = td_lambda_targets(rewards, terminated, mask, target_qs, G, 1.0)
    mc = [1.0 + G * 0.0 + G**2 * 2.0 + G**3 * 5.0, 0.0 + G * 2.0 + G**2 * 5.0, 2.0 + G * 5.0, 5.0, 0.0]
    torch.testing.assert_close(out, torch.tensor([mc]))


def test_lambda_one_ignores_target_values_when_terminated():
    # With λ=1 and a terminating episode, target values must not leak in at all.
    rewards = torch.tensor([[1.0, 2.0, 0.0]])
    terminated = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = td_lambda_targets(rewards, terminated, mask, torch.randn(1, 4) * 100, G, 1.0)
    torch.testing.assert_close(out, torch.tensor([[1.0 + G * 2.0, 2.0, 0.0]]))


def test_trailing_singleton_and_validation():
    B, T = 2, 4
    out = td_lambda_targets(
        torch.ones(B, T, 1), torch.zeros(B, T, 1), torch.ones(B, T, 1), torch.zeros(B, T + 1, 1), G, LAM
    )
    assert out.shape == (B, T, 1)
    with pytest.raises(ValueError):
        td_lambda_targets(torch.ones(B, T), torch.zeros(B, T), torch.ones(B, T), torch.zeros(B, T), G, LAM)

"""Whole-battle statistics: scripted mirror matches are balanced, random play loses."""

import pytest

from ovmse.envs import make_env
from ovmse.envs.rollout import run_battles


def test_scripted_allies_mirror_3m_is_balanced():
    """Both teams follow the same built-in rule on a mirrored map: neither side should dominate."""
    env = make_env("3m", 64, seed=0, scripted_allies=True)
    stats = run_battles(env, 200)
    assert stats.battles == 256  # 64 envs * ceil(200 / 64) battles each
    assert 0.3 <= stats.win_rate <= 0.7, stats.summary()
    assert all(1 <= n <= 60 for n in stats.lengths)
    # A scripted battle is a real fight: every battle deals damage.
    assert min(stats.returns) > 0
    assert max(stats.returns) <= 20.0 + 1e-4


def test_random_policy_loses_3m():
    env = make_env("3m", 64, seed=1)
    stats = run_battles(env, 128)
    assert stats.battles == 128
    assert stats.win_rate < 0.05, stats.summary()
    assert all(w is False or w is True for w in stats.won)
    # Won battles (if any) return exactly 20 only when perfect; returns never exceed 20.
    assert max(stats.returns) <= 20.0 + 1e-4
    assert stats.mean_length == pytest.approx(sum(stats.lengths) / 128)

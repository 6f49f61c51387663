"""The aggregate statistics of the reports (ovmse.report.statistics) against their definitions."""

import doctest

import numpy as np
import pytest

from ovmse.report import statistics as st


def test_the_docstring_examples_run():
    assert doctest.testmod(st).failed == 0


def test_iqm_is_the_mean_of_the_middle_half():
    rng = np.random.default_rng(0)
    scores = rng.random((8, 3))
    pooled = np.sort(scores.ravel())  # 24 values: 6 cut from each end
    assert st.iqm(scores) == pytest.approx(pooled[6:18].mean())
    assert st.median(scores) == pytest.approx(np.median(scores.mean(axis=1)))


def test_the_bootstrap_resamples_runs_within_each_task():
    scores = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]])
    sample = st._resample(scores, np.random.default_rng(1))
    assert set(sample[:, 0]) <= {0.0, 1.0, 2.0} and set(sample[:, 1]) <= {10.0, 11.0, 12.0}
    lo, hi = st.interval(scores, st.iqm, reps=300)
    assert lo <= st.iqm(scores) <= hi
    assert st.interval(np.ones((3, 1)), st.iqm, reps=50) == (1.0, 1.0)  # no spread, no interval width


def test_probability_of_improvement_counts_ties_half_and_averages_tasks():
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 0.0], [1.0, 1.0]])
    # task 0: pairs (1>0, 1=1) x2 -> (1 + 0.5) / 2 = 0.75; task 1: (0=0, 0<1) -> 0.25
    assert st.probability_of_improvement(x, y) == pytest.approx(0.5)
    lo, hi = st.improvement_interval(x, y, reps=200)
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_runs_in_marl_eval_layout():
    runs = [{"task": "2s3z_medium", "algorithm": "ovmse", "seed": 1, "steps": [10_000, 20_000],
             "values": [0.25, 0.5], "final": 0.75}]
    out = st.marl_eval_runs(runs, "smac_sim")
    run = out["smac_sim"]["2s3z_medium"]["ovmse"]["run_1"]
    assert run["step_1"] == {"step_count": 20_000, "win_rate": [0.5]}
    assert run["absolute_metrics"] == {"win_rate": [0.75]}

"""The field's aggregate statistics (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice"; rliable and marl-eval): interquartile mean (IQM) and median over runs with
stratified-bootstrap 95% confidence intervals, probability of improvement, IQM sample-efficiency
curves, and runs written in marl-eval's JSON format.

Computed here with numpy, following rliable's definitions (``metrics.aggregate_iqm`` is
``scipy.stats.trim_mean(scores, 0.25, axis=None)``; the bootstrap resamples each task's runs with
replacement, independently per task): rliable 1.2.0 itself does not import next to pandas 3 (its
``arch`` dependency fails at import), and the statistics are short.

Scores are float ``[runs, tasks]`` (one column per task, e.g. 2s3z medium; every task the same
number of runs); curves ``[runs, tasks, steps]``.

Examples:
    >>> import numpy as np
    >>> from ovmse.report.statistics import iqm, interval, probability_of_improvement
    >>> a = np.array([[0.9], [0.95], [0.2], [1.0]])     # 4 seeds of one task
    >>> round(iqm(a), 3)                                 # the middle half: 0.9 and 0.95
    0.925
    >>> lo, hi = interval(a, iqm, reps=500)
    >>> bool(lo <= iqm(a) <= hi)
    True
    >>> probability_of_improvement(a, np.array([[0.5], [0.6]]))   # P(X > Y) over all pairs
    0.75
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], float]


def iqm(scores: np.ndarray) -> float:
    """Mean of the middle 50% of all run x task scores (``int(0.25 n)`` cut from each end)."""
    pooled = np.sort(np.asarray(scores, dtype=float).ravel())
    cut = int(0.25 * pooled.size)
    return float(pooled[cut:pooled.size - cut].mean())


def median(scores: np.ndarray) -> float:
    """Median of the per-run means over tasks (rliable's ``aggregate_median``)."""
    return float(np.median(np.asarray(scores, dtype=float).mean(axis=-1)))


def _resample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One stratified bootstrap sample: each task's runs drawn with replacement."""
    runs, tasks = scores.shape[:2]
    index = rng.integers(0, runs, size=(runs, tasks))
    return np.take_along_axis(scores, index.reshape(runs, tasks, *([1] * (scores.ndim - 2))), axis=0)


def interval(scores: np.ndarray, statistic: Statistic, reps: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` over ``reps`` stratified bootstrap samples."""
    scores, rng = np.asarray(scores, dtype=float), np.random.default_rng(seed)
    values = [statistic(_resample(scores, rng)) for _ in range(reps)]
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(a run of X scores above a run of Y), ties counting one half, averaged over tasks
    (rliable's ``probability_of_improvement``; the Mann-Whitney U statistic over ``m * n``)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    per_task = [((xt[:, None] > yt[None, :]).mean() + 0.5 * (xt[:, None] == yt[None, :]).mean())
                for xt, yt in zip(x.T, y.T)]
    return float(np.mean(per_task))


def improvement_interval(x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Confidence interval of :func:`probability_of_improvement`, X and Y resampled independently."""
    x, y, rng = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.random.default_rng(seed)
    values = [probability_of_improvement(_resample(x, rng), _resample(y, rng)) for _ in range(reps)]
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def iqm_curve(curves: np.ndarray, reps: int = 500, seed: int = 0) -> dict[str, list[float]]:
    """IQM over runs and tasks at each step of ``curves [runs, tasks, steps]``, with its 95%
    stratified-bootstrap interval: ``{"iqm", "low", "high"}``, one value per step."""
    curves = np.asarray(curves, dtype=float)
    out: dict[str, list[float]] = {"iqm": [], "low": [], "high": []}
    for step in range(curves.shape[2]):
        at = curves[:, :, step]
        lo, hi = interval(at, iqm, reps=reps, seed=seed)
        out["iqm"].append(iqm(at))
        out["low"].append(lo)
        out["high"].append(hi)
    return out


def final_score_rows(scores_by_algo: dict[str, list[float]], reference: str = "ovmse", reps: int = 2000,
                     min_runs: int = 3) -> dict[str, dict]:
    """One task's final scores per algorithm -> per algorithm ``{"n", "iqm", "median"}`` and, from
    ``min_runs`` runs on (a bootstrap of one or two values says nothing), their stratified-bootstrap
    95% intervals ``"iqm_ci"``, ``"median_ci"``; for every other algorithm with ``min_runs`` runs,
    ``"p_better"`` = P(a ``reference`` run ends above a run of it) and ``"p_better_ci"``.
    Shared by ``ovmse.report`` (Table 1) and ``scripts/o2o_2s3z_stats.py``."""
    rows: dict[str, dict] = {}
    ref = np.asarray(scores_by_algo.get(reference, []), dtype=float)[:, None]
    for algo, values in scores_by_algo.items():
        scores = np.asarray(values, dtype=float)[:, None]  # [runs, tasks=1]
        row = {"n": int(scores.shape[0]), "iqm": iqm(scores), "median": median(scores)}
        if scores.shape[0] >= min_runs:
            row["iqm_ci"] = interval(scores, iqm, reps=reps)
            row["median_ci"] = interval(scores, median, reps=reps)
            if algo != reference and ref.shape[0] >= min_runs:
                row["p_better"] = probability_of_improvement(ref, scores)
                row["p_better_ci"] = improvement_interval(ref, scores, reps=reps)
        rows[algo] = row
    return rows


def marl_eval_runs(runs: list[dict], environment: str, metric: str = "win_rate") -> dict:
    """``runs`` in marl-eval's JSON layout: ``{environment: {task: {algorithm: {"run_<seed>":
    {"step_<i>": {"step_count": n, metric: [value]}, ..., "absolute_metrics": {metric: [final]}}}}}}``.

    Each run is ``{"task", "algorithm", "seed", "steps": [...], "values": [...], "final": float}``.
    Our evaluations are means over their battles, so each list holds that one mean."""
    out: dict = {environment: {}}
    for run in runs:
        algos = out[environment].setdefault(run["task"], {})
        entry = {f"step_{i}": {"step_count": int(step), metric: [float(value)]}
                 for i, (step, value) in enumerate(zip(run["steps"], run["values"]))}
        entry["absolute_metrics"] = {metric: [float(run["final"])]}
        algos.setdefault(run["algorithm"], {})[f"run_{run['seed']}"] = entry
    return out

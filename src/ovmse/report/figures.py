"""The paper's figures redrawn from our runs as PNG files, one subplot per task.

- ``figure2_win_rate.png``: median eval/win_rate over seeds, interquartile range shaded;
- ``figure3_return.png``: mean eval/return over seeds, ± one std shaded;
- ``figure1_unlearning.png``: mean eval/probe_q_tot (Q_tot of the fixed probe trajectories'
  actions) ± one std per fine-tuning algorithm, and dashed, their Monte-Carlo return.

Only finished variant-free runs are drawn; seeds are aligned by :func:`curves.align`. Each
algorithm keeps one colour across figures. Drawn on matplotlib's Agg canvas: no pyplot, no
global backend change.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import paper
from .curves import align, mean_std, median_iqr
from .runs import FINISHED, OnlineRun

MC_RETURN = "eval/probe_mc_return"
# file name: (metric, centre of the band, y label, dashed reference metric or None)
FIGURES = {"figure2_win_rate.png": ("eval/win_rate", "median", "test win rate", None),
           "figure3_return.png": ("eval/return", "mean", "test return", None),
           "figure1_unlearning.png": ("eval/probe_q_tot", "mean", "Q_tot on probe trajectories", MC_RETURN)}


def colours(algos) -> dict[str, str]:
    """Fixed tab10 colours for the known algorithms (paper order), the rest after them."""
    ordered = list(paper.ALGO_ORDER) + sorted(set(algos) - set(paper.ALGO_ORDER))
    return {a: f"C{i % 10}" for i, a in enumerate(ordered)}


def draw_figures(runs: list[OnlineRun], out: Path) -> dict[str, Path | None]:
    """Write the three figures under ``out``; ``{file name: path}``, the path None when no
    run logged the figure's metric (no file written then)."""
    plain = [r for r in runs if r.status == FINISHED and r.variant is None]
    palette = colours({r.algo for r in plain})
    written = {}
    for name, (metric, centre, ylabel, reference) in FIGURES.items():
        drawn = [r for r in plain if metric in r.curves]
        written[name] = _draw(drawn, metric, centre, ylabel, reference, palette, out / name) if drawn else None
    return written


def _draw(runs: list[OnlineRun], metric: str, centre: str, ylabel: str, reference: str | None, palette: dict,
          path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = sorted({r.task for r in runs}, key=paper.task_sort_key)
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    figure = Figure(figsize=(4.2 * ncols + 1.6, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    handles = {}
    for ax, task in zip(axes, tasks):
        on_task = [r for r in runs if r.task == task]
        for algo in sorted({r.algo for r in on_task}, key=paper.algo_sort_key):
            grid, values = align([r.curves[metric] for r in on_task if r.algo == algo])
            if grid.size == 0:
                continue  # the seeds share no step range: nothing can be averaged
            middle, low, high = _band(values, centre)
            (handles[paper.label(algo)],) = ax.plot(grid, middle, color=palette[algo], marker=".", markersize=3)
            ax.fill_between(grid, low, high, color=palette[algo], alpha=0.2, linewidth=0)
        if reference:
            # One line per task, the mean over its runs: each run's probe battles are played by
            # its offline checkpoint, which the fine-tuning algorithms of a task share.
            grid, values = align([r.curves[reference] for r in on_task if reference in r.curves])
            if grid.size:
                (handles["probe MC return"],) = ax.plot(grid, values.mean(axis=0), color="black", linestyle="--")
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    figure.legend(list(handles.values()), list(handles), loc="outside right upper")
    figure.savefig(path, dpi=110)
    return path


def _band(values, centre: str):
    """``(centre, low, high)`` over seeds (axis 0): median with quartiles, or mean ± std."""
    if centre == "median":
        return median_iqr(values)
    mean, std = mean_std(values)
    return mean, mean - std, mean + std

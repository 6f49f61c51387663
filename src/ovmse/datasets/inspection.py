"""Summaries of offline datasets as in the paper: Table 8 rows and Figure 5 histograms.

Everything here is computed from the stored episodes (:meth:`OfflineDataset.stats`), not
copied from ``dataset.json``, so it also checks what the metadata claims.

Plotting imports matplotlib lazily and never selects a global backend: a figure that is
only saved to a file is drawn on its own Agg canvas (no pyplot, no display needed), while
one made for interactive use (no ``path``, no ``ax``) is a pyplot figure, so notebooks
show it inline as usual.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .loading import OfflineDataset

# Column order of a Table 8 row as printed: (key, header, right-aligned).
_COLUMNS = (
    ("dataset", "Dataset", False),
    ("episodes", "Episodes", True),
    ("transitions", "Transitions", True),
    ("returns", "Return min / avg / max", True),
    ("win_rate", "Win rate", True),
    ("episode_length_mean", "Mean length", True),
)


def dataset_label(dataset: OfflineDataset) -> str:
    """``map/quality`` of ``dataset`` (its Table 8 name)."""
    meta = dataset.metadata
    return f"{meta.get('map', '?')}/{meta.get('quality', '?')}"


def table8_row(dataset: OfflineDataset) -> dict[str, Any]:
    """The paper's Table 8 row of ``dataset``, computed from its stored episodes.

    Returns a dict with ``dataset`` (``map/quality``), ``map``, ``quality``, ``path``,
    ``episodes``, ``transitions``, ``return_min``, ``return_mean``, ``return_max``,
    ``return_std``, ``win_rate`` and ``episode_length_mean``.
    """
    summary, _ = dataset.stats()
    meta = dataset.metadata
    return {
        "dataset": dataset_label(dataset),
        "map": meta.get("map"),
        "quality": meta.get("quality"),
        "path": str(dataset.path),
        "episodes": int(summary["episodes"]),
        "transitions": int(summary["transitions"]),
        "return_min": summary["return_min"],
        "return_mean": summary["return_mean"],
        "return_max": summary["return_max"],
        "return_std": summary["return_std"],
        "win_rate": summary["win_rate"],
        "episode_length_mean": summary["episode_length_mean"],
    }


def _fmt(x: float, decimals: int = 2) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.{decimals}f}"


def _cells(row: Mapping[str, Any]) -> dict[str, str]:
    return {
        "dataset": str(row["dataset"]),
        "episodes": str(int(row["episodes"])),
        "transitions": str(int(row["transitions"])),
        "returns": " / ".join(_fmt(row[k]) for k in ("return_min", "return_mean", "return_max")),
        "win_rate": _fmt(row["win_rate"]),
        "episode_length_mean": _fmt(row["episode_length_mean"], 1),
    }


def format_table8(rows: Iterable[Mapping[str, Any]], markdown: bool = False) -> str:
    """Table 8 rows (from :func:`table8_row`) as aligned plain text, or a Markdown table.

    Returns are shown as ``min / average / max`` with 2 decimals, like the paper; the win
    rate with 2 decimals and the mean episode length (transitions) with 1.
    """
    cells = [_cells(r) for r in rows]
    headers = {key: header for key, header, _ in _COLUMNS}
    widths = {key: max([len(headers[key])] + [len(c[key]) for c in cells]) for key, _, _ in _COLUMNS}

    def line(values: Mapping[str, str], sep: str) -> str:
        parts = [values[key].rjust(widths[key]) if right else values[key].ljust(widths[key])
                 for key, _, right in _COLUMNS]
        return sep.join(parts)

    if markdown:
        rule = {key: ("-" * (widths[key] - 1) + ":") if right else "-" * widths[key] for key, _, right in _COLUMNS}
        out = [line(headers, " | "), line(rule, " | ")] + [line(c, " | ") for c in cells]
        return "\n".join(f"| {s} |" for s in out)
    out = [line(headers, "  "), "  ".join("-" * widths[key] for key, _, _ in _COLUMNS)]
    out += [line(c, "  ") for c in cells]
    return "\n".join(s.rstrip() for s in out)


def _returns_of(datasets: Any) -> list[tuple[str, np.ndarray]]:
    """``[(label, returns)]`` of one dataset, a sequence of them, or a mapping label -> returns."""
    if isinstance(datasets, OfflineDataset):
        datasets = [datasets]
    if isinstance(datasets, Mapping):
        items = [(str(k), torch.as_tensor(v).double().numpy().ravel()) for k, v in datasets.items()]
    else:
        items = [(dataset_label(d), d.stats()[1].double().numpy()) for d in datasets]
        counts: dict[str, int] = {}
        for label, _ in items:
            counts[label] = counts.get(label, 0) + 1
        # Same map/quality twice (e.g. two copies being compared): tell them apart by path.
        items = [(f"{label} ({d.path})" if counts[label] > 1 else label, r)
                 for (label, r), d in zip(items, datasets)]
    if not items:
        raise ValueError("plot_return_distribution: no datasets given")
    return items


def plot_return_distribution(
    datasets: OfflineDataset | Sequence[OfflineDataset] | Mapping[str, Any],
    path: str | Path | None = None,
    ax: Any = None,
    bins: int = 40,
    *,
    overlay: bool = True,
    title: str | None = "Episode return distribution",
):
    """The paper's Figure 5: density histograms of the episode returns of ``datasets``.

    Args:
        datasets: an :class:`OfflineDataset`, a sequence of them (labelled ``map/quality``),
            or a mapping ``label -> returns`` (anything ``torch.as_tensor`` takes).
        path: save the figure there as PNG (directories are created).
        ax: draw on these axes (all datasets overlaid); otherwise a new figure is made.
        bins: histogram bins, shared by all datasets (edges over their joint range).
        overlay: with a new figure, overlay the datasets on one axes (True) or draw one
            panel per dataset side by side with a shared x axis (False).

    Returns:
        the matplotlib Figure. Without ``ax``, it is a pyplot figure when ``path`` is None
        (shown inline in notebooks) and a standalone Agg figure otherwise (headless, not
        registered with pyplot).
    """
    items = _returns_of(datasets)
    edges = np.histogram_bin_edges(np.concatenate([r for _, r in items]), bins=bins)
    n_panels = 1 if (overlay or ax is not None) else len(items)
    if ax is not None:
        fig, axes = ax.figure, [ax] * len(items)
    else:
        size = (6.0, 4.0) if n_panels == 1 else (4.0 * n_panels, 3.6)
        if path is None:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=size)
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=size)
            FigureCanvasAgg(fig)
        panels = fig.subplots(1, n_panels, sharex=True, squeeze=False)[0]
        axes = list(panels) * len(items) if n_panels == 1 else list(panels)
    colors = [f"C{i % 10}" for i in range(len(items))]
    alpha = 0.5 if len(set(map(id, axes))) < len(axes) else 0.8
    for (label, returns), a, color in zip(items, axes, colors):
        a.hist(returns, bins=edges, density=True, alpha=alpha, color=color, edgecolor=color,
               histtype="stepfilled", label=f"{label} ({len(returns)} episodes)")
    for a in dict.fromkeys(axes):  # unique axes, in order
        a.set_xlabel("episode return")
        a.set_ylabel("density")
        a.legend(fontsize="small")
        if n_panels > 1:
            a.set_title(a.get_legend_handles_labels()[1][0].rsplit(" (", 1)[0], fontsize="medium")
    if title and ax is None:
        fig.suptitle(title)
    if ax is None:
        fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=120)
    return fig

"""PNG figures for the evaluation results (matplotlib, Agg backend). Each returns False when there
is nothing to draw (every method skipped), in which case no file is written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["lines", "bars", "heatmaps"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else math.nan


def lines(panels: dict[str, dict[str, dict[str, Any]]], png: Path, title: str, xlabel: str,
          ylim: tuple[float, float] | None = None) -> bool:
    """One panel per metric; in each, one line per method over categorical x labels (in order)."""
    panels = {p: s for p, s in panels.items() if s}
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels.items()):
        xs: list[str] = []
        for s in series.values():
            xs += [x for x in s if x not in xs]
        for method, s in series.items():
            ax.plot(range(len(xs)), [_num(s.get(x)) for x in xs], marker="o", lw=1.4, label=method)
        ax.set_xticks(range(len(xs)), xs, rotation=30 if len(xs) > 4 else 0, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def bars(results: dict[str, Any], metrics: list[str], png: Path, title: str) -> bool:
    """Grouped bars: methods along x, one bar per metric."""
    methods = [m for m, r in results.items() if "metrics" in r]
    if not methods:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods) + 2), 3.8))
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        ys = [_num(results[m]["metrics"].get(metric)) for m in methods]
        ax.bar([i + j * width for i in range(len(methods))], ys, width, label=metric)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(methods))], methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def heatmaps(grids: dict[str, dict[str, Any]], key: str, png: Path, title: str) -> bool:
    """One heat map per method: rows = depths, columns = lengths; grey = not run / skipped."""
    if not grids:
        return False
    import numpy as np

    plt = _plt()
    n = len(grids)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    for ax, (method, g) in zip(axes.flat, grids.items()):
        data = np.ma.masked_invalid(np.array([[_num(v) for v in row] for row in g[key]], dtype=float))
        ax.imshow(data, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(g["lengths"])), [str(x) for x in g["lengths"]], fontsize=7)
        ax.set_yticks(range(len(g["depths"])), [f"{d:g}" for d in g["depths"]], fontsize=7)
        for i, row in enumerate(g[key]):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(method, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True

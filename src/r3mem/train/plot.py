"""Loss curves from a metrics.jsonl log, one panel per loss term."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_metrics"]

TERMS = ("total", "forward", "backward", "cycle")


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean: batches alternate between hierarchy levels, so raw curves are noisy."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_metrics(log_path: str | Path, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()]
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.2))
    steps = [r["step"] for r in rows]
    for ax, term in zip(axes, TERMS):
        values = [r[term] for r in rows]
        ax.plot(steps, values, lw=0.8, alpha=0.35)
        ax.plot(steps, _moving_average(values, 20), lw=1.6, label="moving average (20 logs)")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)

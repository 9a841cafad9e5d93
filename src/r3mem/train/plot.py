"""Loss curves from a metrics.jsonl log, one panel per loss term."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_metrics"]

TERMS = ("total", "forward", "backward", "cycle")


def plot_metrics(log_path: str | Path, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()]
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.2))
    for ax, term in zip(axes, TERMS):
        ax.plot([r["step"] for r in rows], [r[term] for r in rows], lw=1.2)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)

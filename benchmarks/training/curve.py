"""Learning curve of reconstruction: held-out greedy token exact match against examples seen.

Each checkpoint (or adapter folder) given is scored on paragraphs of held-out PG-19 book 10356
(whitespace collapsed, at most 96 tokens) compressed at 2x, 4x and 8x and expanded back greedily:
token exact match (reference tokens reproduced at their position), BLEU and ROUGE-L. One JSON line
per (run, step) is appended to `results/curve.jsonl`; the plots `results/curve.png` (token exact match)
and `results/curve_rouge.png` (ROUGE-L) show every line of that file, one panel per ratio, so they hold
the curve across all runs so far, the shipped adapter starred.

Usage: python benchmarks/training/curve.py --run NAME CHECKPOINT_OR_ADAPTER [...] [--paragraphs 24]
       python benchmarks/training/curve.py --plot-only
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from evaluate_adapter import _paragraph_ids, _versions, reconstruction  # noqa: E402
from provenance import examples_seen  # noqa: E402

from r3mem.engine import R3Mem  # noqa: E402
from r3mem.text import read_text, strip_gutenberg  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CURVE_FIELDS = ("token_exact_match", "paragraph_exact_match", "bleu", "rouge_l", "mean_memory_tokens", "confidence")


def score(folder: Path, run: str, n: int, ratios: list[float]) -> dict:
    engine = R3Mem.from_pretrained(folder)
    text = strip_gutenberg(read_text(Path("../shared/data/pg19/10356.txt")))
    paras = _paragraph_ids(engine, text, n, 24, 96)
    step, seen = examples_seen(folder, engine.meta)
    t0 = time.perf_counter()
    rec = reconstruction(engine, paras, ratios)
    return _row(run, step, seen, engine.adapter_hash, engine.config.memory_mode, len(paras), rec,
                round(time.perf_counter() - t0, 1))


def from_evaluation(path: Path, run: str) -> dict:
    """The curve row of an `evaluate_adapter.py` result (same paragraphs and scoring), without rescoring."""
    d = json.loads(path.read_text())
    folder = Path(d["adapter"])
    meta = dict(d.get("adapter_meta") or {})
    if folder.exists():
        meta |= json.loads((folder / "r3mem_adapter.json").read_text())
    step, seen = examples_seen(folder, meta)
    return _row(run, step, seen, d["adapter_hash"], d["config"]["memory_mode"], d["n_paragraphs"],
                d["reconstruction"], d.get("wall_s"), source=path.name)


def _row(run, step, seen, adapter_hash, memory_mode, n_paragraphs, rec, wall_s, source=None) -> dict:
    row = {"run": run, "step": step, "examples_seen": seen, "adapter_hash": adapter_hash, "memory_mode": memory_mode,
           "n_paragraphs": n_paragraphs, "date": datetime.date.today().isoformat(), "commit": _versions()["commit"],
           "wall_s": wall_s, "ratios": {r: {k: v[k] for k in CURVE_FIELDS} | {"example": v["examples"][0]}
                                        for r, v in rec.items()}}
    return row | ({"source": source} if source else {})


SHIPPED = Path(__file__).parents[2] / "src/r3mem/pretrained/smollm2-135m/r3mem_adapter.json"


def plot(path: Path, out: Path) -> None:
    """One figure per measure (`out`: greedy token exact match; `out` with `_rouge`: ROUGE-L), one panel
    per ratio, each run a colour; the point of the shipped adapter (its step) starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    colours = {run: plt.cm.tab20(i % 20) for i, run in enumerate(runs)}
    shipped_step = json.loads(SHIPPED.read_text()).get("step") if SHIPPED.exists() else None
    for field, title, target_file in (("token_exact_match", "greedy token exact match", out),
                                      ("rouge_l", "ROUGE-L", out.with_name(out.stem + "_rouge" + out.suffix))):
        ratios = [r for r in ("2", "4", "8", "16") if any(r in row["ratios"] for row in rows)]
        fig, axes = plt.subplots(1, len(ratios), figsize=(4.4 * len(ratios), 4.6), sharey=True, squeeze=False)
        axes = axes[0]
        for ax, ratio in zip(axes, ratios):
            for run in runs:
                pts = sorted((r for r in rows if r["run"] == run and ratio in r["ratios"]),
                             key=lambda r: r["examples_seen"])
                if pts:
                    ax.plot([r["examples_seen"] for r in pts], [r["ratios"][ratio][field] for r in pts],
                            marker="o", ms=4, lw=1.5, color=colours[run], label=run)
            best = [r for r in rows if r["step"] == shipped_step and ratio in r["ratios"]]
            for r in best[-1:]:
                ax.plot(r["examples_seen"], r["ratios"][ratio][field], marker="*", ms=16, color="black",
                        ls="none", label="shipped adapter", zorder=5)
            if field == "token_exact_match":
                target = {"4": 0.9, "8": 0.7}.get(ratio)
                if target:
                    ax.axhline(target, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{ratio}x")
            ax.set_xlabel("training examples seen")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"{title}, held-out book 10356")
        seen: dict = {}  # label -> handle, over all panels (a run may lack a ratio)
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=5, fontsize=8, frameon=False)
        fig.suptitle(f"Reconstruction during training: {title} at each compression ratio")
        fig.tight_layout(rect=(0, 0.16, 1, 0.95))
        fig.savefig(target_file, dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--run", default="run")
    ap.add_argument("--paragraphs", type=int, default=24)
    ap.add_argument("--ratios", default="2,4,8")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--from-eval", type=Path, nargs="*", default=[], help="evaluate_adapter.py results to add as rows")
    ap.add_argument("--threads", type=int, default=2, help="1 while a training run shares the machine")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "curve.jsonl"
    if not a.plot_only:
        rows = [from_evaluation(p, a.run) for p in a.from_eval]
        rows += [score(f, a.run, a.paragraphs, [float(r) for r in a.ratios.split(",")]) for f in a.folders]
        for row in rows:
            with log.open("a") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(json.dumps({"step": row["step"], "examples": row["examples_seen"],
                              **{r: round(v["token_exact_match"], 3) for r, v in row["ratios"].items()}}))
    if log.exists():
        plot(log, RESULTS / "curve.png")


if __name__ == "__main__":
    main()

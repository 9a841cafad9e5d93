"""Learning curve of reconstruction: held-out greedy token exact match against examples seen.

Each checkpoint (or adapter folder) given is scored on paragraphs of held-out PG-19 book 10356
(whitespace collapsed, at most 96 tokens) compressed at 2x, 4x and 8x and expanded back greedily:
token exact match (reference tokens reproduced at their position), BLEU and ROUGE-L. One JSON line
per (run, step) is appended to `results/curve.jsonl`; the plot `results/curve.png` shows every
line of that file, so it holds the curve across all runs so far.

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


def plot(path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in dict.fromkeys(r["run"] for r in rows):
        pts = sorted((r for r in rows if r["run"] == run), key=lambda r: r["examples_seen"])
        for ratio, style in (("2", ":"), ("4", "-"), ("8", "--")):
            xs = [r["examples_seen"] for r in pts if ratio in r["ratios"]]
            if xs:
                ax[0].plot(xs, [r["ratios"][ratio]["token_exact_match"] for r in pts if ratio in r["ratios"]], style,
                           marker="o", ms=3, label=f"{run} {ratio}x")
                ax[1].plot(xs, [r["ratios"][ratio]["rouge_l"] for r in pts if ratio in r["ratios"]], style,
                           marker="o", ms=3, label=f"{run} {ratio}x")
    for a, name in zip(ax, ("greedy token exact match", "ROUGE-L")):
        a.set_xlabel("training examples seen")
        a.set_title(f"held-out book 10356: {name}")
        a.set_ylim(0, 1)
        a.grid(alpha=0.3)
    ax[0].axhline(0.9, color="grey", lw=0.8, ls=":")
    ax[0].axhline(0.7, color="grey", lw=0.8, ls="--")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
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

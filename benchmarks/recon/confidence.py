"""Does recall confidence predict correctness? The calibration part of an adapter evaluation
(`benchmarks/training/evaluate_adapter.py`: held-out book 10356, greedy reconstruction at each ratio)
as its own report: JSON plus a reliability diagram (token probability vs accuracy, per ratio).

    python benchmarks/recon/confidence.py benchmarks/training/results/smollm2-135m_kv600.json \
        --out benchmarks/recon/results/confidence_pg19-10356
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def report(evaluation: dict) -> dict:
    recon = evaluation["reconstruction"]
    return {"adapter": evaluation.get("adapter"), "adapter_hash": evaluation.get("adapter_hash"),
            "adapter_step": (evaluation.get("adapter_meta") or {}).get("step"),
            "n_paragraphs": evaluation.get("n_paragraphs"),
            "book": evaluation.get("book"), "date": evaluation.get("date"),
            "question": "does the decoder's per-token probability predict that the token is right?",
            "by_ratio": {r: {"token_exact_match": v["token_exact_match"], **v["confidence"]} for r, v in recon.items()}}


def plot(rep: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="calibrated")
    for ratio, c in rep["by_ratio"].items():
        rows = [r for r in c["reliability"] if r["n_tokens"]]
        auc = c["token_auroc"]
        ax.plot([r["mean_prob"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                label=f"{ratio}x (AUROC {auc:.2f})" if auc is not None else f"{ratio}x")
    ax.set(xlabel="token probability (bin mean)", ylabel="token accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability of recall confidence")
    ax.legend(loc="upper left", fontsize=8)
    ratios = list(rep["by_ratio"])
    width = 0.38
    least = [rep["by_ratio"][r]["token_accuracy_least_confident_quartile"] or 0 for r in ratios]
    most = [rep["by_ratio"][r]["token_accuracy_most_confident_quartile"] or 0 for r in ratios]
    xs = range(len(ratios))
    bx.bar([x - width / 2 for x in xs], least, width, label="least confident quarter of slots")
    bx.bar([x + width / 2 for x in xs], most, width, label="most confident quarter of slots")
    bx.set_xticks(list(xs), [f"{r}x" for r in ratios])
    bx.set(ylabel="token accuracy", ylim=(0, 1), title="Slots ranked by confidence")
    bx.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"held-out {rep['book'] or ''}, adapter step {rep['adapter_step']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluation", type=Path, help="JSON written by benchmarks/training/evaluate_adapter.py")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .png are written)")
    args = ap.parse_args()
    rep = report(json.loads(args.evaluation.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rep, indent=2) + "\n")
    plot(rep, args.out.with_suffix(".png"))
    for ratio, c in rep["by_ratio"].items():
        print(f"{ratio}x: token AUROC {c['token_auroc']:.3f}, accuracy of least/most confident quarter "
              f"{c['token_accuracy_least_confident_quartile']:.3f}/{c['token_accuracy_most_confident_quartile']:.3f}")


if __name__ == "__main__":
    main()

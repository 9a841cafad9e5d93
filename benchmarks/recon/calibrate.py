"""Recall confidence, calibrated: fit `r3mem.calibration.SlotCalibration` on held-out slots and measure,
on other held-out slots, whether raw and calibrated confidence predict a wrong recall.

Slots come from the real write path (`engine.write` with a `WritePolicy` at each paragraph ratio, the
default hierarchy, retrieval keys off), each expanded greedily and compared with the text it was written
from. Fit: Multi-Session Chat dialogues 0-29 (not used by any benchmark) and paragraphs 150-249 of the
held-out book 10356. Test: paragraphs 0-95 of 10356 (the reconstruction benchmark's), MSC dialogues
450-479, the first 150 turns of LoCoMo conv-26 (its questions are not used). Reports per test set and
ratio: slot AUROC (does confidence rank wrong slots below exact ones), expected calibration error and
Brier score of P(exact) before (the raw geometric-mean probability read as one) and after, the
reliability table, token AUROC, the exact-rate of the least and most confident quarter of slots, and
what a "probably wrong" threshold flags.

    python benchmarks/recon/calibrate.py --out benchmarks/recon/results/calibration_kv3300 [--ship]

`--ship` writes the fitted calibration into the adapter folder (`calibration.json`), where
`R3Mem.from_pretrained` picks it up.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import torch

from r3mem.agent import format_turn
from r3mem.calibration import CALIBRATION_FILE, SlotCalibration, features, fit
from r3mem.engine import R3Mem, default_adapter_dir
from r3mem.evaluate.datasets import load_locomo
from r3mem.evaluate.metrics import auroc, confidence_calibration, reliability
from r3mem.hierarchy import paragraph_spans
from r3mem.memory import WritePolicy
from r3mem.recall import reconstruct_scored, slot_cap
from r3mem.text import read_text, strip_gutenberg
from r3mem.tokens import tokenize

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
BINS = 10


def _book(lo: int, hi: int) -> list[str]:
    text = strip_gutenberg(read_text(DATA / "pg19" / "10356.txt"))
    paras = [" ".join(p.text.split()) for p in paragraph_spans(text)]
    kept = [p for p in paras if len(p.split()) >= 8][lo:hi]  # the write's paragraph split sees them whole
    return ["\n\n".join(kept) + "\n\n"]


def _msc(lo: int, hi: int) -> list[str]:
    with gzip.open(DATA / "msc" / "msc_dialogue_session_3_test.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f][lo:hi]
    return ["".join(format_turn(t["id"], t["text"]) for t in r["dialog"] if t["text"].strip()) for r in rows]


def _locomo(n: int) -> list[str]:
    conv = load_locomo(DATA / "locomo" / "locomo_dev8.json")[0]
    return ["".join(format_turn(t.speaker, t.text) for t in conv.turns[:n])]


@torch.no_grad()
def slots_of(engine: R3Mem, streams: list[str], ratio: float) -> list[dict]:
    """Every paragraph slot of each stream's memory at `ratio`: its expansion's token probabilities and
    whether the expansion is exactly (and per token) the text it was written from."""
    tok, model, out = engine.tokenizer, engine.model, []
    policy = WritePolicy(levels=("document", "paragraph"), paragraph_ratio=ratio)
    cap = engine.config.max_paragraph_tokens
    for text in streams:
        mem = engine.flush(engine.write(text, policy=policy), policy=policy)
        slots = mem.paragraphs
        refs = [tokenize(tok, text[s.start:s.end])[:cap] for s in slots]
        recs = reconstruct_scored(model, tok, [s.state for s in slots], [slot_cap(s, model.cfg.max_recall_tokens)
                                                                          for s in slots])
        for ref, r in zip(refs, recs):
            out.append({"ref": ref, "ids": r.token_ids, "probs": r.token_probs, "exact": r.token_ids == ref})
    return out


def _ece(p: list[float], y: list[bool]) -> tuple[float, list[dict]]:
    ece, rows = reliability(p, y, BINS)
    return ece or 0.0, [{"lo": lo, "hi": hi, "n_slots": n, "mean_p": mp, "exact_rate": rate}
                        for lo, hi, n, mp, rate in rows]


def measure(rows: list[dict], cal: SlotCalibration) -> dict:
    y = [r["exact"] for r in rows]
    raw = [math.exp(features(r["probs"])[0]) if r["probs"] else 0.0 for r in rows]
    calp = [cal.p_exact(r["probs"]) or 0.0 for r in rows]
    out = {"n_slots": len(rows), "exact_rate": sum(y) / max(1, len(y))}
    for name, p in (("raw", raw), ("calibrated", calp)):
        ece, table = _ece(p, y)
        ranked = sorted(zip(p, y))
        q = max(1, len(ranked) // 4)
        out[name] = {"slot_auroc": auroc(p, y), "ece": ece,
                     "brier": sum((pi - yi) ** 2 for pi, yi in zip(p, y)) / max(1, len(y)),
                     "exact_rate_least_confident_quartile": sum(b for _, b in ranked[:q]) / q,
                     "exact_rate_most_confident_quartile": sum(b for _, b in ranked[-q:]) / q,
                     "reliability": table}
    out["thresholds"] = [{"min_p_exact": t, "flagged": sum(pi < t for pi in calp) / max(1, len(y)),
                          "flagged_that_are_wrong": _share([not b for pi, b in zip(calp, y) if pi < t]),
                          "wrong_that_are_flagged": _share([pi < t for pi, b in zip(calp, y) if not b])}
                         for t in THRESHOLDS]
    out["token"] = {k: v for k, v in confidence_calibration([r["ref"] for r in rows], [r["ids"] for r in rows],
                                                            [r["probs"] for r in rows]).items() if k != "reliability"}
    return out


def _share(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def plot(rep: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(rep["test"])
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        for ratio, m in rep["test"][name].items():
            for kind, style in (("raw", ":"), ("calibrated", "-")):
                rows = [r for r in m[kind]["reliability"] if r["n_slots"]]
                ax.plot([r["mean_p"] for r in rows], [r["exact_rate"] for r in rows], style, marker="o", ms=3,
                        label=f"{ratio}x {kind} (ECE {m[kind]['ece']:.3f})")
        ax.set(title=name, xlabel="P(slot exact), bin mean", ylabel="slots exact", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"slot confidence, adapter {rep['adapter_hash']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="adapter folder (default: the shipped one)")
    ap.add_argument("--ratios", default="4,8")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json, .png)")
    ap.add_argument("--ship", action="store_true", help="write the calibration into the adapter folder")
    args = ap.parse_args()
    t0 = time.perf_counter()
    engine = R3Mem.from_pretrained(args.model, keys=None)
    ratios = [float(r) for r in args.ratios.split(",")]
    fit_sets = {"msc 0-29": _msc(0, 30), "10356 paragraphs 150-249": _book(150, 250)}
    test_sets = {"10356 paragraphs 0-95": _book(0, 96), "msc 450-479": _msc(450, 480),
                 "locomo conv-26 turns 0-149": _locomo(150)}
    fit_rows = [r for s in fit_sets.values() for ratio in ratios for r in slots_of(engine, s, ratio)]
    exact_rate = sum(r["exact"] for r in fit_rows) / len(fit_rows)
    cal = fit([r["probs"] for r in fit_rows], [r["exact"] for r in fit_rows], engine.adapter_hash,
              {"sets": list(fit_sets), "ratios": ratios, "exact_rate": exact_rate})
    test = {name: {str(int(r)): measure(slots_of(engine, s, r), cal) for r in ratios} for name, s in test_sets.items()}
    rep = {"adapter_hash": engine.adapter_hash, "compute_dtype": engine.config.compute_dtype,
           "date": time.strftime("%Y-%m-%d"),
           "question": "does recall confidence say when a slot's expansion is wrong?",
           "calibration": cal.to_dict(), "fit_in_sample": measure(fit_rows, cal), "test": test,
           "wall_s": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    plot(rep, args.out.with_suffix(".png"))
    for name, by in test.items():
        for ratio, m in by.items():
            print(f"{name} {ratio}x: {m['n_slots']} slots, exact {m['exact_rate']:.3f}; slot AUROC "
                  f"{m['raw']['slot_auroc']:.3f}; ECE raw {m['raw']['ece']:.3f} -> calibrated "
                  f"{m['calibrated']['ece']:.3f}; token AUROC {m['token']['token_auroc']:.3f}")
    if args.ship:
        folder = args.model or default_adapter_dir()
        cal.save(Path(folder) / CALIBRATION_FILE)
        print(f"wrote {Path(folder) / CALIBRATION_FILE}")


if __name__ == "__main__":
    main()

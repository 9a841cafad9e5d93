#!/usr/bin/env python3
"""One perplexity-by-position table and plot across `r3mem eval lm` result files.

Each `r3mem eval lm` run scores the methods it was given; equal-budget comparisons are spread over
several runs (one adapter per run). This reads one method of each named run and one of its readings
(`ppl`: the memory as a cache prefix; `recall`: memory plus the text recalled from it; `reset`: the
memory reset at every segment) and writes a JSON document and a PNG (perplexity vs position) side by
side. Every run must have scored the same tokens (same book and `--max-tokens`): refused otherwise.
Where the runs kept their per-segment NLL (`segments`, recorded since 2026-12-05), each row after the
first is also compared with the first segment by segment: the NLL-per-token difference (negative:
better than the first row) with a 95% paired bootstrap interval over segments, and the share of
segments it predicts better. Segments next to each other are not independent (same passage, memory
carried from one to the next), so `--block N` resamples runs of N consecutive segments (a moving-block
bootstrap); with the default 1 the interval is somewhat too narrow. The per-bucket intervals show
whether a difference holds along the book.

    python benchmarks/lm/compare_runs.py \\
        "recurrent=benchmarks/lm/results/pg19-10356_kv150docwa8k_cpu.json:recurrent:ppl" \\
        "r3mem, recalled text=benchmarks/lm/results/pg19-10356_kv150docwarp8k_cpu.json:r3mem:recall" \\
        --out benchmarks/lm/results/compare_kv150_8k
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

_READINGS = {"ppl": ("ppl", "ppl_by_position"), "recall": ("ppl_recall", "ppl_recall_by_position"),
             "reset": ("ppl_memory_reset", None)}


def parse_spec(spec: str) -> tuple[str, Path, str, str]:
    """'LABEL=FILE:METHOD:READING' -> (label, file, method, reading)."""
    label, sep, rest = spec.partition("=")
    parts = rest.rsplit(":", 2)
    if not sep or not label or len(parts) != 3 or parts[2] not in _READINGS:
        raise ValueError(f"{spec!r}: expected LABEL=FILE:METHOD:READING with READING one of {', '.join(_READINGS)}")
    return label, Path(parts[0]), parts[1], parts[2]


def read_row(label: str, path: Path, method: str, reading: str) -> dict:
    doc = json.loads(path.read_text())
    if doc.get("task") != "lm":
        raise ValueError(f"{path}: not an `r3mem eval lm` result")
    m = doc["methods"].get(method)
    if m is None or "metrics" not in m:
        raise ValueError(f"{path}: no scored method {method!r}")
    overall_key, by_pos_key = _READINGS[reading]
    overall = m["metrics"].get(overall_key)
    if overall is None:
        raise ValueError(f"{path}: method {method!r} has no {overall_key!r}")
    segments = (m.get("segments") or {}).get(reading)
    return {"label": label, "file": str(path), "method": method, "reading": reading, "ppl": overall,
            "segments": segments,
            "by_position": m["metrics"].get(by_pos_key) if by_pos_key else None,
            "scored_tokens": m["metrics"]["scored_tokens"], "data": doc["data"],
            "max_tokens": doc["config"].get("max_tokens"), "commit": doc["git"]["commit"][:8],
            "adapter": m.get("adapter")}


def _block_draw(pairs: list, block: int, rng: random.Random) -> list:
    """A moving-block bootstrap sample: runs of `block` consecutive pairs, as many as fill len(pairs)."""
    n, b = len(pairs), min(block, len(pairs))
    starts = [rng.randrange(n - b + 1) for _ in range(math.ceil(n / b))]
    return [pairs[s + i] for s in starts for i in range(b)][:n]


def paired(ref: list[list], other: list[list], n_boot: int = 10_000, seed: int = 0, block: int = 1) -> dict:
    """Segment-by-segment comparison of two readings of the same segments ([book, start, nll, n] each):
    NLL per token of `other` minus `ref` and its 95% bootstrap interval. Pairs are resampled in runs
    of `block` consecutive segments (in book order), so that neighbouring segments, which share
    their text's difficulty and the memory carried between them, are not counted as independent."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    a = {(r[0], r[1]): r for r in ref}
    if set(a) != {(r[0], r[1]) for r in other} or any(a[(r[0], r[1])][3] != r[3] for r in other):
        raise ValueError("the runs' segments differ (book, start or scored tokens)")
    pairs = [(r[2] - a[(r[0], r[1])][2], r[3]) for r in sorted(other, key=lambda r: (r[0], r[1]))]
    n_tok = sum(n for _, n in pairs)
    rng = random.Random(seed)
    boot = sorted(
        sum(d for d, _ in draw) / max(1, sum(n for _, n in draw))
        for draw in (_block_draw(pairs, block, rng) for _ in range(n_boot))
    )
    # Fewer than two blocks: every draw is nearly the same text, and the interval says nothing.
    ci = [round(boot[int(0.025 * n_boot)], 4), round(boot[int(0.975 * n_boot) - 1], 4)] \
        if len(pairs) >= 2 * block else None
    return {"nll_diff_per_token": round(sum(d for d, _ in pairs) / n_tok, 4), "ci95": ci,
            "share_of_segments_better": round(sum(d < 0 for d, _ in pairs) / len(pairs), 3),
            "segments": len(pairs), "block": min(block, len(pairs))}


def _in_bucket(segments: list[list], bucket: str) -> list[list]:
    """The segments whose start lies in a 'lo-hi' position bucket (as `r3mem eval lm` buckets them)."""
    lo, hi = (int(x) for x in bucket.split("-"))
    return [r for r in segments if lo <= r[1] < hi]


def compare(rows: list[dict], block: int = 1) -> dict:
    """The rows, checked to be on the same tokens, with each bucket's best label; paired intervals
    resample runs of `block` consecutive segments."""
    keys = {(Path(r["data"]).name, r["max_tokens"], r["scored_tokens"]) for r in rows}
    if len(keys) > 1:
        raise ValueError(f"the runs scored different tokens (book, max tokens, scored): {sorted(keys)}")
    # Buckets every row with a breakdown has (`reset` has none: it counts overall only).
    split = [r for r in rows if r["by_position"]]
    buckets = [b for b in (split[0]["by_position"] if split else {}) if all(b in r["by_position"] for r in split)]
    best = {b: min(split, key=lambda r: r["by_position"][b])["label"] for b in buckets}
    first = rows[0]["segments"]
    for r in rows[1:]:
        both = bool(first and r["segments"])
        r["paired_vs_first"] = paired(first, r["segments"], block=block) if both else None
        r["paired_vs_first_by_bucket"] = {b: paired(_in_bucket(first, b), _in_bucket(r["segments"], b), block=block)
                                          for b in buckets} if both else None
    return {"rows": rows, "buckets": buckets, "best_by_bucket": best,
            "best_overall": min(rows, key=lambda r: r["ppl"])["label"]}


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(result["buckets"]))
    for r in (r for r in result["rows"] if r["by_position"]):
        ax.plot(xs, [r["by_position"][b] for b in result["buckets"]], marker="o",
                label=f"{r['label']} ({r['ppl']:.1f})")
    ax.set_xticks(list(xs), result["buckets"])
    ax.set_yscale("log")
    ax.set_xlabel("tokens into the book")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"{Path(result['rows'][0]['data']).name}, {result['rows'][0]['scored_tokens']} scored tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    head = "| run | overall | " + " | ".join(result["buckets"]) + " | NLL/token vs first [95% CI] |"
    lines = [head, "|" + " --- |" * (3 + len(result["buckets"]))]
    for r in result["rows"]:
        cells = [f"{r['by_position'][b]:.1f}" if r["by_position"] else "–" for b in result["buckets"]]
        p = r.get("paired_vs_first")
        ci = f" [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]" if p and p["ci95"] else ""
        vs = f"{p['nll_diff_per_token']:+.4f}{ci}" if p else "–"
        lines.append(f"| {r['label']} | {r['ppl']:.1f} | " + " | ".join(cells) + f" | {vs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", help="LABEL=FILE:METHOD:READING (READING: ppl, recall, reset)")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    ap.add_argument("--block", type=int, default=1,
                    help="consecutive segments resampled together in the paired bootstrap (default 1)")
    a = ap.parse_args(argv)
    try:
        result = compare([read_row(*parse_spec(s)) for s in a.specs], block=a.block)
    except (ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["nll_gap_vs_first"] = {r["label"]: round(math.log(r["ppl"] / result["rows"][0]["ppl"]), 4)
                                  for r in result["rows"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    if result["buckets"]:
        plot(result, a.out.with_suffix(".png"))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

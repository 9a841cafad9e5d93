#!/usr/bin/env python3
"""The slots-first document fold as a language-model memory, against the usual fold, on held-out text.

For every segment t of --max-tokens tokens of a PG-19 book (held out from training), score its tokens
(the first one excepted, as `r3mem eval lm` does) after the memory of segments < t, that memory written:
- `usual`: by `recurrence.fold` (the text of each segment read after the memory, in the write pass);
- `slots_first`: by `R3MemModel.fold_local` (each paragraph piece's text read alone, as its slot pass
  reads it; every segment's write tokens read the memory before and that text: LOG 2026-12-08);
- `reset`: M_0 before every segment (what the memory adds is measured from here).
Memories are rounded to the storage dtype, as a written memory is. Per-segment paired differences
give bootstrap 95% intervals of the perplexity ratios. Writes a JSON document.

    python benchmarks/lm/slots_first.py --model runs/slotsfirst/adapter --out benchmarks/lm/results/slots_first_x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch

from r3mem.engine import R3Mem
from r3mem.evaluate.datasets import load_pg19
from r3mem.evaluate.runner import environment, git_info
from r3mem.recurrence import fold
from r3mem.tokens import IGNORE_INDEX, newline_table, paragraph_pieces, tokenize_long


@torch.no_grad()
def score_after(model, states: torch.Tensor, segs: torch.Tensor, rows: int = 8) -> list[tuple[float, int]]:
    """(NLL sum, scored tokens) of each segment segs[i] [S] read after the memory states[i]."""
    out = []
    for a in range(0, segs.shape[0], rows):
        s, st = segs[a:a + rows], states[a:a + rows]
        lab = s.clone()
        lab[:, 0] = IGNORE_INDEX
        for i in range(s.shape[0]):
            _, loss, n = model.compress(model.embed(s[i:i + 1]), torch.ones_like(s[i:i + 1]), st[i:i + 1],
                                        model.cfg.num_mem_tokens, lab[i:i + 1])
            out.append((float(loss), int(n)))
    return out


def bootstrap_ratio(a: list[tuple[float, int]], b: list[tuple[float, int]], draws: int = 2000) -> list[float]:
    """95% interval of ppl(a) / ppl(b) over segments resampled in pairs."""
    g = torch.Generator().manual_seed(0)
    la, na = torch.tensor([x for x, _ in a]), torch.tensor([n for _, n in a], dtype=torch.float)
    lb = torch.tensor([x for x, _ in b])
    idx = torch.randint(len(a), (draws, len(a)), generator=g)
    r = torch.exp((la[idx].sum(1) - lb[idx].sum(1)) / na[idx].sum(1))
    return [float(r.quantile(0.025)), float(r.quantile(0.975))]


@torch.no_grad()
def evaluate(eng: R3Mem, ids: list[int]) -> dict:
    m, seg = eng.model, eng.config.segment_len
    N = len(ids) // seg
    ids = ids[:N * seg]
    x = torch.tensor([ids])
    segs = x.view(N, seg)
    m0 = m.initial_state(1)
    timing, per = {}, {}
    t0 = time.perf_counter()
    f = fold(m, m0, x, torch.ones_like(x), with_loss=True, score_first=False, store_dtype=m.store_dtype)
    per["usual"] = [(float(a), int(b)) for a, b in f.per_segment]
    timing["usual"] = time.perf_counter() - t0
    piece = torch.tensor([paragraph_pieces(ids, newline_table(eng.tokenizer), eng.config.max_paragraph_tokens)])
    t0 = time.perf_counter()
    states = m.fold_local(m.embed(x), torch.ones_like(x), piece, m0)[0].to(m.store_dtype)
    before = torch.cat([m0.to(m.store_dtype), states[:-1]], 0)
    per["slots_first"] = score_after(m, before, segs)
    timing["slots_first"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per["reset"] = score_after(m, m0.expand(N, -1, -1, -1, -1, -1), segs)
    timing["reset"] = time.perf_counter() - t0
    ppl = {k: math.exp(sum(a for a, _ in v) / sum(n for _, n in v)) for k, v in per.items()}
    return {"segments": N, "scored_tokens": sum(n for _, n in per["usual"]), "pieces": int(piece.max()) + 1,
            "ppl": ppl,
            "ratio_slots_first_vs_usual": ppl["slots_first"] / ppl["usual"],
            "ratio_slots_first_vs_usual_ci95": bootstrap_ratio(per["slots_first"], per["usual"]),
            "ratio_slots_first_vs_reset": ppl["slots_first"] / ppl["reset"],
            "ratio_slots_first_vs_reset_ci95": bootstrap_ratio(per["slots_first"], per["reset"]),
            "ratio_usual_vs_reset": ppl["usual"] / ppl["reset"],
            "seconds": timing, "per_segment_nll": {k: [a for a, _ in v] for k, v in per.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="adapter folder (default: the shipped adapter)")
    ap.add_argument("--data", default="../shared/data/pg19/10356.txt")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eng = R3Mem.from_pretrained(args.model, keys=None)
    ids = tokenize_long(eng.tokenizer, load_pg19(Path(args.data))[0].text)[: args.max_tokens]
    res = evaluate(eng, ids)
    doc = {"benchmark": "lm-slots-first", "date": datetime.date.today().isoformat(), "adapter": args.model or "shipped",
           "adapter_hash": eng.adapter_hash, "data": args.data, "compute_dtype": eng.config.compute_dtype,
           "memory_dtype": eng.config.memory_dtype, "threads": args.threads, **res,
           "environment": environment(), "git": git_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("adapter", "segments", "ppl", "ratio_slots_first_vs_usual",
                                           "ratio_slots_first_vs_usual_ci95", "ratio_usual_vs_reset", "seconds")}))


if __name__ == "__main__":
    main()

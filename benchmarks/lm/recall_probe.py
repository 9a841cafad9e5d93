#!/usr/bin/env python3
"""Probe of the reversible read on one adapter, for any adapter (also those without a trained backward path).

For every segment t of the first --max-tokens tokens of a PG-19 book, score its tokens (the first
one excepted, as in `r3mem eval lm`) given the memory of segments < t and, before the segment:
nothing (`carry`: `ppl` of `r3mem eval lm`), the text greedily expanded back from that memory
(`recall`: `ppl_recall`, computed here also for adapters that `r3mem eval lm` leaves out because
their backward path was never trained: a control for "any extra text helps"), or the true previous
segment (`oracle`: an upper bound). Writes a JSON document.

    python benchmarks/lm/recall_probe.py --model runs/kv150rec/recurrent/adapter \
        --out benchmarks/lm/results/recall_probe_kv150rec.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from r3mem.engine import R3Mem
from r3mem.evaluate.datasets import load_pg19
from r3mem.recurrence import fold
from r3mem.tokens import tokenize_long


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="adapter folder")
    ap.add_argument("--data", default="../shared/data/pg19/10356.txt")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    eng = R3Mem.from_pretrained(args.model)
    m, tok = eng.model, eng.tokenizer
    ids = tokenize_long(tok, load_pg19(Path(args.data))[0].text)[: args.max_tokens]
    seg = m.cfg.segment_len
    x = torch.tensor([ids])
    previous = iter([ids[s - seg:s]] for s in range(seg, len(ids), seg))
    prefixes = {
        "carry": None,
        "recall": lambda st: m.reconstruct(st, seg, tok.eos_token_id),
        # the segment before the one being scored: fold asks once per segment after the first
        "oracle": lambda st: next(previous),
    }
    out, t0 = {}, time.perf_counter()
    with torch.no_grad():
        for name, prefix in prefixes.items():
            f = fold(m, m.initial_state(1), x, torch.ones_like(x), with_loss=True, score_first=False,
                     read_prefix=prefix)
            out[name] = math.exp(float(f.loss) / int(f.n))
    doc = {"adapter": args.model, "adapter_hash": eng.adapter_hash, "w_bwd": m.cfg.w_bwd, "data": args.data,
           "scored_tokens": int(f.n), "ppl": out, "wall_time_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["ppl"]))


if __name__ == "__main__":
    main()

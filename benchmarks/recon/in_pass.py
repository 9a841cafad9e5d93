"""Slots written in the document pass (the one-pass hierarchy) against slots written in a pass of their
own, on held-out paragraphs: greedy token exact match at each ratio, memory tokens quantized as stored.

Each paragraph is placed as a writer would meet it: at the end of a segment, after the text that comes
before it in the book (segment_len - its length tokens), with the document state folded from the
segment before that. `in_pass` writes its slot from that pass's keys/values of the paragraph
(`R3MemModel.compress_in_pass`); `slot` is today's slot pass over the paragraph alone.

    python benchmarks/recon/in_pass.py --paragraphs 48 --out benchmarks/recon/results/in_pass_kv3300.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from r3mem.engine import R3Mem
from r3mem.evaluate.metrics import token_exact_match
from r3mem.evaluate.runner import environment, git_info
from r3mem.hierarchy import paragraph_spans
from r3mem.quant import dequantize, quantize
from r3mem.recall import reconstruct_scored
from r3mem.text import read_text, strip_gutenberg
from r3mem.tokens import slot_tokens, tokenize
from r3mem.writer import compress_slots


def _held_out(tok, text: str, n: int, min_tokens: int, max_tokens: int, before_tokens: int):
    """(paragraph ids, ids of the text before it) for the first n paragraphs with enough text before."""
    out = []
    for sp in paragraph_spans(text):
        ids = tokenize(tok, " ".join(sp.text.split()))[:max_tokens]
        before = tokenize(tok, " ".join(text[max(0, sp.start - 8 * before_tokens):sp.start].split()))
        if len(ids) >= min_tokens and len(before) >= before_tokens:
            out.append((ids, before))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def in_pass_slots(engine: R3Mem, items, ratio: float) -> list[torch.Tensor]:
    """One slot per paragraph, written in the pass of the segment that ends with it."""
    m, seg = engine.model, engine.config.segment_len
    out = []
    for ids, before in items:
        n = len(ids)
        prev = torch.tensor([before[len(before) - (seg - n) - seg:len(before) - (seg - n)]])
        state = m.compress(m.embed(prev), torch.ones_like(prev), m.initial_state(1),
                           m.cfg.num_mem_tokens).state.to(m.store_dtype)
        row = torch.tensor([before[len(before) - (seg - n):] + ids])
        k = slot_tokens(n, ratio, m.memory.max_slot)
        st = m.compress_in_pass(m.embed(row), torch.ones_like(row), torch.tensor([n]), state, k)[0]
        st = st.to(m.store_dtype)
        bits = m.cfg.memory_bits
        out.append(st if bits == 16 else dequantize(quantize(st, bits), st.dtype))
    return out


def _em(engine: R3Mem, paras: list[list[int]], states: list[torch.Tensor]) -> float:
    tok = engine.tokenizer
    recs = reconstruct_scored(engine.model, tok, states, [len(p) + 4 for p in paras])
    return sum(token_exact_match(p, tokenize(tok, r.text)) for p, r in zip(paras, recs)) / len(paras)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="adapter folder (default: shipped adapter)")
    ap.add_argument("--book", type=Path, default=Path("../shared/data/pg19/10356.txt"))
    ap.add_argument("--paragraphs", type=int, default=48)
    ap.add_argument("--ratios", default="4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = R3Mem.from_pretrained(a.model, compute_dtype=a.compute_dtype, keys=None)
    tok, seg = engine.tokenizer, engine.config.segment_len
    items = _held_out(tok, strip_gutenberg(read_text(a.book)), a.paragraphs, 24, 96, 2 * seg)
    paras = [p for p, _ in items]
    rows = {}
    for r in (float(x) for x in a.ratios.split(",")):
        t0 = time.perf_counter()
        slot = [s for s, _ in compress_slots(engine.model, paras, r, tok.pad_token_id)]
        rows[f"{r:g}"] = {"slot": round(_em(engine, paras, slot), 4),
                          "in_pass": round(_em(engine, paras, in_pass_slots(engine, items, r)), 4),
                          "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"{r:g}x", rows[f"{r:g}"], flush=True)
    result = {"benchmark": "recon-in-pass", "date": datetime.date.today().isoformat(), "book": a.book.name,
              "adapter": str(a.model or "shipped"), "adapter_hash": engine.adapter_hash,
              "adapter_meta": {k: engine.meta.get(k) for k in ("step", "examples_seen")},
              "memory_bits": engine.config.memory_bits, "compute_dtype": a.compute_dtype,
              "n_paragraphs": len(paras), "token_exact_match": rows,
           "versions": environment(), **git_info(), "config": engine.config.to_dict()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

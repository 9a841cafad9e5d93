"""What the one-pass hierarchy saves: a document fold plus paragraph slots, written (a) as today, each
slot from a pass of its own over its paragraph, (b) from the fold's own pass
(`R3MemModel.compress_with_slots`), and (c) slots first: the slot passes as in (a), then every segment's
document write tokens in one pass over the slot passes' keys/values (`R3MemModel.fold_over_pieces`),
against a plain forward pass of the base model over the same tokens, side by side in one process
(median of interleaved repeats, batch 1); and the document level alone, today's fold against the
slots-first one (`fold_local`, its text read paragraph by paragraph).

Both sides run the model calls only (no tokenizing, retrieval keys or quantizing, which are the same
for both). Held-out paragraphs of 10356, each at most `max_paragraph_tokens`, followed by a blank line,
cut into segments; a paragraph that crosses a segment boundary is one slot in (a) and two spans in (b).

    python benchmarks/speed/bench_one_pass.py --lengths 1024,4096 --out benchmarks/speed/results/one_pass.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import _base_forward  # noqa: E402

from r3mem.engine import R3Mem  # noqa: E402
from r3mem.evaluate.runner import environment, git_info  # noqa: E402
from r3mem.hierarchy import paragraph_spans  # noqa: E402
from r3mem.recurrence import fold  # noqa: E402
from r3mem.text import read_text, strip_gutenberg  # noqa: E402
from r3mem.tokens import slot_tokens, tokenize  # noqa: E402
from r3mem.writer import compress_texts, compress_texts_keeping_text  # noqa: E402


def stream(engine: R3Mem, text: str, n_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids, each paragraph's [start, end) in them) for the first paragraphs making n_tokens."""
    tok, cap = engine.tokenizer, engine.config.max_paragraph_tokens
    brk = tokenize(tok, "\n\n")
    ids, paras = [], []
    for sp in paragraph_spans(text):
        p = tokenize(tok, sp.text)[:cap]
        if len(ids) + len(p) > n_tokens:
            break
        paras.append((len(ids), len(ids) + len(p)))
        ids += (p + brk)[:n_tokens - len(ids)]
    return ids, paras


@torch.no_grad()
def two_pass(engine: R3Mem, ids: list[int], paras: list[tuple[int, int]]) -> None:
    m, r = engine.model, engine.config.paragraph_ratio
    x = torch.tensor([ids])
    fold(m, m.initial_state(1), x, torch.ones_like(x), store_dtype=m.store_dtype)
    compress_texts(m, [ids[a:b] for a, b in paras], r, engine.tokenizer.pad_token_id)


@torch.no_grad()
def one_pass(engine: R3Mem, ids: list[int], paras: list[tuple[int, int]]) -> int:
    """The fold keeps each segment's text keys/values; the slots are written from them at the end, in as
    few passes as `slots_from_text` needs. Returns the number of spans written (a paragraph crossing a
    boundary counts twice)."""
    m, seg, r = engine.model, engine.config.segment_len, engine.config.paragraph_ratio
    state, pieces = m.initial_state(1), []
    for s in range(0, len(ids), seg):
        e = min(s + seg, len(ids))
        x = torch.tensor([ids[s:e]])
        state, text, first = m.compress_keeping_text(m.embed(x), state, m.cfg.num_mem_tokens)
        state = state.to(m.store_dtype)
        for a, b in ((max(a, s) - s, min(b, e) - s) for a, b in paras if a < e and b > s):
            pieces.append((text[..., a:b, :], first + a, slot_tokens(b - a, r, m.memory.max_slot)))
    m.slots_from_text(pieces)
    return len(pieces)


@torch.no_grad()
def slots_first(engine: R3Mem, ids: list[int], paras: list[tuple[int, int]]) -> None:
    """The slot passes first (as today, keeping each paragraph's keys/values), then the document fold's
    write tokens of every segment in one pass over them (`fold_over_pieces`): the text is read once."""
    m = engine.model
    done = compress_texts_keeping_text(m, [ids[a:b] for a, b in paras], engine.config.paragraph_ratio,
                                       engine.tokenizer.pad_token_id)
    m.fold_over_pieces(m.initial_state(1), [(text, a) for (_, text), (a, _) in zip(done, paras)], len(ids))


@torch.no_grad()
def doc_fold(engine: R3Mem, ids: list[int], paras: list[tuple[int, int]]) -> None:
    """The document level alone, as today: one pass per segment."""
    m, x = engine.model, torch.tensor([ids])
    fold(m, m.initial_state(1), x, torch.ones_like(x), store_dtype=m.store_dtype)


@torch.no_grad()
def doc_slots_first(engine: R3Mem, ids: list[int], paras: list[tuple[int, int]]) -> None:
    """The document level alone, slots-first (`fold_local`: the paragraphs' text read alone, in passes of
    `LOCAL_TEXT_TOKENS`, then every segment's write tokens in one pass)."""
    m, x = engine.model, torch.tensor([ids])
    piece = torch.full_like(x, -1)
    for j, (a, b) in enumerate(paras):
        piece[0, a:b] = j
    m.fold_local(m.embed(x), torch.ones_like(x), piece, m.initial_state(1))


METHODS = {"two_pass": two_pass, "one_pass": one_pass, "slots_first": slots_first, "doc_fold": doc_fold,
           "doc_slots_first": doc_slots_first}


def run(engine: R3Mem, text: str, lengths: list[int], repeats: int) -> list[dict]:
    tok = engine.tokenizer
    rows = []
    warm, wp = stream(engine, text, 256)
    for fn in METHODS.values():
        fn(engine, warm, wp)
    for n in lengths:
        ids, paras = stream(engine, text, n)
        plain = tok.decode(ids)
        times: dict[str, list[float]] = {"base": [], **{k: [] for k in METHODS}}
        spans = one_pass(engine, ids, paras)
        for _ in range(repeats):  # interleaved, so that drift in the machine lands on every method
            times["base"].append(_base_forward(engine, [plain]))
            for name, fn in METHODS.items():
                t0 = time.perf_counter()
                fn(engine, ids, paras)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"tokens": len(ids), "paragraphs": len(paras), "one_pass_spans": spans,
               "seconds_median": med, "seconds": times,
               **{f"ratio_{k}_vs_base": med["base"] / med[k] for k in METHODS},
               "speedup_one_pass": med["two_pass"] / med["one_pass"],
               "speedup_slots_first": med["two_pass"] / med["slots_first"],
               "speedup_doc_slots_first": med["doc_fold"] / med["doc_slots_first"]}
        print(json.dumps({k: v for k, v in row.items() if k != "seconds"}), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--book", type=Path, default=Path("../shared/data/pg19/10356.txt"))
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = R3Mem.from_pretrained(a.model, keys=None)
    text = strip_gutenberg(read_text(a.book))
    rows = run(engine, text[len(text) // 3:], [int(x) for x in a.lengths.split(",")], a.repeats)
    out = {"benchmark": "speed-one-pass", "date": datetime.date.today().isoformat(),
           "adapter_hash": engine.adapter_hash, "compute_dtype": engine.config.compute_dtype,
           "threads": a.threads, "rows": rows,
           "versions": environment(), **git_info(), "config": engine.config.to_dict()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""lm: long-context language modelling on plain-text books (PG-19 format, Gutenberg header and
footer stripped). Each book is one token stream cut into segments of ``segment_len`` tokens.

- memory methods score segment t given the recurrent memory of segments < t (``model.compress``
  with labels: the read memory and each token predict the next token);
- ``no_memory`` scores the same segment alone (same input length, no memory);
- memory methods are also scored with their memory reset before every segment
  (``ppl_memory_reset``; ``memory_gain_nll_per_token`` = reset NLL - NLL per token): a trained adapter
  also changes the model as a language model (domain adaptation, memory tokens as a learned prefix),
  and this separates what the remembered history adds from that;
- memory methods with a backward path are also scored given the memory **and the text recalled
  from it** (``ppl_recall``): before segment t, the memory M_{t-1} is expanded back into at most
  ``recall_tokens`` tokens (greedy), which precede the segment; the memory itself and how it is
  updated are unchanged, so the stored memory is the same size. This is R³Mem's retrieval (run the
  model backward on the compressed memory) used for language modelling; methods without a backward
  path (``recurrent``) have nothing trained to expand;
- ``full_context`` sees every earlier token that fits in the base model's window;
- ``bm25`` / ``embedding`` put ``budget`` tokens of retrieved earlier chunks before the segment
  (query: the previous segment), as in-context retrieval-augmented LM.

The first token of every segment is not scored (without memory nothing predicts it), so all methods
are scored on exactly the same tokens. Perplexity overall and per position bucket (segment start
offset: 0-256, 256-512, 512-1024, ... tokens), which shows whether memory helps more as history grows.
Every reading also keeps its per-segment NLL (``segments``: [book, start, NLL sum, scored tokens]), so
two methods can be compared segment by segment (``benchmarks/lm/compare_runs.py``: paired bootstrap).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions, bucket_label, mean, position_buckets
from r3mem.evaluate.metrics import perplexity


@dataclass
class Book:
    book_id: str
    text: str
    ids: list[int] | None = None


@dataclass
class LMData:
    books: list[Book]
    seg_len: int = 0


def load(path: Path, opts: EvalOptions) -> LMData:
    from r3mem.evaluate.datasets import load_pg19

    return LMData([Book(b.book_id, b.text) for b in load_pg19(path, limit=opts.limit)])


def default_budget(engine) -> int:
    return engine.config.num_mem_tokens


def prepare(data: LMData, engine, opts: EvalOptions) -> LMData:
    from r3mem.tokens import tokenize_long

    for b in data.books:
        b.ids = tokenize_long(engine.tokenizer, b.text)[: opts.max_tokens]
    data.seg_len = opts.segment_len or engine.config.segment_len
    return data


def _ppl(nll: float, n: int) -> float | None:
    return perplexity(nll, n) if n > 0 else None


def run(method, data: LMData, opts: EvalOptions, budget: int) -> dict[str, Any]:
    import time

    t0 = time.perf_counter()
    total_nll, total_n, reset_nll, reset_n, rec_nll, rec_n = 0.0, 0, 0.0, 0, 0.0, 0
    buckets: dict[tuple[int, int], list[float]] = {}
    rec_buckets: dict[tuple[int, int], list[float]] = {}
    per_book, mem_b, mem_t = {}, [], []
    per_seg: dict[str, list[list]] = {"ppl": [], "reset": [], "recall": []}
    for book in data.books:
        segs = method.lm_score(book.ids, data.seg_len, budget)
        per_seg["ppl"] += _segment_rows(book.book_id, segs)
        b_nll, b_n = sum(s[1] for s in segs), sum(s[2] for s in segs)
        per_book[book.book_id] = _ppl(b_nll, b_n)
        total_nll, total_n = total_nll + b_nll, total_n + b_n
        _add_to_buckets(buckets, segs, data.seg_len)
        reset = method.lm_score_reset(book.ids, data.seg_len, budget)
        if reset is not None:
            per_seg["reset"] += _segment_rows(book.book_id, reset)
            reset_nll, reset_n = reset_nll + sum(s[1] for s in reset), reset_n + sum(s[2] for s in reset)
        recalled = method.lm_score_recall(book.ids, data.seg_len, budget)
        if recalled is not None:
            per_seg["recall"] += _segment_rows(book.book_id, recalled)
            rec_nll, rec_n = rec_nll + sum(s[1] for s in recalled), rec_n + sum(s[2] for s in recalled)
            _add_to_buckets(rec_buckets, recalled, data.seg_len)
        b, t = method.lm_memory(book.ids, budget)
        mem_b.append(b)
        mem_t.append(t)
    by_pos = {bucket_label(lo, hi): _ppl(*buckets[(lo, hi)]) for lo, hi in sorted(buckets)}
    metrics = {"ppl": _ppl(total_nll, total_n), "nll_per_token": total_nll / total_n if total_n else None,
               "scored_tokens": total_n, "ppl_by_position": by_pos,
               "tokens_by_position": {bucket_label(lo, hi): buckets[(lo, hi)][1] for lo, hi in sorted(buckets)},
               "ppl_by_book": per_book}
    if reset_n:  # memory methods: the same adapter with its memory reset at every segment
        metrics["ppl_memory_reset"] = _ppl(reset_nll, reset_n)
        metrics["memory_gain_nll_per_token"] = (reset_nll - total_nll) / total_n
    if rec_n:  # methods with a backward path: the memory plus the text recalled from it
        metrics["ppl_recall"] = _ppl(rec_nll, rec_n)
        metrics["recall_gain_nll_per_token"] = (total_nll - rec_nll) / total_n
        metrics["ppl_recall_by_position"] = {bucket_label(lo, hi): _ppl(*rec_buckets[(lo, hi)])
                                             for lo, hi in sorted(rec_buckets)}
    return {"n_examples": len(data.books), "metrics": metrics, "summary": {"ppl": metrics["ppl"]},
            "memory_bytes_per_doc": mean(mem_b), "memory_tokens_per_doc": mean(mem_t),
            "segments": {k: v for k, v in per_seg.items() if v}, "wall_time_s": time.perf_counter() - t0}


def _segment_rows(book_id: str, segs: list[tuple[int, float, int]]) -> list[list]:
    """[book, segment start, NLL sum, scored tokens] per segment: the paired unit of comparison."""
    return [[book_id, start, round(float(nll), 5), int(n)] for start, nll, n in segs]


def _add_to_buckets(buckets: dict[tuple[int, int], list[float]], segs: list[tuple[int, float, int]],
                    seg_len: int) -> None:
    """Sum (NLL, tokens) of each segment into its position bucket (by the segment's start offset)."""
    for start, nll, n in segs:
        lo, hi = next((lo, hi) for lo, hi in position_buckets(max(256, seg_len)) if start < hi)
        acc = buckets.setdefault((lo, hi), [0.0, 0])
        acc[0] += nll
        acc[1] += n


def stats(data: LMData, tok) -> dict[str, Any]:
    return {"n_documents": len(data.books), "n_examples": len(data.books), "segment_len": data.seg_len,
            "tokens_per_doc": mean(len(b.ids or []) for b in data.books)}


def plot(results: dict[str, Any], png: Path, opts: EvalOptions) -> bool:
    from r3mem.evaluate.plots import lines

    series = {m: r["metrics"]["ppl_by_position"] for m, r in results.items() if "metrics" in r}
    series |= {f"{m} + recalled text": r["metrics"]["ppl_recall_by_position"]
               for m, r in results.items() if "ppl_recall_by_position" in r.get("metrics", {})}
    return lines({"perplexity": series}, png, "Perplexity vs position in the book", "segment start (tokens)")

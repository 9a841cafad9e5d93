"""recon: reconstruction fidelity vs compression ratio. Paragraphs of a held-out text (PG-19 format
or any plain text) are written into memory at each paragraph compression ratio, then every
paragraph slot is expanded back into text by the backward model (recall by index) and compared
with the original span: token exact match and accuracy (base-model tokens, positional), word-level
scores, string exact match, BLEU (sentence mean and corpus), ROUGE-L, entity and number recall.

Metrics are keyed by ratio ("4", "8"); ``achieved_ratio`` is source tokens per memory token after
rounding up (a 10-token paragraph at ratio 8 still takes 2 memory tokens). ``--limit N`` keeps the
first N paragraphs (over the files in name order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions, mean
from r3mem.evaluate.metrics import corpus_bleu, reconstruction_scores, token_accuracy, token_exact_match
from r3mem.hierarchy import paragraph_spans
from r3mem.tokens import tokenize


@dataclass
class ReconData:
    docs: list[tuple[str, str]]  # (doc id, text cut after the last kept paragraph)


def _key(r: float) -> str:
    return f"{r:g}"


def load(path: Path, opts: EvalOptions) -> ReconData:
    from r3mem.evaluate.datasets import load_pg19

    docs, left = [], opts.limit
    for book in load_pg19(path):
        if left is not None and left <= 0:
            break
        paras = paragraph_spans(book.text)
        if left is not None:
            paras = paras[:left]
            left -= len(paras)
        if paras:
            docs.append((book.book_id, book.text[: paras[-1].end]))
    return ReconData(docs)


def _score(pairs: list[tuple[str, str]], tok) -> dict[str, Any]:
    rows = [reconstruction_scores(r, h) for r, h in pairs]
    ids = [(tokenize(tok, r), tokenize(tok, h)) for r, h in pairs]
    out = {"token_exact_match": mean(token_exact_match(r, h) for r, h in ids),
           "token_accuracy": mean(token_accuracy(r, h) for r, h in ids)}
    for field in (
        "token_exact_match",
        "token_accuracy",
        "string_exact_match",
        "bleu",
        "rouge_l",
        "entity_recall",
        "number_recall",
    ):
        name = {
            "token_exact_match": "word_exact_match",
            "token_accuracy": "word_accuracy",
            "string_exact_match": "exact",
        }.get(field, field)
        out[name] = mean(getattr(s, field) for s in rows)
    out["corpus_bleu"] = corpus_bleu([r for r, _ in pairs], [h for _, h in pairs]) if pairs else None
    return out


def run(method, data: ReconData, opts: EvalOptions, budget: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    metrics, mem_bytes, mem_tokens, samples = {}, {}, {}, []
    for ratio in opts.ratios:
        pairs, b, t, src = [], [], [], 0
        for _, text in data.docs:
            res = method.recon(text, ratio)  # Skip for methods that keep raw text or nothing
            pairs += res["pairs"]
            b.append(res["memory_bytes"])
            t.append(res["memory_tokens"])
            src += res["source_tokens"]
        m = _score(pairs, method.tok)
        m["n_paragraphs"] = len(pairs)
        m["achieved_ratio"] = src / sum(t) if sum(t) else None
        metrics[_key(ratio)] = m
        mem_bytes[_key(ratio)], mem_tokens[_key(ratio)] = mean(b), mean(t)
        samples += [{"ratio": _key(ratio), "original": r, "reconstructed": h} for r, h in pairs[: opts.samples]]
    summary = {f"token_accuracy@{k}": v["token_accuracy"] for k, v in metrics.items()}
    summary |= {f"rouge_l@{k}": v["rouge_l"] for k, v in metrics.items()}
    n = next(iter(metrics.values()))["n_paragraphs"] if metrics else 0
    return {"n_examples": n, "metrics": metrics, "summary": summary, "memory_bytes_per_doc": mem_bytes,
            "memory_tokens_per_doc": mem_tokens, "wall_time_s": time.perf_counter() - t0, "samples": samples}


def stats(data: ReconData, tok) -> dict[str, Any]:
    return {"n_documents": len(data.docs), "n_examples": sum(len(paragraph_spans(t)) for _, t in data.docs),
            "tokens_per_doc": mean(len(tokenize(tok, t)) for _, t in data.docs)}


def plot(results: dict[str, Any], png: Path, opts: EvalOptions) -> bool:
    from r3mem.evaluate.plots import lines

    keys = [_key(r) for r in opts.ratios]
    series = {}
    for metric in ("token_accuracy", "rouge_l"):
        for m, r in results.items():
            if "metrics" in r:
                series.setdefault(metric, {})[m] = {k: r["metrics"][k][metric] for k in keys}
    return lines(series, png, "Reconstruction vs compression ratio", "compression ratio", ylim=(0, 1))


def demo_report(engine, body: str, paragraph: int, source: str):
    """`r3mem demo`'s measurement: write `body` (flushed), recall paragraph slot `paragraph` (clamped to
    the slots there are) and score it against its source. Returns (the memory, the report as a dict)."""
    mem = engine.flush(engine.write(body))
    if not mem.paragraphs:
        raise ValueError(f"{source}: no paragraph to memorise")
    idx = min(max(paragraph, 0), len(mem.paragraphs) - 1)
    slot = mem.paragraphs[idx]
    rec = engine.recall(mem, index=idx)
    original = body[slot.start:slot.end]
    tok = engine.tokenizer
    scores = reconstruction_scores(original, rec.text)
    mem_tokens = sum(s.n_mem_tokens for s in mem.paragraphs)
    return mem, {
        "source": source, "adapter_trained": engine.trained, "adapter_hash": engine.adapter_hash,
        "chars_written": len(body), "tokens_written": mem.n_tokens, "paragraph_slots": len(mem.paragraphs),
        "entity_slots": len(mem.entities), "document_memory_tokens": engine.config.num_mem_tokens,
        "paragraph_memory_tokens": mem_tokens, "compression_ratio": round(mem.n_tokens / max(mem_tokens, 1), 2),
        "recalled_paragraph": idx,
        "token_exact_match": round(token_exact_match(tokenize(tok, original), tokenize(tok, rec.text)), 4),
        "rouge_l": round(scores.rouge_l, 4), "original": original, "recalled": rec.text,
        "recall_confidence": rec.slots[0]["confidence"],
    }

"""locomo: a long conversation is written into memory turn by turn, then its questions are answered
from memory. Token F1 (SQuAD normalisation) per category and overall, and evidence recall@k: the
fraction of annotated evidence turns (dia_ids) inside what was put in front of the reader (the
recalled slots' spans, the retrieved chunks, the window).

Categories 1-4 are scored; category 5 (adversarial, no gold answer) is left out, as in the Mem0 /
A-Mem protocol. ``--limit N`` keeps the first N scored questions (conversations in file order);
``--per-doc N`` the first N of each conversation (a bounded run that still covers every conversation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions, mean
from r3mem.evaluate.metrics import f1
from r3mem.evaluate.qa import QADoc, QAQuestion, aggregate, context_tokens, make_doc, result_doc, run_qa

DEFAULT_BUDGET = 256
CATEGORIES = (1, 2, 3, 4)


def _unit(t) -> str:
    text = t.text + (f" [shares a photo: {t.blip_caption}]" if t.blip_caption else "")
    when = f"[{t.date_time}] " if t.date_time else ""
    return f"{when}{t.speaker}: {text}"


def load(path: Path, opts: EvalOptions) -> list[QADoc]:
    from r3mem.evaluate.datasets import load_locomo

    convs = load_locomo(path)
    docs, left = [], opts.limit
    for conv in convs:
        if left is not None and left <= 0:
            break
        turns = [t for t in conv.turns if _unit(t).strip()]
        doc = make_doc(conv.sample_id, [_unit(t) for t in turns], [], incremental=True)
        where = {t.dia_id: doc.unit_spans[i] for i, t in enumerate(turns)}
        for j, qa in enumerate(conv.qa):
            if qa.category not in CATEGORIES or qa.answer is None:
                continue
            if (left is not None and left <= 0) or (opts.per_doc is not None and len(doc.questions) >= opts.per_doc):
                break
            gold = tuple(where[d] for d in qa.evidence if d in where)
            doc.questions.append(
                QAQuestion(f"{conv.sample_id}/{j}", qa.question, (qa.answer,), gold, {"category": qa.category})
            )
            left = None if left is None else left - 1
        if doc.questions:
            docs.append(doc)
    return docs


def score(q: QAQuestion, pred: str) -> dict[str, float]:
    return {"f1": f1(pred, q.answers[0])}


def run(method, docs: list[QADoc], opts: EvalOptions, budget: int) -> dict[str, Any]:
    res = run_qa(method, docs, opts, budget, score)
    recs = [r for r in res["records"] if "skipped" not in r]
    metrics = aggregate(res["records"], ["f1", "evidence_recall"])
    metrics[f"evidence_recall@{opts.top_k}"] = metrics.pop("evidence_recall")
    metrics["f1_by_category"] = {str(c): mean(r["f1"] for r in recs if r["category"] == c) for c in CATEGORIES}
    return result_doc(res, metrics, ("f1", f"evidence_recall@{opts.top_k}"), ("f1", "evidence_recall"), opts)


def stats(docs: list[QADoc], tok) -> dict[str, Any]:
    return {"n_documents": len(docs), "n_examples": sum(len(d.questions) for d in docs),
            "turns_per_doc": mean(len(d.units) for d in docs), "context_tokens_per_doc": context_tokens(tok, docs)}


def plot(results: dict[str, Any], png: Path, opts: EvalOptions) -> bool:
    from r3mem.evaluate.plots import bars

    return bars(results, ["f1", f"evidence_recall@{opts.top_k}"], png, "LoCoMo: F1 and evidence recall by method")

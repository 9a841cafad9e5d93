"""The question-answering protocol shared by rag, kv, locomo and needle.

A document is a list of text units (passages, key-value pairs, conversation turns, a haystack)
joined by blank lines; memory methods write it unit by unit, text methods chunk or window it.
Each question is then answered by every method from what it stored, and scored by the task.
Gold evidence is a set of character spans of the context, so "did the method put the evidence in
front of the reader" (evidence recall@k) is measured the same way for slots, chunks and windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from r3mem.evaluate.common import EvalOptions, Skip, mean, overlaps
from r3mem.evaluate.methods import Method
from r3mem.tokens import tokenize

__all__ = ["QAQuestion", "QADoc", "run_qa", "evidence_recall"]


@dataclass
class QAQuestion:
    qid: str
    question: str
    answers: tuple[str, ...]
    gold_spans: tuple[tuple[int, int], ...] = ()  # evidence, as character spans of the document context
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class QADoc:
    doc_id: str
    units: list[str]
    questions: list[QAQuestion]
    incremental: bool = False  # memory methods write unit by unit (conversations), else all at once

    @cached_property
    def unit_spans(self) -> list[tuple[int, int]]:
        spans, pos = [], 0
        for u in self.units:
            spans.append((pos, pos + len(u)))
            pos += len(u) + 2
        return spans

    @cached_property
    def context(self) -> str:
        return "\n\n".join(self.units)


def make_doc(doc_id: str, units: list[str], questions: list[QAQuestion], incremental: bool = False) -> QADoc:
    """Empty or whitespace-only units carry nothing to remember; they are dropped."""
    return QADoc(doc_id, [u for u in units if u.strip()], questions, incremental)


def evidence_recall(gold: tuple[tuple[int, int], ...], shown: list[tuple[int, int]] | None) -> float | None:
    """Fraction of gold evidence spans overlapping what the reader was shown (None: not measurable)."""
    if shown is None or not gold:
        return None
    return sum(any(overlaps(g, s) for s in shown) for g in gold) / len(gold)


def run_qa(method: Method, docs: list[QADoc], opts: EvalOptions, budget: int,
           score: Callable[[QAQuestion, str], dict[str, float | None]], partial_ok: bool = False) -> dict[str, Any]:
    """Store every document, answer its questions, score. Returns records and memory figures.

    A question the method cannot answer (e.g. full context that does not fit) raises Skip; unless
    ``partial_ok`` the whole method is then skipped, so all methods are compared on the same items.
    """
    records: list[dict[str, Any]] = []
    mem_bytes, mem_tokens, skipped = [], [], []
    t0 = time.perf_counter()
    store_s = answer_s = 0.0
    for doc in docs:
        ts = time.perf_counter()
        store = method.qa_store(doc)  # Skip here: the method cannot run at all
        store_s += time.perf_counter() - ts
        b, t = method.qa_memory(store, doc, budget)
        mem_bytes.append(b)
        mem_tokens.append(t)
        for q in doc.questions:
            ta = time.perf_counter()
            try:
                ans = method.qa_answer(store, doc, q.question, budget)
            except Skip as s:
                skipped.append(s.reason)
                records.append({"qid": q.qid, "doc_id": doc.doc_id, "skipped": s.reason, **q.meta})
                continue
            answer_s += time.perf_counter() - ta
            rec = {"qid": q.qid, "doc_id": doc.doc_id, "question": q.question, "answers": list(q.answers),
                   "prediction": ans.text, "evidence_recall": evidence_recall(q.gold_spans, ans.spans), **q.meta}
            rec.update(score(q, ans.text))
            records.append(rec)
    n_q = sum(len(d.questions) for d in docs)
    if skipped and (not partial_ok or len(skipped) == n_q):
        raise Skip(f"{skipped[0]} for {len(skipped)} of {n_q} questions")
    n_answered = sum(1 for r in records if "skipped" not in r)
    return {"records": records, "memory_bytes_per_doc": mean(mem_bytes), "memory_tokens_per_doc": mean(mem_tokens),
            "wall_time_s": time.perf_counter() - t0, "store_s_per_doc": store_s / max(len(docs), 1),
            "answer_s_per_question": answer_s / max(n_answered, 1), "n_skipped": len(skipped)}


def aggregate(records: list[dict[str, Any]], keys: list[str]) -> dict[str, float | None]:
    answered = [r for r in records if "skipped" not in r]
    return {k: mean(r.get(k) for r in answered) for k in keys}


_COSTS = ("memory_bytes_per_doc", "memory_tokens_per_doc", "wall_time_s", "store_s_per_doc", "answer_s_per_question")


def result_doc(res: dict[str, Any], metrics: dict[str, Any], summary: tuple[str, ...], scores: tuple[str, ...],
               opts: EvalOptions, **extra: Any) -> dict[str, Any]:
    """One method's result on a QA task (`run_qa`'s `res`): examples, `metrics` (the `summary` ones again
    under "summary"), memory and time costs, sample predictions, and each answered question's `scores`
    (`per_question`, for paired comparisons between methods and runs); `extra` fields after the metrics."""
    answered = [r for r in res["records"] if "skipped" not in r]
    return {"n_examples": len(res["records"]), "metrics": metrics, **extra,
            "summary": {k: metrics[k] for k in summary}, **{k: res[k] for k in _COSTS},
            "samples": samples(res["records"], opts.samples),
            "per_question": [{"qid": r["qid"], **{k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k))
                                                   for k in scores}} for r in answered]}


def samples(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    keep = ("qid", "question", "answers", "prediction")
    return [{k: r[k] for k in keep if k in r} for r in records if "skipped" not in r][:n]


def context_tokens(tok, docs: list[QADoc]) -> float | None:
    return mean(len(tokenize(tok, d.context)) for d in docs)

"""rag: NQ-Open (Lost-in-the-Middle oracle format). Passages are written into memory, the question
is answered from it; exact match, F1 and best-subspan accuracy with SQuAD normalisation.

`--distractors N` puts the gold passage among N passages drawn from *other* questions of the file (gold
passages of other questions: easier negatives than the paper's retrieved distractors, so the figures are
ours, not Lost in the Middle's), at a position drawn per question; both are seeded by the question's index,
so every method and run sees the same documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.metrics import best_over_answers, exact_match, f1, subspan_exact_match
from r3mem.evaluate.qa import QADoc, QAQuestion, aggregate, context_tokens, make_doc, result_doc, run_qa

DEFAULT_BUDGET = 256
METRICS = ["em", "f1", "accuracy", "evidence_recall"]


def _unit(p) -> str:
    return f"{p.title}\n{p.text}" if p.title else p.text


def load(path: Path, opts: EvalOptions) -> list[QADoc]:
    import random

    from r3mem.evaluate.datasets import load_nq_oracle

    examples = load_nq_oracle(path, limit=None if opts.distractors else opts.limit)
    pool = [(i, _unit(p)) for i, ex in enumerate(examples) for p in ex.passages if p.is_gold]
    if opts.distractors and len({i for i, _ in pool}) <= opts.distractors:
        raise ValueError(f"--distractors: {opts.distractors} needs more than that many questions in {path}")
    docs = []
    for i, ex in enumerate(examples[:opts.limit]):
        kept = [(_unit(p), p.is_gold) for p in ex.passages]
        if opts.distractors:
            rng = random.Random(i)
            others = rng.sample([u for j, u in pool if j != i], opts.distractors)
            kept = [(u, False) for u in others]
            kept.insert(rng.randrange(len(kept) + 1), (next(_unit(p) for p in ex.passages if p.is_gold), True))
        kept = [(u, g) for u, g in kept if u.strip()]
        doc = make_doc(f"q{i}", [u for u, _ in kept], [])
        gold = tuple(doc.unit_spans[j] for j, (_, g) in enumerate(kept) if g)
        doc.questions.append(QAQuestion(f"q{i}", ex.question, ex.answers, gold))
        docs.append(doc)
    return docs


def score(q: QAQuestion, pred: str) -> dict[str, float]:
    return {"em": best_over_answers(pred, q.answers, exact_match), "f1": best_over_answers(pred, q.answers, f1),
            "accuracy": best_over_answers(pred, q.answers, subspan_exact_match)}


def run(method, docs: list[QADoc], opts: EvalOptions, budget: int) -> dict[str, Any]:
    res = run_qa(method, docs, opts, budget, score)
    metrics = aggregate(res["records"], METRICS)
    metrics[f"evidence_recall@{opts.top_k}"] = metrics.pop("evidence_recall")
    return result_doc(res, metrics, ("em", "f1"), tuple(METRICS), opts)


def stats(docs: list[QADoc], tok) -> dict[str, Any]:
    return {"n_documents": len(docs), "n_examples": sum(len(d.questions) for d in docs),
            "context_tokens_per_doc": context_tokens(tok, docs)}


def plot(results: dict[str, Any], png: Path, opts: EvalOptions) -> bool:
    from r3mem.evaluate.plots import bars

    return bars(results, ["em", "f1", "accuracy"], png, "NQ-Open: answer quality by method")

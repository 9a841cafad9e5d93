"""kv: key-value retrieval (Lost-in-the-Middle format). Every key-value pair is written as its own
paragraph; the reader must return the value of one key. Random UUIDs cannot be guessed, so the
value has to survive memory exactly. Accuracy = the value appears in the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions, mean
from r3mem.evaluate.metrics import subspan_exact_match
from r3mem.evaluate.qa import QADoc, QAQuestion, aggregate, context_tokens, make_doc, result_doc, run_qa

DEFAULT_BUDGET = 256
N_POSITION_BINS = 5


def load(path: Path, opts: EvalOptions) -> list[QADoc]:
    from r3mem.evaluate.datasets import load_kv

    docs = []
    for i, ex in enumerate(load_kv(path, limit=opts.limit)):
        doc = make_doc(f"kv{i}", [f'"{k}": "{v}"' for k, v in ex.pairs], [])
        g = ex.gold_index
        doc.questions.append(QAQuestion(f"kv{i}", f'What is the value for the key "{ex.key}"?', (ex.value,),
                                        (doc.unit_spans[g],), {"gold_position": g / max(1, len(ex.pairs) - 1)}))
        docs.append(doc)
    return docs


def score(q: QAQuestion, pred: str) -> dict[str, float]:
    return {"accuracy": subspan_exact_match(pred, q.answers[0])}


def _by_position(records: list[dict]) -> dict[str, float | None]:
    out = {}
    for b in range(N_POSITION_BINS):
        lo, hi = b / N_POSITION_BINS, (b + 1) / N_POSITION_BINS
        sel = [r.get("accuracy") for r in records if "skipped" not in r
               and lo <= r["gold_position"] < hi + (1e-9 if b == N_POSITION_BINS - 1 else 0)]
        out[f"{lo:.1f}-{hi:.1f}"] = mean(sel)
    return out


def run(method, docs: list[QADoc], opts: EvalOptions, budget: int) -> dict[str, Any]:
    res = run_qa(method, docs, opts, budget, score)
    metrics = aggregate(res["records"], ["accuracy", "evidence_recall"])
    metrics[f"evidence_recall@{opts.top_k}"] = metrics.pop("evidence_recall")
    metrics["accuracy_by_gold_position"] = _by_position(res["records"])
    return result_doc(res, metrics, ("accuracy",), ("accuracy", "evidence_recall"), opts)


def stats(docs: list[QADoc], tok) -> dict[str, Any]:
    return {"n_documents": len(docs), "n_examples": len(docs), "context_tokens_per_doc": context_tokens(tok, docs)}


def plot(results: dict[str, Any], png: Path, opts: EvalOptions) -> bool:
    from r3mem.evaluate.plots import lines

    series = {m: r["metrics"]["accuracy_by_gold_position"] for m, r in results.items() if "metrics" in r}
    return lines({"accuracy": series}, png, "KV retrieval: accuracy vs position of the queried key",
                 "position of the key (fraction of the list)", ylim=(0, 1))

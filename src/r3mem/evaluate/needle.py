"""needle: a needle sentence hidden in a haystack of essays at several depths and context lengths
(in base-model tokens). Each (length, depth) cell is one context written into memory and one
question. Accuracy = the needle's answer appears in the reply; F1 for partial credit; the grid is
drawn as a heat map per method. ``--limit N`` keeps the first N cells (lengths outer, depths inner).

Full context is run in the cells that fit the base model's window and marked skipped in the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.metrics import f1, subspan_exact_match
from r3mem.evaluate.qa import QADoc, QAQuestion, aggregate, context_tokens, make_doc, result_doc, run_qa
from r3mem.tokens import tokenize

DEFAULT_BUDGET = 256


@dataclass
class NeedleData:
    haystack: Any
    cells: list[tuple[int, float]]
    docs: list[QADoc] | None = None


def load(path: Path, opts: EvalOptions) -> NeedleData:
    from r3mem.evaluate.datasets import load_needle

    hay = load_needle(path)
    cells = [(n, d) for n in opts.lengths for d in opts.depths]
    return NeedleData(hay, cells[: opts.limit] if opts.limit is not None else cells)


def prepare(data: NeedleData, engine, opts: EvalOptions) -> NeedleData:
    tok = engine.tokenizer
    count = lambda s: len(tokenize(tok, s))  # noqa: E731
    docs = []
    for n, d in data.cells:
        s = data.haystack.build(n, d, length_fn=count)
        q = QAQuestion(f"L{n}/d{d}", s.question, (s.answer,), ((s.needle_start, s.needle_start + len(s.needle)),),
                       {"length": n, "depth": d})
        docs.append(make_doc(f"L{n}/d{d}", [s.context], [q]))
    data.docs = docs
    return data


def score(q: QAQuestion, pred: str) -> dict[str, float]:
    return {"accuracy": subspan_exact_match(pred, q.answers[0]), "f1": f1(pred, q.answers[0])}


def run(method, data: NeedleData, opts: EvalOptions, budget: int) -> dict[str, Any]:
    res = run_qa(method, data.docs, opts, budget, score, partial_ok=True)
    metrics = aggregate(res["records"], ["accuracy", "f1", "evidence_recall"])
    metrics[f"evidence_recall@{opts.top_k}"] = metrics.pop("evidence_recall")
    by_cell = {(r["length"], r["depth"]): r for r in res["records"]}
    grid = {k: [[by_cell[(n, d)].get(k) if (n, d) in by_cell else None for n in opts.lengths] for d in opts.depths]
            for k in ("accuracy", "f1")}
    out = result_doc(res, metrics, ("accuracy", "f1"), ("accuracy", "f1", "evidence_recall"), opts,
                     grid={"lengths": list(opts.lengths), "depths": list(opts.depths), **grid})
    if res["n_skipped"]:
        out["cells_skipped"] = [r["qid"] + ": " + r["skipped"] for r in res["records"] if "skipped" in r]
    return out


def stats(data: NeedleData, tok) -> dict[str, Any]:
    return {
        "n_documents": len(data.docs or []),
        "n_examples": len(data.docs or []),
        "essays": len(data.haystack.essays),
        "context_tokens_per_doc": context_tokens(tok, data.docs or []),
    }


def plot(results: dict[str, Any], png: Path, opts: EvalOptions) -> bool:
    from r3mem.evaluate.plots import heatmaps

    grids = {m: r["grid"] for m, r in results.items() if "grid" in r}
    return heatmaps(grids, "accuracy", png, "Needle in a haystack: accuracy (rows: depth, columns: length in tokens)")

"""Which slots reach the reader: evidence recall@k on every LoCoMo conversation, and what finding them costs.

Every conversation is written into memory turn by turn by the shipped adapter (the r3mem QA path; with
`--memory-cache` the memories of an `r3mem eval locomo --memory-cache` run are reused). Then, for every
scored question (categories 1-4), each way of choosing slots ranks them and we record whether the
annotated evidence turns are among the first k (k = 1, 2, 4, 8), the same measure `r3mem eval locomo`
reports as evidence_recall@k:

- r3mem memory keys (`recall.rank`): `hybrid` (the default), `dense`, `lexical`;
- r3mem `hybrid` + query-likelihood re-ranking of the best 16 (`rerank=16`);
- r3mem query likelihood over every slot (`select="likelihood"`, the old default; on the first
  `--likelihood-questions` questions only: it runs the model once per slot and question);
- baselines over the raw turns: BM25 and MiniLM (`retrieval.py`, 100-word chunks of each turn, as the
  `bm25` / `embedding` methods), and their reciprocal-rank fusion.

Search cost: the median time of one key search (hybrid) over memories of 100 to 50,000 slots (the
conversations' slots, repeated), beside BM25 over the same number of turns, and query likelihood over
up to 400 slots. Writes benchmarks/retrieval/results/*.json and a PNG beside it.

    python benchmarks/retrieval/bench_retrieval.py --data ../shared/data/locomo/locomo_dev8.json \\
        --out benchmarks/retrieval/results/locomo_retrieval.json --memory-cache /tmp/r3mem-memories
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from r3mem.engine import R3Mem
from r3mem.evaluate import locomo
from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.methods import MemoryMethod
from r3mem.evaluate.methods.retrieval import _qa_chunks
from r3mem.evaluate.qa import evidence_recall
from r3mem.evaluate.runner import environment, git_info
from r3mem.index import SlotIndex, fuse
from r3mem.memory import Memory
from r3mem.recall import rank
from r3mem.retrieval import BM25Retriever, EmbeddingRetriever, shared_encoder

KS = (1, 2, 4, 8)


def _recalls(gold, spans: list[tuple[int, int]]) -> dict[int, float | None]:
    return {k: evidence_recall(gold, spans[:k]) for k in KS}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def memory_rankings(engine: R3Mem, mem: Memory, question: str, likelihood: bool) -> dict[str, tuple[list, float]]:
    """Ranked slot spans (best first) and seconds per way of choosing slots."""
    m, tok, keys = engine.model, engine.tokenizer, engine.keys
    out = {}
    ways = {"r3mem hybrid": dict(select="hybrid"), "r3mem dense": dict(select="dense"),
            "r3mem lexical": dict(select="lexical"), "r3mem hybrid + likelihood re-rank 16": dict(select="hybrid",
                                                                                              rerank=16)}
    if likelihood:
        ways["r3mem likelihood (all slots)"] = dict(select="likelihood")
    for name, kw in ways.items():
        (slots, _), dt = _timed(lambda kw=kw: rank(m, tok, mem, question, "paragraph", max(KS), keys=keys, **kw))
        out[name] = ([(s.start, s.end) for s in slots], dt)
    return out


def text_rankings(doc, questions, encoder) -> dict[str, list[tuple[list, float]]]:
    """BM25, MiniLM and their fusion over the turns' chunks (the `bm25` / `embedding` methods' index)."""
    spans = _qa_chunks(doc.context, 100)
    texts = [s.text for s in spans]
    bm, emb = BM25Retriever(), EmbeddingRetriever(model=encoder)
    bm.index(texts)
    emb.index(texts)
    out = {"bm25 (turns)": [], "embedding (turns)": [], "bm25 + embedding (turns)": []}
    for q in questions:
        (r_bm, dt_bm) = _timed(lambda q=q: [i for i, _ in bm.search(q.question, k=len(texts))])
        (r_em, dt_em) = _timed(lambda q=q: [i for i, _ in emb.search(q.question, k=len(texts))])
        fused = fuse([r_bm, r_em], len(texts))[0][:max(KS)].tolist()
        for name, r, dt in (("bm25 (turns)", r_bm, dt_bm), ("embedding (turns)", r_em, dt_em),
                            ("bm25 + embedding (turns)", fused, dt_bm + dt_em)):
            out[name].append(([(spans[i].start, spans[i].end) for i in r[:max(KS)]], dt))
    return out


def search_cost(engine: R3Mem, mems: list[Memory], questions: list[str], sizes: list[int]) -> dict:
    """Median seconds of one hybrid key search (query embedding included) and of BM25 over the same
    number of turns, for memories of `sizes` slots built from the written conversations' slots."""
    pool = [s for m in mems for s in m.paragraphs]
    texts = []  # the slots' source texts are not kept; BM25 gets the slot's term counts back as words
    for s in pool:
        texts.append(" ".join(t for t, c in s.terms.items() for _ in range(c)))
    out = []
    for n in sizes:
        slots = [pool[i % len(pool)] for i in range(n)]
        index = SlotIndex(slots, context=2)
        t0 = time.perf_counter()
        index.rank("hybrid", questions[0], engine.keys.encode([questions[0]])[0])  # builds the BM25 tables
        build = time.perf_counter() - t0
        times = []
        for q in questions:
            t0 = time.perf_counter()
            index.rank("hybrid", q, engine.keys.encode([q])[0])
            times.append(time.perf_counter() - t0)
        bm = BM25Retriever()
        bm.index([texts[i % len(texts)] or " " for i in range(n)])
        bt = []
        for q in questions:
            t0 = time.perf_counter()
            bm.search(q, k=8)
            bt.append(time.perf_counter() - t0)
        out.append({"slots": n, "hybrid_s": statistics.median(times), "hybrid_first_search_s": build,
                    "bm25_s": statistics.median(bt)})
        ms = {k: out[-1][k] * 1000 for k in ("hybrid_s", "bm25_s")}
        print(f"  search over {n} slots: hybrid {ms['hybrid_s']:.1f} ms, bm25 {ms['bm25_s']:.1f} ms", flush=True)
    return {"per_size": out, "n_queries": len(questions)}


def likelihood_cost(engine: R3Mem, mem: Memory, question: str, sizes: list[int]) -> list[dict]:
    """Seconds of one query-likelihood selection over the first n slots of a memory."""
    out = []
    for n in sizes:
        part = mem.copy()
        part.paragraphs = mem.paragraphs[:n]
        _, dt = _timed(lambda p=part: rank(engine.model, engine.tokenizer, p, question, "paragraph", 2,
                                           select="likelihood", keys=engine.keys))
        out.append({"slots": n, "seconds": dt})
        print(f"  likelihood over {n} slots: {dt:.1f} s", flush=True)
    return out


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(result["recall"])
    x = np.arange(len(KS))
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [result["recall"][name][f"@{k}"] or 0 for k in KS]
        a.bar(x + i * w, vals, w, label=f"{name} (n={result['recall'][name]['n']})")
    a.set_xticks(x + 0.4 - w / 2, [f"recall@{k}" for k in KS])
    a.set_ylabel("evidence recall")
    a.set_title("LoCoMo (8 conversations, categories 1-4): evidence among the first k")
    a.legend(fontsize=7)
    cost = result["search_cost"]["per_size"]
    a2 = [c["slots"] for c in cost]
    b.loglog(a2, [c["hybrid_s"] for c in cost], "o-", label="r3mem hybrid key search")
    b.loglog(a2, [c["bm25_s"] for c in cost], "s-", label="BM25 (rank_bm25) search")
    lk = result.get("likelihood_cost", [])
    if lk:
        b.loglog([c["slots"] for c in lk], [c["seconds"] for c in lk], "^-", label="query likelihood over all slots")
    b.set_xlabel("slots in memory")
    b.set_ylabel("seconds per question (selection only)")
    b.set_title("cost of choosing slots")
    b.grid(True, which="both", alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/locomo/locomo_dev8.json"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--memory-cache", default=None, help="folder of written memories shared with r3mem eval")
    ap.add_argument("--likelihood-questions", type=int, default=40,
                    help="questions scored by query likelihood over all slots")
    ap.add_argument("--sizes", default="100,1000,4805,10000,50000")
    ap.add_argument("--conversations", type=int, default=None, help="first N conversations only (smoke runs)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    engine = R3Mem.from_pretrained()
    opts = EvalOptions(memory_cache=a.memory_cache, compute_dtype=engine.config.compute_dtype)
    docs = locomo.load(a.data, opts)[:a.conversations]
    writer = MemoryMethod("r3mem", engine, opts, "shipped")
    encoder = shared_encoder()
    per_method: dict[str, list] = {}
    cats: dict[str, dict[int, list]] = {}
    mems, write_s = [], []
    n_lk = 0
    for doc in docs:
        mem, dt = _timed(lambda d=doc: writer.qa_store(d))
        mems.append(mem)
        write_s.append(dt)
        print(f"{doc.doc_id}: {len(doc.units)} turns, {len(mem.paragraphs)} slots, memory in {dt:.0f} s", flush=True)
        questions = [q for q in doc.questions if q.gold_spans]
        text = text_rankings(doc, questions, encoder)
        for qi, q in enumerate(questions):
            lk = n_lk < a.likelihood_questions
            n_lk += lk
            ranked = memory_rankings(engine, mem, q.question, lk)
            ranked.update({name: rows[qi] for name, rows in text.items()})
            for name, (spans, dt) in ranked.items():
                rec = _recalls(q.gold_spans, spans)
                per_method.setdefault(name, []).append((rec, dt))
                cats.setdefault(name, {}).setdefault(q.meta["category"], []).append(rec[2])
    recall = {}
    for name, rows in per_method.items():
        recall[name] = {"n": len(rows), **{f"@{k}": statistics.mean(r[k] for r, _ in rows) for k in KS},
                        "by_category@2": {str(c): statistics.mean(v) for c, v in sorted(cats[name].items())},
                        "seconds_per_question": statistics.median(dt for _, dt in rows)}
    # the same first questions for every method, so the likelihood row has a fair comparison
    first = {name: {f"@{k}": statistics.mean(r[k] for r, _ in rows[:a.likelihood_questions]) for k in KS}
             for name, rows in per_method.items()}
    print("search cost:", flush=True)
    qs = [q.question for d in docs for q in d.questions][:50]
    cost = search_cost(engine, mems, qs, [int(x) for x in a.sizes.split(",")])
    lk_cost = likelihood_cost(engine, mems[0], qs[0], [50, 100, 200, 400])
    result = {
        "benchmark": "retrieval", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": str(a.data), "conversations": [d.doc_id for d in docs],
        "n_questions": sum(len([q for q in d.questions if q.gold_spans]) for d in docs),
        "adapter_hash": engine.adapter_hash, "keys": engine.keys.name, "compute_dtype": engine.config.compute_dtype,
        "threads": a.threads, "write_s_per_conversation": write_s,
        "slots_per_conversation": [len(m.paragraphs) for m in mems],
        "recall": recall, f"recall_first_{a.likelihood_questions}_questions": first,
        "search_cost": cost, "likelihood_cost": lk_cost,
        "versions": environment(), "git": git_info(), "wall_s": time.perf_counter() - t_start,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    plot(result, a.out.with_suffix(".png"))
    for name, r in recall.items():
        print(f"{name:40s} n={r['n']:5d} " + " ".join(f"@{k}={r[f'@{k}']:.3f}" for k in KS)
              + f"  {r['seconds_per_question'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()

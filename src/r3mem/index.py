"""`SlotIndex`: search over the slots' retrieval keys without running the language model.

    index = SlotIndex.of(memory.paragraphs, memory.indexes, "paragraph", context=2)  # cached on the memory
    order, scores = index.rank("hybrid", question, query_vec)                        # slot indices, best first

Rankings (each slot index once, best first; ties keep text order):
- "dense": cosine similarity of the question's embedding with each slot's dense key;
- "lexical": BM25+ (`rank_bm25.BM25Plus`, k1 1.5, b 0.75, delta 1) of the question over the slots' term
  counts (Okapi BM25's idf is 0 for a term in half the documents, so a two-turn memory could not find
  anything; BM25+ keeps every matching term positive and ranks LoCoMo like Okapi: recall@2 0.362 both);
- "hybrid": reciprocal-rank fusion, score sum 1 / (`FUSION_K` + rank), of four rankings: dense and
  lexical over each slot alone, and dense and lexical over each slot *in context*, i.e. with the
  `context` slots before it (the normalised sum of their dense keys; the sum of their term counts). A
  conversation turn often means something only after the turns before it ("Yes, last week"), and the
  context is computed here from the stored keys, so keys stay a function of their slot's text alone.

Cost per question: a few matrix-vector products over the dense keys and BM25 passes over the term
counts, linear in the slots with a small constant and no model pass; the first search of a memory
builds the index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from r3mem.memory import Slot
from r3mem.retrieval import bm25_tokenize

__all__ = ["RANKINGS", "FUSION_K", "CONTEXT", "SlotIndex", "fuse"]

RANKINGS = ("hybrid", "dense", "lexical")
FUSION_K = 10  # reciprocal-rank-fusion constant (benchmarks/retrieval: 5-10 best on LoCoMo, 60 worse)
CONTEXT = 2  # slots before each one that its in-context keys include (paragraphs; 0 for entities)


def fuse(rankings: Sequence[Sequence[int]], n: int, k: int = FUSION_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of full rankings of n items: (items best first, ties broken by item
    index; their fused scores)."""
    score = np.zeros(n)
    for ranking in rankings:
        score[np.asarray(ranking, dtype=np.int64)] += 1.0 / (k + np.arange(len(ranking)))
    order = np.argsort(-score, kind="stable")
    return order, score[order]


def _windowed(x: np.ndarray, w: int) -> np.ndarray:
    """Row i replaced by the sum of rows i-w..i."""
    out = x.copy()
    for j in range(1, w + 1):
        out[j:] += x[:-j]
    return out


class _BM25:
    """BM25+ over term-count documents; an index of only empty documents scores 0 (rank_bm25 divides
    by the mean document length)."""

    def __init__(self, docs: list[dict[str, int]]) -> None:
        from rank_bm25 import BM25Plus

        corpus = [[t for t, c in d.items() for _ in range(c)] for d in docs]
        self._bm25 = BM25Plus(corpus) if any(corpus) else None
        self.n = len(docs)

    def scores(self, terms: list[str]) -> np.ndarray:
        if self._bm25 is None:
            return np.zeros(self.n)
        return np.asarray(self._bm25.get_scores(terms), dtype=np.float64)


class SlotIndex:
    """Dense and lexical search over slots that carry keys (`Slot.dense`, `Slot.terms`).

        dense       [N, KEY_DIM] float32, unit rows      the slots' own dense keys
        dense_ctx   [N, KEY_DIM] float32, unit rows      each slot with the `context` before it (None: context 0)
    """

    def __init__(self, slots: Sequence[Slot], context: int = 0) -> None:
        missing = next((i for i, s in enumerate(slots) if s.dense is None or s.terms is None), None)
        if missing is not None:
            raise ValueError(f"slot {missing} has no retrieval keys")
        if context < 0:
            raise ValueError(f"context: must be >= 0, got {context}")
        self.n, self.context = len(slots), context
        self.dense = torch.stack([s.dense for s in slots]).float().numpy() if slots else np.zeros((0, 1), np.float32)
        self.dense_ctx = None
        terms = [s.terms for s in slots]
        self._docs = {"own": terms}
        if context and slots:
            ctx = _windowed(self.dense, context)
            self.dense_ctx = ctx / np.maximum(np.linalg.norm(ctx, axis=1, keepdims=True), 1e-12)
            self._docs["ctx"] = [_merge(terms[max(0, i - context):i + 1]) for i in range(len(terms))]
        self._bm25: dict[str, _BM25] = {}

    @classmethod
    def of(cls, slots: list[Slot], cache: dict | None = None, name: str = "", context: int = 0) -> SlotIndex:
        """The index of `slots`, kept in `cache` (a memory's own `indexes`) under `name` while the list
        is the same object of the same length (memories are values: a write makes new lists)."""
        if cache is None:
            return cls(slots, context)
        tag = (id(slots), len(slots), context)
        hit = cache.get(name)
        if hit is None or hit[0] != tag:
            hit = cache[name] = (tag, cls(slots, context))
        return hit[1]

    def _lexical(self, query: str, which: str = "own") -> np.ndarray:
        if which not in self._bm25:
            self._bm25[which] = _BM25(self._docs[which])
        return self._bm25[which].scores(bm25_tokenize(query))

    def scores(self, ranking: str, query: str, query_vec: np.ndarray | None = None) -> np.ndarray:
        """[N] scores of "dense" (needs `query_vec` [KEY_DIM]) or "lexical", each slot alone."""
        if ranking == "dense":
            if query_vec is None:
                raise ValueError("ranking 'dense': needs the query's dense key")
            return self.dense @ query_vec.astype(np.float32)
        if ranking == "lexical":
            return self._lexical(query)
        raise ValueError(f"ranking: must be 'dense' or 'lexical', got {ranking!r}")

    def rank(self, ranking: str, query: str, query_vec: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(all slot indices best first by `ranking`, one of `RANKINGS`; their scores: cosine, BM25 or
        the fused reciprocal-rank score)."""
        if ranking not in RANKINGS:
            raise ValueError(f"ranking: must be one of {RANKINGS}, got {ranking!r}")
        if self.n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        if ranking != "hybrid":
            scores = self.scores(ranking, query, query_vec)
            order = _order(scores)
            return order, scores[order]
        if query_vec is None:
            raise ValueError("ranking 'hybrid': needs the query's dense key")
        parts = [self.scores("lexical", query), self.dense @ query_vec.astype(np.float32)]
        if self.dense_ctx is not None:
            parts += [self._lexical(query, "ctx"), self.dense_ctx @ query_vec.astype(np.float32)]
        return fuse([_order(p) for p in parts], self.n)


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def _merge(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for t, n in c.items():
            out[t] = out.get(t, 0) + n
    return out

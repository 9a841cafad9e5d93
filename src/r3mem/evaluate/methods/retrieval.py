"""Explicit-retrieval methods: BM25 and MiniLM over raw-text chunks, the top-k chunks in the base
model's prompt within the token budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r3mem.evaluate.common import Skip
from r3mem.evaluate.methods.base import Answer, Method, first_line, head_text, score_tail
from r3mem.hierarchy import Span, paragraph_spans
from r3mem.prompts import answer_prompt
from r3mem.tokens import tokenize


def _qa_chunks(context: str, words: int) -> list[Span]:
    """Paragraphs (the units memory methods write as slots) cut into chunks of at most ``words``."""
    from r3mem.retrieval import chunk_text

    out = []
    for p in paragraph_spans(context):
        out += [Span(p.start + c.start, p.start + c.end, c.text) for c in chunk_text(p.text, words)]
    return out



@dataclass
class _Index:
    spans: list[Span]
    retriever: Any



class _Retrieval(Method):
    def _retriever(self):
        raise NotImplementedError

    def _extra_bytes(self, n_chunks: int) -> int:
        return 0

    def info(self) -> dict[str, Any]:
        return {**super().info(), "chunk_words": self.opts.chunk_words, "top_k": self.opts.top_k}

    def qa_store(self, doc) -> _Index:
        spans = _qa_chunks(doc.context, self.opts.chunk_words)
        r = None
        if spans:
            r = self._retriever()
            r.index([s.text for s in spans])
        return _Index(spans, r)

    def _fill(self, spans: list[Span], ranked: list[int], budget: int) -> tuple[str, list[tuple[int, int]]]:
        """Top-ranked chunks until the token budget is spent (the last one cut), shown in text order."""
        chosen, used = [], 0
        for i in ranked:
            if used >= budget:
                break
            n = len(tokenize(self.tok, spans[i].text))
            text = spans[i].text if used + n <= budget else head_text(self.tok, spans[i].text, budget - used)
            chosen.append((spans[i].start, spans[i].start + len(text), text))
            used += min(n, budget - used)
        chosen.sort()
        return "\n\n".join(t for *_, t in chosen), [(a, b) for a, b, _ in chosen]

    def qa_answer(self, index: _Index, doc, question: str, budget: int) -> Answer:
        if index.retriever is None:
            context, spans = "", []
        else:
            ranked = [i for i, _ in index.retriever.search(question, k=min(self.opts.top_k, len(index.spans)))]
            context, spans = self._fill(index.spans, ranked, budget)
        return Answer(first_line(self.reader.read(answer_prompt(context, question), self.opts.max_new_tokens)), spans)

    def qa_memory(self, index: _Index, doc, budget: int) -> tuple[int, int]:
        raw = sum(len(s.text.encode()) for s in index.spans)
        return raw + self._extra_bytes(len(index.spans)), sum(len(tokenize(self.tok, s.text)) for s in index.spans)

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        """In-context retrieval-augmented LM: before each segment, the previous segment is the query
        over chunks of all earlier tokens; the top-k chunks (``budget`` tokens in all) precede the
        segment, whose tokens are scored as for every other method."""
        size = max(1, budget // self.opts.top_k)
        bounds = [(a, min(a + size, len(ids))) for a in range(0, len(ids), size)]
        r = self._retriever() if len(bounds) else None
        if r is not None:
            r.index([self.tok.decode(ids[a:b]) or " " for a, b in bounds])
        out = []
        for s in range(0, len(ids), seg_len):
            seg = ids[s:s + seg_len]
            prefix: list[int] = []
            allowed = [i for i, (a, b) in enumerate(bounds) if b <= s]
            if allowed and r is not None:
                query = self.tok.decode(ids[max(0, s - seg_len):s])
                ranked = [i for i, _ in r.search(query, k=len(bounds)) if bounds[i][1] <= s][: self.opts.top_k]
                for i in sorted(ranked):
                    prefix += ids[bounds[i][0]:bounds[i][1]]
                prefix = prefix[:budget]
            out.append((s, *score_tail(self.reader, prefix + seg, len(seg))))
        return out

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        size = max(1, budget // self.opts.top_k)
        return len(self.tok.decode(ids).encode()) + self._extra_bytes(-(-len(ids) // size)), len(ids)



class BM25(_Retrieval):
    def _retriever(self):
        from r3mem.retrieval import make_retriever

        return make_retriever("bm25")



class Embedding(_Retrieval):
    def _retriever(self):
        from r3mem.retrieval import make_retriever

        try:
            return make_retriever("embedding")
        except ImportError as e:
            raise Skip(f"embedding model unavailable: {e}") from None

    def _extra_bytes(self, n_chunks: int) -> int:
        return n_chunks * 384 * 4  # MiniLM-L6 float32 vectors

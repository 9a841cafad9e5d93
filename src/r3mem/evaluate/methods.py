"""The systems every benchmark compares, behind one interface.

Memory methods are R³Mem engines (the full method, its ablations, and the RMT-style and ICAE-style
baselines, which are the same model trained with other losses / hierarchy levels; see
``configs/baselines/``). Text methods use the *same* base model with its adapters disabled:

- ``no_memory``     the reader sees only the last ``budget`` tokens of the context (truncated window);
- ``full_context``  the whole context in the base model's window; skipped where it does not fit;
- ``bm25``, ``embedding``  explicit retrieval over the raw text: paragraphs chunked into
  ``chunk_words``-word chunks, top-k chunks for the question put into the prompt, within ``budget``.

Every method answers a question with the same reader prompt as :meth:`R3Mem.answer`; a memory
method's recalled text is cut to the same token budget as the retrieved or windowed text.

How a memory method answers depends on what its adapter was trained for (read from its config):

- ``recall``           (backward path and paragraph level) recall the top-k paragraph slots by query
                       likelihood, expand them backward into text, read it: ``R3Mem.answer``;
- ``recall_document``  (backward path, no paragraph level) expand the document state, read it;
- ``generate``         (no backward path: ``w_bwd`` = 0) continue the question with the document
                       memory as context, the way RMT / AutoCompressor use their memory tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from r3mem.backbone import max_positions
from r3mem.evaluate.common import EvalOptions, Skip
from r3mem.hierarchy import Span, paragraph_spans
from r3mem.prompts import answer_prompt
from r3mem.recurrence import fold
from r3mem.tokens import tokenize

__all__ = [
    "METHODS", "ADAPTER_METHODS", "DESCRIPTIONS", "Method", "MemoryMethod", "NoMemory", "FullContext", "BM25",
    "Embedding", "Answer",
]

METHODS = ("r3mem", "r3mem_no_hierarchy", "r3mem_no_backward", "r3mem_no_cycle", "r3mem_coupling", "recurrent",
           "autoencoder", "no_memory", "full_context", "bm25", "embedding")
ADAPTER_METHODS = METHODS[:7]  # need an adapter folder (r3mem: --model or the shipped one)
DESCRIPTIONS = {
    "r3mem": "R3Mem, full method (hierarchy, forward + backward + cycle losses)",
    "r3mem_no_hierarchy": "ablation: document level only",
    "r3mem_no_backward": "ablation: no backward (reconstruction) or cycle loss",
    "r3mem_no_cycle": "ablation: no cycle-consistency loss",
    "r3mem_coupling": "variant B: invertible coupling adapters",
    "recurrent": "RMT/AutoCompressor-style recurrent memory tokens (LM loss only, no hierarchy)",
    "autoencoder": "ICAE-style single-shot paragraph autoencoder (reconstruction only, no recurrence)",
    "no_memory": "base model, truncated window (last budget tokens)",
    "full_context": "base model, whole context in its window",
    "bm25": "BM25 retrieval of raw-text chunks into the base model's prompt",
    "embedding": "MiniLM dense retrieval of raw-text chunks into the base model's prompt",
}
_GEN_PROMPT = "Question: {question}\nAnswer:"


def _first_line(text: str) -> str:
    return text.split("\n")[0].strip()


def _head(tok, text: str, n: int) -> str:
    """The first n tokens of text (whole text if shorter)."""
    ids = tokenize(tok, text)
    return text if len(ids) <= n else tok.decode(ids[:n])


def _tail_start(tok, text: str, n: int) -> int:
    """Character offset where the last n tokens of text begin (0 if the text is shorter)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    return 0 if len(offsets) <= n else int(offsets[len(offsets) - n][0])


@torch.no_grad()
def _score_tail(engine, ids: list[int], n_tail: int) -> tuple[float, int]:
    """NLL sum over the last ``n_tail`` tokens except the first of them, with the bare base model."""
    n_tail = min(n_tail, len(ids))
    first = len(ids) - n_tail + 1  # index of the first scored token (the segment's second)
    if n_tail < 2:
        return 0.0, 0
    x = torch.tensor([ids], device=engine.device)
    with engine.model.adapters_disabled():
        logits = engine.model.lm(input_ids=x).logits[0].float()
    nll = F.cross_entropy(logits[first - 1:len(ids) - 1], x[0, first:], reduction="sum")
    return float(nll), len(ids) - first


@dataclass
class Answer:
    text: str
    spans: list[tuple[int, int]] | None  # character spans of the context the reader was shown (None: not text)


class Method:
    """One compared system. Unsupported protocols raise :class:`Skip` with the reason."""

    name: str = ""
    kind: str = "text"

    def __init__(self, name: str, reader, opts: EvalOptions) -> None:
        self.name, self.reader, self.opts = name, reader, opts
        self.tok = reader.tokenizer

    def info(self) -> dict[str, Any]:
        return {"description": DESCRIPTIONS[self.name], "kind": self.kind}

    def budget(self, default: int) -> int:
        return self.opts.budget or default

    # --- QA (rag, kv, locomo, needle) ---------------------------------------------------------
    def qa_store(self, doc) -> Any:
        return doc

    def qa_answer(self, store: Any, doc, question: str, budget: int) -> Answer:
        raise Skip("not applicable to question answering")

    def qa_memory(self, store: Any, doc, budget: int) -> tuple[int, int]:
        """(bytes, tokens) this method keeps for one document."""
        return len(doc.context.encode()), len(tokenize(self.tok, doc.context))

    # --- language modelling ---------------------------------------------------------------------
    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        """(segment start, NLL sum, scored tokens) for every segment; the first token of each
        segment is not scored, so every method is scored on the same tokens."""
        raise Skip("not applicable to language modelling")

    def lm_score_reset(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]] | None:
        """The same segments scored with the memory reset before each one (memory methods only): what
        the adapter does as a language model, without anything remembered. None where not applicable."""
        return None

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        return 0, 0

    # --- reconstruction -----------------------------------------------------------------------------
    def recon(self, text: str, ratio: float) -> dict[str, Any]:
        raise Skip("stores the raw text: reconstruction is exact by construction (compression ratio 1)")

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# memory methods: R3Mem engines
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def config_override(engine, **changes: Any):
    """Temporarily replace fields of the engine's model config (ratios and levels are read per call)."""
    old = engine.model.cfg
    engine.model.cfg = old.replace(**changes)
    try:
        yield engine
    finally:
        engine.model.cfg = old


class MemoryMethod(Method):
    kind = "memory"

    def __init__(self, name: str, engine, opts: EvalOptions, source: str | None) -> None:
        super().__init__(name, engine, opts)
        self.engine, self.source = engine, source

    @property
    def mode(self) -> str:
        cfg = self.engine.config
        if cfg.w_bwd == 0:
            return "generate"
        return "recall" if "paragraph" in cfg.hierarchy_levels else "recall_document"

    def info(self) -> dict[str, Any]:
        c = self.engine.config
        return {**super().info(), "adapter": self.source, "adapter_hash": self.engine.adapter_hash,
                "adapter_trained": bool(self.engine.trained), "answer_mode": self.mode,
                "model_config": {k: getattr(c, k) for k in ("num_mem_tokens", "segment_len", "memory_mode",
                                                             "reversible_mode", "paragraph_ratio", "entity_ratio")}
                | {"hierarchy_levels": list(c.hierarchy_levels), "w_fwd": c.w_fwd, "w_bwd": c.w_bwd, "w_cyc": c.w_cyc}}

    def qa_store(self, doc):
        e = self.engine
        if not getattr(doc, "incremental", False):  # one write == unit by unit (writes are split-invariant)
            return e.flush(e.write(doc.context + "\n\n"))
        mem = e.new_memory()
        for unit in doc.units:  # turn by turn, as a conversation arrives
            mem = e.write(unit + "\n\n", mem)
        return e.flush(mem)

    def qa_answer(self, mem, doc, question: str, budget: int) -> Answer:
        e = self.engine
        if self.mode == "generate":
            return Answer(_first_line(e.generate(_GEN_PROMPT.format(question=question), mem,
                                                 max_new_tokens=self.opts.max_new_tokens)), None)
        level = "paragraph" if self.mode == "recall" else "document"
        rec = e.recall(mem, query=question, level=level, top_k=self.opts.top_k)
        context = _head(self.tok, rec.text, budget)
        pred = _first_line(e.read(answer_prompt(context, question), self.opts.max_new_tokens))
        spans = [(s["start"], s["end"]) for s in rec.slots] if level == "paragraph" else None
        return Answer(pred, spans)

    def qa_memory(self, mem, doc, budget: int) -> tuple[int, int]:
        tokens = mem.doc_state.shape[-2] + sum(s.n_mem_tokens for s in mem.paragraphs + mem.entities)
        return mem.state_bytes(), tokens

    @torch.no_grad()
    def _lm_segments(self, ids: list[int], seg_len: int, carry: bool) -> list[tuple[int, float, int]]:
        model = self.engine.model
        dev = self.engine.device
        x = torch.tensor([ids], device=dev)
        out = fold(model, model.initial_state(1), x, torch.ones_like(x), with_loss=True, score_first=False,
                   carry=carry, segment_len=seg_len)
        return [(s, float(loss), int(n)) for s, (loss, n) in zip(range(0, len(ids), seg_len), out.per_segment)]

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        return self._lm_segments(ids, seg_len, carry=True)

    def lm_score_reset(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        return self._lm_segments(ids, seg_len, carry=False)

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        st = self.engine.model.initial_state(1)[0]
        return st.numel() * st.element_size(), st.shape[-2]

    def recon(self, text: str, ratio: float) -> dict[str, Any]:
        """Write the text at a paragraph ratio, then expand every paragraph slot backward.

        Models trained without the paragraph level get it switched on for this protocol (the write
        table and both directions exist whatever the hierarchy): the comparison is then at equal
        memory per paragraph. Entity slots are not written (they are not reconstructed here).
        """
        from r3mem.recall import reconstruct

        e = self.engine
        with config_override(e, paragraph_ratio=float(ratio), hierarchy_levels=("document", "paragraph")):
            mem = e.flush(e.write(text))
            slots = mem.paragraphs
            cap = e.config.max_recall_tokens
            # Batched form of e.recall(mem, index=i) for every slot (same caps, no query).
            hyps = reconstruct(
                e.model, e.tokenizer, [s.state for s in slots], [min(cap, s.n_tokens + 8) for s in slots]
            )
        refs = [text[s.start:s.end] for s in slots]
        slot_bytes = sum(s.state.numel() * s.state.element_size() for s in slots)
        return {
            "pairs": list(zip(refs, hyps)),
            "memory_bytes": slot_bytes,
            "memory_tokens": sum(s.n_mem_tokens for s in slots),
            "source_tokens": sum(s.n_tokens for s in slots),
        }

    def close(self) -> None:
        self.engine = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# text methods: the bare base model
# ----------------------------------------------------------------------------------------------


class NoMemory(Method):
    def info(self) -> dict[str, Any]:
        return {**super().info(), "window": "last budget tokens of the context"}

    def qa_answer(self, doc, _doc, question: str, budget: int) -> Answer:
        start = _tail_start(self.tok, doc.context, budget)
        window = doc.context[start:]
        return Answer(_first_line(self.reader.read(answer_prompt(window, question), self.opts.max_new_tokens)),
                      [(start, len(doc.context))])

    def qa_memory(self, doc, _doc, budget: int) -> tuple[int, int]:
        start = _tail_start(self.tok, doc.context, budget)
        return len(doc.context[start:].encode()), min(budget, len(tokenize(self.tok, doc.context)))

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        return [
            (s, *_score_tail(self.reader, ids[s : s + seg_len], len(ids[s : s + seg_len])))
            for s in range(0, len(ids), seg_len)
        ]

    def recon(self, text: str, ratio: float) -> dict[str, Any]:
        raise Skip("keeps no memory: nothing to reconstruct")


class FullContext(Method):
    def info(self) -> dict[str, Any]:
        return {**super().info(), "window": max_positions(self.reader.model.lm)}

    def qa_answer(self, doc, _doc, question: str, budget: int) -> Answer:
        prompt = answer_prompt(doc.context, question)
        need, window = (
            self.reader.prompt_ids(prompt).shape[1] + self.opts.max_new_tokens,
            max_positions(self.reader.model.lm),
        )
        if need > window:
            raise Skip(f"context does not fit the base model's window ({need} > {window} positions)")
        return Answer(_first_line(self.reader.read(prompt, self.opts.max_new_tokens)), [(0, len(doc.context))])

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        window = max_positions(self.reader.model.lm)
        out = []
        for s in range(0, len(ids), seg_len):
            end = min(len(ids), s + seg_len)
            ctx = ids[max(0, end - window):end]
            out.append((s, *_score_tail(self.reader, ctx, end - s)))
        return out

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        tail = ids[-max_positions(self.reader.model.lm):]
        return len(self.tok.decode(tail).encode()), len(tail)


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
            text = spans[i].text if used + n <= budget else _head(self.tok, spans[i].text, budget - used)
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
        return Answer(_first_line(self.reader.read(answer_prompt(context, question), self.opts.max_new_tokens)), spans)

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
            out.append((s, *_score_tail(self.reader, prefix + seg, len(seg))))
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


TEXT_METHODS = {"no_memory": NoMemory, "full_context": FullContext, "bm25": BM25, "embedding": Embedding}

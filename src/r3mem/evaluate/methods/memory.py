"""Memory methods: R³Mem engines (the full method, its ablations and the recurrent and autoencoder
baselines), answering by recall, document recall or generation depending on what the adapter was
trained for.
"""

from __future__ import annotations

from typing import Any

import torch

from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.methods.base import Answer, Method, first_line, head_text
from r3mem.memory import WritePolicy
from r3mem.prompts import answer_prompt
from r3mem.recurrence import fold

_GEN_PROMPT = "Question: {question}\nAnswer:"


class MemoryMethod(Method):
    kind = "memory"

    def __init__(self, name: str, engine, opts: EvalOptions, source: str | None) -> None:
        super().__init__(name, engine, opts)
        self.engine, self.source = engine, source

    @property
    def mode(self) -> str:
        cfg = self.engine.config
        if not self.engine.can_expand:
            return "generate"
        return "recall" if "paragraph" in cfg.hierarchy_levels else "recall_document"

    def info(self) -> dict[str, Any]:
        c = self.engine.config
        return {**super().info(), "adapter": self.source, "adapter_hash": self.engine.adapter_hash,
                "adapter_trained": bool(self.engine.trained), "answer_mode": self.mode,
                "select": self.opts.select, "answer_read": self.opts.answer_read,
                "memory_cache": self.opts.memory_cache,
                "keys": self.engine.keys.name if self.engine.keys is not None else None,
                "model_config": {k: getattr(c, k) for k in ("num_mem_tokens", "segment_len", "memory_mode",
                                                             "reversible_mode", "paragraph_ratio", "entity_ratio",
                                                             "memory_bits")}
                | {"hierarchy_levels": list(c.hierarchy_levels), "w_fwd": c.w_fwd, "w_bwd": c.w_bwd, "w_cyc": c.w_cyc}}

    def qa_store(self, doc):
        path = self._cached(doc)
        if path is not None and path.exists():
            return self.engine.load(path)
        mem = self._write(doc)
        if path is not None:
            self.engine.save(mem, path)
        return mem

    def _write(self, doc):
        e = self.engine
        if not getattr(doc, "incremental", False):  # one write == unit by unit (writes are split-invariant)
            return e.flush(e.write(doc.context + "\n\n"))
        mem = e.new_memory()
        for unit in doc.units:  # turn by turn, as a conversation arrives
            mem = e.write(unit + "\n\n", mem)
        return e.flush(mem)

    def _cached(self, doc):
        """The memory file of `doc` in `--memory-cache` (None: no cache): named by the document's text and
        everything a memory depends on (engine identity, ratios, compute dtype), so a hit is the same memory."""
        if not self.opts.memory_cache:
            return None
        import hashlib
        import json
        from pathlib import Path

        c = self.engine.config
        what = json.dumps([self.engine.identity, c.paragraph_ratio, c.entity_ratio, c.compute_dtype,
                           bool(getattr(doc, "incremental", False)), doc.context], sort_keys=True)
        folder = Path(self.opts.memory_cache)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{hashlib.sha256(what.encode()).hexdigest()[:24]}.r3mem"

    def qa_answer(self, mem, doc, question: str, budget: int) -> Answer:
        e, read = self.engine, self.opts.answer_read
        if self.mode == "generate":
            return Answer(first_line(e.generate(_GEN_PROMPT.format(question=question), mem,
                                                 max_new_tokens=self.opts.max_new_tokens)), None)
        level = "paragraph" if self.mode == "recall" else "document"
        if level == "paragraph" and read == "cache":
            pred, rec = e.answer(question, mem, top_k=self.opts.top_k, max_new_tokens=self.opts.max_new_tokens,
                                 read="cache", select=self.opts.select)
            return Answer(pred, [(s["start"], s["end"]) for s in rec.slots])
        if level == "paragraph" and read == "source":
            from r3mem.recall import find

            slots, _ = find(e.model, e.tokenizer, mem, question, "paragraph", None, self.opts.top_k,
                            self.opts.select or ("hybrid" if e.keys is not None else "likelihood"), 0, e.keys)
            context = head_text(self.tok, "\n\n".join(doc.context[s.start:s.end] for s in slots), budget)
            pred = first_line(e.read(answer_prompt(context, question), self.opts.max_new_tokens))
            return Answer(pred, [(s.start, s.end) for s in slots])
        # "checked": each expansion is checked against the document text it was written from and decoded
        # only where the memory's greedy expansion differs (the agent's default read; the same text as "text")
        written = (lambda s: doc.context[s.start:s.end]) if level == "paragraph" else None
        unsure = self.opts.min_confidence if level == "paragraph" else None
        rec = e.recall(mem, query=question, level=level, top_k=self.opts.top_k, select=self.opts.select,
                       drafts=written if read == "checked" else None, min_confidence=unsure)
        # with --min-confidence, a probably wrong slot is read from its text (as the agent reads its stored turns)
        context = head_text(self.tok, e.trusted_text(mem, rec, written), budget)
        pred = first_line(e.read(answer_prompt(context, question), self.opts.max_new_tokens))
        spans = [(s["start"], s["end"]) for s in rec.slots] if level == "paragraph" else None
        return Answer(pred, spans)

    def qa_memory(self, mem, doc, budget: int) -> tuple[int, int]:
        tokens = mem.doc_state.shape[-2] + sum(s.n_mem_tokens for s in mem.paragraphs + mem.entities)
        return mem.state_bytes(), tokens

    @torch.no_grad()
    def _lm_segments(self, ids: list[int], seg_len: int, carry: bool,
                     recall_tokens: int = 0) -> list[tuple[int, float, int]]:
        model, eos = self.engine.model, self.engine.tokenizer.eos_token_id
        dev = self.engine.device
        x = torch.tensor([ids], device=dev)
        # The reversible read: before each segment, the memory is expanded back (greedy) into text.
        prefix = (lambda st: model.reconstruct(st, recall_tokens, eos)) if recall_tokens else None
        out = fold(model, model.initial_state(1), x, torch.ones_like(x), with_loss=True, score_first=False,
                   carry=carry, segment_len=seg_len, read_prefix=prefix,
                   quant_bits=model.cfg.memory_bits)  # the document state as a `memory_bits` memory holds it
        return [(s, float(loss), int(n)) for s, (loss, n) in zip(range(0, len(ids), seg_len), out.per_segment)]

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        return self._lm_segments(ids, seg_len, carry=True)

    def lm_score_reset(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        return self._lm_segments(ids, seg_len, carry=False)

    def lm_score_recall(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]] | None:
        """Each segment scored given the memory and the text recalled from it (backward expansion of
        the document memory, at most `recall_tokens` tokens): the same stored memory, read back as
        text. None for adapters without a backward path (nothing was trained to expand)."""
        n = seg_len if self.opts.recall_tokens is None else self.opts.recall_tokens
        if not self.engine.can_expand or n == 0:
            return None
        return self._lm_segments(ids, seg_len, carry=True, recall_tokens=n)

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        st = self.engine.model.initial_state(1)[0]
        return st.numel() * st.element_size(), st.shape[-2]

    def recon(self, text: str, ratio: float) -> dict[str, Any]:
        """Write the text at a paragraph ratio, then expand every paragraph slot backward.

        Models trained without the paragraph level get it switched on for this protocol (the write
        table and both directions exist whatever the hierarchy): the comparison is then at equal
        memory per paragraph. Entity slots are not written (they are not reconstructed here).
        """
        from r3mem.recall import reconstruct, slot_cap

        e = self.engine
        policy = WritePolicy(("document", "paragraph"), float(ratio), e.config.entity_ratio)
        mem = e.flush(e.write(text, policy=policy))
        slots = mem.paragraphs
        cap = e.config.max_recall_tokens
        # Batched form of e.recall(mem, index=i) for every slot (same caps, no query).
        hyps = reconstruct(e.model, e.tokenizer, [s.state for s in slots], [slot_cap(s, cap) for s in slots])
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

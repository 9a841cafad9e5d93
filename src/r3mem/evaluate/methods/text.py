"""Text methods without retrieval: the base model over a truncated window (`no_memory`) or over the
whole context (`full_context`), its adapters disabled.
"""

from __future__ import annotations

from typing import Any

from r3mem.backbone import max_positions
from r3mem.evaluate.common import Skip
from r3mem.evaluate.methods.base import Answer, Method, first_line, score_tail, tail_start
from r3mem.prompts import answer_prompt
from r3mem.tokens import tokenize


class NoMemory(Method):
    def info(self) -> dict[str, Any]:
        return {**super().info(), "window": "last budget tokens of the context"}

    def qa_answer(self, doc, _doc, question: str, budget: int) -> Answer:
        start = tail_start(self.tok, doc.context, budget)
        window = doc.context[start:]
        return Answer(first_line(self.reader.read(answer_prompt(window, question), self.opts.max_new_tokens)),
                      [(start, len(doc.context))])

    def qa_memory(self, doc, _doc, budget: int) -> tuple[int, int]:
        start = tail_start(self.tok, doc.context, budget)
        return len(doc.context[start:].encode()), min(budget, len(tokenize(self.tok, doc.context)))

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        return [
            (s, *score_tail(self.reader, ids[s : s + seg_len], len(ids[s : s + seg_len])))
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
        return Answer(first_line(self.reader.read(prompt, self.opts.max_new_tokens)), [(0, len(doc.context))])

    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        window = max_positions(self.reader.model.lm)
        out = []
        for s in range(0, len(ids), seg_len):
            end = min(len(ids), s + seg_len)
            ctx = ids[max(0, end - window):end]
            out.append((s, *score_tail(self.reader, ctx, end - s)))
        return out

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        tail = ids[-max_positions(self.reader.model.lm):]
        return len(self.tok.decode(tail).encode()), len(tail)

"""The reader prompt: how recalled text and a question are put to the bare base model.

`R3Mem.answer`, `ChatAgent` (with `prompt=QA_PROMPT`) and every method of the evaluation harness use
this one template, so their answers are comparable.
"""

from __future__ import annotations

__all__ = ["QA_PROMPT", "MEMORY_QA_PROMPT", "answer_prompt"]

QA_PROMPT = "Context:\n{context}\n\nQuestion: {question}\nAnswer in a few words."
# The same question when the context is not text but memory read as a cache prefix (`R3Mem.answer(read="cache")`).
MEMORY_QA_PROMPT = "Question: {question}\nAnswer in a few words."


def answer_prompt(context: str, question: str) -> str:
    """`QA_PROMPT` filled in (the values are inserted verbatim, braces in them included)."""
    return QA_PROMPT.format(context=context, question=question)

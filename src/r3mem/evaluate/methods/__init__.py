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

from r3mem.evaluate.methods.base import ADAPTER_METHODS, DESCRIPTIONS, METHODS, Answer, Method
from r3mem.evaluate.methods.memory import MemoryMethod
from r3mem.evaluate.methods.retrieval import BM25, Embedding
from r3mem.evaluate.methods.text import FullContext, NoMemory

__all__ = [
    "METHODS", "ADAPTER_METHODS", "DESCRIPTIONS", "Method", "MemoryMethod", "NoMemory", "FullContext", "BM25",
    "Embedding", "Answer",
]

TEXT_METHODS = {"no_memory": NoMemory, "full_context": FullContext, "bm25": BM25, "embedding": Embedding}

"""Retrieval keys: what a slot is found by, computed once when the slot is written.

Choosing slots for a question must not run the model over every slot (that is what made recall cost
grow with the memory). So every slot gets, at write time, two keys from the text it compresses:

- a **dense** key: the slot text's MiniLM sentence embedding (`KEY_DIM` floats, unit norm, stored as
  float16: 768 bytes against ~23 KB per memory token);
- a **lexical** key: the slot text's term counts (the BM25 tokenisation of `retrieval.bm25_tokenize`).

A question is then embedded once and matched against every key (`index.SlotIndex`), the best few slots
re-ranked by the memory's own query likelihood, and only the chosen slots are expanded.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from r3mem.retrieval import bm25_tokenize, shared_encoder

__all__ = ["KEY_DIM", "KEY_ENCODER", "KeyEncoder", "MiniLMKeys", "key_text", "terms_of"]

KEY_DIM = 384
KEY_ENCODER = "all-MiniLM-L6-v2"  # recorded in memory files: keys of another encoder are refused


class KeyEncoder(Protocol):
    """Texts -> dense keys [N, dim] float32, unit norm (one row per text, same order)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMKeys:
    """all-MiniLM-L6-v2 from its PyPI wheel (no hub access), the process's one shared copy.

    Each text is encoded on its own (about 10 ms for a conversation turn on 2 CPU cores): in a batch,
    padding to the longest text changes the last bits of the others' keys, and a key must not depend
    on what else was written in the same call (write(a) then write(b) == write(a + b), byte for byte).
    Encoding holds a lock: one torch module and one Rust tokenizer must not run in several threads."""

    name, dim = KEY_ENCODER, KEY_DIM
    _lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            enc = shared_encoder()
            vecs = [enc.encode([t], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
                    for t in texts]
        return np.asarray(vecs, dtype=np.float32)


def key_text(text: str) -> str:
    """The text a key is computed from: the slot's text, whitespace runs folded (an empty text keys as a space)."""
    return " ".join(text.split()) or " "


def terms_of(text: str) -> dict[str, int]:
    """The lexical key: BM25 term counts of the text."""
    return dict(Counter(bm25_tokenize(text)))


def dense_tensor(vecs: np.ndarray) -> list[torch.Tensor]:
    """Rows of [N, dim] float32 keys as float16 tensors [dim] (the stored form)."""
    t = torch.from_numpy(np.ascontiguousarray(vecs)).to(torch.float16)
    return list(t.unbind(0)) if len(t) else []

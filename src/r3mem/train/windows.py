"""Segment-recurrent language-modelling batches for the retention objective (paper digest §4.1, §4.4).

The forward LM loss scores segment t given the memory written from segments < t, so a training row
must be ``n_segments`` *contiguous* segments of one document. This module cuts documents (token-id
lists) into such windows and batches them reproducibly: the order comes from a private
``torch.Generator`` seeded by the caller, never from the global RNG.

Tokenisation streams long texts in chunks cut at whitespace, so a whole book is never handed to the
tokenizer at once; with a byte-level or whitespace pre-tokenizer the ids equal those of a single call.
"""

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from r3mem.text import iter_text_chunks

__all__ = ["Window", "tokenize_text", "tokenize_file", "tokenize_documents", "lm_windows", "lm_batches"]


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


def tokenize_file(path: str | os.PathLike, tokenizer: Any, chunk_chars: int = 1 << 16) -> list[int]:
    """Token ids of a file read in a stream (UTF-8, BOM dropped, newlines normalised; see ``text``)."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    return _encode_pieces(_split_at_whitespace(iter_text_chunks(path, chunk_chars), chunk_chars), tokenizer)


def tokenize_documents(texts: Iterable[str], tokenizer: Any, chunk_chars: int = 1 << 16) -> list[list[int]]:
    """Token ids of each text (see :func:`tokenize_text`), ready for :func:`lm_batches`."""
    return [tokenize_text(text, tokenizer, chunk_chars) for text in texts]


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


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _collate(documents: Sequence[Sequence[int]], rows: list[Window], window_len: int, pad_id: int) -> dict:
    input_ids = torch.full((len(rows), window_len), pad_id, dtype=torch.long)  # (B, n_segments * seg_len)
    attention_mask = torch.zeros((len(rows), window_len), dtype=torch.long)  # (B, n_segments * seg_len)
    for i, w in enumerate(rows):
        input_ids[i, : w.length] = torch.as_tensor(documents[w.doc][w.start : w.start + w.length], dtype=torch.long)
        attention_mask[i, : w.length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def lm_batches(
    documents: Sequence[Sequence[int]],
    seg_len: int,
    n_segments: int,
    batch_size: int,
    seed: int = 0,
    epochs: int | None = 1,
    pad_id: int = 0,
    min_tokens: int | None = None,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield shuffled batches of contiguous ``n_segments * seg_len``-token windows.

    Each epoch visits every window of :func:`lm_windows` once, in an order drawn from a
    ``torch.Generator`` seeded with ``seed`` (same arguments → same batches; global RNG untouched).

    Args:
        documents: Token-id lists, e.g. from :func:`tokenize_documents`.
        seg_len: Tokens per segment.
        n_segments: Segments per row (the recurrence depth seen in training).
        batch_size: Rows per batch.
        seed: Seed of the shuffling generator.
        epochs: Passes over the windows; ``None`` repeats forever (reshuffling each pass).
        pad_id: Id written into padded positions of short windows (masked out anyway).
        min_tokens: Shortest window kept; defaults to ``seg_len`` (at least one full segment).
        drop_last: Skip a final batch smaller than ``batch_size`` in each epoch.

    Yields:
        ``{"input_ids": LongTensor (B, n_segments * seg_len), "attention_mask": LongTensor (same)}``,
        right-padded, mask 1 on real tokens.

    Raises:
        ValueError: A size is not a positive int, or no document has ``min_tokens`` tokens.
    """
    _check_positive(seg_len=seg_len, n_segments=n_segments, batch_size=batch_size)
    if epochs is not None and epochs < 0:
        raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
    window_len = seg_len * n_segments
    min_tokens = seg_len if min_tokens is None else min_tokens
    _check_positive(min_tokens=min_tokens)
    windows = lm_windows(documents, window_len, min_tokens)
    if not windows:
        raise ValueError(f"no document has at least min_tokens={min_tokens} tokens ({len(documents)} documents)")
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(len(windows), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            rows = [windows[j] for j in order[i : i + batch_size]]
            if drop_last and len(rows) < batch_size:
                break
            yield _collate(documents, rows, window_len, pad_id)
        epoch += 1

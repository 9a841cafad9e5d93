"""Segment-recurrent language-modelling windows for the retention objective.

The forward LM loss scores segment t given the memory written from segments < t, so a training row
must be ``n_segments`` *contiguous* segments of one document. This module cuts documents (token-id
lists) into such windows; `train.mixture` batches them.

Documents are tokenized by `tokens.tokenize_long` (in chunks cut at whitespace, as user text is).
"""

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Window", "lm_windows"]


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

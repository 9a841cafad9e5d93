"""Token helpers shared by writing, reading, training and evaluation.

`tokenize` is the one way user text becomes ids (special-token strings are split, never obeyed), and
`tokenize_long` the same for text of any length;
`pad_batch` right-pads id lists into `(ids, mask)`; `lm_labels` turns them into loss labels;
`slot_tokens` is how many memory tokens a slot of a given length gets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import torch

__all__ = ["tokenize", "tokenize_long", "split_at_whitespace", "pad_batch", "lm_labels", "slot_tokens", "IGNORE_INDEX",
           "newline_table", "paragraph_pieces"]

# The label cross-entropy skips (torch and transformers both default to it).
IGNORE_INDEX = -100


def slot_tokens(n_tokens: int, ratio: float, max_slot: int) -> int:
    """Memory tokens for a slot of `n_tokens` at a compression ratio, within [1, max_slot]."""
    return max(1, min(max_slot, math.ceil(n_tokens / ratio)))


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids, mask)."""
    T = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), T), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def lm_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels [B,T] for a padded batch: the ids, with padding set to IGNORE_INDEX (a new tensor)."""
    return ids.masked_fill(mask == 0, IGNORE_INDEX)


def tokenize(tok, text: str) -> list[int]:
    """Token ids of user text. Special-token strings in the text (e.g. "<|im_end|>") are split into
    ordinary tokens, so text can never inject control tokens into a memory or a prompt."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def split_at_whitespace(chunks: Iterable[str], chunk_chars: int) -> Iterator[str]:
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


def tokenize_long(tok, text: str, chunk_chars: int = 1 << 16) -> list[int]:
    """`tokenize` of text of any length (a whole book), in tokenizer calls of about `chunk_chars` characters
    cut before a whitespace run, so the tokenizer's working memory stays bounded; with a byte-level or
    whitespace pre-tokenizer the ids equal those of one call."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    slices = (text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars))  # keeps the buffer small
    return [i for piece in split_at_whitespace(slices, chunk_chars) for i in tokenize(tok, piece)]


def newline_table(tok) -> list[int]:
    """Per token id: the number of newlines the token holds if it is whitespace only, else -1."""
    out = []
    for i in range(len(tok)):
        s = tok.decode([i])
        out.append(s.count("\n") if s and not s.strip() else -1)
    return out


def paragraph_pieces(ids: list[int], newlines: list[int], max_len: int) -> list[int]:
    """Each token's slot piece, numbered from 0 in order, -1 on paragraph breaks: a break is a run of
    whitespace-only tokens (`newline_table`) holding two or more newlines (a line break inside a
    paragraph is not one, and a tokenizer may spell a blank line as one token or two), and each
    paragraph between breaks is cut into pieces of `max_len` tokens and a last of the rest, as the
    writer cuts a paragraph into slots."""
    n, brk, i = len(ids), [False] * len(ids), 0
    while i < n:
        j, lines = i, 0
        while j < n and newlines[ids[j]] >= 0:
            lines, j = lines + newlines[ids[j]], j + 1
        if lines >= 2:
            brk[i:j] = [True] * (j - i)
        i = max(j, i + 1)
    piece, nxt, i = [-1] * n, 0, 0
    while i < n:
        if brk[i]:
            i += 1
            continue
        j = i
        while j < n and not brk[j]:
            j += 1
        for a in range(i, j, max_len):
            piece[a:min(a + max_len, j)] = [nxt] * (min(a + max_len, j) - a)
            nxt += 1
        i = j
    return piece

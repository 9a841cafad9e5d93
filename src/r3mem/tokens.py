"""Token helpers shared by writing, reading, training and evaluation.

`tokenize` is the one way user text becomes ids (special-token strings are split, never obeyed);
`pad_batch` right-pads id lists into `(ids, mask)`; `lm_labels` turns them into loss labels;
`slot_tokens` is how many memory tokens a slot of a given length gets.
"""

from __future__ import annotations

import math

import torch

__all__ = ["tokenize", "pad_batch", "lm_labels", "slot_tokens", "IGNORE_INDEX"]

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

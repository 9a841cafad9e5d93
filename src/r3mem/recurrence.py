"""The document-level segment recurrence: the one loop that training, writing and evaluation share.

    state_0 = M_0;  state_t = compress(segment_t | state_{t-1})

A history of any length is folded segment by segment into a memory of constant size (retention).
Training truncates back-propagation every `bptt_depth` segments; writing rounds the state to the
storage dtype (and, with `memory_bits` < 16, to its quantized value) after every segment; evaluation
scores each segment given the memory of the previous ones (or, with `carry=False`, given M_0 only, to
measure what the memory adds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from r3mem.quant import Packed, dequantize, quantize
from r3mem.tokens import IGNORE_INDEX, lm_labels, pad_batch

__all__ = ["Folded", "fold"]


@dataclass
class Folded:
    state: torch.Tensor  # [B, ...] the memory after the last segment
    loss: torch.Tensor  # summed next-token loss over scored tokens (0 without labels)
    n: torch.Tensor  # number of scored tokens
    per_segment: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (loss sum, n) per segment
    # with `quant_bits` < 16: the state's codes ([B, ...] batched), `state` being their value; a row whose
    # segments were all padding holds codes of no meaning (its state is the one passed in)
    packed: Packed | None = None


def _where(keep: torch.Tensor, new: Packed, old: Packed | None) -> Packed:
    """Per row, `new`'s codes where `keep`, else `old`'s."""
    if old is None:
        return new
    pick = [torch.where(keep.view(-1, *[1] * (a.dim() - 1)), a, b) for a, b in
            ((new.codes, old.codes), (new.low, old.low), (new.step, old.step))]
    return Packed(*pick, new.bits, new.shape)


def fold(model, state: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *, bptt_depth: int | None = None,
         with_loss: bool = False, score_first: bool = True, carry: bool = True,
         store_dtype: torch.dtype | None = None, quant_bits: int = 16, segment_len: int | None = None,
         on_segment: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
         read_prefix: Callable[[torch.Tensor], list[list[int]]] | None = None) -> Folded:
    """Fold [B, T] tokens (right-padded, `mask` 1 for real tokens) into `state`, segment by segment.

    A row whose segment is all padding keeps its memory, so a batch equals its rows run alone.
    `bptt_depth`: gradients cross at most this many segment transitions (the state is detached
    every `bptt_depth` segments); None: never detached. `with_loss`: each segment's tokens are
    scored given the memory (`score_first=False` leaves each segment's first token out).
    `carry=False` reads the initial `state` at every segment (memory reset). `store_dtype` rounds
    the memory after every segment, and `quant_bits` < 16 quantizes it then (`quant.py`: the state
    carried on is the dequantized value, `Folded.packed` its codes), as a quantized memory stores it;
    `segment_len` overrides the model's. `on_segment(state, seg_ids,
    seg_mask)` runs after each segment. `read_prefix(state)` gives, per row, token ids read before
    each segment after the first (e.g. the text recalled from the memory): the segment is scored
    after them, while the memory is updated from the segment alone, as without them.
    """
    seg = segment_len or model.cfg.segment_len
    initial = state
    loss_sum, n_sum = ids.new_zeros((), dtype=torch.float32), ids.new_zeros(())
    per: list[tuple[torch.Tensor, torch.Tensor]] = []
    packed: Packed | None = None
    for t, s in enumerate(range(0, ids.shape[1], seg)):
        if bptt_depth is not None and t and t % bptt_depth == 0:
            state = state.detach()
        seg_ids, seg_mask = ids[:, s:s + seg], mask[:, s:s + seg]
        labels = None
        if with_loss:
            labels = lm_labels(seg_ids, seg_mask)
            if not score_first:
                labels[:, 0] = IGNORE_INDEX
        read = state if carry else initial
        after_prefix = labels is not None and read_prefix is not None and t > 0
        new, loss, n = model.compress(model.embed(seg_ids), seg_mask, read, model.cfg.num_mem_tokens,
                                      None if after_prefix else labels)
        if after_prefix:
            loss, n = _score_after(model, read, read_prefix(read), seg_ids, seg_mask, labels)
        if store_dtype is not None:
            new = new.to(store_dtype)
        keep = (seg_mask.sum(1) > 0).view(-1, *[1] * (new.dim() - 1))
        if quant_bits < 16:  # the next segment reads what the memory file will hold
            p = quantize(new, quant_bits)
            new, packed = dequantize(p, new.dtype), _where(keep, p, packed)
        state = torch.where(keep, new, state.to(new.dtype))
        loss_sum, n_sum = loss_sum + loss, n_sum + n
        per.append((loss, n))
        if on_segment is not None:
            on_segment(state, seg_ids, seg_mask)
    return Folded(state, loss_sum, n_sum, per, packed)


def _score_after(model, state: torch.Tensor, prefixes: list[list[int]], seg_ids: torch.Tensor, seg_mask: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss of a [B, S] segment read after a per-row prefix of token ids (not scored).

    Each row is its prefix followed by its real segment tokens, right-padded, so that the last prefix
    token (or the <start> marker, without a prefix) predicts the segment's first token.
    """
    rows, labs = [], []
    for b, p in enumerate(prefixes):
        n = int(seg_mask[b].sum())
        rows.append(list(p) + seg_ids[b, :n].tolist())
        labs.append([IGNORE_INDEX] * len(p) + labels[b, :n].tolist())
    ids, mask = pad_batch(rows, 0, seg_ids.device)
    lab, _ = pad_batch(labs, IGNORE_INDEX, seg_ids.device)
    _, loss, n = model.compress(model.embed(ids), mask, state, model.cfg.num_mem_tokens, lab)
    return loss, n

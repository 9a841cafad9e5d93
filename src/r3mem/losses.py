"""Training objectives, each returned separately so they can be logged and ablated.

- forward  (compress):  next-segment LM given the recurrent memory, and query given a slot memory;
- backward (expand):    reconstruct the text from its memory (optionally conditioned on the query);
- cycle:               text -> memory -> soft text -> memory' ; memory' must match memory.
A term whose weight is 0 is not computed at all, so it contributes no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r3mem.model import R3MemModel
from r3mem.quant import fake_quantize
from r3mem.recurrence import fold
from r3mem.tokens import lm_labels, pad_batch, slot_tokens

__all__ = ["LossTerms", "lm_losses", "local_lm_losses", "pair_losses", "recon_losses"]


@dataclass
class LossTerms:
    forward: torch.Tensor
    backward: torch.Tensor
    cycle: torch.Tensor

    def total(self, w_fwd: float, w_bwd: float, w_cyc: float) -> torch.Tensor:
        return w_fwd * self.forward + w_bwd * self.backward + w_cyc * self.cycle

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("forward", "backward", "cycle")}


def _zero(model: R3MemModel) -> torch.Tensor:
    return model.memory.init_mem.new_zeros(())


def _mean_ce(model: R3MemModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss, n = model.token_nll(hidden, labels)
    return loss / n.clamp(min=1)


def cycle_term(model: R3MemModel, state: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Re-compress the expansion's soft tokens (probabilities x embedding table); compare memories."""
    probs = torch.softmax(model.logits(hidden).float(), -1)
    soft = probs.to(hidden.dtype) @ model.lm.get_input_embeddings().weight
    again, _, _ = model.compress(soft, mask, model.slot_prior(state.shape[0]), state.shape[-2])
    if model.kv:  # compare the memories' keys and values, per layer, head and memory token
        return (1 - F.cosine_similarity(again, state.detach(), dim=-1)).mean()
    return (1 - F.cosine_similarity(again[:, 0], state[:, 0].detach(), dim=-1)).mean()


def lm_losses(
    model: R3MemModel, ids: torch.Tensor, mask: torch.Tensor, w_fwd: float, w_bwd: float, w_cyc: float,
    read_previous: bool = False,
) -> LossTerms:
    """Retention on a [B, T] window: segment recurrence with LM loss; each segment is then expanded back.

    `read_previous`: each segment after the first is scored after the true text of the segment before
    (and the memory), the training counterpart of the reversible read, where that text is recalled.
    """
    bwd, cyc, n_seg = [_zero(model)], [_zero(model)], [0]
    previous: list[list[int]] = [[] for _ in range(ids.shape[0])]

    def expand_back(state: torch.Tensor, seg: torch.Tensor, smask: torch.Tensor) -> None:
        if read_previous:
            previous[:] = [seg[b, :int(smask[b].sum())].tolist() for b in range(seg.shape[0])]
        if w_bwd > 0 or w_cyc > 0:
            hidden, lab = model.teacher_force(state, seg, smask)
            if w_bwd > 0:
                bwd[0] = bwd[0] + _mean_ce(model, hidden, lab)
            if w_cyc > 0:
                cyc[0] = cyc[0] + cycle_term(model, state, hidden, smask)
        n_seg[0] += 1

    out = fold(model, model.initial_state(ids.shape[0]), ids, mask, bptt_depth=model.cfg.bptt_depth,
               with_loss=w_fwd > 0, on_segment=expand_back,
               read_prefix=(lambda _state: [list(p) for p in previous]) if read_previous else None)
    fwd = out.loss / out.n.clamp(min=1) if w_fwd > 0 else _zero(model)
    return LossTerms(fwd, bwd[0] / max(n_seg[0], 1), cyc[0] / max(n_seg[0], 1))


def local_lm_losses(model: R3MemModel, ids: torch.Tensor, mask: torch.Tensor, piece: torch.Tensor, w_fwd: float,
                    w_bwd: float, w_cyc: float) -> LossTerms:
    """`lm_losses` for the slots-first document fold (`R3MemModel.fold_local`): a [B, T] window cut into
    slot pieces (piece [B, T], `tokens.paragraph_pieces`) is folded in one pass from the keys/values its
    pieces' slot passes give it; each segment is then scored after the memory before it and expanded
    back from its own, as `lm_losses` does (here all segments at once, as rows)."""
    B, seg, k = ids.shape[0], model.cfg.segment_len, model.cfg.num_mem_tokens
    first = model.initial_state(B)
    states = model.fold_local(model.embed(ids), mask, piece, first)  # [B, N, L, 2, H, k, hd]
    N = states.shape[1]
    pad = N * seg - ids.shape[1]
    segs = F.pad(ids, (0, pad)).view(B * N, seg)
    smask = F.pad(mask, (0, pad)).view(B * N, seg)
    live = smask.sum(1) > 0
    segs, smask = segs[live], smask[live]
    fwd = bwd = cyc = _zero(model)
    if w_fwd > 0:
        before = torch.cat([first[:, None], states[:, :-1]], 1).flatten(0, 1)[live]
        _, loss, n = model.compress(model.embed(segs), smask, before, k, lm_labels(segs, smask))
        fwd = loss / n.clamp(min=1)
    if w_bwd > 0 or w_cyc > 0:
        own = states.flatten(0, 1)[live]
        hidden, lab = model.teacher_force(own, segs, smask)
        bwd = _mean_ce(model, hidden, lab) if w_bwd > 0 else bwd
        cyc = cycle_term(model, own, hidden, smask) if w_cyc > 0 else cyc
    return LossTerms(fwd, bwd, cyc)


def pair_losses(model: R3MemModel, ctx: tuple[torch.Tensor, torch.Tensor], query: tuple[torch.Tensor, torch.Tensor],
                target: tuple[torch.Tensor, torch.Tensor], ratio: float, w_fwd: float, w_bwd: float, w_cyc: float,
                condition_on_query: bool = True, bits: int = 16) -> LossTerms:
    """Hierarchical context-query pairs: compress the context into ceil(len/ratio) memory tokens (read
    at `bits`, `quant.fake_quantize`)."""
    B = ctx[0].shape[0]
    k = slot_tokens(int(ctx[1].sum(1).max()), ratio, model.memory.max_slot)
    state, _, _ = model.compress(model.embed(ctx[0]), ctx[1], model.slot_prior(B), k)
    state = fake_quantize(state, bits)
    fwd = bwd = cyc = _zero(model)
    if w_fwd > 0:
        hidden, lab = model.score(state, query[0], query[1])
        fwd = _mean_ce(model, hidden, lab)
    if w_bwd > 0 or w_cyc > 0:
        hidden, lab = model.teacher_force(state, target[0], target[1], query=query if condition_on_query else None)
        if w_bwd > 0:
            bwd = _mean_ce(model, hidden, lab)
        if w_cyc > 0:
            cyc = cycle_term(model, state, hidden, target[1])
    return LossTerms(fwd, bwd, cyc)


def recon_losses(model: R3MemModel, ctx: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
                 ratio: float, w_cyc: float = 0.0, text_lm: bool = False, bits: int = 16,
                 before: tuple[torch.Tensor, torch.Tensor] | None = None) -> LossTerms:
    """Autoencoding: compress the text into ceil(len/ratio) memory tokens, reconstruct it (and <eos>)
    from them as read at `bits` (`quant.fake_quantize`: 16 leaves them as they are).

    `text_lm`: the forward term is the text's own next-token loss in the compress pass (no memory
    read), otherwise zero. `before` ([B, A] ids and mask, rows' text left-aligned): the text is written in
    a document pass after this text and M_0 (`compress_in_pass`, the one-pass hierarchy); no forward term.
    """
    k = slot_tokens(int(ctx[1].sum(1).max()), ratio, model.memory.max_slot)
    if before is not None:
        state, fwd = _in_pass_state(model, ctx, before, k), _zero(model)
    else:
        labels = lm_labels(*ctx) if text_lm else None
        state, lm_sum, lm_n = model.compress(model.embed(ctx[0]), ctx[1], model.slot_prior(ctx[0].shape[0]), k,
                                             labels)
        fwd = lm_sum / lm_n.clamp(min=1) if text_lm else _zero(model)
    state = fake_quantize(state, bits)
    hidden, lab = model.teacher_force(state, target[0], target[1])
    cyc = cycle_term(model, state, hidden, target[1]) if w_cyc > 0 else _zero(model)
    return LossTerms(fwd, _mean_ce(model, hidden, lab), cyc)



def _in_pass_state(model: R3MemModel, ctx: tuple[torch.Tensor, torch.Tensor],
                   before: tuple[torch.Tensor, torch.Tensor], k: int) -> torch.Tensor:
    """Each row's slot written in one document pass over its `before` text and then its text, after M_0."""
    rows = [b[m.bool()].tolist() + c[cm.bool()].tolist() for b, m, c, cm in zip(*before, *ctx)]
    ids, mask = pad_batch(rows, 0, ctx[0].device)
    return model.compress_in_pass(model.embed(ids), mask, ctx[1].sum(1), model.initial_state(ids.shape[0]), k)

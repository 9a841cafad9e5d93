"""Writing text into a Memory: paragraph/entity slots and the document-level recurrence.

Paragraphs are tokenised one at a time (with their "\\n\\n" separator), so the token stream does not
depend on how the text was split across `write` calls.
"""

from __future__ import annotations

import math
import re

import torch

from r3mem.data.spans import Span, entity_spans, paragraph_spans, sentence_spans
from r3mem.memory import Memory, Slot
from r3mem.model import R3MemModel

__all__ = ["write_text", "flush", "effective_doc_state", "slot_tokens", "compress_texts", "pad_batch", "tokenize"]

_TRAILING_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*$")
_SLOT_BATCH = 8


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


def tokenize(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def compress_texts(model: R3MemModel, seqs: list[list[int]], ratio: float, pad_id: int) -> list[torch.Tensor]:
    """Compress independent token sequences from a fresh memory; returns one [levels, k, d] per input.

    Sequences needing the same number of memory tokens are batched together.
    """
    out: list[torch.Tensor | None] = [None] * len(seqs)
    device = model.memory.init_mem.device
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(slot_tokens(len(s), ratio, model.memory.max_slot), []).append(i)
    for k, idx in groups.items():
        for c in range(0, len(idx), _SLOT_BATCH):
            chunk = idx[c:c + _SLOT_BATCH]
            ids, mask = pad_batch([seqs[i] for i in chunk], pad_id, device)
            state, _, _ = model.compress(model.embed(ids), mask, model.initial_state(len(chunk)), k)
            for j, i in enumerate(chunk):
                out[i] = state[j]
    return out  # type: ignore[return-value]


def _split_commit(buf: str) -> tuple[list[Span], int]:
    """Complete paragraphs of `buf` and the index where the pending tail starts."""
    paras = paragraph_spans(buf)
    if not paras:
        return [], len(buf) if buf.strip() == "" and _TRAILING_BREAK.search(buf) else 0
    if _TRAILING_BREAK.search(buf[paras[-1].end:] if buf[paras[-1].end:] else ""):
        return paras, len(buf)
    return paras[:-1], paras[-1].start


def _fold_segments(model: R3MemModel, mem: Memory, pad_id: int, final: bool) -> None:
    seg = model.cfg.segment_len
    device = mem.doc_state.device
    while len(mem.pending_ids) >= seg or (final and mem.pending_ids):
        chunk, mem.pending_ids = mem.pending_ids[:seg], mem.pending_ids[seg:]
        ids, mask = pad_batch([chunk], pad_id, device)
        state, _, _ = model.compress(model.embed(ids), mask, mem.doc_state.unsqueeze(0), model.cfg.num_mem_tokens)
        mem.doc_state = state[0]
        mem.n_segments += 1


def _paragraph_slots(model, tok, buf: str, paras: list[Span], mem: Memory, pad_id: int) -> list[Slot]:
    cfg = model.cfg
    pieces: list[tuple[str, int, int, list[int]]] = []  # key, start, end, ids
    for p in paras:
        ids = tokenize(tok, p.text)
        n = len(mem.paragraphs) + len({k.split(".")[0] for k, *_ in pieces})
        chunks = [ids[i:i + cfg.max_paragraph_tokens] for i in range(0, max(1, len(ids)), cfg.max_paragraph_tokens)]
        for j, c in enumerate(chunks):
            # Character span of a split chunk: decode lengths are exact for byte-level tokenizers.
            s = p.start + len(tok.decode(ids[:j * cfg.max_paragraph_tokens]))
            e = p.start + len(tok.decode(ids[:(j + 1) * cfg.max_paragraph_tokens])) if j + 1 < len(chunks) else p.end
            pieces.append((f"p{n}" if len(chunks) == 1 else f"p{n}.{j}", mem.offset + s, mem.offset + min(e, p.end), c))
    states = compress_texts(model, [c for *_, c in pieces], cfg.paragraph_ratio, pad_id)
    return [Slot("paragraph", key, s, e, len(c), st) for (key, s, e, c), st in zip(pieces, states)]


def _entity_slots(model, tok, buf: str, paras: list[Span], mem: Memory, first_para: int, pad_id: int) -> None:
    new: list[tuple[str, Span, int]] = []
    for pi, p in enumerate(paras):
        sentences = sentence_spans(buf, p.start, p.end)
        for ent in entity_spans(buf, p.start, p.end):
            span = (mem.offset + ent.start, mem.offset + ent.end)
            existing = mem.entity(ent.text)
            if existing is not None:
                existing.mentions.append(span)
                continue
            pending = next((x for x in new if x[0].lower() == ent.text.lower()), None)
            if pending is not None:
                continue  # first mention already queued; all mention spans are collected below
            sent = next((s for s in sentences if s.start <= ent.start < s.end), p)
            new.append((ent.text, sent, first_para + pi))
    if not new:
        return
    seqs = [tokenize(tok, s.text) for _, s, _ in new]
    states = compress_texts(model, seqs, model.cfg.entity_ratio, pad_id)
    for (name, sent, parent), ids, st in zip(new, seqs, states):
        mentions = [(mem.offset + m.start, mem.offset + m.end) for p in paras
                    for m in entity_spans(buf, p.start, p.end) if m.text.lower() == name.lower()]
        mem.entities.append(Slot("entity", name, mem.offset + sent.start, mem.offset + sent.end, len(ids), st,
                                 parent=parent, mentions=mentions))


def _commit(model, tok, mem: Memory, buf: str, paras: list[Span], commit_end: int) -> None:
    pad_id = tok.pad_token_id
    levels = model.cfg.hierarchy_levels
    first_para = len(mem.paragraphs)
    if paras and "paragraph" in levels:
        mem.paragraphs.extend(_paragraph_slots(model, tok, buf, paras, mem, pad_id))
    if paras and "entity" in levels:
        _entity_slots(model, tok, buf, paras, mem, first_para, pad_id)
    for p in paras:
        ids = tokenize(tok, p.text + "\n\n")
        mem.pending_ids.extend(ids)
        mem.n_tokens += len(ids)
    mem.offset += commit_end
    mem.pending_text = buf[commit_end:]


@torch.no_grad()
def write_text(model: R3MemModel, tok, mem: Memory, text: str) -> Memory:
    """Return a new Memory with `text` appended; the input Memory is left untouched."""
    mem = mem.copy()
    buf = mem.pending_text + text
    paras, commit_end = _split_commit(buf)
    _commit(model, tok, mem, buf, paras, commit_end)
    _fold_segments(model, mem, tok.pad_token_id, final=False)
    return mem


@torch.no_grad()
def flush(model: R3MemModel, tok, mem: Memory) -> Memory:
    """Commit the pending paragraph and fold a partial last segment into the document state."""
    mem = mem.copy()
    buf = mem.pending_text
    paras = paragraph_spans(buf)
    _commit(model, tok, mem, buf, paras, len(buf))
    _fold_segments(model, mem, tok.pad_token_id, final=True)
    return mem


def effective_doc_state(model: R3MemModel, tok, mem: Memory) -> torch.Tensor:
    """The document state as if the memory were flushed now, without changing `mem`."""
    if not mem.pending_ids and not mem.pending_text.strip():
        return mem.doc_state
    tmp = mem.copy()
    tmp.pending_ids += [i for p in paragraph_spans(mem.pending_text) for i in tokenize(tok, p.text + "\n\n")]
    _fold_segments(model, tmp, tok.pad_token_id, final=True)
    return tmp.doc_state

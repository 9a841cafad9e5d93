"""Writing text into a Memory: paragraph/entity slots and the document-level recurrence.

Paragraphs are tokenised one at a time (with their "\\n\\n" separator), so the token stream does not
depend on how the text was split across `write` calls.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field, replace

import torch

from r3mem.hierarchy import Span, entity_spans, paragraph_spans, sentence_spans
from r3mem.keys import KeyEncoder, dense_tensor, key_text, terms_of
from r3mem.memory import Memory, Slot, Snapshot, WritePolicy
from r3mem.model import R3MemModel
from r3mem.quant import Packed, dequantize, quantize
from r3mem.recurrence import fold
from r3mem.tokens import pad_batch, slot_tokens, tokenize

__all__ = ["write_text", "write_texts", "flush", "effective_doc_state", "compress_texts", "compress_texts_keeping_text",
           "compress_slots", "add_keys", "pending_slot", "policy_of", "with_policy", "reusable", "Reuse", "settle"]

_TRAILING_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*$")
_SLOT_BATCH = 8
_DECODE_LOOKBACK = 16  # tokens re-decoded before a split point (more than any character's bytes)


@torch.no_grad()
def compress_texts(
    model: R3MemModel, seqs: list[list[int]], ratio: float | list[float], pad_id: int
) -> list[torch.Tensor]:
    """Compress independent token sequences from a fresh memory; returns one state per input, in the
    storage dtype ([levels, k, d], or [L, 2, H, k, hd] in kv mode).

    `ratio` is one compression ratio for all, or one per sequence. A sequence that repeats with the
    same number of memory tokens (several entities first named in one sentence; a one-sentence
    paragraph that is also an entity's sentence) is compressed once: the state depends on nothing
    else. Sequences needing the same number of memory tokens are batched, sorted by length so that a
    batch carries little padding.
    """
    return [state for state, _ in _compressed(model, seqs, ratio, pad_id, keep_text=False)]


@torch.no_grad()
def compress_texts_keeping_text(model: R3MemModel, seqs: list[list[int]], ratio: float | list[float],
                                pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`compress_texts` (kv mode), with each sequence's keys/values of its slot pass ([L, 2, H, n, hd],
    `R3MemModel.slots_keeping_text`): what the slots-first document fold reads (`fold_over_pieces`)."""
    return _compressed(model, seqs, ratio, pad_id, keep_text=True)


def _compressed(model: R3MemModel, seqs: list[list[int]], ratio: float | list[float], pad_id: int,
                keep_text: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    ratios = [ratio] * len(seqs) if isinstance(ratio, (int, float)) else list(ratio)
    if len(ratios) != len(seqs):
        raise ValueError(f"compress_texts: {len(seqs)} sequences but {len(ratios)} ratios")
    device = model.memory.init_mem.device
    keys = [(slot_tokens(len(s), r, model.memory.max_slot), tuple(s)) for s, r in zip(seqs, ratios)]
    first: dict[tuple[int, tuple[int, ...]], int] = {}  # (k, tokens) -> index of its first occurrence
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        if first.setdefault(key, i) == i:
            groups.setdefault(key[0], []).append(i)
    done: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for k, idx in groups.items():
        idx.sort(key=lambda i: len(seqs[i]))
        for c in range(0, len(idx), _SLOT_BATCH):
            chunk = idx[c:c + _SLOT_BATCH]
            ids, mask = pad_batch([seqs[i] for i in chunk], pad_id, device)
            if keep_text:
                state, texts = model.slots_keeping_text(model.embed(ids), mask, k)
            else:
                state, texts = model.compress(model.embed(ids), mask, model.slot_prior(len(chunk)), k)[0], None
            for j, i in enumerate(chunk):
                done[i] = (state[j].to(model.store_dtype), None if texts is None else texts[j])
    # A repeat shares its first occurrence's tensor (states are immutable values): stored once in memory
    # and in memory files.
    return [done[i] if i in done else done[first[key]] for i, key in enumerate(keys)]


def compress_slots(model: R3MemModel, seqs: list[list[int]], ratio: float | list[float],
                   pad_id: int) -> list[tuple[torch.Tensor, Packed | None]]:
    """`compress_texts` as slots store it: with `memory_bits` < 16 each state quantized (`quant.py`),
    returned as (its dequantized value, the codes); else (the state, None). Shared states stay shared."""
    states = compress_texts(model, seqs, ratio, pad_id)
    bits = model.cfg.memory_bits
    if bits == 16:
        return [(s, None) for s in states]
    done: dict[int, tuple[torch.Tensor, Packed]] = {}
    for s in states:
        if id(s) not in done:
            p = quantize(s, bits)
            done[id(s)] = (dequantize(p, s.dtype), p)
    return [done[id(s)] for s in states]


def _split_commit(buf: str) -> tuple[list[Span], int]:
    """Complete paragraphs of `buf` and the index where the pending tail starts."""
    paras = paragraph_spans(buf)
    if not paras:
        return [], len(buf) if buf.strip() == "" and _TRAILING_BREAK.search(buf) else 0
    if _TRAILING_BREAK.search(buf[paras[-1].end:] if buf[paras[-1].end:] else ""):
        return paras, len(buf)
    return paras[:-1], paras[-1].start


def _chain(prev: int, ids: list[int]) -> int:
    """The document chain after a segment: 64 bits of sha256(previous chain, the segment's token ids), as a
    signed integer (memory files store chains as int64). Equal chains mean equal token streams."""
    digest = hashlib.sha256(struct.pack(f"<q{len(ids)}q", prev, *ids)).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def _chains(mem: Memory, chunks: list[list[int]]) -> list[int] | None:
    """The memory's chain after each of `chunks` folded in order (None: the memory's chain is unknown)."""
    if mem.doc_chain is None:
        return None
    out, h = [], mem.doc_chain[-1] if mem.doc_chain else 0
    for c in chunks:
        h = _chain(h, c)
        out.append(h)
    return out


def _jump(mem: Memory, chunks: list[list[int]], chains: list[int] | None, reuse: Reuse) -> tuple[int, bool]:
    """Take the earlier memory's document state where this one's stream is the same as its stream.

    Of `chunks` (the memory's next full segments), the leading ones whose chains match `reuse`'s were
    folded by the earlier memory too: the memory jumps to its last snapshot among them (state, chain and the
    snapshots before it). Returns (segments jumped, whether to leave the rest pending): when every chunk
    matched and the earlier memory has a snapshot further on, the rest may be jumped over by a later write
    (`settle` folds what is still pending at the end)."""
    if chains is None or not reuse.snapshots:
        return 0, False
    s, m = mem.n_segments, 0
    while m < len(chunks) and s + m < len(reuse.chain) and chains[m] == reuse.chain[s + m]:
        m += 1
    j = max((t for t in range(1, m + 1) if s + t in reuse.snapshots), default=0)
    if j:
        snap = reuse.snapshots[s + j]
        mem.doc_state, mem.doc_packed = snap.state, snap.packed
        every = mem.policy.snapshot_every if mem.policy else 0
        mem.snapshots.extend(reuse.snapshots[t] for t in range(s + 1, s + j + 1) if every and t % every == 0
                             and t in reuse.snapshots)
        mem.doc_chain.extend(chains[:j])
        mem.n_segments += j
    return j, m == len(chunks) > j and max(reuse.snapshots) > s + len(chunks)


def _fold_segments(model: R3MemModel, mems: list[Memory], pad_id: int, final: bool,
                   reuse: Reuse | None = None) -> None:
    """Fold full segments (and, if `final`, a partial last one) of every memory into its document
    state, all memories in lockstep as one batch; a memory with no segment left keeps its state.

    Each memory's chain grows by a hash per segment and a snapshot is kept every `snapshot_every` segments
    (the fold is cut there). With `reuse`, segments the earlier memory folded from the same tokens are
    not folded again (`_jump`)."""
    seg = model.cfg.segment_len
    chunks, chains = [], []
    for mem in mems:
        n = len(mem.pending_ids) // seg + (1 if final and len(mem.pending_ids) % seg else 0)
        c = [mem.pending_ids[i * seg:(i + 1) * seg] for i in range(n)]
        h = _chains(mem, c)
        j, wait = _jump(mem, c, h, reuse) if reuse is not None and not final else (0, False)
        c, h = ([], []) if wait else (c[j:], h[j:] if h is not None else None)
        mem.pending_ids = mem.pending_ids[(j + len(c)) * seg:]
        chunks.append(c)
        chains.append(h)
    if not any(chunks):
        return
    every = [m.policy.snapshot_every if m.doc_chain is not None and m.policy else 0 for m in mems]
    state, packed = _fold_cut(model, mems, chunks, every, pad_id)
    for i, (mem, c, h) in enumerate(zip(mems, chunks, chains)):
        if not c:
            continue
        mem.doc_state, mem.doc_packed = state[i], packed[i]
        mem.n_segments += len(c)
        if h is not None:
            mem.doc_chain.extend(h)


def _fold_cut(model: R3MemModel, mems: list[Memory], chunks: list[list[list[int]]], every: list[int],
              pad_id: int) -> tuple[torch.Tensor, list[Packed | None]]:
    """Fold chunks[i] into mems[i]'s state, the fold cut after every segment that some memory keeps a
    snapshot of (every[i] segments; appended to its `snapshots`) and at the end. Returns the states
    [B, ...] and each memory's codes (its old ones where it folded nothing)."""
    seg = model.cfg.segment_len
    cuts = sorted({len(max(chunks, key=len))} | {t for m, c, e in zip(mems, chunks, every) if e
                                                  for t in range(1, len(c) + 1) if (m.n_segments + t) % e == 0})
    state = torch.stack([m.doc_state for m in mems])
    # Row i holds its segments back to back; a row with fewer segments pads out and keeps its state.
    ids, mask = pad_batch([[t for piece in c for t in piece] for c in chunks], pad_id, state.device)
    packed: list[Packed | None] = [m.doc_packed for m in mems]
    prev = 0
    for cut in cuts:
        out = fold(model, state, ids[:, prev * seg:cut * seg], mask[:, prev * seg:cut * seg],
                   store_dtype=model.store_dtype, quant_bits=model.cfg.memory_bits)
        state = out.state
        for i, (mem, c, e) in enumerate(zip(mems, chunks, every)):
            if prev >= len(c):  # no segment of this memory in this piece: it keeps its state and codes
                continue
            if out.packed is not None:
                p = out.packed
                packed[i] = Packed(p.codes[i], p.low[i], p.step[i], p.bits, p.shape[1:])
            if e and cut <= len(c) and (mem.n_segments + cut) % e == 0:
                mem.snapshots.append(Snapshot(mem.n_segments + cut, state[i], packed[i]))
        prev = cut
    return state, packed


def _chunk_offsets(tok, ids: list[int], limit: int, n_chunks: int) -> list[int]:
    """`len(tok.decode(ids[:j * limit]))` for j < n_chunks, in time linear in len(ids).

    Decoding is local, so the prefix's growth from one boundary to the next equals that of a window
    starting `_DECODE_LOOKBACK` tokens earlier: UTF-8 resynchronises within 4 bytes, and whatever the
    window's start decodes to (a replacement character, a stripped leading space) is the same in both
    decodes and cancels.
    """
    offsets = [0]
    for j in range(1, n_chunks):
        prev, cur = (j - 1) * limit, j * limit
        w = max(0, prev - _DECODE_LOOKBACK)
        offsets.append(offsets[-1] + len(tok.decode(ids[w:cur])) - len(tok.decode(ids[w:prev])))
    return offsets


def _paragraph_pieces(
    tok, cfg, paras: list[Span], mem: Memory
) -> tuple[list[tuple[str, int, int, list[int]]], list[int]]:
    """(key, start, end, token ids) per paragraph slot, paragraphs over the limit split; and the slot
    index of each paragraph's first slot. Keys count slots ("p5", or "p5.0", "p5.1" for a split one
    taking slots 5 and 6), so they do not depend on how the text was cut into `write` calls."""
    pieces: list[tuple[str, int, int, list[int]]] = []
    firsts: list[int] = []
    limit = cfg.max_paragraph_tokens
    for p in paras:
        ids = tokenize(tok, p.text)
        n = len(mem.paragraphs) + len(pieces)
        firsts.append(n)
        chunks = [ids[j:j + limit] for j in range(0, max(1, len(ids)), limit)]
        # Character span of a split chunk: decode lengths are exact for byte-level tokenizers.
        offsets = _chunk_offsets(tok, ids, limit, len(chunks))
        for j, c in enumerate(chunks):
            s = p.start + offsets[j]
            e = p.start + offsets[j + 1] if j + 1 < len(chunks) else p.end
            pieces.append((f"p{n}" if len(chunks) == 1 else f"p{n}.{j}", mem.offset + s, mem.offset + min(e, p.end), c))
    return pieces, firsts


@dataclass
class _NewEntity:
    """An entity slot to be: its name, its first-mention sentence (span, token ids), the paragraph slot it
    was first seen in and every mention's span; `Slot`ed once its sentence is compressed."""

    key: str
    start: int
    end: int
    ids: list[int]
    parent: int
    mentions: list[tuple[int, int]] = field(default_factory=list)


def _entity_pieces(tok, buf: str, paras: list[Span], mem: Memory, parents: list[int]) -> list[_NewEntity]:
    """The new entities of `paras` (names not yet in `mem`); every mention span of a known name is added
    to its slot, and `parents[i]` is the paragraph slot a name first seen in paragraph i points to.
    Entity spans are computed once per paragraph (linear time), each new sentence tokenized once."""
    new: dict[str, _NewEntity] = {}
    for pi, p in enumerate(paras):
        sentences = sentence_spans(buf, p.start, p.end)
        for ent in entity_spans(buf, p.start, p.end, sentences=sentences):
            span = (mem.offset + ent.start, mem.offset + ent.end)
            known = mem.entity(ent.text)
            if known is not None:
                known.mentions.append(span)
                continue
            e = new.get(ent.text.lower())
            if e is None:
                sent = next((s for s in sentences if s.start <= ent.start < s.end), p)
                e = new[ent.text.lower()] = _NewEntity(ent.text, mem.offset + sent.start, mem.offset + sent.end,
                                                       tokenize(tok, sent.text), parents[pi])
            e.mentions.append(span)
    return list(new.values())


@dataclass(frozen=True)
class Reuse:
    """What a rewrite of mostly unchanged text can take from an earlier memory of it (`reusable`): its
    paragraph slots by their text, and its document chain and snapshots (by segment count), so that the
    document recurrence restarts from the last snapshot before the first changed token."""

    slots: dict[str, Slot]
    chain: tuple[int, ...] = ()
    snapshots: dict[int, Snapshot] = field(default_factory=dict)


def reusable(mem: Memory, text_of) -> Reuse:
    """What a rewrite of `mem`'s text with some turns changed can reuse (`write_texts(reuse=...)`, then
    `settle`): its paragraph slots by the text they were written from (`text_of(start, end)`, None where it
    is unknown), since a slot depends on its own text alone (a kv memory reads nothing else), and its
    document snapshots, since the state after n segments depends on those segments' tokens alone. Only the
    changed paragraphs are compressed and the recurrence is refolded from the snapshot before the change."""
    slots: dict[str, Slot] = {}
    for s in mem.paragraphs:
        text = text_of(s.start, s.end)
        if text is not None:
            slots.setdefault(text, s)
    if mem.doc_chain is None:
        return Reuse(slots)
    return Reuse(slots, tuple(mem.doc_chain), {s.n_segments: s for s in mem.snapshots})


def _reused(model: R3MemModel, mem: Memory, reuse: Reuse | None, text: str, n_tokens: int,
            keyed: bool) -> Slot | None:
    """An earlier slot of exactly this text, at this memory's policy and precision and keyed as this write
    keys slots, if `reuse` has one."""
    old = reuse.slots.get(text) if reuse else None
    if old is None or old.n_tokens != n_tokens or (old.dense is not None) != keyed or \
            old.n_mem_tokens != slot_tokens(n_tokens, mem.policy.paragraph_ratio, model.memory.max_slot) or \
            (old.packed.bits if old.packed is not None else 16) != model.cfg.memory_bits:
        return None
    return old


def add_keys(slots: list[Slot], texts: list[str], keys: KeyEncoder | None) -> None:
    """Give each new slot its retrieval keys, computed from its text (one encoder call for all)."""
    if keys is None or not slots:
        return
    dense = dense_tensor(keys.encode([key_text(t) for t in texts]))
    for slot, text, vec in zip(slots, texts, dense):
        slot.dense, slot.terms = vec, terms_of(text)


def policy_of(model: R3MemModel, mem: Memory) -> WritePolicy:
    """The policy `mem` is written with: its own, or (not written yet, or from an older file) the model
    config's."""
    return mem.policy or WritePolicy.of(model.cfg)


def with_policy(model: R3MemModel, mem: Memory, policy: WritePolicy | None) -> Memory:
    """`mem` (a copy, to be written into) with its policy recorded: `policy`, or the one it has, or the
    config's. A memory keeps one policy: another one for a memory that has one is refused."""
    if policy is not None and mem.policy is not None and policy != mem.policy:
        raise ValueError(f"policy: this memory was written with {mem.policy}; a memory keeps the policy of its "
                         f"first write (got {policy})")
    out = mem.copy()
    out.policy = policy or policy_of(model, mem)
    return out


@dataclass
class _Job:
    """One memory's share of a commit: its buffer (pending text + new text), the complete paragraphs in
    it and where the pending tail starts; then the slots to write (`pieces`, `firsts`, `entities`)."""

    mem: Memory
    buf: str
    paras: list[Span]
    end: int
    pieces: list[tuple[str, int, int, list[int]]] = field(default_factory=list)
    firsts: list[int] = field(default_factory=list)
    entities: list[_NewEntity] = field(default_factory=list)

    def text(self, start: int, end: int) -> str:
        """The buffer's text at stream offsets start:end."""
        return self.buf[start - self.mem.offset:end - self.mem.offset]


def _plan(tok, cfg, jobs: list[_Job]) -> None:
    """The slots each job's paragraphs make at its memory's policy (`_Job.pieces`, `firsts`, `entities`)."""
    for j in jobs:
        levels = j.mem.policy.levels
        if "paragraph" in levels:
            j.pieces, j.firsts = _paragraph_pieces(tok, cfg, j.paras, j.mem)
        if "entity" in levels:  # each paragraph's first slot is the parent of the entities first seen in it
            parents = j.firsts or [len(j.mem.paragraphs) + i for i in range(len(j.paras))]
            j.entities = _entity_pieces(tok, j.buf, j.paras, j.mem, parents)


def _commit(model, tok, jobs: list[_Job], keys: KeyEncoder | None = None, reuse: Reuse | None = None) -> None:
    """Commit complete paragraphs of several memories, each at its own policy (`Memory.policy`); slots
    of all of them are compressed together and, with a key encoder, keyed from their text (a paragraph
    `reuse` has a slot of, by its text, takes that slot's state and keys: `reusable`)."""
    _plan(tok, model.cfg, jobs)
    old = [[_reused(model, j.mem, reuse, j.text(start, end), len(c), keys is not None) for _, start, end, c in j.pieces]
           for j in jobs]
    seqs = [c for j, o in zip(jobs, old) for (*_, c), r in zip(j.pieces, o) if r is None] + \
        [e.ids for j in jobs for e in j.entities]
    ratios = [j.mem.policy.paragraph_ratio for j, o in zip(jobs, old) for r in o if r is None] + \
        [j.mem.policy.entity_ratio for j in jobs for _ in j.entities]
    # Both levels in one call, so text shared between them is compressed once.
    states = iter(compress_slots(model, seqs, ratios, tok.pad_token_id))
    new: list[tuple[Slot, str]] = []  # each new slot and its text, to key them
    for j, o in zip(jobs, old):
        for (key, start, end, c), r in zip(j.pieces, o):
            if r is not None:  # the same text written before: its state and keys, at this slot's place
                j.mem.paragraphs.append(replace(r, key=key, start=start, end=end))  # its expansion cache too
                continue
            state, packed = next(states)
            j.mem.paragraphs.append(Slot("paragraph", key, start, end, len(c), state, packed=packed))
            new.append((j.mem.paragraphs[-1], j.text(start, end)))
    for j in jobs:
        for e in j.entities:
            state, packed = next(states)
            j.mem.entities.append(Slot("entity", e.key, e.start, e.end, len(e.ids), state, parent=e.parent,
                                       mentions=e.mentions, packed=packed))
            new.append((j.mem.entities[-1], j.text(e.start, e.end)))
    add_keys([slot for slot, _ in new], [text for _, text in new], keys)
    for j in jobs:
        _advance(tok, j)


def _advance(tok, j: _Job) -> None:
    """The job's committed paragraphs go to the document level's pending tokens; its tail stays pending."""
    for p in j.paras:
        ids = tokenize(tok, p.text + "\n\n")
        j.mem.pending_ids.extend(ids)
        j.mem.n_tokens += len(ids)
    j.mem.offset += j.end
    j.mem.pending_text = j.buf[j.end:]


@torch.no_grad()
def write_texts(model: R3MemModel, tok, mems: list[Memory], texts: list[str],
                keys: KeyEncoder | None = None, policy: WritePolicy | None = None,
                reuse: Reuse | None = None) -> list[Memory]:
    """Append texts[i] to mems[i], all in batches; returns new Memories, inputs are left untouched.
    With `keys`, every new slot gets its retrieval keys (`keys.py`); `policy` (`with_policy`) says what
    a memory's first write builds; `reuse` (`reusable`) offers an earlier memory's slots of unchanged
    paragraphs and its document state over an unchanged prefix. A write with `reuse` may leave full
    segments pending for a later one to jump over: `settle` the last."""
    if len(mems) != len(texts):
        raise ValueError(f"write: {len(mems)} memories but {len(texts)} texts")
    out = [with_policy(model, m, policy) for m in mems]
    jobs = []
    for m, text in zip(out, texts):
        buf = m.pending_text + text
        jobs.append(_Job(m, buf, *_split_commit(buf)))
    _commit(model, tok, jobs, keys, reuse)
    _fold_segments(model, out, tok.pad_token_id, final=False, reuse=reuse)
    return out


def write_text(model: R3MemModel, tok, mem: Memory, text: str, keys: KeyEncoder | None = None,
               policy: WritePolicy | None = None, reuse: Reuse | None = None) -> Memory:
    """Return a new Memory with `text` appended; the input Memory is left untouched."""
    return write_texts(model, tok, [mem], [text], keys, policy, reuse)[0]


@torch.no_grad()
def settle(model: R3MemModel, tok, mem: Memory) -> Memory:
    """`mem` with every full segment a rewrite (`write_texts(reuse=...)`) left pending folded in: the memory
    the same writes without `reuse` make. A memory with less than a segment pending is returned as it is."""
    if len(mem.pending_ids) < model.cfg.segment_len:
        return mem
    out = mem.copy()
    _fold_segments(model, [out], tok.pad_token_id, final=False)
    return out


@torch.no_grad()
def flush(model: R3MemModel, tok, mem: Memory, keys: KeyEncoder | None = None,
          policy: WritePolicy | None = None) -> Memory:
    """Commit the pending paragraph and fold a partial last segment into the document state."""
    mem = with_policy(model, mem, policy)
    buf = mem.pending_text
    _commit(model, tok, [_Job(mem, buf, paragraph_spans(buf), len(buf))], keys)
    _fold_segments(model, [mem], tok.pad_token_id, final=True)
    return mem


def pending_slot(model: R3MemModel, tok, mem: Memory, keys: KeyEncoder | None = None) -> Slot | None:
    """The paragraph slot a flush would write from the pending text now (at the memory's policy), without
    changing `mem`; None when nothing is pending or the policy writes no paragraphs. Recall reads it as
    the memory's last paragraph."""
    paras = paragraph_spans(mem.pending_text)
    policy = policy_of(model, mem)
    if not paras or "paragraph" not in policy.levels:
        return None
    p = paras[0] if len(paras) == 1 else None
    text = mem.pending_text.strip() if p is None else p.text
    ids = tokenize(tok, text)[: model.cfg.max_paragraph_tokens]
    st, packed = compress_slots(model, [ids], policy.paragraph_ratio, tok.pad_token_id)[0]
    start = mem.offset + (p.start if p else len(mem.pending_text) - len(mem.pending_text.lstrip()))
    slot = Slot("paragraph", f"p{len(mem.paragraphs)}", start, start + len(text), len(ids), st, packed=packed)
    add_keys([slot], [tok.decode(ids)], keys)
    return slot


def effective_doc_state(model: R3MemModel, tok, mem: Memory) -> torch.Tensor:
    """The document state as if the memory were flushed now, without changing `mem`."""
    if not mem.pending_ids and not mem.pending_text.strip():
        return mem.doc_state
    tmp = mem.copy()
    tmp.pending_ids += [i for p in paragraph_spans(mem.pending_text) for i in tokenize(tok, p.text + "\n\n")]
    _fold_segments(model, [tmp], tok.pad_token_id, final=True)
    return tmp.doc_state
